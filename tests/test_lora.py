"""LoRAs from a folder, named in prompts as A1111's <lora:name:weight>: the tags, the files,
pictures against diffusers' load_lora_weights (peft), weights restored exactly, batching and
the shared weights' turns."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import torch
from helpers import TOLERANCE, diffusers_pipeline, max_pixel_diff
from safetensors.torch import save_file

from sdgen.conditioning.networks import LoraTag, split_loras
from sdgen.errors import InvalidRequest, SdgenError
from sdgen.models.lora import LoraLayer
from sdgen.models.lora_weights import AppliedLora, LoraWeights
from sdgen.params import GenerationRequest
from sdgen.pipelines.generate import generate

REQUEST = GenerationRequest(
    "a red circle on grey", negative_prompt="blue", steps=4, width=32, height=32, seed=21
)


def _lora_tensors(model, *, layout: str, seed: int, text_encoder: bool = True) -> dict:
    """A LoRA of rank 2 for ``model``'s attention and resnet layers (convolutions too) and,
    with ``text_encoder``, its text encoder's layers: kohya's keys or peft's."""
    generator = torch.Generator().manual_seed(seed)
    tensors = {}

    def add(component, path, module):
        rank = 2
        if isinstance(module, torch.nn.Linear):
            down = torch.randn(rank, module.in_features, generator=generator)
            up = torch.randn(module.out_features, rank, generator=generator)
        else:
            down = torch.randn(rank, module.in_channels, *module.kernel_size, generator=generator)
            up = torch.randn(module.out_channels, rank, 1, 1, generator=generator)
        down, up = down * 0.3, up * 0.3
        if layout == "kohya":
            full = f"text_model.{path}" if component == "text_encoder" else path
            prefix = "lora_te_" if component == "text_encoder" else "lora_unet_"
            key = prefix + full.replace(".", "_")
            tensors[f"{key}.lora_down.weight"], tensors[f"{key}.lora_up.weight"] = down, up
            tensors[f"{key}.alpha"] = torch.tensor(1.0)  # scale 1/2
        else:  # peft's, as diffusers saves it: no alpha, scale 1
            key = f"{component}.{path}"
            tensors[f"{key}.lora_A.weight"], tensors[f"{key}.lora_B.weight"] = down, up

    for path, module in model.unet.named_modules():
        if isinstance(module, torch.nn.Linear | torch.nn.Conv2d) and (
            "attentions" in path or "resnets" in path
        ):
            add("unet", path, module)
    if text_encoder:
        for path, module in model.text_encoder.named_modules():
            if isinstance(module, torch.nn.Linear) and "layers" in path:
                add("text_encoder", path, module)
    return tensors


@pytest.fixture(scope="module")
def plain_model(tiny_sd1):
    from sdgen.models.loader import load_model

    return load_model(tiny_sd1, device="cpu")


@pytest.fixture(scope="module")
def lora_dir(tmp_path_factory, plain_model):
    folder = tmp_path_factory.mktemp("loras")
    save_file(_lora_tensors(plain_model, layout="kohya", seed=1), folder / "inkstyle.safetensors")
    (folder / "people").mkdir()
    peft = _lora_tensors(plain_model, layout="peft", seed=2)
    save_file(peft, folder / "people" / "toycat.safetensors")
    save_file({"lora_unet_x.hada_w1_a": torch.ones(2, 2)}, folder / "loha.safetensors")
    other = {  # an SD 2.x-sized layer: another model's
        "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q.lora_down.weight": (
            torch.ones(2, 96)
        ),
        "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q.lora_up.weight": (
            torch.ones(96, 2)
        ),
    }
    save_file(other, folder / "wider.safetensors")
    (folder / "broken.safetensors").write_bytes(b"not safetensors")
    return folder


@pytest.fixture(scope="module")
def model(tiny_sd1, lora_dir):
    from sdgen.models.loader import load_model

    return load_model(tiny_sd1, device="cpu", loras=lora_dir)


