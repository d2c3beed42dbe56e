"""Classifier-free guidance."""

from __future__ import annotations

import torch


def uses_guidance(guidance_scale: float) -> bool:
    """A scale of 1 or less is plain conditional sampling: no unconditional pass (as diffusers)."""
    return guidance_scale > 1.0


def guide(noise_pred: torch.Tensor, guidance_scale: float) -> torch.Tensor:
    """(2B, ...) predictions [uncond; text] from one batched UNet call -> (B, ...) guided."""
    noise_uncond, noise_text = noise_pred.chunk(2)
    return noise_uncond + guidance_scale * (noise_text - noise_uncond)
