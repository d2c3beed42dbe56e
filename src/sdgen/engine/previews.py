"""Small preview pictures of a running job, cheap enough to make while it runs."""

from __future__ import annotations

import io
import time
from collections.abc import Callable

from sdgen.engine.events import JobListener, Progress
from sdgen.errors import GenerationCancelled, GenerationStopped
from sdgen.media.video import approximate_pictures, latent_rgb_map
from sdgen.models.loaded import LoadedModel
from sdgen.sampling.loop import Step, StepCallback

PREVIEW_SIDE = 128  # the preview's longer side in pixels: a thumbnail, not the picture


def prepare_previews(model: LoadedModel) -> None:
    """Fit the model's latent-to-RGB map now, so the first job's first step does not pay it."""
    latent_rgb_map(model.vae)


def preview_png(model: LoadedModel, step: Step, side: int = PREVIEW_SIDE) -> bytes:
    """The first picture's predicted clean latents (x0) through the linear RGB map, as PNG.

    No VAE decode: one (C, h, w) x (C, 3) product, upsampled, shrunk to ``side`` pixels.
    """
    picture = approximate_pictures(model, step.denoised[:1].detach().float().cpu())[0]
    picture.thumbnail((side, side))
    out = io.BytesIO()
    picture.save(out, format="PNG")
    return out.getvalue()


def job_step_callback(
    model: LoadedModel,
    listener: JobListener,
    job_id: str,
    *,
    stop: Callable[[], bool],
    started: float,
    preview_interval: float,
    finish: Callable[[], bool] = lambda: False,
) -> StepCallback:
    """A running job's step callback: stops it (``GenerationCancelled``) once ``stop()`` says
    so, ends it with this step's predicted pictures (``GenerationStopped``) once ``finish()``
    says so, and tells ``listener`` its progress, with a preview every ``preview_interval`` s."""
    last_preview = float("-inf")

    def on_step(step: Step) -> None:
        nonlocal last_preview
        if stop():
            raise GenerationCancelled(job_id)
        if finish() and step.index + 1 < step.total:  # at the last step: done anyway
            raise GenerationStopped(step.index + 1, step.total, step.denoised)
        now = time.monotonic()
        preview = None
        final = step.index + 1 == step.total
        if not final and now - last_preview >= preview_interval:
            preview, last_preview = preview_png(model, step), now
        rate = (step.index + 1) / max(now - started, 1e-9)
        listener.job_progressed(job_id, Progress(step.index + 1, step.total, preview, rate))

    return on_step