def _reference(
    tiny_sd1, lora_dir, adapters: dict[str, object], prompt="a red circle on grey", tiling=False
):
    """diffusers' pipeline with the files loaded by load_lora_weights (peft) and set_adapters
    at the weights given: name -> weight, or {"text_encoder": w, "unet": w}; with ``tiling``
    every convolution of its UNet and VAE (peft's too) pads circularly, as A1111 tiles."""
    pipe = diffusers_pipeline(tiny_sd1)
    for name in adapters:
        pipe.load_lora_weights(str(next(lora_dir.rglob(f"{name}.safetensors"))), adapter_name=name)
    pipe.set_adapters(list(adapters), list(adapters.values()))
    for module in [*pipe.unet.modules(), *pipe.vae.modules()] if tiling else []:
        if isinstance(module, torch.nn.Conv2d):
            module.padding_mode = "circular"
    return pipe(
        prompt,
        negative_prompt="blue",
        num_inference_steps=4,
        width=32,
        height=32,
        generator=torch.Generator().manual_seed(21),
    ).images[0]


def test_tags_are_read_as_a1111_reads_them():
    text, tags = split_loras("prompt", "a cat, <lora:inkstyle:0.8> <lyco:b> <lora:c:0.5:1.2>")
    assert text == "a cat,   " and tags == (
        LoraTag("inkstyle", 0.8, 0.8),
        LoraTag("b", 1.0, 1.0),
        LoraTag("c", 0.5, 1.2),
    )
    assert split_loras("prompt", "<lora:d:unet=0.3:te=0.6>")[1] == (LoraTag("d", 0.6, 0.3),)
    assert split_loras("prompt", "<lora:d:te=0.6>")[1] == (LoraTag("d", 0.6, 0.6),)
    refused = {
        "<lora:d:heavy>": "finite number",
        "<lora:d:nan>": "finite number",
        "<lora:d:1:dyn=4>": "<lora:name:weight>",
        "<lora::1>": "<lora:name:weight>",
        "<lora:d:1:1:1>": "<lora:name:weight>",
        "<hypernet:d:1>": "other extra networks are not on sdgen",
    }
    for tag, allowed in refused.items():
        with pytest.raises(InvalidRequest, match=f"prompt.*{tag}.*{allowed}"):
            GenerationRequest(f"a cat {tag}")


def test_a_request_names_one_set_and_negative_prompts_name_none():
    with pytest.raises(InvalidRequest, match="negative_prompt.*LoRAs are named in the prompt"):
        GenerationRequest("a cat", negative_prompt="<lora:x:1> blurry")
    with pytest.raises(InvalidRequest, match=r"prompt\[1\].*<lora:x:1>.*one set per request"):
        GenerationRequest(("a cat <lora:x:1>", "a dog <lora:y:1>"))
    same = GenerationRequest(("a cat <lora:x:1>", "<lora:x:1> a dog"))
    assert same.prompts[1] == "<lora:x:1> a dog"  # the request keeps its tags: recorded so
    # the hires fix's prompt names its own pass's set
    GenerationRequest("a cat <lora:x:1>", hires={"scale": 2, "prompt": "a dog <lora:y:0.5>"})


