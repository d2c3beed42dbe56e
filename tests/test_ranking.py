"""CLIP ranking: scores equal transformers' logits, ``sdgen rank``, and ``generate --best-of``.

A tiny random CLIPModel stands in for a real one (same classes and folder layout); the embedded
miniature model's CLIP, trained on the shapes, checks that the ranking means something.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import max_pixel_diff
from PIL import Image

from sdgen.cli import main
from sdgen.errors import InvalidRequest, ModelNotFound
from sdgen.media.metadata import parse_parameters
from sdgen.miniature.shapes import Scene, render
from sdgen.models.bundled import BUNDLED_MODELS, CLIP_TOKENIZER_DIR, MINIATURE_MODEL
from sdgen.ranking.clip import BATCH_SIZE, keep_best, load_ranker

REPO_ID = "sdgen-tests/tiny-clip"
REVISION = "89abcdef0123456789abcdef0123456789abcdef"


def build_tiny_clip(folder: Path) -> Path:
    """A random CLIPModel (32 px pictures), the real CLIP BPE vocabulary, an image processor."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    torch.manual_seed(0)
    tower = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4)
    config = CLIPConfig(
        text_config=dict(vocab_size=49408, max_position_embeddings=77, **tower),
        vision_config=dict(image_size=32, patch_size=8, **tower),
        projection_dim=16,
    )
    CLIPModel(config).save_pretrained(folder, safe_serialization=True)
    for name in ("vocab.json", "merges.txt", "tokenizer_config.json"):
        shutil.copy(CLIP_TOKENIZER_DIR / name, folder / name)
    CLIPImageProcessor(
        size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}
    ).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_clip(tmp_path_factory.mktemp("models") / "tiny-clip")


@pytest.fixture(scope="module")
def tiny_ranker(tiny_clip: Path):
    return load_ranker(tiny_clip)


def noise_pictures(n: int, seed: int = 0) -> list[Image.Image]:
    """Random pictures of assorted sizes (the processor resizes and crops them)."""
    rng = np.random.default_rng(seed)
    sizes = [(32, 32), (48, 40), (40, 64)]
    return [
        Image.fromarray(rng.integers(0, 256, (*sizes[i % 3][::-1], 3), dtype=np.uint8))
        for i in range(n)
    ]


def run(capsys, *args: object) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def save_all(pictures: list[Image.Image], folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"picture-{i}.png" for i in range(len(pictures))]
    for picture, path in zip(pictures, paths, strict=True):
        picture.save(path)
    return paths


def parse_ranking(out: str) -> list[tuple[float, str]]:
    """``sdgen rank``'s lines: score, two spaces, path."""
    pairs = [line.split("  ", 1) for line in out.splitlines()]
    return [(float(score), path) for score, path in pairs]


@pytest.mark.parametrize("model", ["tiny", "embedded"])
def test_score_is_transformers_logits_per_image(model, tiny_clip, tiny_ranker):
    from transformers import CLIPImageProcessor, CLIPModel, CLIPTokenizer

    folder = tiny_clip if model == "tiny" else BUNDLED_MODELS[MINIATURE_MODEL] / "clip"
    ranker = tiny_ranker if model == "tiny" else load_ranker()
    prompt = "a red circle on a blue background"
    pictures = noise_pictures(BATCH_SIZE + 2)  # two forward passes in the ranker
    scores = ranker.score(prompt, pictures)

    # As transformers' docs compute it: one pass, the prompt padded to its own length only.
    clip = CLIPModel.from_pretrained(folder).eval()
    text = CLIPTokenizer.from_pretrained(folder)([prompt], padding=True, return_tensors="pt")
    pixels = CLIPImageProcessor.from_pretrained(folder)(images=pictures, return_tensors="pt")
    with torch.no_grad():
        expected = clip(**text, pixel_values=pixels.pixel_values).logits_per_image[:, 0]
    torch.testing.assert_close(torch.tensor(scores), expected, rtol=1e-5, atol=1e-5)
    assert len(set(scores)) == len(scores)  # distinct, so the orders below mean something
    assert ranker.rank(prompt, pictures) == sorted(enumerate(scores), key=lambda p: -p[1])


