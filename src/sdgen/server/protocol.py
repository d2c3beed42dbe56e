"""The native API's schemas (``/v1``): pydantic at the HTTP edge, converted to the one request
type, ``GenerationRequest``, which does the validation. Defaults are read from it, never copied.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from sdgen.errors import InvalidRequest
from sdgen.hires import HIRES_UPSCALERS, HiresFix
from sdgen.params import MASKED_CONTENTS, RESIZE_MODES, GenerationRequest

from .pictures import decode_picture
from .store import STATUSES, JobRecord

Status = Literal[STATUSES]  # the store's statuses, one list

_DEFAULTS = {f.name: f.default for f in dataclasses.fields(GenerationRequest)}
_HIRES = {f.name: f.default for f in dataclasses.fields(HiresFix)}
# Fields that hold an object of their own: a 422 names the field inside it ("hires.scale").
NESTED_FIELDS = ("hires",)


class HiresSettings(BaseModel):
    """The hires fix of a txt2img job (``sdgen.hires.HiresFix``): a second pass at a larger
    size."""

    model_config = ConfigDict(extra="forbid", strict=True)

    scale: float = Field(_HIRES["scale"], description="the larger size: this times the size")
    width: int | None = Field(None, description="or this width (and height: cover and crop)")
    height: int | None = Field(None, description="or this height")
    steps: int | None = Field(None, description="steps the second pass runs; null: steps")
    strength: float = Field(_HIRES["strength"], description="how much is noised again, (0, 1]")
    upscaler: str = Field(_HIRES["upscaler"], description=", ".join(HIRES_UPSCALERS))
    sampler: str | None = Field(None, description="the second pass's; null: the job's")
    prompt: str | None = Field(None, description="the second pass's; null: the job's")
    negative_prompt: str | None = Field(None, description="the second pass's; null: the job's")


class JobCreate(BaseModel):
    """A txt2img, img2img (``init_image``) or inpainting (``init_image`` and ``mask``) job."""

    # strict: JSON types as documented (true is not 1, "5" is not 5), as the 422s say
    model_config = ConfigDict(extra="forbid", strict=True)

    prompt: str | list[str] = Field("", description="an empty prompt is unconditional")
    negative_prompt: str | list[str] = _DEFAULTS["negative_prompt"]
    model: str | None = Field(None, description="one of GET /v1/models; default: the first")
    num_images: int = _DEFAULTS["num_images"]
    steps: int = _DEFAULTS["steps"]
    guidance_scale: float = _DEFAULTS["guidance_scale"]
    sampler: str | None = Field(None, description="GET /v1/samplers; default: the model's own")
    width: int | None = Field(None, description="default: the model's (img2img: the picture's)")
    height: int | None = Field(None, description="default: the model's (img2img: the picture's)")
    seed: int | None = Field(None, description="seed of the first picture; null: random")
    variation_seed: int | None = Field(
        None,
        description="A1111's variation seed of the first picture, with a variation_strength "
        "above 0; null: random",
    )
    variation_strength: float = Field(
        _DEFAULTS["variation_strength"],
        description="how far each picture's noise goes toward its variation seed's, 0..1",
    )
    seed_resize_from: list[int] | None = Field(
        None,
        description="A1111's resize seed from: [width, height] whose noise each picture keeps "
        "in its middle (a seed's composition at another size); null: none",
    )
    tiling: bool = Field(
        False, description="pictures that tile seamlessly (every convolution pads circularly)"
    )
    init_image: str | None = Field(None, description="base64 picture: makes the job img2img")
    mask: str | None = Field(None, description="base64 picture, white = repaint: inpainting")
    strength: float | None = Field(
        None, description="default: 0.8 for img2img, 1.0 for inpainting (diffusers' defaults)"
    )
    resize: bool = _DEFAULTS["resize"]
    resize_mode: str = Field(
        _DEFAULTS["resize_mode"],
        description=f"with resize: {', '.join(RESIZE_MODES)} (stretched, centre-cropped, or "
        "fitted and filled from the edges)",
    )
    eta: float = Field(_DEFAULTS["eta"], description="DDIM's eta, 0..1 (0: deterministic)")
    emphasis: str = Field(
        _DEFAULTS["emphasis"],
        description="A1111's prompt syntax ((words:1.2), [from:to:when], [a|b], a AND b): off "
        "(plain text, as diffusers), original (A1111's), no_norm, none (A1111's None: "
        "brackets are text, edits and AND read)",
    )
    long_prompt: str = Field(
        _DEFAULTS["long_prompt"],
        description="a prompt past 75 tokens: truncate (its first 75, as diffusers) or chunk "
        "(75-token chunks, as A1111; BREAK starts one when emphasis is on)",
    )
    clip_skip: int = Field(
        _DEFAULTS["clip_skip"],
        description="A1111's clip skip: the text encoder's layer from the end the prompts are "
        "read from (1: its last)",
    )
    # Inpainting's mask processing (A1111's); each needs a mask.
    mask_blur: int = Field(
        _DEFAULTS["mask_blur"], description="inpainting: blur the mask's edge by this many pixels"
    )
    padding_mask_crop: int | None = Field(
        _DEFAULTS["padding_mask_crop"],
        description="inpainting: repaint only the mask's bounding box grown by this many pixels, "
        "at width x height, and paste it back (A1111's Only masked); null: the whole picture",
    )
    masked_content: str = Field(
        _DEFAULTS["masked_content"],
        description=f"inpainting: what the masked part starts from: {', '.join(MASKED_CONTENTS)}",
    )
    overlay: bool = Field(
        _DEFAULTS["overlay"],
        description="inpainting: paste the init picture back where the mask keeps it",
    )
    hires: HiresSettings | None = Field(
        None, description="txt2img: A1111's hires fix, a second pass at a larger size"
    )

    def to_request(self, max_pixels: int) -> GenerationRequest:
        """The GenerationRequest (validated there); pictures decoded with a pixel bound."""
        hires = self.hires
        if hires and "scale" in hires.model_fields_set and (hires.width or hires.height):
            raise InvalidRequest("hires.scale", hires.scale, "none with a width or height")
        fields = self.model_dump(exclude={"init_image", "mask"})
        if self.init_image is not None:
            fields["init_image"] = decode_picture(
                self.init_image, "init_image", mode="RGB", max_pixels=max_pixels
            )
        if self.mask is not None:
            fields["mask"] = decode_picture(self.mask, "mask", mode="L", max_pixels=max_pixels)
        return GenerationRequest(**fields)


class ErrorInfo(BaseModel):
    kind: str  # invalid_request, out_of_memory, model_load, internal, interrupted, ...
    field: str | None = None
    message: str


class ErrorResponse(BaseModel):
    error: ErrorInfo
    detail: str  # the message again, where FastAPI clients look for it


class ProgressInfo(BaseModel):
    step: int
    total: int
    fraction: float  # 0..1
    preview: str | None = None  # base64 PNG of the latest preview, while running


class ImageInfo(BaseModel):
    id: str
    url: str
    seed: int
    width: int
    height: int
    parameters: str  # A1111's infotext, also in the PNG's "parameters" chunk


class JobInfo(BaseModel):
    id: str
    status: Status
    api: str  # which API made it: v1 or a1111
    created_at: float
    started_at: float | None
    finished_at: float | None
    queue_position: int | None  # 1 = next to run; only while queued
    progress: ProgressInfo
    error: ErrorInfo | None
    warnings: list[str]  # what runs but not as asked, e.g. "prompt: 93 tokens, truncated to 77"
    request: dict[str, Any]  # the request as it runs: seed, size and sampler resolved
    results: list[ImageInfo]
    events_url: str


class JobList(BaseModel):
    jobs: list[JobInfo]
    total: int
    limit: int
    offset: int
    next_offset: int | None


class ModelInfo(BaseModel):
    name: str
    default: bool
    loaded_on: list[str]
    # the textual inversions prompts can name (serve --embeddings), once the model is loaded
    embeddings: list[str] = Field(default_factory=list)
    # the LoRAs prompts can name as <lora:name:weight> (serve --lora-dir), once it is loaded
    loras: list[str] = Field(default_factory=list)


class SamplerInfo(BaseModel):
    name: str
    a1111_name: str
    schedule_type: str | None
    scheduler_class: str


def image_url(image_id: str) -> str:
    return f"/v1/images/{image_id}"


def job_info(
    record: JobRecord,
    *,
    step: int = 0,
    total: int = 0,
    preview: str | None = None,
    queue_position: int | None = None,
) -> JobInfo:
    """The API's view of a stored job, with the live progress of a running one."""
    if record.status == "succeeded":
        total = total or _steps(record.request)
        step = total
    fraction = 1.0 if record.status == "succeeded" else (step / total if total else 0.0)
    return JobInfo(
        id=record.id,
        status=record.status,
        api=record.origin,
        created_at=record.created_at,
        started_at=record.started_at,
        finished_at=record.finished_at,
        queue_position=queue_position,
        progress=ProgressInfo(step=step, total=total, fraction=fraction, preview=preview),
        error=ErrorInfo(**record.error) if record.error else None,
        warnings=record.warnings,
        request=record.request,
        results=[
            ImageInfo(
                id=image.id,
                url=image_url(image.id),
                seed=image.seed,
                width=image.width,
                height=image.height,
                parameters=image.parameters,
            )
            for image in record.images
        ],
        events_url=f"/v1/jobs/{record.id}/events",
    )


def _steps(request: dict) -> int:
    """The steps a stored request runs, as its progress counts them: img2img's and inpainting's
    that its strength leaves (``int(steps * strength)``), the hires fix's after the first
    pass's."""
    steps = request.get("steps", 0)
    if request.get("init_image") and isinstance(request.get("strength"), int | float):
        return min(int(steps * request["strength"]), steps)
    hires = request.get("hires")
    return steps + ((hires.get("steps") or steps) if isinstance(hires, dict) else 0)