def test_a_folder_lists_its_files_and_refuses_what_cannot_serve_the_model(model, lora_dir):
    assert model.loras.names == ["broken", "inkstyle", "loha", "toycat", "wider"]
    refused = {
        "loha": "a LoHa network",
        "wider": "made for another model",
        "broken": "not a safetensors file",
        "nothere": "a LoRA of .*: broken, inkstyle, loha, toycat, wider",
    }
    for name, reason in refused.items():
        with pytest.raises(InvalidRequest, match=f"prompt.*<lora:{name}>.*{reason}"):
            generate(model, REQUEST.replace(prompt=f"a cat <lora:{name}:1>"))
    with pytest.raises(InvalidRequest, match=r"no.*--lora-dir"):
        from sdgen.models.loader import load_model

        generate(load_model(model.source, device="cpu"), REQUEST.replace(prompt="<lora:x>"))
    with pytest.raises(SdgenError, match="lora_dir: .* is not a folder"):
        load_model(model.source, device="cpu", loras=lora_dir / "inkstyle.safetensors")
    inkstyle = model.loras.get("prompt", "inkstyle")
    assert len(inkstyle.short_hash) == 12 and inkstyle.touches("text_encoder")
    # kohya's alpha 1 at rank 2; peft's files have no alpha: scale 1
    assert {layer.scale for layer in inkstyle.layers} == {0.5}
    assert {layer.scale for layer in model.loras.get("prompt", "toycat").layers} == {1.0}


@pytest.mark.parametrize(
    ("prompt", "adapters"),
    [
        ("<lora:inkstyle:0.8>", {"inkstyle": 0.8}),  # kohya's keys, convolutions too
        ("<lora:toycat:0.5:1.2>", {"toycat": {"text_encoder": 0.5, "unet": 1.2}}),  # peft's
        ("<lora:inkstyle:0.7> <lora:toycat:-0.4>", {"inkstyle": 0.7, "toycat": -0.4}),
    ],
)
def test_pictures_are_diffusers_with_the_same_loras(model, tiny_sd1, lora_dir, prompt, adapters):
    """diffusers' StableDiffusionPipeline with load_lora_weights of the same files and
    set_adapters at the same weights: the same picture; without them, another one."""
    picture = generate(model, REQUEST.replace(prompt=f"a red circle on grey {prompt}"))
    reference = _reference(tiny_sd1, lora_dir, adapters, "a red circle on grey ")
    assert max_pixel_diff(picture.images[0], reference) <= TOLERANCE
    plain = generate(model, REQUEST).images[0]
    assert max_pixel_diff(picture.images[0], plain) > 10


def test_the_comparison_with_diffusers_can_fail(model, tiny_sd1, lora_dir):
    picture = generate(model, REQUEST.replace(prompt="a red circle on grey <lora:inkstyle:0.8>"))
    other_weight = _reference(tiny_sd1, lora_dir, {"inkstyle": 0.4}, "a red circle on grey ")
    assert max_pixel_diff(picture.images[0], other_weight) > 10
    unet_only = _reference(
        tiny_sd1,
        lora_dir,
        {"inkstyle": {"text_encoder": 0.0, "unet": 0.8}},
        "a red circle on grey ",
    )
    assert max_pixel_diff(picture.images[0], unet_only) > TOLERANCE


def test_a_tiled_request_reads_the_merged_loras(model, tiny_sd1, lora_dir):
    """Tiling's circular copies hold the model's weights: the LoRA merged into them is read
    (diffusers' pipeline with the LoRA and circular convolutions); without it, another picture."""
    prompt = "a red circle on grey <lora:inkstyle:0.8>"
    picture = generate(model, REQUEST.replace(prompt=prompt, tiling=True)).images[0]
    reference = _reference(tiny_sd1, lora_dir, {"inkstyle": 0.8}, "a red circle on grey ", True)
    assert max_pixel_diff(picture, reference) <= TOLERANCE
    plain = generate(model, REQUEST.replace(tiling=True)).images[0]
    assert max_pixel_diff(picture, plain) > 10


def test_the_weights_are_restored_exactly(model, plain_model):
    """After a LoRA request the model's weights are its own again, bit for bit: a plain
    request's picture is the plain model's, and so is the negative prompt's cached embedding."""
    before = np.asarray(generate(model, REQUEST).images[0])
    generate(model, REQUEST.replace(prompt="a red circle <lora:inkstyle:1>"))
    generate(model, REQUEST.replace(prompt="a red circle <lora:toycat:0.5>"))
    after = np.asarray(generate(model, REQUEST).images[0])
    assert np.array_equal(before, after)
    assert np.array_equal(after, np.asarray(generate(plain_model, REQUEST).images[0]))
    for (name, param), (_, own) in zip(
        model.unet.named_parameters(), plain_model.unet.named_parameters(), strict=True
    ):
        assert torch.equal(param, own), name