def test_keep_best_scores_each_picture_against_its_own_prompt(tiny_ranker):
    pictures = noise_pictures(6, seed=1)
    prompts = ["a cat", "a dog", "a cat", "a dog", "a cat", "a dog"]
    singles = [tiny_ranker.score(p, [im])[0] for p, im in zip(prompts, pictures, strict=True)]
    kept = keep_best(tiny_ranker, prompts, pictures, 3)
    expected = sorted(enumerate(singles), key=lambda pair: -pair[1])[:3]
    assert [index for index, _ in kept] == [index for index, _ in expected]
    torch.testing.assert_close([s for _, s in kept], [s for _, s in expected])


def test_keep_best_breaks_ties_by_index_and_checks_k():
    class Fixed:
        def score(self, prompt: str, images: list) -> list[float]:
            return [{"a": 1.0, "b": 2.0}[prompt]] * len(images)

    prompts = ["a", "b", "a", "b"]
    assert keep_best(Fixed(), prompts, [None] * 4, 3) == [(1, 2.0), (3, 2.0), (0, 1.0)]
    for k in (0, 5):
        with pytest.raises(InvalidRequest, match="best_of"):
            keep_best(Fixed(), prompts, [None] * 4, k)


def test_rank_prints_pictures_best_first_with_their_scores(
    capsys, tmp_path, tiny_clip, tiny_ranker
):
    prompt = "a photo of a cat"
    pictures = noise_pictures(5, seed=2)
    paths = save_all(pictures, tmp_path)
    code, out, err = run(capsys, "rank", prompt, *paths, "--clip-model", tiny_clip)
    assert code == 0, err
    scores = tiny_ranker.score(prompt, pictures)
    best_first = sorted(range(5), key=lambda i: -scores[i])
    lines = parse_ranking(out)
    assert [path for _, path in lines] == [str(paths[i]) for i in best_first]
    for (printed, _), i in zip(lines, best_first, strict=True):
        assert printed == pytest.approx(scores[i], abs=5e-5)  # printed with 4 decimals
    assert all(len(line.split("  ")[0].split(".")[1]) == 4 for line in out.splitlines())


