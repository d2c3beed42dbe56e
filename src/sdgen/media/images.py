"""Pictures <-> tensors: VAE decoding as diffusers' VaeImageProcessor does it; input pictures."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from sdgen.errors import InvalidRequest
from sdgen.params import InputPicture

# Latent pixels per VAE decode call: 128x128, with SD's 8x VAE four 512x512 pictures or 256 of 64x64
DECODE_LATENT_PIXELS = 128 * 128


@torch.no_grad()
def decode_latents(
    vae: torch.nn.Module, latents: torch.Tensor, max_latent_pixels: int = DECODE_LATENT_PIXELS
) -> list[Image.Image]:
    """(B, C, H/f, W/f) latents -> B RGB pictures of H x W.

    Latents are divided by the VAE's own scaling factor (0.18215 for SD 1.x/2.x) before decoding.
    Pictures are decoded together, at most ``max_latent_pixels`` latent pixels per call (at
    least one picture): small pictures decode in one call (on the CPU a batch of 8 decodes in
    about 60% of the time of 8 calls), large ones a few at a time, so the decoder's memory stays
    bounded (diffusers decodes the whole batch at once). A picture decoded beside others equals
    it decoded alone within 1/255 (batch-size-dependent kernels), as the UNet's batches do.
    """
    scaling = vae.config.scaling_factor
    per_call = max(1, max_latent_pixels // (latents.shape[-2] * latents.shape[-1]))
    pictures = []
    for chunk in latents.split(per_call):
        decoded = vae.decode(chunk.to(vae.dtype) / scaling).sample  # (n, 3, H, W) in [-1, 1]
        pictures.extend(tensor_to_pil(decoded))
    return pictures


def tensor_to_pil(images: torch.Tensor) -> list[Image.Image]:
    """(B, 3, H, W) in [-1, 1] -> PIL pictures, rounded as diffusers rounds (x * 255, round)."""
    images = (images / 2 + 0.5).clamp(0, 1)
    array = images.cpu().permute(0, 2, 3, 1).float().numpy()
    return [Image.fromarray(a) for a in (array * 255).round().astype(np.uint8)]


MAX_INPUT_PIXELS = 8192 * 8192  # larger inputs are refused before their pixels are decoded
PICTURE_FORMATS = ("PNG", "JPEG", "WEBP")  # what the messages promise; GIF and others refused


def read_picture(
    source: Path | bytes, field: str, *, mode: str = "RGB", max_pixels: int = MAX_INPUT_PIXELS
) -> InputPicture:
    """Decode an input picture (a file's path or its bytes) for the request field ``field``.

    Anything that is not a picture, or one with more than ``max_pixels`` pixels (a decompression
    bomb), is refused by field name before its pixels are decoded. ``mode`` is "RGB" for init
    pictures and "L" for masks. Transparency is dropped, except that a mask with transparent
    pixels is its alpha channel (opaque = repaint), as A1111 reads a mask
    (``create_binary_mask``): editors and A1111 clients paint masks on a transparent layer.
    """
    allowed = "a PNG, JPEG or WebP picture"
    try:
        with Image.open(
            io.BytesIO(source) if isinstance(source, bytes) else source, formats=PICTURE_FORMATS
        ) as image:
            width, height = image.size
            if width * height > max_pixels:
                raise InvalidRequest(
                    field, f"{width}x{height}", f"a picture of at most {max_pixels} pixels"
                )
            decoded = _mask_of(image) if mode == "L" else image.convert(mode)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
        if isinstance(err, InvalidRequest):
            raise
        name = "bytes" if isinstance(source, bytes) else str(source)
        reason = str(err).split(" <_io.")[0]  # Pillow names the buffer object: not for users
        raise InvalidRequest(field, name, f"{allowed} ({reason})") from err
    return InputPicture.from_image(decoded)


def _mask_of(image: Image.Image) -> Image.Image:
    """A mask picture as L: its alpha where some of it is transparent, else its grey levels."""
    if "A" in image.getbands() or "transparency" in image.info:
        alpha = image.convert("RGBA").getchannel("A")
        if alpha.getextrema() != (255, 255):
            return alpha
    return image.convert("L")
