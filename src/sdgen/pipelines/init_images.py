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
from sdgen.sampling.noise import initial_latents

PROCESSOR = VaeImageProcessor()  # Lanczos, as diffusers' pipelines resize their pictures
# params.RESIZE_MODES -> VaeImageProcessor's resize modes
_RESIZE_MODES = {"stretch": "default", "crop": "crop", "fill": "fill"}
MAX_RESIZED_PIXELS = 4096 * 4096  # the largest picture a resize may go through


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


def sized_picture(
    picture: Image.Image, request: GenerationRequest, field: str, *, check_only: bool = False
) -> Image.Image | None:
    """``picture`` at the output size: resized only when asked to, as ``resize_mode`` says
    (diffusers' VaeImageProcessor.resize: Lanczos); with ``check_only``, only refused or not."""
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
    check_resizable(*picture.size, request, mode, field)
    if check_only:
        return None
    return PROCESSOR.resize(picture, size[1], size[0], resize_mode=mode).convert(picture.mode)


def check_resizable(width: int, height: int, request: GenerationRequest, mode: str, field: str):
    """Refuse a picture whose resizing by ``mode`` (VaeImageProcessor's) to the output size
    would be degenerate: scaled to fit ("fill") a side below one pixel, or scaled to cover
    ("crop") an intermediate picture past MAX_RESIZED_PIXELS (a 32768x16 picture cropped to
    512x512 went through a 1,048,576x512 one: 9 s and 2.5 GB)."""
    out_width, out_height = request.width, request.height
    shape = f"{width}x{height}"
    nearer = f"a picture nearer the output's shape ({out_width}x{out_height})"
    if mode == "crop":
        scale = max(out_width / width, out_height / height)
        if width * scale * height * scale > MAX_RESIZED_PIXELS:
            raise InvalidRequest(
                field,
                shape,
                f"{nearer}: scaled to cover it, it would pass {MAX_RESIZED_PIXELS} pixels",
            )
    elif mode == "fill":
        if out_width / out_height < width / height:  # as diffusers' _resize_and_fill sizes it
            fitted = (out_width, height * out_width // width)
        else:
            fitted = (width * out_height // height, out_height)
        if min(fitted) < 1:
            raise InvalidRequest(field, shape, f"{nearer}: scaled to fit it, a side is 0 pixels")


def latent_samples(vae, pixels: torch.Tensor, generators: list[torch.Generator]) -> torch.Tensor:
    """One VAE latent sample of ``pixels`` (1, 3, H, W) per image, each from its own generator.

    The picture is encoded once; each image draws its sample from the latent distribution with
    its generator, as diffusers does per image, then the VAE's scaling factor applies.
    Returns (B, C, H/f, W/f).
    """
    distribution = vae.encode(pixels.to(vae.device, vae.dtype)).latent_dist
    samples = [distribution.sample(generator=g) for g in generators]
    return torch.cat(samples) * vae.config.scaling_factor


def image_noise(model, request, generators: list[torch.Generator]) -> torch.Tensor:
    """Each image's starting noise (B, C, H/f, W/f) at ``request``'s size, from its own
    generator, varied and resized as the request asks (its ``variation``, ``seed_noise_size``)."""
    factor = model.vae_scale_factor
    shape = (model.latent_channels, request.height // factor, request.width // factor)
    return initial_latents(
        generators,
        shape,
        device=model.device,
        dtype=model.dtype,
        variation=request.variation,
        resize_from=request.seed_noise_size(factor),
    )


def noised_latents(
    scheduler,
    init_latents: torch.Tensor,
    generators: list[torch.Generator],
    timesteps: torch.Tensor,
    *,
    device: torch.device,
    dtype: torch.dtype,
    variation: tuple[int, float] | None = None,
    resize_from: tuple[int, int] | None = None,
) -> torch.Tensor:
    """``init_latents`` (B, C, h, w) noised to the first of ``timesteps``, each image's noise
    from its own generator (varied by ``variation``, a request's ``variation``, and resized by
    ``resize_from``, its ``seed_noise_size``), as diffusers' img2img ``prepare_latents`` does."""
    noise = initial_latents(
        generators,
        init_latents.shape[1:],
        device=device,
        dtype=dtype,
        variation=variation,
        resize_from=resize_from,
    )
    start = timesteps[:1].repeat(init_latents.shape[0])
    return scheduler.add_noise(init_latents.to(dtype), noise, start)


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
    return final_timesteps(scheduler, steps, run), run


def final_timesteps(scheduler, steps: int, run: int) -> torch.Tensor:
    """The last ``run`` of the scheduler's ``steps`` steps (counted as the user counts them);
    the scheduler is told where they begin."""
    start = (steps - run) * scheduler.order
    if hasattr(scheduler, "set_begin_index"):
        scheduler.set_begin_index(start)
    return scheduler.timesteps[start:]
