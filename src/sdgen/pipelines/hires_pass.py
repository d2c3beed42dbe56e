"""The hires fix's second pass (``sdgen.hires.HiresFix``): txt2img's latents upscaled, then
denoised again as img2img at the larger size.

It is diffusers' img2img pipeline run on txt2img's upscaled latents with the same generators
(latents as ``image``, A1111's latent upscalers), or on its decoded pictures resized by PIL
(A1111's Lanczos and Nearest): each image's generator (seed + i) goes on drawing, after the
first pass's draws, the VAE sample of its resized picture, the noise, then the sampler's draws.
The steps are counted as A1111 counts them: the pass runs ``steps`` steps, the last ones of a
schedule of ``int(steps / strength)`` (``HiresFix.pass_steps``).
"""

from __future__ import annotations

import dataclasses
import inspect

import torch
import torch.nn.functional as F
from PIL import Image

from sdgen.errors import InvalidRequest
from sdgen.media.images import decode_latents
from sdgen.models.loaded import LoadedModel
from sdgen.models.lora_weights import LoraSet
from sdgen.params import GenerationRequest
from sdgen.pipelines.init_images import (
    final_timesteps,
    latent_samples,
    noised_latents,
    pixels_tensor,
)
from sdgen.pipelines.stages import new_scheduler, request_vae
from sdgen.sampling.embeddings import TextEmbeddings
from sdgen.sampling.loop import DenoisingState, Step, StepCallback, prepare_run

# HIRES_UPSCALERS that interpolate the latents -> torch's (mode, antialias), A1111's table
LATENT_MODES = {
    "latent": ("bilinear", False),
    "latent_antialiased": ("bilinear", True),
    "latent_bicubic": ("bicubic", False),
    "latent_bicubic_antialiased": ("bicubic", True),
    "latent_nearest": ("nearest", False),
    "latent_nearest_exact": ("nearest-exact", False),
}
# the others resize the decoded pictures -> PIL's filter
PICTURE_FILTERS = {"lanczos": Image.Resampling.LANCZOS, "nearest": Image.Resampling.NEAREST}


def hires_scheduler(model: LoadedModel, request: GenerationRequest):
    """The second pass's fresh scheduler, the timesteps it runs (the last ``run`` steps of its
    schedule), ``run`` and its eta (the request's DDIM eta where its sampler has one, else 0,
    as A1111's eta_ddim); errors name the hires fields."""
    hires = request.hires
    run, schedule = hires.pass_steps(request.steps)
    trained = model.scheduler_config.get("num_train_timesteps", 1000)
    if schedule > trained:  # a schedule of more steps than the model has timesteps
        raise InvalidRequest(
            "hires.strength",
            hires.strength,
            f"at least {run / trained:.4g}: the second pass runs the last {run} steps of "
            f"int({run} / strength) steps, at most this model's {trained} timesteps",
        )
    sampler = hires.sampler or request.sampler
    second = request.replace(sampler=sampler, steps=schedule, eta=0.0)
    try:
        scheduler = new_scheduler(model, second)
    except InvalidRequest as err:
        if err.field != "steps":
            raise
        raise InvalidRequest(
            "hires.steps",
            run,
            f"more steps: the second pass's schedule of {schedule} steps is too short for "
            f"{sampler or 'this model’s sampler'} ({err.allowed})",
        ) from None
    eta = request.eta if "eta" in inspect.signature(scheduler.step).parameters else 0.0
    return scheduler, final_timesteps(scheduler, schedule, run), run, eta


def second_pass_prompts(request: GenerationRequest) -> GenerationRequest | None:
    """The request whose prompts the second pass reads where the hires fix gives its own (one
    prompt for every picture, as A1111's "Hires prompt"), else None: the first pass's."""
    hires = request.hires
    if hires.prompt is None and hires.negative_prompt is None:
        return None
    count = len(request.prompts)
    prompt = request.prompt if hires.prompt is None else (hires.prompt,) * count
    negative = hires.negative_prompt
    negative = request.negative_prompt if negative is None else (negative,) * count
    return request.replace(prompt=prompt, negative_prompt=negative, hires=None)


def start_hires_pass(
    model: LoadedModel,
    request: GenerationRequest,
    latents: torch.Tensor,
    embeddings: TextEmbeddings,
    generators: list[torch.Generator],
    callback: StepCallback | None,
    loras: LoraSet = (),
) -> DenoisingState:
    """The second pass of ``request`` set up from the first pass's final ``latents``
    (B, C, h, w): upscaled, noised ``hires.strength`` of the way, with the second pass's text
    ``embeddings`` (the first pass's, unless the hires fix has prompts of its own) and the
    images' ``generators``, which go on drawing, and the ``loras`` those prompts name."""
    # 1. A fresh scheduler (the hires sampler's, else the request's); the last steps run.
    scheduler, timesteps, steps, eta = hires_scheduler(model, request)
    # 2. The latents at the larger size (B, C, H/f, W/f).
    init_latents = upscaled_latents(model, request, latents, generators)
    # 3. Noised to the first step that runs, from each image's own generator (varied as A1111
    # varies its second pass's noise).
    noised = noised_latents(
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
        eta=eta,
    )
    return DenoisingState(run, noised, embeddings, callback, loras=loras, tiling=request.tiling)


def upscaled_latents(
    model: LoadedModel,
    request: GenerationRequest,
    latents: torch.Tensor,
    generators: list[torch.Generator],
) -> torch.Tensor:
    """The first pass's ``latents`` (B, C, h, w) at the second pass's size (B, C, H/f, W/f):
    interpolated, or decoded, resized and encoded again (one VAE sample per image, from its
    generator); scaled to cover the size, then its middle cropped, as A1111 does."""
    factor = model.vae_scale_factor
    hires = request.hires
    cover, size = hires.sizes(request.width, request.height, factor)
    if hires.upscaler in LATENT_MODES:
        mode, antialias = LATENT_MODES[hires.upscaler]
        upscaled = F.interpolate(  # in float32: bicubic and antialias take no fp16 on the CPU
            latents.to(torch.float32),
            size=(cover[1] // factor, cover[0] // factor),
            mode=mode,
            antialias=antialias,
        ).to(latents.dtype)
    else:
        resample = PICTURE_FILTERS[hires.upscaler]
        vae = request_vae(model, request)
        pictures = [p.resize(cover, resample=resample) for p in decode_latents(vae, latents)]
        upscaled = torch.cat(
            [
                latent_samples(vae, pixels_tensor(p).to(model.dtype), [g])
                for p, g in zip(pictures, generators, strict=True)
            ]
        )
    return _crop_middle(upscaled, cover, size, factor)


def _crop_middle(latents: torch.Tensor, cover, size, factor: int) -> torch.Tensor:
    """The middle ``size`` of latents upscaled to ``cover``, as A1111 crops its hires latents
    (the odd row or column off the far side)."""
    crop_x, crop_y = (cover[0] - size[0]) // factor, (cover[1] - size[1]) // factor
    height, width = latents.shape[2:]
    return latents[
        :, :, crop_y // 2 : height - (crop_y + 1) // 2, crop_x // 2 : width - (crop_x + 1) // 2
    ]


def counted_steps(callback: StepCallback | None, offset: int, total: int) -> StepCallback | None:
    """``callback`` with its steps counted over both passes: this pass's steps after ``offset``
    steps, of ``total``, so progress, stopping and videos see one run."""
    if callback is None:
        return None

    def report(step: Step) -> None:
        callback(dataclasses.replace(step, index=step.index + offset, total=total))

    return report