def fake_hub(monkeypatch, cache: Path) -> None:
    """Point huggingface_hub at ``cache`` (the hub/ folder of HF_HOME), offline."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)


def test_a_cached_hub_id_loads_offline(capsys, monkeypatch, tmp_path, tiny_clip):
    # The layout huggingface_hub writes: refs/main names a snapshot folder of the files.
    repo = tmp_path / "hub" / f"models--{REPO_ID.replace('/', '--')}"
    shutil.copytree(tiny_clip, repo / "snapshots" / REVISION)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(REVISION)
    fake_hub(monkeypatch, tmp_path / "hub")
    paths = save_all(noise_pictures(3, seed=3), tmp_path / "pictures")
    by_folder = run(capsys, "rank", "a cat", *paths, "--clip-model", tiny_clip)
    by_id = run(capsys, "rank", "a cat", *paths, "--clip-model", REPO_ID)
    assert by_id[0] == 0, by_id[2]
    assert by_id == by_folder


def test_a_missing_hub_id_fails_fast_with_one_line(capsys, monkeypatch, tmp_path):
    fake_hub(monkeypatch, tmp_path / "hub")
    picture = save_all(noise_pictures(1), tmp_path)[0]
    code, out, err = run(capsys, "rank", "a cat", picture, "--clip-model", "someone/not-here")
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith("sdgen: error: clip_model: 'someone/not-here'")
    assert "HF_HUB_OFFLINE" in err and "hf download someone/not-here" in err
    assert "--clip-model" in err


def test_a_missing_or_wrong_folder_names_the_field(tmp_path, tiny_clip):
    with pytest.raises(ModelNotFound, match="^clip_model: '/no/such/folder'"):
        load_ranker("/no/such/folder")
    with pytest.raises(ModelNotFound, match="^clip_model: .* no config.json"):
        load_ranker(tmp_path)
    weightless = tmp_path / "weightless"
    shutil.copytree(tiny_clip, weightless)
    (weightless / "model.safetensors").unlink()
    with pytest.raises(ModelNotFound, match="^clip_model: .* no safetensors weights"):
        load_ranker(weightless)


def test_a_file_that_is_not_a_picture_is_refused_before_loading(capsys, monkeypatch, tmp_path):
    def no_loading(*args, **kwargs):
        raise AssertionError("the ranker was loaded")

    monkeypatch.setattr("sdgen.ranking.clip.load_ranker", no_loading)
    good = save_all(noise_pictures(1), tmp_path)[0]
    bad = tmp_path / "notes.png"
    bad.write_text("not a picture")
    code, out, err = run(capsys, "rank", "a cat", good, bad)
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith(f"sdgen: error: image: '{bad}'")


def test_the_embedded_model_ranks_the_prompts_colour_first(capsys, tmp_path):
    colours = ["green", "yellow", "red", "white", "orange"]
    pictures = [render(Scene("circle", c, "blue", 32.0, 32.0, 32.0)) for c in colours]
    paths = save_all(pictures, tmp_path)
    code, out, err = run(capsys, "rank", "a red circle on a blue background", *paths)
    assert code == 0, err
    lines = parse_ranking(out)
    assert lines[0][1] == str(paths[colours.index("red")])
    assert sorted(path for _, path in lines) == sorted(map(str, paths))


GENERATE = ["--steps", 2, "--width", 64, "--height", 64, "--seed", 3, "--device", "cpu"]


def test_generate_best_of_keeps_the_best_pictures(capsys, tmp_path, tiny_sd1, tiny_clip):
    prompt = "a blue square"
    args = ["generate", prompt, "--model", tiny_sd1, "--num-images", 4, *GENERATE]
    code, out, err = run(capsys, *args, "--out", tmp_path / "all")
    assert code == 0, err
    every = [Path(line) for line in out.splitlines()]
    code, out, err = run(
        capsys, *args, "--best-of", 2, "--clip-model", tiny_clip, "--out", tmp_path / "best"
    )
    assert code == 0, err
    kept = [Path(line) for line in out.splitlines()]

    pictures = [Image.open(path).convert("RGB") for path in every]
    scores = load_ranker(tiny_clip).score(prompt, pictures)
    best_first = sorted(range(4), key=lambda i: -scores[i])[:2]
    assert len(kept) == 2 and len(list((tmp_path / "best").iterdir())) == 2
    assert [path.name for path in kept] == [every[i].name for i in best_first]
    for rank, (path, i) in enumerate(zip(kept, best_first, strict=True), start=1):
        with Image.open(path) as image:
            assert max_pixel_diff(image.convert("RGB"), pictures[i]) == 0
            fields = parse_parameters(image.text["parameters"])
            extra = json.loads(image.text["sdgen"])["extra"]
        assert fields["CLIP rank"] == str(rank) and extra["CLIP rank"] == rank
        assert float(fields["CLIP score"]) == pytest.approx(scores[i], abs=1e-4)
        assert extra["CLIP score"] == pytest.approx(scores[i], abs=1e-4)


@pytest.mark.parametrize("best_of", [5, 0])
def test_generate_best_of_out_of_range_exits_2(capsys, tmp_path, tiny_sd1, tiny_clip, best_of):
    code, out, err = run(
        capsys,
        "generate",
        "a cat",
        "--model",
        tiny_sd1,
        "--num-images",
        4,
        *GENERATE,
        "--best-of",
        best_of,
        "--clip-model",
        tiny_clip,
        "--out",
        tmp_path,
    )
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and f"best_of: {best_of}" in err
    assert not any(tmp_path.iterdir())
