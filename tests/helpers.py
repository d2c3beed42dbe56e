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
