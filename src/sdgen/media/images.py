"""Pictures <-> tensors: VAE decoding as diffusers' VaeImageProcessor does it; input pictures."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from sdgen.errors import InvalidRequest
from sdgen.params import InputPicture


@torch.no_grad()
def decode_latents(vae: torch.nn.Module, latents: torch.Tensor) -> list[Image.Image]:
    """(B, C, H/f, W/f) latents -> B RGB pictures of H x W.

    Latents are divided by the VAE's own scaling factor (0.18215 for SD 1.x/2.x) before decoding.
    Decoded one picture at a time: memory stays that of one picture, and a picture never depends
    on the batch it was in.
    """
    scaling = vae.config.scaling_factor
    pictures = []
    for one in latents.split(1):
        decoded = vae.decode(one.to(vae.dtype) / scaling).sample  # (1, 3, H, W) in [-1, 1]
        pictures.extend(tensor_to_pil(decoded))
    return pictures


def tensor_to_pil(images: torch.Tensor) -> list[Image.Image]:
    """(B, 3, H, W) in [-1, 1] -> PIL pictures, rounded as diffusers rounds (x * 255, round)."""
    images = (images / 2 + 0.5).clamp(0, 1)
    array = images.cpu().permute(0, 2, 3, 1).float().numpy()
    return [Image.fromarray(a) for a in (array * 255).round().astype(np.uint8)]


MAX_INPUT_PIXELS = 8192 * 8192  # larger inputs are refused before their pixels are decoded


def read_picture(
    source: Path | bytes, field: str, *, mode: str = "RGB", max_pixels: int = MAX_INPUT_PIXELS
) -> InputPicture:
    """Decode an input picture (a file's path or its bytes) for the request field ``field``.

    Anything that is not a picture, or one with more than ``max_pixels`` pixels (a decompression
    bomb), is refused by field name before its pixels are decoded. ``mode`` is "RGB" for init
    pictures and "L" for masks; transparency is dropped.
    """
    allowed = "a PNG, JPEG or WebP picture"
    try:
        with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as image:
            width, height = image.size
            if width * height > max_pixels:
                raise InvalidRequest(
                    field, f"{width}x{height}", f"a picture of at most {max_pixels} pixels"
                )
            decoded = image.convert(mode)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
        name = "bytes" if isinstance(source, bytes) else str(source)
        raise InvalidRequest(field, name, f"{allowed} ({err})") from err
    return InputPicture.from_image(decoded)
