"""txt2img: prompt -> embeddings, seeded noise -> denoising loop -> VAE decode."""

from __future__ import annotations

from functools import partial

import torch

from sdgen.models.loaded import LoadedModel
from sdgen.params import GenerationRequest
from sdgen.pipelines.hires_pass import (
    counted_steps,
    hires_scheduler,
    second_pass_prompts,
    start_hires_pass,
)
from sdgen.pipelines.init_images import image_noise
from sdgen.pipelines.stages import (
    GenerationResult,
    PreparedRequest,
    lora_set,
    new_scheduler,
    resolve_request,
    run_alone,
    schedule_steps,
    text_conditioning,
)
from sdgen.sampling.loop import DenoisingState, StepCallback, prepare_run
from sdgen.sampling.noise import image_generators


@torch.inference_mode()  # not no_grad: less per-operator bookkeeping, ~3% on the CPU
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
    # 4. Denoise, 5. decode.
    return run_alone(model, start_txt2img(model, request, callback))


def start_txt2img(
    model: LoadedModel, request: GenerationRequest, callback: StepCallback | None = None
) -> PreparedRequest:
    """Steps 1-3 of txt2img: the request resolved and its denoising set up (under inference
    mode, as the caller runs it)."""
    request = resolve_request(model, request)
    # 1. A fresh scheduler from the model's own config, on the model's device.
    scheduler = new_scheduler(model, request)
    # 2. Text conditioning: [negative; prompt] when guiding, in image order (changing between
    # steps where a prompt's schedule says so).
    steps_read = schedule_steps(scheduler, request.steps)
    embeddings = text_conditioning(model, request, steps_read)  # 2B or B rows (L, D)
    # 3. Seeded noise, one CPU generator per image, scaled to the scheduler's first sigma.
    generators = image_generators(request.seed, request.total_images)
    latents = noise_latents(model, request, generators, scheduler)  # (B, C, H/f, W/f)
    run = prepare_run(
        scheduler,
        guidance_scale=request.guidance_scale,
        generators=generators,
        eta=request.eta,
    )
    loras = lora_set(model, request)  # what the UNet calls need merged, as the text encoder
    if request.hires is None:
        state = DenoisingState(
            run, latents, embeddings, callback, loras=loras, tiling=request.tiling
        )
        return PreparedRequest(request, state)
    # The hires fix: a second pass at the larger size, its steps counted after these, with
    # its own prompts' embeddings (and LoRAs) where it has some. Checked and encoded now,
    # before any step.
    scheduler_2, _, second, _ = hires_scheduler(model, request)
    second_prompts = second_pass_prompts(request)
    embeddings_2, loras_2 = embeddings, loras
    # a prompt's schedule goes on in the pass, on the timeline after the first pass's steps
    timeline = (schedule_steps(scheduler_2, second), steps_read)
    if second_prompts is not None:
        loras_2 = lora_set(model, second_prompts, "hires.prompt")  # first: names the field
        embeddings_2 = text_conditioning(model, second_prompts, *timeline)
    elif request.emphasis != "off" and any("[" in t for _, t in request.named_texts()):
        embeddings_2 = text_conditioning(model, request, *timeline)  # an edit may fall in it
    total = request.steps + second
    state = DenoisingState(
        run,
        latents,
        embeddings,
        counted_steps(callback, 0, total),
        loras=loras,
        tiling=request.tiling,
    )
    then = partial(
        start_hires_pass,
        model,
        request,
        embeddings=embeddings_2,
        generators=generators,
        callback=counted_steps(callback, request.steps, total),
        loras=loras_2,
    )
    return PreparedRequest(request, state, next_pass=then)


def noise_latents(
    model: LoadedModel, request: GenerationRequest, generators: list[torch.Generator], scheduler
) -> torch.Tensor:
    """txt2img's starting latents (B, C, H/f, W/f): each image's noise, at the first sigma."""
    return image_noise(model, request, generators) * scheduler.init_noise_sigma
