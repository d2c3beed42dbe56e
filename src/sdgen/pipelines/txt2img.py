"""txt2img: prompt -> embeddings, seeded noise -> denoising loop -> VAE decode."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from PIL import Image

from sdgen.conditioning.prompts import encode_conditioning
from sdgen.media.images import decode_latents
from sdgen.models.devices import precision_name
from sdgen.models.loaded import LoadedModel
from sdgen.params import GenerationRequest, check_size
from sdgen.sampling.guidance import uses_guidance
from sdgen.sampling.loop import StepCallback, denoise
from sdgen.sampling.noise import image_generators, initial_latents
from sdgen.sampling.samplers import make_scheduler, resolve_sampler, sampler_for_config


@dataclass(frozen=True)
class GenerationResult:
    """The pictures of one request, in image order, and the request as it was run."""

    request: GenerationRequest  # every default filled in: seed, size, sampler where known
    images: list[Image.Image]

    @property
    def seeds(self) -> list[int]:
        return [self.request.seed + i for i in range(len(self.images))]

    def image_request(self, index: int) -> GenerationRequest:
        """The single-picture request that gives image ``index`` alone."""
        prompt, negative = self.request.image_prompts()[index]
        return self.request.replace(
            prompt=prompt, negative_prompt=negative, num_images=1, seed=self.seeds[index]
        )


def resolve_request(model: LoadedModel, request: GenerationRequest) -> GenerationRequest:
    """Fill in the model's defaults (native size, own sampler) and a seed; check the size."""
    own_sampler = sampler_for_config(model.scheduler_config)
    request = request.with_seed().replace(
        width=request.width or model.native_size,
        height=request.height or model.native_size,
        sampler=request.sampler or (own_sampler.name if own_sampler else None),
        model=request.model or model.name,
        precision=precision_name(model.dtype),  # "auto" resolved: the picture depends on it
    )
    check_size(request.width, request.height, model.vae_scale_factor)
    return request


@torch.no_grad()
def txt2img(
    model: LoadedModel, request: GenerationRequest, callback: StepCallback | None = None
) -> GenerationResult:
    """Generate the pictures of ``request`` with ``model``.

    Args:
        model: from ``load_model``; its device and precision are used.
        request: what to generate; defaults are filled in from the model.
        callback: called after every denoising step (progress, previews, cancellation).
    Returns:
        The pictures and the fully resolved request (with its seed).
    """
    request = resolve_request(model, request)
    # 1. A fresh scheduler from the model's own config, on the model's device.
    sampler = resolve_sampler(request.sampler) if request.sampler else None
    scheduler = make_scheduler(sampler, model.scheduler_config)
    scheduler.set_timesteps(request.steps, device=model.device)
    # 2. Text conditioning: [negative; prompt] when guiding, in image order.
    guided = uses_guidance(request.guidance_scale)
    embeddings = encode_conditioning(
        model.tokenizer,
        model.text_encoder,
        request.image_prompts(),
        guided=guided,
        device=model.device,
        dtype=model.dtype,
    )  # (2B or B, 77, D)
    # 3. Seeded noise, one CPU generator per image, scaled to the scheduler's first sigma.
    generators = image_generators(request.seed, request.total_images)
    factor = model.vae_scale_factor
    shape = (model.latent_channels, request.height // factor, request.width // factor)
    latents = initial_latents(generators, shape, device=model.device, dtype=model.dtype)
    latents = latents * scheduler.init_noise_sigma  # (B, C, H/f, W/f)
    # 4. Denoise, 5. decode.
    latents = denoise(
        model.unet,
        scheduler,
        latents,
        embeddings,
        guidance_scale=request.guidance_scale,
        generators=generators,
        callback=callback,
    )
    return GenerationResult(request=request, images=decode_latents(model.vae, latents))
