"""Init pictures and masks for img2img and inpainting: to tensors, to latents, and the steps
that ``strength`` selects, as diffusers' img2img and inpainting pipelines do them.
"""

from __future__ import annotations

import numpy as np
import torch
from diffusers.image_processor import VaeImageProcessor
from PIL import Image

from sdgen.errors import InvalidRequest
from sdgen.params import GenerationRequest

PROCESSOR = VaeImageProcessor()  # Lanczos, as diffusers' pipelines resize their pictures
# params.RESIZE_MODES -> VaeImageProcessor's resize modes
_RESIZE_MODES = {"stretch": "default", "crop": "crop", "fill": "fill"}


def picture_tensor(request: GenerationRequest) -> torch.Tensor:
    """The init picture as (1, 3, H, W) in [-1, 1], at the request's (resolved) size."""
    return pixels_tensor(sized_picture(request.init_image.image, request, "init_image"))


def pixels_tensor(picture: Image.Image) -> torch.Tensor:
    """A picture as (1, 3, H, W) in [-1, 1], as diffusers' image processor makes it."""
    array = np.asarray(picture.convert("RGB"), dtype=np.float32) / 255.0  # (H, W, 3)
    return torch.from_numpy(array).permute(2, 0, 1)[None] * 2.0 - 1.0


def mask_tensor(mask: Image.Image) -> torch.Tensor:
    """A mask as (1, 1, H, W): 1 where the picture is repainted, 0 where it is kept; binarised
    at one half, as diffusers' mask processor does."""
    array = np.asarray(mask.convert("L"), dtype=np.float32) / 255.0  # (H, W)
    return (torch.from_numpy(array) >= 0.5).to(torch.float32)[None, None]


def sized_picture(picture: Image.Image, request: GenerationRequest, field: str) -> Image.Image:
    """``picture`` at the output size: resized only when asked to, as ``resize_mode`` says
    (diffusers' VaeImageProcessor.resize: Lanczos)."""
    size = (request.width, request.height)
    if picture.size == size:
        return picture
    if not request.resize:
        raise InvalidRequest(
            field,
            "{}x{}".format(*picture.size),
            f"a {size[0]}x{size[1]} picture (the output size), or resize=True (--resize)",
        )
    mode = _RESIZE_MODES[request.resize_mode]
    return PROCESSOR.resize(picture, size[1], size[0], resize_mode=mode).convert(picture.mode)


def latent_samples(vae, pixels: torch.Tensor, generators: list[torch.Generator]) -> torch.Tensor:
    """One VAE latent sample of ``pixels`` (1, 3, H, W) per image, each from its own generator.

    The picture is encoded once; each image draws its sample from the latent distribution with
    its generator, as diffusers does per image, then the VAE's scaling factor applies.
    Returns (B, C, H/f, W/f).
    """
    distribution = vae.encode(pixels.to(vae.device, vae.dtype)).latent_dist
    samples = [distribution.sample(generator=g) for g in generators]
    return torch.cat(samples) * vae.config.scaling_factor


def strength_timesteps(scheduler, steps: int, strength: float) -> tuple[torch.Tensor, int]:
    """The last ``int(steps * strength)`` of the scheduler's steps, the part img2img runs.

    The scheduler is told where it begins, as diffusers' ``get_timesteps`` does, so sigma
    schedulers add noise and step from the right place. Returns (timesteps, steps that run).
    """
    run = min(int(steps * strength), steps)
    if run < 1:
        raise InvalidRequest(
            "strength",
            strength,
            f"at least 1/{steps} = {1 / steps!r} with {steps} steps (strength x steps >= 1, so "
            "a step runs)",
        )
    start = (steps - run) * scheduler.order
    if hasattr(scheduler, "set_begin_index"):
        scheduler.set_begin_index(start)
    return scheduler.timesteps[start:], run
