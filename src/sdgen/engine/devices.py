"""One request's pictures spread over several devices, the model replicated on each.

As the tutorials did over 8 TPU cores (replicated parameters, sharded prompts): the pictures are
cut into contiguous runs, one per device, each run on its own copy of the model in its own
thread, and put back in order. Picture i depends only on its own seeds (seed + i, and its
variation seed + i) and the settings, so the pictures equal a single-device run's.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import torch

from sdgen.errors import InvalidRequest
from sdgen.models.devices import resolve_device
from sdgen.models.loaded import LoadedModel
from sdgen.params import GenerationRequest
from sdgen.pipelines.generate import generate
from sdgen.pipelines.stages import GenerationResult, resolve_request
from sdgen.sampling.loop import StepCallback

ALLOWED = "a comma-separated list of cpu, cuda, cuda:N (repeats allowed), or all"


def parse_devices(text: str) -> list[str]:
    """``"cuda:0,cuda:1"``, ``"cpu,cpu"`` or ``"all"`` (every CUDA device, else the CPU)."""
    if text.strip() == "all":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        return [f"cuda:{i}" for i in range(count)] or ["cpu"]
    names = [name.strip() for name in text.split(",")]
    if not all(names):
        raise InvalidRequest("devices", text, ALLOWED)
    kinds = set()
    for name in names:
        if name == "auto":
            raise InvalidRequest("devices", text, ALLOWED)
        try:
            kinds.add(resolve_device(name).type)
        except InvalidRequest as err:
            reason = err.allowed.replace("auto, ", "")  # a list of devices has no "auto"
            raise InvalidRequest("devices", text, f"{ALLOWED} ({reason})") from err
    if len(kinds) > 1:  # "auto" precision differs between them, and with it the pictures
        raise InvalidRequest("devices", text, "devices of one kind: all cuda or all cpu")
    return names


def split_images(count: int, parts: int) -> list[range]:
    """Contiguous image ranges, one per part, sizes differing by at most one; no empty range."""
    parts = min(parts, count)
    size, extra = divmod(count, parts)
    ranges, start = [], 0
    for part in range(parts):
        stop = start + size + (1 if part < extra else 0)
        ranges.append(range(start, stop))
        start = stop
    return ranges


def load_on_devices(devices: list[str], load: Callable[[str], LoadedModel]) -> list[LoadedModel]:
    """One copy of the model per device (a repeated device gets its own copy).

    Loaded one after another: networks are built one at a time in a process anyway
    (``sdgen.models.building``).
    """
    return [load(device) for device in devices]


def generate_on_devices(
    request: GenerationRequest, models: list[LoadedModel], callback: StepCallback | None = None
) -> GenerationResult:
    """Generate ``request``'s pictures with one copy of the model per device, in parallel.

    Args:
        request: the whole request; its seed is drawn once here if it has none.
        models: from ``load_on_devices``; a model that would get no picture stays idle.
        callback: step callback of the first model's run, which holds picture 0.
    Returns:
        The pictures in image order, with the request resolved as a single device resolves it.
    """
    request = request.with_seed()
    parts = split_images(request.total_images, len(models))
    models = models[: len(parts)]
    request = resolve_request(models[0], request)
    pairs = request.image_prompts()
    runs = [
        request.from_image(
            part.start,
            prompt=tuple(pairs[i][0] for i in part),
            negative_prompt=tuple(pairs[i][1] for i in part),
            num_images=1,
        )
        for part in parts
    ]
    callbacks = [callback] + [None] * (len(runs) - 1)
    with ThreadPoolExecutor(max_workers=len(runs)) as pool:
        results = list(pool.map(generate, models, runs, callbacks))
    images = [image for result in results for image in result.images]
    hashes = results[0].lora_hashes  # every part names the request's LoRAs
    return GenerationResult(request=request, images=images, lora_hashes=hashes)
