"""Many devices at once: pictures spread over workers come back in order, equal to one device's."""

from __future__ import annotations

import pytest
from helpers import max_pixel_diff
from PIL import Image

from sdgen.cli import main
from sdgen.engine.devices import (
    generate_on_devices,
    load_on_devices,
    parse_devices,
    split_images,
)
from sdgen.errors import InvalidRequest
from sdgen.models.loader import load_model
from sdgen.params import GenerationRequest
from sdgen.pipelines.generate import generate


def test_device_lists_are_parsed_and_checked():
    assert parse_devices("cpu,cpu") == ["cpu", "cpu"]
    assert parse_devices(" cpu ") == ["cpu"]
    assert parse_devices("all") == ["cpu"]  # no CUDA on this machine: the CPU
    for text in ["", "cpu,,cpu", "tpu", "auto", "cuda:99"]:
        with pytest.raises(InvalidRequest, match="^devices:"):
            parse_devices(text)


def test_images_are_split_into_contiguous_runs():
    assert split_images(5, 2) == [range(0, 3), range(3, 5)]
    assert split_images(4, 4) == [range(i, i + 1) for i in range(4)]
    assert split_images(1, 3) == [range(0, 1)]  # no device gets an empty run


def test_two_cpu_workers_give_the_pictures_of_one(tiny_sd1):
    loaded, unet_batches = [], {}

    def load(device: str):
        model = load_model(tiny_sd1, device=device)
        loaded.append(model)
        hook = lambda module, args, out: unet_batches.setdefault(id(module), set()).add(  # noqa: E731
            args[0].shape[0]
        )
        model.unet.register_forward_hook(hook)
        return model

    request = GenerationRequest(
        prompt=["a red circle", "a blue square"],
        num_images=3,
        steps=3,
        seed=40,
        width=32,
        height=32,
    )
    steps = []
    models = load_on_devices(["cpu", "cpu"], load)
    result = generate_on_devices(request, models, callback=steps.append)
    single = generate(load_model(tiny_sd1, device="cpu"), request)
    assert result.request == single.request and result.seeds == single.seeds
    assert len(result.images) == 6
    for i, (ours, alone) in enumerate(zip(result.images, single.images, strict=True)):
        assert max_pixel_diff(ours, alone) == 0, f"image {i}"
    # Two model copies, each ran its half of the pictures (x2: [uncond; text] together).
    assert len(loaded) == 2 and loaded[0].unet is not loaded[1].unet
    assert sorted(unet_batches.values(), key=min) == [{6}, {6}]
    assert [s.index for s in steps] == [0, 1, 2]  # the callback follows the first worker only


def test_cli_devices_writes_the_same_pictures(capsys, tmp_path, tiny_sd1):
    common = ["--model", str(tiny_sd1), "--steps", "2", "--width", "32", "--height", "32"]
    common += ["--seed", "9", "--num-images", "3"]
    assert main(["generate", "a cat", *common, "--out", str(tmp_path / "one")]) == 0
    one = capsys.readouterr().out.split()
    args = ["generate", "a cat", *common, "--devices", "cpu,cpu", "--out", str(tmp_path / "two")]
    assert main(args) == 0
    two = capsys.readouterr().out.split()
    assert [p.rsplit("/", 1)[1] for p in one] == [p.rsplit("/", 1)[1] for p in two]
    for a, b in zip(one, two, strict=True):
        with Image.open(a) as first, Image.open(b) as second:
            assert max_pixel_diff(first.convert("RGB"), second.convert("RGB")) == 0
            assert first.text["parameters"] == second.text["parameters"]
    assert main(["generate", "a cat", *common, "--devices", "cuda:7"]) == 2
    assert "devices:" in capsys.readouterr().err
