"""The Python API's conveniences on top of the pipelines: saving results with metadata."""

from __future__ import annotations

from importlib.metadata import version
from pathlib import Path

from sdgen.media.metadata import ImageRecord, save_png
from sdgen.models.loaded import LoadedModel
from sdgen.pipelines.txt2img import GenerationResult
from sdgen.sampling.samplers import resolve_sampler


def image_record(result: GenerationResult, model: LoadedModel, index: int) -> ImageRecord:
    """The metadata of picture ``index`` of ``result``."""
    request = result.image_request(index)
    if request.sampler:
        sampler = resolve_sampler(request.sampler)
        label = (sampler.a1111_name, sampler.schedule_type)
    else:  # a model whose own scheduler is not in the registry
        label = (model.scheduler_config["_class_name"], None)
    return ImageRecord(
        request=request,
        sampler_label=label,
        model_name=model.display_name,
        model_hash=model.short_hash,
        version=f"sdgen {version('sdgen')}",
    )


def save_result(result: GenerationResult, model: LoadedModel, out: Path) -> list[Path]:
    """Write every picture of ``result`` as ``{seed}-{index}.png`` into ``out``; return the paths.

    A name that is taken gets a counter, so earlier pictures are never overwritten.
    """
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for index, image in enumerate(result.images):
        path = _free_path(out, f"{result.seeds[index]:010d}")
        paths.append(save_png(image, path, image_record(result, model, index)))
    return paths


def _free_path(out: Path, stem: str) -> Path:
    path, counter = out / f"{stem}.png", 1
    while path.exists():
        path, counter = out / f"{stem}-{counter}.png", counter + 1
    return path
