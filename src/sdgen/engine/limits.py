"""What a server accepts, and the checks a request passes before it is queued.

``preflight`` runs the pipelines' own checks (size against the model's latent factor, init picture
and mask sizes, strength x steps) on the CPU before a job is accepted, so a request that would
fail is refused at once with the field named, and never takes a place in the queue or the GPU.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from sdgen.errors import InvalidRequest
from sdgen.params import GenerationRequest

if TYPE_CHECKING:  # the limits themselves stay importable without torch (sdgen serve's flags)
    from sdgen.models.loaded import LoadedModel


@dataclass(frozen=True)
class Limits:
    """Server-wide bounds on one request; each is configurable on ``sdgen serve``."""

    max_steps: int = 150  # A1111's UI allows 150
    max_images: int = 16  # pictures in one request (A1111: batch_size x n_iter)
    max_pixels: int = 2048 * 2048  # pixels of one output picture (A1111's largest slider size)
    max_prompt_chars: int = 20_000  # per prompt; the text encoder reads 77 tokens anyway

    def check_counts(self, steps: object, images: object, images_field: str = "num_images") -> None:
        """Steps and pictures against this server's bounds, before a request is built from them
        (the request's own checks would state the library's wider bounds)."""
        for field, value, most in (
            ("steps", steps, self.max_steps),
            (images_field, images, self.max_images),
        ):
            whole = isinstance(value, int) and not isinstance(value, bool)
            if whole and not 1 <= value <= most:
                raise InvalidRequest(field, value, f"a whole number from 1 to {most}")

    def check(self, request: GenerationRequest, size_field: str = "width") -> None:
        """Refuse what is over the limits, by field; ``size_field`` names where the size came
        from (``init_image`` when the request gave none and the picture's was taken)."""
        for field, texts in (
            ("prompt", request.prompts),
            ("negative_prompt", request.negative_prompts),
        ):
            for text in texts:
                if len(text) > self.max_prompt_chars:
                    raise InvalidRequest(
                        field, f"{len(text)} characters", f"at most {self.max_prompt_chars}"
                    )
        for field, text in request.named_texts():
            if field.startswith("hires.") and len(text) > self.max_prompt_chars:
                raise InvalidRequest(
                    field, f"{len(text)} characters", f"at most {self.max_prompt_chars}"
                )
        if request.steps > self.max_steps:
            raise InvalidRequest(
                "steps", request.steps, f"a whole number from 1 to {self.max_steps}"
            )
        if request.total_images > self.max_images:
            raise InvalidRequest(
                "num_images",
                request.total_images,
                f"at most {self.max_images} pictures in one request (prompts x num_images)",
            )
        width, height = request.width or 0, request.height or 0
        if width * height > self.max_pixels:
            raise InvalidRequest(
                size_field, f"{width}x{height}", f"a size of at most {self.max_pixels} pixels"
            )

    def check_hires(self, request: GenerationRequest, factor: int) -> None:
        """The hires fix's second pass against the same bounds: its pictures' size, its steps."""
        hires = request.hires
        if hires.steps is not None and hires.steps > self.max_steps:
            raise InvalidRequest(
                "hires.steps", hires.steps, f"a whole number from 1 to {self.max_steps}"
            )
        # The size the pictures are upscaled to before the middle is cropped: it is what is
        # computed (and, with a picture upscaler, encoded), so it is what must fit.
        (width, height), size = hires.sizes(request.width, request.height, factor)
        if width * height > self.max_pixels:
            name = next((n for n in ("width", "height") if getattr(hires, n) is not None), "scale")
            cropped = "" if (width, height) == size else f", cropped to {size[0]}x{size[1]}"
            raise InvalidRequest(
                f"hires.{name}",
                getattr(hires, name),
                f"a second pass of at most {self.max_pixels} pixels, not {width}x{height}{cropped}",
            )


def preflight(model: LoadedModel, request: GenerationRequest, limits: Limits) -> GenerationRequest:
    """``request`` resolved against ``model`` (seed, size, sampler) after every cheap check.

    Raises InvalidRequest naming the field. The resolved request is what runs, so a job that is
    re-queued after a restart makes the same pictures (its random seed is drawn here, once).
    """
    # Imported here: the pipelines pull in diffusers; the engine's callers may not need them.
    from sdgen.conditioning.request_texts import check_prompt_lengths
    from sdgen.pipelines.hires_pass import hires_scheduler
    from sdgen.pipelines.init_images import sized_picture, strength_timesteps
    from sdgen.pipelines.masking import check_inpaint_pictures
    from sdgen.pipelines.stages import (
        inversions_of,
        named_loras,
        new_scheduler,
        resolve_request,
    )

    limits.check(request)
    resolved = resolve_request(model, request)
    from_picture = request.width is None and request.init_image is not None
    from_picture = from_picture and request.padding_mask_crop is None  # else the model's size
    # the size that comes from the model or the init picture
    limits.check(resolved, size_field="init_image" if from_picture else "width")
    scheduler = new_scheduler(model, resolved)  # steps the sampler can take; eta DDIM's only
    # chunks, when prompts are read in chunks
    check_prompt_lengths(model.tokenizer, resolved, inversions_of(model))
    named_loras(model, resolved)  # each named LoRA read, or refused naming its prompt
    if resolved.init_image is not None:
        if resolved.mask is not None:  # sizes, and a mask to crop to
            check_inpaint_pictures(resolved)
        else:  # the init picture must have the output size, or resize
            sized_picture(resolved.init_image.image, resolved, "init_image", check_only=True)
        if resolved.padding_mask_crop is not None:  # the pictures have the init picture's size
            width, height = resolved.init_image.size
            if width * height > limits.max_pixels:
                raise InvalidRequest(
                    "init_image",
                    f"{width}x{height}",
                    f"a picture of at most {limits.max_pixels} pixels: padding_mask_crop "
                    "pastes the repainted area back into it",
                )
        strength_timesteps(scheduler, resolved.steps, resolved.strength)
    if resolved.hires is not None:
        limits.check_hires(resolved, model.vae_scale_factor)
        hires_scheduler(model, resolved)  # steps its sampler can take
    return resolved
