"""Latents -> pictures through the VAE, as diffusers' VaeImageProcessor does it."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image


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
