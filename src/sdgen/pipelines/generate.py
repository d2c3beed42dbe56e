"""One entry point for every kind of request: the request's mode picks the pipeline."""

from __future__ import annotations

import torch

from sdgen.models.loaded import LoadedModel
from sdgen.params import GenerationRequest
from sdgen.pipelines.img2img import img2img, start_img2img
from sdgen.pipelines.inpaint import inpaint, start_inpaint
from sdgen.pipelines.stages import GenerationResult, PreparedRequest
from sdgen.pipelines.txt2img import start_txt2img, txt2img
from sdgen.sampling.loop import StepCallback

PIPELINES = {"txt2img": txt2img, "img2img": img2img, "inpaint": inpaint}
STARTS = {"txt2img": start_txt2img, "img2img": start_img2img, "inpaint": start_inpaint}


def generate(
    model: LoadedModel, request: GenerationRequest, callback: StepCallback | None = None
) -> GenerationResult:
    """Run ``request`` with the pipeline of its mode (txt2img, img2img or inpaint).

    Args:
        model: from ``load_model``.
        request: what to generate; an init picture makes it img2img, a mask inpainting.
        callback: called after every denoising step.
    Returns:
        The pictures and the fully resolved request.
    """
    return PIPELINES[request.mode](model, request, callback)


@torch.inference_mode()
def start(
    model: LoadedModel, request: GenerationRequest, callback: StepCallback | None = None
) -> PreparedRequest:
    """``request`` resolved and set up to denoise (scheduler, conditioning, starting latents),
    by the pipeline of its mode; ``run_alone`` or the engine's batching finishes it."""
    return STARTS[request.mode](model, request, callback)
