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
    variation: tuple[int, float] | None = None,
) -> torch.Tensor:
    """Gaussian latents (B, C, H/f, W/f): each image's own draw, in its generator's order.

    The same draw as diffusers' ``randn_tensor`` with a list of CPU generators, so seeds match
    diffusers' pipelines. With a ``variation`` (seed, strength), image i's draw is slerped
    toward a draw from a fresh generator seeded seed + i, as A1111's variation seeds do.
    """
    draws = [torch.randn((1, *shape), generator=g, device="cpu", dtype=dtype) for g in generators]
    if variation is not None:
        seed, strength = variation
        others = image_generators(seed, len(draws))
        draws = [
            slerp(strength, d[0].float(), torch.randn(shape, generator=g, dtype=dtype).float())
            .to(dtype)
            .unsqueeze(0)
            for d, g in zip(draws, others, strict=True)
        ]
    return torch.cat(draws).to(device)


def slerp(strength: float, low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
    """``strength`` of the way from noise ``low`` to ``high`` (C, h, w), along great circles of
    their columns, as A1111's ``slerp`` (norms over dim 1, its plain mix for near-parallel noise
    included) so that a variation seed varies a picture as it does in A1111.

    A column whose two vectors are (anti)parallel has no great circle (sin(omega) = 0: A1111's
    formula divides by it); it is mixed linearly instead. Only latents one row high (pictures
    of 8 pixels; A1111's are 64 at least) have such columns."""
    low_norm = low / torch.norm(low, dim=1, keepdim=True)
    high_norm = high / torch.norm(high, dim=1, keepdim=True)
    dot = (low_norm * high_norm).sum(1)  # (C, w)
    if dot.mean() > 0.9995:
        return low * strength + high * (1 - strength)
    omega = torch.acos(dot.clamp(-1.0, 1.0))
    sin = torch.sin(omega)
    degenerate = (sin.abs() < 1e-6).unsqueeze(1)  # (C, 1, w)
    sin = torch.where(sin.abs() < 1e-6, torch.ones_like(sin), sin)
    arc = (torch.sin((1.0 - strength) * omega) / sin).unsqueeze(1) * low + (
        torch.sin(strength * omega) / sin
    ).unsqueeze(1) * high
    return torch.where(degenerate, low * (1 - strength) + high * strength, arc)
