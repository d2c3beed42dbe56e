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
    resize_from: tuple[int, int] | None = None,
) -> torch.Tensor:
    """Gaussian latents (B, C, H/f, W/f): each image's own draw, in its generator's order.

    The same draw as diffusers' ``randn_tensor`` with a list of CPU generators, so seeds match
    diffusers' pipelines. With a ``variation`` (seed, strength), image i's draw is slerped
    toward a draw from a fresh generator seeded seed + i, as A1111's variation seeds do.

    ``resize_from`` (h, w) is A1111's seed resize: image i's seed draws its noise at that
    latent size from a fresh generator (varied at that size), and the middle of it replaces
    the middle of its own draw (cropped where it is larger), as A1111's ``ImageRNG`` does; the
    image's generator has still drawn its full-size noise, so its later draws are unchanged.
    """
    draws = [torch.randn((1, *shape), generator=g, device="cpu", dtype=dtype) for g in generators]
    source_shape = shape if resize_from is None else (shape[0], *resize_from)
    if resize_from is not None:
        sources = [
            torch.randn(source_shape, generator=_fresh(g), dtype=dtype).unsqueeze(0)
            for g in generators
        ]
    else:
        sources = draws
    if variation is not None:
        seed, strength = variation
        others = image_generators(seed, len(draws))
        sources = [
            slerp(
                strength, d[0].float(), torch.randn(source_shape, generator=g, dtype=dtype).float()
            )
            .to(dtype)
            .unsqueeze(0)
            for d, g in zip(sources, others, strict=True)
        ]
    if resize_from is not None:
        sources = [_pasted(d, s) for d, s in zip(draws, sources, strict=True)]
    return torch.cat(sources).to(device)


def _fresh(generator: torch.Generator) -> torch.Generator:
    """A new CPU generator seeded as ``generator`` was."""
    return torch.Generator("cpu").manual_seed(generator.initial_seed())


def _pasted(target: torch.Tensor, source: torch.Tensor) -> torch.Tensor:
    """``target`` (1, C, H, W) with the middle of ``source`` (1, C, h, w) over its middle:
    A1111's arithmetic (its ``ImageRNG.first``), offsets floored toward the top left."""
    height, width = target.shape[2:]
    dx, dy = (width - source.shape[3]) // 2, (height - source.shape[2]) // 2
    w = source.shape[3] if dx >= 0 else source.shape[3] + 2 * dx
    h = source.shape[2] if dy >= 0 else source.shape[2] + 2 * dy
    tx, ty, sx, sy = max(dx, 0), max(dy, 0), max(-dx, 0), max(-dy, 0)
    pasted = target.clone()
    pasted[:, :, ty : ty + h, tx : tx + w] = source[:, :, sy : sy + h, sx : sx + w]
    return pasted


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
