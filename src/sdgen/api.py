"""The Python API's conveniences on top of the pipelines: saving results with metadata."""

from __future__ import annotations

from importlib.metadata import version
from pathlib import Path

from sdgen.media.metadata import ImageRecord, save_png
from sdgen.models.loaded import LoadedModel
from sdgen.pipelines.stages import GenerationResult, ti_hashes
from sdgen.sampling.samplers import resolve_sampler


def image_record(
    result: GenerationResult, model: LoadedModel, index: int, extra: dict | None = None
) -> ImageRecord:
    """The metadata of picture ``index`` of ``result``, with facts found after generation."""
    request = result.image_request(index)
    if request.sampler:
        label = _sampler_label(request.sampler)
    else:  # a model whose own scheduler is not in the registry
        label = (model.scheduler_config["_class_name"], None)
    hires_sampler = request.hires.sampler if request.hires is not None else None
    return ImageRecord(
        request=request,
        sampler_label=label,
        hires_sampler_label=_sampler_label(hires_sampler)
        if hires_sampler not in (None, request.sampler)
        else None,
        model_name=model.display_name,
        model_hash=model.short_hash,
        version=f"sdgen {version('sdgen')}",
        extra={
            **_networks_extra(model, request, result),
            **_stopped_extra(result),
            **(extra or {}),
        },
    )


def _sampler_label(name: str) -> tuple[str, str | None]:
    """A1111's "Sampler" and "Schedule type" of sampler ``name``."""
    sampler = resolve_sampler(name)
    return sampler.a1111_name, sampler.schedule_type


def _networks_extra(model: LoadedModel, request, result: GenerationResult) -> dict:
    """The textual inversions and LoRAs a picture's prompts named, as A1111 records them."""
    hashes = {"TI hashes": ti_hashes(model, request), "Lora hashes": result.lora_hashes}
    return {key: value for key, value in hashes.items() if value}


def _stopped_extra(result: GenerationResult) -> dict:
    """A picture of a stopped generation says so: its settings are those of the whole run."""
    if result.stopped_at is None:
        return {}
    done, total = result.stopped_at
    return {"Stopped at step": f"{done}/{total}"}


def save_result(
    result: GenerationResult,
    model: LoadedModel,
    out: Path,
    *,
    indices: list[int] | None = None,
    extras: dict[int, dict] | None = None,
) -> list[Path]:
    """Write pictures of ``result`` as ``{seed}.png`` into ``out``; return the paths.

    Args:
        indices: which pictures, in this order (default: all, in image order).
        extras: per picture index, facts to add to its metadata (CLIP score and rank, NSFW).
    A name that is taken gets a counter, so earlier pictures are never overwritten.
    """
    out.mkdir(parents=True, exist_ok=True)
    extras = extras or {}
    paths = []
    for index in range(len(result.images)) if indices is None else indices:
        path = free_path(out, f"{result.seeds[index]:010d}")
        record = image_record(result, model, index, extras.get(index))
        paths.append(save_png(result.images[index], path, record))
    return paths


def free_path(out: Path, stem: str) -> Path:
    """``out/stem.png``, or ``out/stem-N.png`` with the first N that is not taken."""
    path, counter = out / f"{stem}.png", 1
    while path.exists():
        path, counter = out / f"{stem}-{counter}.png", counter + 1
    return path
