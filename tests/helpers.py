"""Picture comparisons for the tests, and diffusers' pipeline to compare with."""

from __future__ import annotations

import numpy as np
from PIL import Image

TOLERANCE = 3  # per pixel, out of 255: the parity bound


def max_pixel_diff(a: Image.Image, b: Image.Image) -> int:
    assert a.size == b.size, (a.size, b.size)
    return int(np.abs(np.asarray(a, dtype=np.int16) - np.asarray(b, dtype=np.int16)).max())


def mean_pixel_diff(a: Image.Image, b: Image.Image) -> float:
    return float(np.abs(np.asarray(a, dtype=np.float32) - np.asarray(b, dtype=np.float32)).mean())


def diffusers_pipeline(folder):
    """diffusers' StableDiffusionPipeline on a model folder, without safety checker or
    progress bar: the reference sdgen's pictures are compared with."""
    import diffusers

    pipe = diffusers.StableDiffusionPipeline.from_pretrained(
        folder, safety_checker=None, requires_safety_checker=False
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def batched_pictures(model, requests) -> list[Image.Image]:
    """The first picture of each of ``requests``, run together by the engine's batching."""
    from sdgen.engine.batching import Batcher

    batcher = Batcher(model)
    tickets = [batcher.add(r) for r in requests]
    finished = {id(f.prepared): f for f in batcher.run_until_done()}
    return [finished[id(ticket)].result.images[0] for ticket in tickets]


def generated_and_reproduced(capsys, folder, flags: list[str]):
    """``sdgen generate`` with ``flags`` (a small picture of the embedded model), then ``sdgen
    reproduce`` of its PNG, which must give the identical picture: the recorded request and
    A1111's settings fields of the picture."""
    from pathlib import Path

    from sdgen.cli import main
    from sdgen.media.metadata import parse_parameters, read_request

    size = ["--steps", "2", "--width", "64", "--height", "64", "--seed", "3"]
    assert main(["generate", "a red circle", *size, *flags, "--out", str(folder / "a")]) == 0
    picture = Path(capsys.readouterr().out.strip())
    assert main(["reproduce", str(picture), "--out", str(folder / "b")]) == 0
    again = Path(capsys.readouterr().out.strip())
    with Image.open(picture) as a, Image.open(again) as b:
        assert max_pixel_diff(a, b) == 0
        fields = parse_parameters(a.text["parameters"])
    return read_request(picture), fields