def test_a_lora_and_a_plain_request_batched_get_their_pictures_alone(model):
    from sdgen.engine.batching import Batcher

    requests = [
        REQUEST.replace(prompt="a red circle <lora:inkstyle:0.9>"),
        REQUEST,
        REQUEST.replace(prompt="a red circle <lora:inkstyle:0.9>", seed=5),
    ]
    alone = [generate(model, r).images[0] for r in requests]
    batcher = Batcher(model)
    assert batcher.compatible(requests[1])
    tickets = [batcher.add(requests[0])]
    assert not batcher.compatible(requests[1])  # another set: the worker starts it apart
    assert batcher.compatible(requests[2])
    tickets += [batcher.add(r) for r in requests[1:]]  # added anyway: called apart
    finished = {id(f.prepared): f for f in batcher.run_until_done()}
    for ticket, picture in zip(tickets, alone, strict=True):
        assert max_pixel_diff(finished[id(ticket)].result.images[0], picture) <= 1


def test_hires_prompt_names_its_own_pass_loras(model):
    """The hires fix's prompt names the LoRAs of its pass, as A1111's hr_prompt does."""
    hires = {"scale": 2, "steps": 2, "prompt": "a red circle <lora:toycat:0.8>"}
    own = generate(model, REQUEST.replace(hires=hires)).images[0]
    same_text = generate(model, REQUEST.replace(hires={**hires, "prompt": "a red circle "}))
    assert own.size == (64, 64) and max_pixel_diff(own, same_text.images[0]) > TOLERANCE
    with pytest.raises(InvalidRequest, match=r"hires\.prompt.*<lora:nothere>"):
        generate(model, REQUEST.replace(hires={**hires, "prompt": "<lora:nothere:1>"}))


def test_fused_attention_projections_take_their_rows_of_the_change(tiny_sd1, lora_dir):
    """Where the fast path fused to_q/to_k/to_v into to_qkv (to_k/to_v into to_kv), a LoRA's
    changes go to their rows: the picture is the unfused model's."""
    from sdgen.models.fast_path import apply_fast_path
    from sdgen.models.loader import load_model

    unfused = load_model(tiny_sd1, device="cpu", loras=lora_dir)
    fused = load_model(tiny_sd1, device="cpu", loras=lora_dir)
    apply_fast_path(fused.unet, fused.vae, ("fused_qkv",))
    assert fused.unet.down_blocks[0].attentions[0].transformer_blocks[0].attn1.fused_projections
    request = REQUEST.replace(prompt="a red circle <lora:inkstyle:1>")
    picture = generate(fused, request).images[0]
    assert max_pixel_diff(picture, generate(unfused, request).images[0]) <= 1
    assert max_pixel_diff(picture, generate(unfused, REQUEST).images[0]) > 10


@pytest.mark.slow  # torch.compile on the CPU: about a minute of compiling on 2 cores
def test_a_compiled_unet_reads_the_merged_weights(tiny_sd1, lora_dir, tmp_path, monkeypatch):
    """The fast path on the CPU (inductor, not frozen with a LoRA folder): each request's
    merge reaches the compiled graphs, and the plain weights come back after it."""
    from sdgen.models.loader import load_model

    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))
    compiled = load_model(tiny_sd1, device="cpu", loras=lora_dir, fast_path="on")
    assert "compile" in compiled.fast_path and "freezing" not in compiled.fast_path
    eager = load_model(tiny_sd1, device="cpu", loras=lora_dir)
    with_lora = REQUEST.replace(prompt="a red circle <lora:inkstyle:1>")
    for request in (REQUEST, with_lora, REQUEST):
        picture = generate(compiled, request).images[0]
        assert max_pixel_diff(picture, generate(eager, request).images[0]) <= 1
    assert max_pixel_diff(picture, generate(eager, with_lora).images[0]) > 10


