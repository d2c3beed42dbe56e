"""Inpainting: repaint the masked part of the init picture.

Two kinds of UNet, as diffusers' StableDiffusionInpaintPipeline handles them:

- an inpainting checkpoint (9 input channels) sees the mask and the masked picture's latents
  beside the noisy latents at every step;
- an ordinary checkpoint (4 channels) is blended: after every step the unmasked part is set back
  to the init picture's latents noised to the next step, so it keeps the init picture's content.
"""

from __future__ import annotations

import torch

from sdgen.errors import InvalidRequest
from sdgen.models.loaded import LoadedModel
from sdgen.params import GenerationRequest
from sdgen.pipelines.init_images import (
    image_noise,
    latent_samples,
    mask_tensor,
    pixels_tensor,
    strength_timesteps,
)
from sdgen.pipelines.masking import inpaint_pictures
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
from sdgen.sampling.noise import image_generators, initial_latents

INPAINTING_CHANNELS = 9  # latents (4) + mask (1) + masked picture's latents (4)


@torch.inference_mode()
def inpaint(
    model: LoadedModel, request: GenerationRequest, callback: StepCallback | None = None
) -> GenerationResult:
    """Repaint where ``request.mask`` is white, following the prompt.

    Image i's generator (seed + i) draws, in diffusers' order: the init picture's latent sample
    (unless strength is 1 with an inpainting UNet), the noise, the masked picture's latent
    sample, then the sampler's draws. A single picture equals diffusers'
    StableDiffusionInpaintPipeline's (with ``padding_mask_crop`` too, given the mask blurred as
    ``mask_blur`` does); in a batch each picture still depends only on its own seed (diffusers
    draws the shared init latents of a batch from the first generator only). The other mask
    options are A1111's (``sdgen.pipelines.masking``); "latent_noise" draws its latents last.

    Args:
        model: from ``load_model``; an inpainting (9-channel) or ordinary (4-channel) UNet.
        request: with ``init_image``, ``mask`` and ``strength``.
        callback: called after every denoising step that runs.
    Returns:
        The pictures and the fully resolved request.
    """
    # 4. Denoise, 5. decode.
    return run_alone(model, start_inpaint(model, request, callback))


def start_inpaint(
    model: LoadedModel, request: GenerationRequest, callback: StepCallback | None = None
) -> PreparedRequest:
    """Steps 1-3 of inpainting: the request resolved and its denoising set up."""
    channels = model.unet.config.in_channels
    if channels not in (model.latent_channels, INPAINTING_CHANNELS):
        raise InvalidRequest("model", model.name, "a UNet with 4 or 9 input channels to inpaint")
    inpainting_unet = channels == INPAINTING_CHANNELS
    request = resolve_request(model, request)
    # 1. Scheduler and the steps strength selects.
    scheduler = new_scheduler(model, request)
    timesteps, steps = strength_timesteps(scheduler, request.steps, request.strength)
    # 2. Text conditioning; a prompt's schedule counts from the first step that runs, over
    # the request's steps (as A1111's img2img counts it).
    steps_read = schedule_steps(scheduler, request.steps)
    embeddings = text_conditioning(model, request, steps_read)  # 2B or B rows (L, D)
    # 3. Pictures as the mask options make them (blurred, cropped, filled): init (1, 3, H, W),
    # mask (1, 1, H, W), both on the model's device and dtype.
    pictures = inpaint_pictures(request)
    pixels = pixels_tensor(pictures.picture).to(model.device, model.dtype)
    mask = mask_tensor(pictures.mask).to(model.device, model.dtype)
    generators = image_generators(request.seed, request.total_images)
    latents, extra, blend = _prepare(model, request, scheduler, timesteps, generators, pixels, mask)
    run = prepare_run(
        scheduler,
        guidance_scale=request.guidance_scale,
        generators=generators,
        timesteps=timesteps,
        steps=steps,
        eta=request.eta,
    )
    state = DenoisingState(
        run,
        latents,
        embeddings,
        callback,
        extra_channels=extra if inpainting_unet else None,
        after_step=None if inpainting_unet else blend,
        loras=lora_set(model, request),
        tiling=request.tiling,
    )
    return PreparedRequest(request, state, finish=pictures.finish)


class _Blend:
    """After-step hook of a 4-channel UNet: keep the init picture's latents outside the mask."""

    def __init__(self, scheduler, timesteps, image_latents, noise, latent_mask):
        self.scheduler, self.timesteps = scheduler, timesteps
        self.image_latents, self.noise = image_latents, noise  # (B, C, h, w) each
        self.latent_mask = latent_mask  # (B, 1, h, w): 1 = repaint

    def __call__(self, index: int, latents: torch.Tensor) -> torch.Tensor:
        known = self.image_latents
        if index < len(self.timesteps) - 1:  # noised to the level of the next step
            next_t = self.timesteps[index + 1 : index + 2]
            known = self.scheduler.add_noise(self.image_latents, self.noise, next_t)
        return (1 - self.latent_mask) * known + self.latent_mask * latents


def _prepare(model, request, scheduler, timesteps, generators, pixels, mask):
    """Initial latents, the 9-channel UNet's extra channels, and the blending hook."""
    count, factor = request.total_images, model.vae_scale_factor
    inpainting_unet = model.unet.config.in_channels == INPAINTING_CHANNELS
    from_noise = request.strength == 1.0  # diffusers starts from pure noise at full strength
    vae = request_vae(model, request)
    shape = (model.latent_channels, request.height // factor, request.width // factor)
    # Each image's draws in diffusers' order: init sample, noise, masked-picture sample.
    image_latents = masked_latents = None
    if not (inpainting_unet and from_noise):
        image_latents = latent_samples(vae, pixels, generators).to(model.dtype)
    noise = image_noise(model, request, generators)  # (B, C, h, w)
    if inpainting_unet:
        masked_pixels = pixels * (mask < 0.5)
        masked_latents = latent_samples(vae, masked_pixels, generators).to(model.dtype)
    else:
        # diffusers samples the masked picture's latents for 4-channel UNets too, and ignores
        # them; the same draw, without the VAE encode, keeps later sampler draws equal to its.
        initial_latents(generators, shape, device=torch.device("cpu"), dtype=model.dtype)
    latent_mask = torch.nn.functional.interpolate(mask, size=shape[1:]).repeat(count, 1, 1, 1)
    if from_noise:
        latents = noise * scheduler.init_noise_sigma
    else:
        start = _masked_content(request, image_latents, latent_mask, generators, model)
        latents = scheduler.add_noise(start, noise, timesteps[:1].repeat(count))
    extra = None
    if inpainting_unet:
        extra = torch.cat([latent_mask, masked_latents], dim=1)  # (B, 5, h, w)
    blend = _Blend(scheduler, timesteps, image_latents, noise, latent_mask)
    return latents, extra, blend


def _masked_content(request, image_latents, latent_mask, generators, model) -> torch.Tensor:
    """The latents denoising starts from before noise: A1111's "latent noise" puts random
    latents (each picture's own draw, after diffusers') in the masked part, "latent nothing"
    zeros; "original" and "fill" (done to the picture) keep the init picture's."""
    if request.masked_content == "latent_nothing":
        return image_latents * (1 - latent_mask)
    if request.masked_content == "latent_noise":
        shape = image_latents.shape[1:]
        random = initial_latents(generators, shape, device=model.device, dtype=model.dtype)
        return image_latents * (1 - latent_mask) + random * latent_mask
    return image_latents
