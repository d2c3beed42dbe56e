"""Textual inversion embeddings from a folder, as A1111's embeddings folder: loading, the
prompts that name them (against diffusers' load_textual_inversion), chunks, skipped files."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch
from helpers import TOLERANCE, diffusers_pipeline, max_pixel_diff
from safetensors.torch import save_file

from sdgen.conditioning.chunks import inversion_lookup, prompt_chunks, prompt_tokens, truncated
from sdgen.conditioning.prompts import encode_text
from sdgen.errors import SdgenError
from sdgen.models.loader import load_model
from sdgen.models.textual_inversion import load_textual_inversions
from sdgen.params import GenerationRequest
from sdgen.pipelines.generate import generate

WIDTH = 32  # the tiny models' text width


def _vectors(n: int, seed: int, width: int = WIDTH) -> torch.Tensor:
    return torch.randn(n, width, generator=torch.Generator().manual_seed(seed)) * 2


@pytest.fixture(scope="module")
def embeddings(tmp_path_factory):
    """A folder as A1111's: A1111's safetensors (2 vectors), diffusers' one token -> vector,
    an A1111 .pt, and files that cannot serve an SD 1.x model of this width."""
    folder = tmp_path_factory.mktemp("embeddings")
    save_file({"emb_params": _vectors(2, 1)}, folder / "shinystyle.safetensors")
    (folder / "concepts").mkdir()
    save_file({"<toy>": _vectors(1, 2)[0]}, folder / "concepts" / "toycat.safetensors")
    torch.save({"string_to_param": {"*": _vectors(3, 3)}, "name": "x"}, folder / "oldstyle.pt")
    save_file({"emb_params": _vectors(1, 4, width=48)}, folder / "wide.safetensors")
    save_file({"clip_l": _vectors(1, 5), "clip_g": _vectors(1, 6)}, folder / "xl.safetensors")
    (folder / "broken.safetensors").write_bytes(b"not safetensors")
    return folder


@pytest.fixture(scope="module")
def model(tiny_sd1, embeddings):
    return load_model(tiny_sd1, device="cpu", embeddings=embeddings)


def test_a_folder_loads_as_a1111s_with_the_reasons_for_what_it_skips(model, embeddings):
    inversions = model.textual_inversions
    assert set(inversions.by_name) == {"shinystyle", "toycat"}  # named after their files
    assert torch.equal(inversions.by_name["shinystyle"].vectors, _vectors(2, 1))
    assert torch.equal(inversions.by_name["toycat"].vectors, _vectors(1, 2))
    assert len(inversions.by_name["toycat"].short_hash) == 12
    skipped = inversions.skipped
    assert "--allow-pickle" in skipped["oldstyle.pt"]
    assert "48 wide" in skipped["wide.safetensors"] and "SDXL" in skipped["xl.safetensors"]
    assert "not a safetensors file" in skipped["broken.safetensors"]
    allowed = load_textual_inversions(embeddings, WIDTH, 75, allow_pickle=True)
    assert torch.equal(allowed.by_name["oldstyle"].vectors, _vectors(3, 3))
    with pytest.raises(SdgenError, match="embeddings: .* is not a folder"):
        load_model(device="cpu", embeddings=embeddings / "shinystyle.safetensors")


@pytest.mark.parametrize("name", ["shinystyle", "toycat"])
def test_a_named_embedding_gives_diffusers_picture(name, model, tiny_sd1, embeddings):
    """diffusers' StableDiffusionPipeline with load_textual_inversion of the same file under
    the same name: the same picture; without the embeddings, another one."""
    prompt = f"a red circle, {name} on grey"
    request = GenerationRequest(prompt, negative_prompt="blue", steps=4, width=32, height=32)
    request = request.replace(seed=11)
    picture = generate(model, request).images[0]
    pipe = diffusers_pipeline(tiny_sd1)
    file = next(embeddings.rglob(f"{name}.safetensors"))
    pipe.load_textual_inversion(str(file), token=name)
    reference = pipe(
        prompt,
        negative_prompt="blue",
        num_inference_steps=4,
        width=32,
        height=32,
        generator=torch.Generator().manual_seed(11),
    ).images[0]
    assert max_pixel_diff(picture, reference) <= TOLERANCE
    plain = generate(load_model(tiny_sd1, device="cpu"), request).images[0]
    assert max_pixel_diff(picture, plain) > TOLERANCE


def test_an_embedding_takes_its_vectors_positions_and_is_never_split(model):
    tokenizer = model.tokenizer
    lookup = inversion_lookup(tokenizer, model.textual_inversions.by_name)
    text = " ".join(["cat"] * 74) + " shinystyle dog"
    first, second = prompt_chunks(tokenizer, text, "original", lookup)
    assert len(first.ids) == 74 and first.fixes == []  # 1 place left: the 2 vectors move on
    ((at, vectors),) = second.fixes
    assert at == 0 and torch.equal(vectors, _vectors(2, 1)) and len(second.ids) == 3
    # weighted as the words around it
    (chunk,) = prompt_chunks(tokenizer, "a (shinystyle:1.3) cat", "original", lookup)
    assert chunk.weights == [1.0, 1.3, 1.3, 1.0]


def test_files_a1111_reads_and_files_that_are_refused(tmp_path):
    """A1111's older .pt (a ParameterDict), links to folders, names prompts spell alike, vectors
    that are not finite, too many or too large for half precision, files too large to be
    embeddings; the hash is A1111's: 12 hex digits of the file's sha256."""
    import hashlib

    (tmp_path / "shared").mkdir()
    folder = tmp_path / "embeddings"
    folder.mkdir()
    params = torch.nn.ParameterDict({"*": torch.nn.Parameter(_vectors(2, 7))})
    torch.save({"string_to_param": params, "name": "x", "step": 3}, folder / "older.pt")
    save_file({"emb_params": _vectors(1, 8)}, tmp_path / "shared" / "linked.safetensors")
    (folder / "sub").symlink_to(tmp_path / "shared", target_is_directory=True)
    (folder / "loop").symlink_to(folder, target_is_directory=True)  # walked once
    (folder / "more").mkdir()  # the root's files come first, then each folder's
    save_file({"emb_params": _vectors(1, 9)}, folder / "more" / "Older.safetensors")
    save_file({"emb_params": torch.full((1, WIDTH), float("nan"))}, folder / "nan.safetensors")
    save_file({"emb_params": _vectors(76, 10)}, folder / "many.safetensors")
    save_file({"emb_params": torch.full((1, WIDTH), 1e6)}, folder / "huge.safetensors")
    (folder / "checkpoint.safetensors").write_bytes(b"\0" * (17 << 20))
    found = load_textual_inversions(folder, WIDTH, 75, allow_pickle=True, max_value=65504.0)
    assert set(found.by_name) == {"older", "linked"}
    assert torch.equal(found.by_name["older"].vectors, _vectors(2, 7))
    digest = hashlib.sha256((folder / "older.pt").read_bytes()).hexdigest()
    assert found.by_name["older"].short_hash == digest[:12]
    assert "spell its name as 'older'" in found.skipped["more/Older.safetensors"]
    assert "not finite" in found.skipped["nan.safetensors"]
    assert "not finite, or too large" in found.skipped["huge.safetensors"]
    assert "76 vectors" in found.skipped["many.safetensors"]
    assert "17 MB, too large" in found.skipped["checkpoint.safetensors"]


def test_comma_moves_and_truncation_keep_embeddings_with_their_place(model):
    tokenizer = model.tokenizer
    lookup = inversion_lookup(tokenizer, model.textual_inversions.by_name)
    # a comma 4 tokens back at the chunk's end: the phrase, embedding included, moves on
    text = " ".join(["cat"] * 71) + ", shinystyle dog dog"
    first, second = prompt_chunks(tokenizer, text, "off", lookup)
    assert len(first.ids) == 72 and first.fixes == []
    assert [at for at, _ in second.fixes] == [0] and len(second.ids) == 4
    # truncated at 75 with one of its 2 vectors inside: the first vector is kept
    text = " ".join(["cat"] * 74) + " shinystyle"
    tokens = truncated(prompt_tokens(tokenizer, text, "off", lookup), 75)
    ((at, vectors),) = tokens.fixes
    assert at == 74 and torch.equal(vectors, _vectors(2, 1)[:1])


def test_the_longest_name_wins(tiny_sd1, tmp_path):
    save_file({"emb_params": _vectors(1, 12)}, tmp_path / "shiny.safetensors")
    save_file({"emb_params": _vectors(3, 13)}, tmp_path / "shinystyle.safetensors")
    model = load_model(tiny_sd1, device="cpu", embeddings=tmp_path)
    lookup = inversion_lookup(model.tokenizer, model.textual_inversions.by_name)
    (chunk,) = prompt_chunks(model.tokenizer, "a shinystyle and a shiny cat", "off", lookup)
    assert [len(vectors) for _, vectors in chunk.fixes] == [3, 1]


def test_ti_hashes_name_what_the_picture_used(model, tmp_path):
    from sdgen.pipelines.stages import ti_hashes

    toycat = model.textual_inversions.by_name["toycat"].short_hash
    shiny = model.textual_inversions.by_name["shinystyle"].short_hash
    request = GenerationRequest("toycat", negative_prompt="shinystyle")
    assert ti_hashes(model, request) == f"toycat: {toycat}, shinystyle: {shiny}"
    # the negative prompt is not read without guidance
    assert ti_hashes(model, request.replace(guidance_scale=1.0)) == f"toycat: {toycat}"
    # past the 75 tokens that are read: not used
    late = GenerationRequest(" ".join(["cat"] * 80) + " toycat", negative_prompt="")
    assert ti_hashes(model, late) == ""
    assert ti_hashes(model, late.replace(long_prompt="chunk")) == f"toycat: {toycat}"


def test_other_threads_calls_are_not_fixed(model):
    """The fix is applied to the calling thread's text-encoder call only."""
    tokenizer, encoder = model.tokenizer, model.text_encoder
    lookup = inversion_lookup(tokenizer, model.textual_inversions.by_name)
    plain = encode_text(tokenizer, encoder, ["a red cat"], model.device)[0]
    results, errors = [], []
    start = threading.Barrier(2)

    def other():
        try:
            start.wait()
            for _ in range(30):
                results.append(encode_text(tokenizer, encoder, ["a red cat"], model.device)[0])
        except Exception as err:  # noqa: BLE001
            errors.append(err)

    thread = threading.Thread(target=other)
    thread.start()
    start.wait()
    for _ in range(30):
        encode_text(tokenizer, encoder, ["shinystyle"], model.device, "off", "truncate", lookup)
    thread.join()
    assert not errors and all(torch.equal(r, plain) for r in results)


