"""Small preview pictures of a running job, cheap enough to make while it runs."""

from __future__ import annotations

import io

from sdgen.media.video import approximate_pictures, latent_rgb_map
from sdgen.models.loaded import LoadedModel
from sdgen.sampling.loop import Step

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