def _weights(value: float = 0.0):
    """A one-layer network and a LoRA that adds ``value`` to its weight, for the turns."""
    network = torch.nn.Sequential(torch.nn.Linear(2, 2, bias=False))
    torch.nn.init.zeros_(network[0].weight)
    layer = LoraLayer("unet", "0", (2, 2), torch.ones(1, 2), torch.full((2, 1), value), scale=1.0)
    return LoraWeights({"unet": network}), network, layer


def test_calls_of_one_set_share_the_weights_and_another_set_waits_its_turn():
    from sdgen.models.lora import Lora

    weights, network, layer = _weights(1.0)
    lora = Lora("one", (layer,), "0" * 12)
    set_a, set_b = (AppliedLora(lora, 1.0, 1.0),), (AppliedLora(lora, 1.0, 2.0),)
    seen, order = [], []
    first_in = threading.Event()

    def hold(loras, name, pause):
        with weights.holding(loras):
            order.append(f"{name} in")
            first_in.set()
            seen.append((name, float(network[0].weight[0, 0].detach())))
            time.sleep(pause)
            order.append(f"{name} out")

    a1 = threading.Thread(target=hold, args=(set_a, "a1", 0.3))
    a1.start()
    first_in.wait(5)
    b = threading.Thread(target=hold, args=(set_b, "b", 0.0))
    b.start()
    time.sleep(0.1)  # b waits for a1; a2, later, waits behind b (first come, first served)
    a2 = threading.Thread(target=hold, args=(set_a, "a2", 0.0))
    a2.start()
    for thread in (a1, b, a2):
        thread.join(5)
    assert order == ["a1 in", "a1 out", "b in", "b out", "a2 in", "a2 out"]
    assert dict(seen) == {"a1": 1.0, "b": 2.0, "a2": 1.0}
    with weights.holding(()):
        assert float(network[0].weight.detach().abs().max()) == 0.0  # restored from its backup
    # two holders of one set at once
    inside = threading.Barrier(2, timeout=5)

    def together():
        with weights.holding(set_a):
            inside.wait()

    threads = [threading.Thread(target=together) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(5)
    assert not inside.broken


def test_the_command_line_records_and_reproduces_the_loras(capsys, tmp_path, tiny_sd1, lora_dir):
    """`--lora-dir`: the picture records A1111's Lora hashes and its prompt with the tags;
    `reproduce` remakes it, and refuses without the LoRAs it names."""
    from PIL import Image

    from sdgen.cli import main
    from sdgen.media.metadata import parse_parameters

    def run(*args):
        code = main([str(a) for a in args])
        out, err = capsys.readouterr()
        return code, out, err

    common = ["--model", tiny_sd1, "--lora-dir", lora_dir]
    prompt = "a red circle <lora:inkstyle:0.8> <lora:toycat:0.3>"
    args = ["generate", prompt, "--steps", "2", "--seed", "4", "--width", "32", "--height", "32"]
    code, out, err = run(*args, *common, "--out", tmp_path / "a")
    assert code == 0, err
    picture = out.strip()
    with Image.open(picture) as image:
        fields = parse_parameters(image.text["parameters"])
    inkstyle, toycat = (
        lora_dir / "inkstyle.safetensors",
        lora_dir / "people" / "toycat.safetensors",
    )
    assert fields["Prompt"] == prompt
    hashes = fields["Lora hashes"]
    assert hashes == f"inkstyle: {_addnet_hash(inkstyle)}, toycat: {_addnet_hash(toycat)}"
    code, out, err = run("reproduce", picture, *common, "--out", tmp_path / "b")
    assert code == 0, err
    with Image.open(picture) as a, Image.open(out.strip()) as b:
        assert max_pixel_diff(a, b) == 0
    code, out, err = run("reproduce", picture, "--out", tmp_path / "c")  # no LoRAs
    assert code == 2 and "lora_dir: " in err and "Lora hashes inkstyle" in err, err
    code, out, err = run("reproduce", picture, "--model", tiny_sd1, "--out", tmp_path / "c")
    assert code == 2 and "prompt: '<lora:inkstyle>'" in err and "(--lora-dir)" in err, err
    code, out, err = run("generate", "a <lora:nothere:1>", *common, "--out", tmp_path / "d")
    assert code == 2 and "Traceback" not in err and "inkstyle, loha, toycat" in err, err


def _addnet_hash(path) -> str:
    """kohya's and A1111's LoRA hash: sha256 of a safetensors file after its header."""
    import hashlib

    data = path.read_bytes()
    return hashlib.sha256(data[8 + int.from_bytes(data[:8], "little") :]).hexdigest()[:12]


def test_the_servers_list_the_loras_and_read_them(tmp_path, tiny_sd1, lora_dir):
    """The A1111 API's /sdapi/v1/loras lists the folder as A1111's Lora extension does (paths
    within the folder), /refresh-loras reads it again; a call naming a LoRA gets the library's
    picture and records its hash; the native API lists the names."""
    import base64
    import io
    import shutil

    from fastapi.testclient import TestClient
    from PIL import Image
    from test_server_support import make_config

    from sdgen.media.metadata import parse_parameters
    from sdgen.models.loader import load_model
    from sdgen.server.app import create_app

    folder = tmp_path / "loras"
    shutil.copytree(lora_dir, folder)
    config = make_config(tmp_path / "data", models=(str(tiny_sd1),), lora_dir=folder)
    with TestClient(create_app(config), base_url="http://127.0.0.1") as client:
        listed = {item["name"]: item for item in client.get("/sdapi/v1/loras").json()}
        assert sorted(listed) == ["broken", "inkstyle", "loha", "toycat", "wider"]
        assert listed["toycat"] == {
            "name": "toycat",
            "alias": "toycat",
            "path": "people/toycat.safetensors",
            "metadata": {},
        }
        body = {"prompt": "a red circle <lora:inkstyle:0.6>", "steps": 2, "width": 32}
        body |= {"height": 32, "seed": 3, "cfg_scale": 7.5, "sampler_name": "Euler"}
        response = client.post("/sdapi/v1/txt2img", json=body)
        assert response.status_code == 200, response.text
        png = Image.open(io.BytesIO(base64.b64decode(response.json()["images"][0])))
        assert parse_parameters(png.text["parameters"])["Lora hashes"].startswith("inkstyle: ")
        expected = GenerationRequest(
            body["prompt"], steps=2, width=32, height=32, seed=3, sampler="euler"
        ).replace(emphasis="original", long_prompt="chunk")
        library = generate(load_model(tiny_sd1, device="cpu", loras=folder), expected)
        assert max_pixel_diff(png.convert("RGB"), library.images[0]) == 0
        refused = client.post("/sdapi/v1/txt2img", json={**body, "prompt": "<lora:new:1>"})
        assert refused.status_code == 422 and refused.json()["error"]["field"] == "prompt"
        shutil.copy(folder / "inkstyle.safetensors", folder / "new.safetensors")
        assert client.post("/sdapi/v1/refresh-loras").status_code == 200
        assert "new" in [item["name"] for item in client.get("/sdapi/v1/loras").json()]
        again = client.post(
            "/sdapi/v1/txt2img", json={**body, "prompt": "a red circle <lora:new:0.6>"}
        )
        assert again.status_code == 200, again.text
        (native,) = client.get("/v1/models").json()
        assert native["loras"] == ["broken", "inkstyle", "loha", "new", "toycat", "wider"]


def test_a_hires_prompt_beside_one_negative_prompt_per_prompt_runs(tiny_sd1, plain_model):
    """Checking the hires prompt's LoRAs does not make a request of one prompt and several
    negative prompts (a server's preflight)."""
    from sdgen.engine.limits import Limits, preflight

    request = REQUEST.replace(
        prompt=("a red circle", "a blue circle"),
        negative_prompt=("green", "grey"),
        steps=2,
        hires={"scale": 2, "steps": 1, "prompt": "a circle"},
    )
    preflight(plain_model, request, Limits())
    assert len(generate(plain_model, request).images) == 2


@pytest.mark.parametrize(
    ("tensors", "reason"),
    [
        ({"alpha": torch.ones(2)}, "alpha has 2 values"),
        ({"up": torch.ones(())}, "not a LoRA"),
        ({"down": torch.ones(0, 32), "up": torch.ones(32, 0)}, "not a LoRA"),
        ({"down": torch.ones(1, 32), "up": torch.ones(32)}, "not a LoRA"),
        ({"up": torch.full((32, 2), float("nan"))}, "not finite"),
        ({"lora_magnitude_vector": torch.ones(32)}, "a DoRA network"),
    ],
)
def test_malformed_files_are_refused_with_the_reason(tmp_path, tiny_sd1, tensors, reason):
    """Files whose tensors have no LoRA's shapes or values are refused when named, as an
    unreadable file is, and never reach the weights."""
    from sdgen.models.loader import load_model

    stem = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"
    base = {"down": torch.ones(2, 32), "up": torch.ones(32, 2), "alpha": torch.tensor(1.0)}
    parts = {**base, **tensors}
    file = {
        f"{stem}.lora_down.weight": parts.pop("down"),
        f"{stem}.lora_up.weight": parts.pop("up"),
    }
    file[f"{stem}.alpha"] = parts.pop("alpha")
    file |= {f"{stem}.{key}": value for key, value in parts.items()}
    save_file(file, tmp_path / "odd.safetensors")
    model = load_model(tiny_sd1, device="cpu", loras=tmp_path)
    for _ in range(2):  # the second time from what the first read found
        with pytest.raises(InvalidRequest, match=f"prompt.*<lora:odd>.*{reason}"):
            generate(model, REQUEST.replace(prompt="a cat <lora:odd:1>"))
    assert model.loras.weights.current == ()


def test_the_recorded_hashes_are_those_the_pictures_were_made_with(tmp_path, tiny_sd1, lora_dir):
    """A LoRA file removed (and the folder read again) after a picture was made: its metadata
    still names the LoRA it was made with."""
    import shutil

    from sdgen.api import image_record
    from sdgen.models.loader import load_model

    shutil.copy(lora_dir / "inkstyle.safetensors", tmp_path / "inkstyle.safetensors")
    model = load_model(tiny_sd1, device="cpu", loras=tmp_path)
    result = generate(model, REQUEST.replace(prompt="a red circle <lora:inkstyle:0.5>"))
    expected = f"inkstyle: {_addnet_hash(tmp_path / 'inkstyle.safetensors')}"
    (tmp_path / "inkstyle.safetensors").unlink()
    model.loras.refresh()
    assert result.lora_hashes == expected
    assert image_record(result, model, 0).extra["Lora hashes"] == expected


def test_a_thread_holding_a_set_may_enter_again_for_it_only():
    weights, _, layer = _weights(1.0)
    from sdgen.models.lora import Lora

    one = (AppliedLora(Lora("one", (layer,), "0" * 12), 1.0, 1.0),)
    with weights.holding(one):
        with weights.holding(one):  # passes through: it holds them already
            pass
        with pytest.raises(RuntimeError, match="asked for another"):
            with weights.holding(()):
                pass
    with weights.holding(()):  # released: another set may change them
        pass