def test_pictures_without_an_embeddings_name_are_unchanged(model, tiny_sd1):
    request = GenerationRequest("a red circle", steps=3, width=32, height=32, seed=2)
    with_folder = generate(model, request).images[0]
    without = generate(load_model(tiny_sd1, device="cpu"), request).images[0]
    assert np.array_equal(np.asarray(with_folder), np.asarray(without))


def test_the_command_line_records_and_reproduces_the_embeddings(
    capsys, tmp_path, tiny_sd1, embeddings
):
    from PIL import Image

    from sdgen.cli import main
    from sdgen.media.metadata import parse_parameters

    def run(*args):
        code = main([str(a) for a in args])
        out, err = capsys.readouterr()
        return code, out, err

    common = ["--model", tiny_sd1, "--embeddings", embeddings]
    args = ["generate", "toycat on grey", "--negative-prompt", "shinystyle", "--steps", "2"]
    code, out, err = run(*args, "--seed", "4", *common, "--out", tmp_path / "a")
    assert code == 0, err
    picture = out.strip()
    toycat = load_textual_inversions(embeddings, WIDTH, 75).by_name["toycat"]
    with Image.open(picture) as image:
        fields = parse_parameters(image.text["parameters"])
    shiny = load_textual_inversions(embeddings, WIDTH, 75).by_name["shinystyle"]
    assert fields["TI hashes"] == f"toycat: {toycat.short_hash}, shinystyle: {shiny.short_hash}"
    code, out, err = run("reproduce", picture, *common, "--out", tmp_path / "b")
    assert code == 0, err
    with Image.open(picture) as a, Image.open(out.strip()) as b:
        assert max_pixel_diff(a, b) == 0
    code, out, err = run("reproduce", picture, "--out", tmp_path / "c")  # no embeddings
    assert code == 2 and "embeddings: " in err and "TI hashes toycat" in err, err


