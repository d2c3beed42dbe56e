"""Seeds and initial noise: image i owns a CPU generator seeded ``seed + i``.

The noise is drawn on the CPU for every device, so a seed gives the same picture on a laptop and
on a GPU server, and image by image, so a picture never depends on the batch it was in.
"""

from __future__ import annotations

import torch


def image_generators(seed: int, count: int) -> list[torch.Generator]:
    """One CPU generator per image, seeded ``seed + i``; it also feeds the sampler's draws."""
    return [torch.Generator("cpu").manual_seed(seed + i) for i in range(count)]


def initial_latents(
    generators: list[torch.Generator],
    shape: tuple[int, int, int],
    *,
    device: torch.device,
    dtype: torch.dtype,
) -> torch.Tensor:
    """Gaussian latents (B, C, H/f, W/f): each image's own draw, in its generator's order.

    The same draw as diffusers' ``randn_tensor`` with a list of CPU generators, so seeds match
    diffusers' pipelines.
    """
    draws = [torch.randn((1, *shape), generator=g, device="cpu", dtype=dtype) for g in generators]
    return torch.cat(draws).to(device)
