"""img2img: the init picture's latents, noised to the step ``strength`` selects, then denoised."""

from __future__ import annotations

import torch

from sdgen.models.loaded import LoadedModel
from sdgen.params import GenerationRequest
from sdgen.pipelines.init_images import (
    latent_samples,
    noised_latents,
    picture_tensor,
    strength_timesteps,
)
from sdgen.pipelines.stages import (
    GenerationResult,
    PreparedRequest,
    lora_set,
    new_scheduler,
    request_vae,
    resolve_request,
    run_alone,
    schedule_steps,
    text_conditioning,
)
from sdgen.sampling.loop import DenoisingState, StepCallback, prepare_run
from sdgen.sampling.noise import image_generators


@torch.inference_mode()
def img2img(
    model: LoadedModel, request: GenerationRequest, callback: StepCallback | None = None
) -> GenerationResult:
    """Generate the pictures of ``request`` starting from its ``init_image``.

    Image i's generator (seed + i) draws, in diffusers' order, its VAE latent sample of the init
    picture, then its noise, then its sampler's draws, so the pictures equal diffusers'
    StableDiffusionImg2ImgPipeline with the same generators.

    Args:
        model: from ``load_model``.
        request: with ``init_image`` and ``strength`` (0..1: how much is noised away).
        callback: called after every denoising step that runs.
    Returns:
        The pictures and the fully resolved request.
    """
    # 4. Denoise from there, 5. decode.
    return run_alone(model, start_img2img(model, request, callback))


def start_img2img(
    model: LoadedModel, request: GenerationRequest, callback: StepCallback | None = None
) -> PreparedRequest:
    """Steps 1-3 of img2img: the request resolved and its denoising set up."""
    request = resolve_request(model, request)
    # 1. A fresh scheduler; strength picks the last part of its steps.
    scheduler = new_scheduler(model, request)
    timesteps, steps = strength_timesteps(scheduler, request.steps, request.strength)
    # 2. Text conditioning; a prompt's schedule counts from the first step that runs, over
    # the request's steps (as A1111's img2img counts it).
    steps_read = schedule_steps(scheduler, request.steps)
    embeddings = text_conditioning(model, request, steps_read)  # 2B or B rows (L, D)
    # 3. The init picture's latents (B, C, H/f, W/f), noised to the first step that runs.
    generators = image_generators(request.seed, request.total_images)
    pixels = picture_tensor(request).to(model.dtype)
    init_latents = latent_samples(request_vae(model, request), pixels, generators)
    latents = noised_latents(
        scheduler,
        init_latents,
        generators,
        timesteps,
        device=model.device,
        dtype=model.dtype,
        variation=request.variation,
        resize_from=request.seed_noise_size(model.vae_scale_factor),
    )
    run = prepare_run(
        scheduler,
        guidance_scale=request.guidance_scale,
        generators=generators,
        timesteps=timesteps,
        steps=steps,
        eta=request.eta,
    )
    loras = lora_set(model, request)
    state = DenoisingState(run, latents, embeddings, callback, loras=loras, tiling=request.tiling)
    return PreparedRequest(request, state)