def test_the_server_lists_the_embeddings_and_reads_them(tmp_path, tiny_sd1, embeddings):
    import base64
    import io
    import json

    from fastapi.testclient import TestClient
    from PIL import Image
    from test_server_support import make_config

    from sdgen.media.metadata import parse_parameters
    from sdgen.server.app import create_app

    config = make_config(tmp_path, models=(str(tiny_sd1),), embeddings=embeddings)
    with TestClient(create_app(config), base_url="http://127.0.0.1") as client:
        listed = client.get("/sdapi/v1/embeddings").json()
        assert listed["loaded"]["shinystyle"]["vectors"] == 2
        assert listed["loaded"]["toycat"]["shape"] == WIDTH
        # as A1111: "skipped" lists embeddings of another width, by name
        wide = {"step": None, "sd_checkpoint": None, "sd_checkpoint_name": None}
        assert listed["skipped"] == {"wide": {**wide, "shape": 48, "vectors": 1}}
        body = {"prompt": "shinystyle circle", "steps": 2, "width": 32, "height": 32, "seed": 1}
        response = client.post("/sdapi/v1/txt2img", json=body)
        assert response.status_code == 200, response.text
        png = Image.open(io.BytesIO(base64.b64decode(response.json()["images"][0])))
        assert parse_parameters(png.text["parameters"])["TI hashes"].startswith("shinystyle: ")
        assert "TI hashes" in json.loads(response.json()["info"])["infotexts"][0]
        (listed,) = client.get("/v1/models").json()  # the native API names them too
        assert listed["embeddings"] == ["shinystyle", "toycat"]


def test_a_folder_of_too_many_files_is_read_up_to_the_limit(tmp_path, monkeypatch):
    from sdgen.models import textual_inversion

    monkeypatch.setattr(textual_inversion, "MAX_FILES", 3)
    for index in range(6):
        save_file({"emb_params": _vectors(1, index)}, tmp_path / f"e{index}.safetensors")
    found = load_textual_inversions(tmp_path, WIDTH, 75)
    assert sorted(found.by_name) == ["e0", "e1", "e2"]
    assert found.skipped == {"e3.safetensors": "past the first 3 files, as are the 2 after it"}
