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


# A1111's AND (sdgen.conditioning.composition): the weight of each part of each image's prompt,
# weights[k][i] for part k of image i; 0 where image i's prompt has fewer parts than K.
PartWeights = tuple[tuple[float, ...], ...]


def compose(noise_pred: torch.Tensor, weights: PartWeights, guidance_scale: float) -> torch.Tensor:
    """((K + 1)B, ...) predictions [uncond; part 1; ...; part K] -> (B, ...) guided, each
    part's pull added in turn with its weight: A1111's ``combine_denoised``. A scale of 1 or
    less is taken as 1 (``uses_guidance``): the parts' weighted sum without extra guidance."""
    scale = guidance_scale if uses_guidance(guidance_scale) else 1.0
    noise_uncond, *parts = noise_pred.chunk(len(weights) + 1)
    guided = noise_uncond.clone()
    for noise_part, part_weights in zip(parts, weights, strict=True):
        if len(set(part_weights)) == 1:  # one prompt's images: one weight
            guided += (noise_part - noise_uncond) * (part_weights[0] * scale)
            continue
        for i, weight in enumerate(part_weights):
            if weight:  # 0 pads a prompt with fewer parts
                guided[i] += (noise_part[i] - noise_uncond[i]) * (weight * scale)
    return guided
