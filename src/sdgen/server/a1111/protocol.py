"""AUTOMATIC1111's API schemas (v1.9/1.10 field names and defaults, shared/reference/a1111.md)
and their conversion to the one request type.

A1111 clients send every field of A1111's processing classes. Fields that do not change the
picture (saving, comments) are accepted and ignored; features sdgen does not have (the hires
fix's own checkpoint, face restoration, scripts,
sampler settings other than the defaults: Euler a's ``eta`` other than 1, ``s_churn``,
``s_noise``, ``s_tmin``, ``s_tmax``; img2img's ``initial_noise_multiplier``, ``latent_mask``)
are refused with 422 naming the field when they are switched on, rather than silently giving a
different picture.

``include_init_images`` only says whether the response echoes the input pictures.
So is a ``scheduler`` (schedule type) that sdgen does not have with the sampler asked for
(``schedule_types``), where A1111 would fall back to Automatic.

The hires fix (``enable_hr``) is sdgen's ``hires`` (converted in ``.hires``): ``hr_scale`` or
``hr_resize_x`` and ``hr_resize_y``, ``hr_second_pass_steps``, ``denoising_strength`` (0.75 when
missing, A1111's txt2img default), ``hr_upscaler`` (A1111's latent upscalers, Lanczos, Nearest and
None, which resizes with Lanczos too; no upscaler models), ``hr_sampler_name``, ``hr_scheduler``,
``hr_prompt`` and ``hr_negative_prompt``. A scale whose size is not made of multiples of 8 is
refused (A1111 rounds it down).
``subseed`` and ``subseed_strength`` are sdgen's variation seed and strength,
``seed_resize_from_w`` and ``seed_resize_from_h`` its ``seed_resize_from`` (when both are above
0, as A1111 reads them; sides not multiples of 8 are refused where A1111 rounds down);
``tiling`` is sdgen's (``sdgen.models.tiling``); a call's
``styles`` are the server's prompt styles (``.styles``), applied to its prompts.

A1111's inpainting mask processing is reproduced, defaults included: the mask's edge blurred
(``mask_blur``, or ``mask_blur_x`` and ``mask_blur_y`` when equal; 4 by default) with diffusers'
``VaeImageProcessor.blur``, PIL's Gaussian blur where A1111 uses OpenCV's (a blurred edge
differs by up to 5 levels of 255 at the default 4); "Only masked" (``inpaint_full_res``, on by
default, with ``inpaint_full_res_padding``) with diffusers' ``get_crop_region`` and
``apply_overlay``, which follow A1111's; the masked content (``inpainting_fill``): A1111's
blurred fill, the original, latent noise (drawn from each picture's own generator, not from
A1111's seeds) or latent nothing (at a denoising strength of 1 sdgen starts the masked part from
noise alone, so these are all "original" there); and the init picture pasted back outside the
mask, as A1111 always does. A mask with nothing masked under "Only masked" runs plain img2img,
as A1111 does. An unrounded latent mask (``mask_round`` false) is refused: sdgen's latent mask
is binary (the mask binarised, then sampled down as diffusers does; A1111 samples down, then
rounds).

``eta`` is read as A1111 reads it: DDIM's eta (missing: 0, A1111's ``eta_ddim`` default), the
ancestral samplers' (1 is all sdgen's Euler a has), and ignored by the other samplers.
"""

from __future__ import annotations

from typing import Any

from PIL import Image, ImageOps
from pydantic import BaseModel, ConfigDict, Field

from sdgen.errors import InvalidRequest
from sdgen.params import GenerationRequest, InputPicture
from sdgen.sampling.samplers import resolve_sampler

from ..pictures import decode_picture
from .hires import hires_settings
from .schedule_types import sampler_with_schedule
from .settings import CHANGEABLE, check_fixed_setting, clip_skip_setting, emphasis_mode
from .styles import PromptStyle, apply_styles

# sdgen's request fields -> the A1111 field a client sent them as (for 422 messages).
A1111_FIELDS = {
    "guidance_scale": "cfg_scale",
    "clip_skip": "override_settings.CLIP_stop_at_last_layers",
    "variation_seed": "subseed",
    "variation_strength": "subseed_strength",
    "seed_resize_from": "seed_resize_from_w",
    "num_images": "batch_size",
    "sampler": "sampler_name",
    "init_image": "init_images",
    "strength": "denoising_strength",
    "model": "override_settings.sd_model_checkpoint",
    "masked_content": "inpainting_fill",
    "padding_mask_crop": "inpaint_full_res_padding",
    "hires.scale": "hr_scale",
    "hires.width": "hr_resize_x",
    "hires.height": "hr_resize_y",
    "hires.steps": "hr_second_pass_steps",
    "hires.strength": "denoising_strength",
    "hires.upscaler": "hr_upscaler",
    "hires.sampler": "hr_sampler_name",
    "hires.prompt": "hr_prompt",
    "hires.negative_prompt": "hr_negative_prompt",
}
# A1111's resize_mode -> sdgen's (3, "Just resize (latent upscale)", it does not have).
RESIZE_MODES = {0: "stretch", 1: "crop", 2: "fill"}
# A1111's inpainting_fill (its "Masked content" choices, in order) -> sdgen's masked_content.
INPAINTING_FILLS = {0: "fill", 1: "original", 2: "latent_noise", 3: "latent_nothing"}


class Txt2ImgRequest(BaseModel):
    """``POST /sdapi/v1/txt2img``, as ``StableDiffusionProcessingTxt2Img`` defines it."""

    model_config = ConfigDict(extra="allow")  # extensions' fields; never used

    prompt: str = ""
    negative_prompt: str = ""
    styles: list[str] | None = None
    seed: int | None = -1  # null: random, as -1 (A1111 reads both so)
    subseed: int = -1
    subseed_strength: float = 0
    seed_resize_from_h: int = -1
    seed_resize_from_w: int = -1
    sampler_name: str | None = None
    scheduler: str | None = None
    batch_size: int = 1
    n_iter: int = 1
    steps: int = 50
    cfg_scale: float = 7.0
    width: int = 512
    height: int = 512
    restore_faces: bool | None = None
    tiling: bool | None = None
    do_not_save_samples: bool = False
    do_not_save_grid: bool = False
    eta: float | None = None
    denoising_strength: float | None = None
    s_min_uncond: float | None = None
    s_churn: float | None = None
    s_tmax: float | None = None
    s_tmin: float | None = None
    s_noise: float | None = None
    override_settings: dict[str, Any] | None = None
    override_settings_restore_afterwards: bool = True
    refiner_checkpoint: str | None = None
    refiner_switch_at: float | None = None
    disable_extra_networks: bool = False
    firstpass_image: str | None = None
    comments: dict[str, Any] | None = None
    enable_hr: bool = False
    firstphase_width: int = 0
    firstphase_height: int = 0
    hr_scale: float = 2.0
    hr_upscaler: str | None = None
    hr_second_pass_steps: int = 0
    hr_resize_x: int = 0
    hr_resize_y: int = 0
    hr_checkpoint_name: str | None = None
    hr_sampler_name: str | None = None
    hr_scheduler: str | None = None
    hr_prompt: str = ""
    hr_negative_prompt: str = ""
    force_task_id: str | None = None
    sampler_index: str = "Euler"
    script_name: str | None = None
    script_args: list[Any] = Field(default_factory=list)
    send_images: bool = True
    save_images: bool = False
    alwayson_scripts: dict[str, Any] = Field(default_factory=dict)
    infotext: str | None = None

    def to_request(
        self,
        model: str | None,
        max_pixels: int,
        emphasis: str = "original",
        clip_skip: int = 1,
        styles: dict[str, PromptStyle] | None = None,
    ) -> GenerationRequest:
        """The GenerationRequest this asks for; InvalidRequest with A1111's field names.
        ``emphasis`` and ``clip_skip`` are the server's A1111 settings (POST /options), unless
        the request's ``override_settings`` names them; ``styles`` the server's prompt styles
        (``sdgen serve --styles``) that the request's ``styles`` name."""
        self._refuse_unsupported()
        try:
            fields = self._fields(model, max_pixels, emphasis)
            if self.styles:
                fields["prompt"], fields["negative_prompt"] = apply_styles(
                    self.prompt, self.negative_prompt, self.styles, styles or {}
                )
                hires = fields["hires"]
                if hires is not None:  # A1111 styles the hires prompts too
                    for key, at in (("prompt", 0), ("negative_prompt", 1)):
                        if hires[key] is not None:
                            texts = [hires[key] if i == at else "" for i in range(2)]
                            hires[key] = apply_styles(*texts, self.styles, styles or {})[at]
            return GenerationRequest(**fields, clip_skip=self._clip_skip(clip_skip))
        except InvalidRequest as err:
            raise a1111_error(err) from err

    def _fields(self, model: str | None, max_pixels: int, emphasis: str) -> dict[str, Any]:
        for name in ("batch_size", "n_iter"):
            value = getattr(self, name)
            if value < 1:
                raise InvalidRequest(name, value, "a whole number, 1 or more")
        return {
            "prompt": self.prompt,
            "negative_prompt": self.negative_prompt,
            "model": model,
            "num_images": self.batch_size * self.n_iter,  # seeds seed + i over all, as A1111
            "steps": self.steps,
            "guidance_scale": self.cfg_scale,
            "sampler": self.sampler_label(),
            "width": self.width,
            "height": self.height,
            "seed": None if self.seed in (-1, None) else self.seed,  # -1: random
            # A1111's variation seed: subseed + i for picture i, -1 random; only with a strength
            "variation_strength": self.subseed_strength,
            "variation_seed": None
            if self.subseed in (-1, None) or not self.subseed_strength
            else self.subseed,
            "seed_resize_from": self._seed_resize_from(),
            "tiling": bool(self.tiling),
            "eta": self._ddim_eta(),
            "emphasis": self._emphasis(emphasis),
            "long_prompt": "chunk",  # A1111 reads every prompt in 75-token chunks
            "hires": hires_settings(self),
        }

    def _seed_resize_from(self) -> tuple[int, int] | None:
        """sdgen's seed_resize_from: A1111 resizes the seed's noise when both sides are above 0."""
        size = (self.seed_resize_from_w, self.seed_resize_from_h)
        return size if all(v is not None and v > 0 for v in size) else None

    def _clip_skip(self, default: int) -> int:
        """sdgen's clip skip: A1111's ``CLIP_stop_at_last_layers``, if overridden."""
        value = (self.override_settings or {}).get("CLIP_stop_at_last_layers")
        field = "override_settings.CLIP_stop_at_last_layers"
        return default if value is None else clip_skip_setting(field, value)

    def _emphasis(self, default: str) -> str:
        """sdgen's emphasis mode for A1111's (its ``emphasis`` setting, if overridden)."""
        label = (self.override_settings or {}).get("emphasis")
        return default if label is None else emphasis_mode("override_settings.emphasis", label)

    def _ddim_eta(self) -> float:
        """The request's eta where the sampler is DDIM (A1111's default 0), else 0: A1111's
        other samplers ignore it, or take it as an ancestral eta (``_switched_on``)."""
        if self.eta is None or resolve_sampler(self.sampler_label()).name != "ddim":
            return 0.0
        return self.eta

    def sampler_label(self) -> str:
        """A1111's sampler and schedule type as one name sdgen's registry knows."""
        return sampler_with_schedule(self.sampler_name or self.sampler_index, self.scheduler)

    def _switched_on(self) -> dict[str, bool]:
        """Each feature sdgen does not have -> whether this request asks for it."""
        return {
            # the hires fix's parts sdgen does not have: another checkpoint for the second
            # pass, A1111's old hires sizes
            "hr_checkpoint_name": self.enable_hr
            and self.hr_checkpoint_name not in (None, "", "Use same checkpoint"),
            "firstphase_width": self.enable_hr and self.firstphase_width != 0,
            "firstphase_height": self.enable_hr and self.firstphase_height != 0,
            "restore_faces": bool(self.restore_faces),
            "script_name": bool(self.script_name),
            "refiner_checkpoint": bool(self.refiner_checkpoint),
            "firstpass_image": bool(self.firstpass_image),
            # sampler settings: sdgen's samplers run with A1111's defaults for them
            # an ancestral sampler's eta: diffusers' Euler a has 1 only (A1111's default)
            "eta": self.eta not in (None, 1) and self._ancestral(),
            "s_churn": self.s_churn not in (None, 0),
            "s_noise": self.s_noise not in (None, 1),
            "s_tmin": self.s_tmin not in (None, 0),
            "s_tmax": self.s_tmax not in (None, 0, float("inf")),
        }

    def _ancestral(self) -> bool:
        try:
            return resolve_sampler(self.sampler_label()).name == "euler_a"
        except InvalidRequest:
            return False  # an unknown sampler is named by the request's conversion

    def _refuse_unsupported(self) -> None:
        for field, on in self._switched_on().items():
            if on:
                allowed = _ALLOWED.get(field, "not supported by sdgen")
                raise InvalidRequest(field, getattr(self, field), allowed)
        for script, settings in self.alwayson_scripts.items():
            args = settings.get("args", []) if isinstance(settings, dict) else settings
            if args not in ([], [False], None):  # extensions send disabled ones this way
                raise InvalidRequest(
                    f"alwayson_scripts.{script}", "enabled", "no scripts: sdgen has none"
                )
        for key, value in (self.override_settings or {}).items():
            if key not in CHANGEABLE:
                check_fixed_setting(f"override_settings.{key}", key, value)


# What sdgen has of a refused setting, where it has some of it.
_ALLOWED = {
    "eta": "1 or none with Euler a (diffusers' Euler a has eta 1 only)",
    "mask_round": "true on sdgen (its latent mask is rounded, A1111's default)",
    "enable_hr": "false: the hires fix is txt2img's",
    "hr_checkpoint_name": "none: sdgen's second pass uses the first pass's model",
    "firstphase_width": "0 (A1111's old hires sizes): hr_scale or hr_resize_x/hr_resize_y",
    "firstphase_height": "0 (A1111's old hires sizes): hr_scale or hr_resize_x/hr_resize_y",
}


class Img2ImgRequest(Txt2ImgRequest):
    """``POST /sdapi/v1/img2img``: init picture, optional mask (inpainting)."""

    init_images: list[str] | None = None
    resize_mode: int = 0
    denoising_strength: float = 0.75
    image_cfg_scale: float | None = None
    mask: str | None = None
    mask_blur_x: int = 4
    mask_blur_y: int = 4
    mask_blur: int | None = None
    mask_round: bool = True
    inpainting_fill: int = 0
    inpaint_full_res: bool = True
    inpaint_full_res_padding: int = 0
    inpainting_mask_invert: int = 0
    initial_noise_multiplier: float | None = None
    latent_mask: str | None = None
    include_init_images: bool = False

    def _switched_on(self) -> dict[str, bool]:
        return {
            **super()._switched_on(),
            "initial_noise_multiplier": self.initial_noise_multiplier not in (None, 1),
            "latent_mask": self.latent_mask is not None,
            "mask_round": self.mask is not None and not self.mask_round,
            "enable_hr": self.enable_hr,  # A1111's hires fix is txt2img's
        }

    def to_request(
        self,
        model: str | None,
        max_pixels: int,
        emphasis: str = "original",
        clip_skip: int = 1,
        styles: dict[str, PromptStyle] | None = None,
    ) -> GenerationRequest:
        """As txt2img's; a blur refused is named as sent: ``mask_blur`` or ``mask_blur_x``."""
        try:
            return super().to_request(model, max_pixels, emphasis, clip_skip, styles)
        except InvalidRequest as err:
            if err.field == "mask_blur" and self.mask_blur is None:  # it came from mask_blur_x
                raise InvalidRequest("mask_blur_x", err.value, err.allowed) from err
            raise

    def _fields(self, model: str | None, max_pixels: int, emphasis: str) -> dict[str, Any]:
        fields = super()._fields(model, max_pixels, emphasis)
        if not self.init_images:
            raise InvalidRequest("init_images", self.init_images, "one base64 picture")
        if len(self.init_images) > 1:
            raise InvalidRequest(
                "init_images", f"{len(self.init_images)} pictures", "one picture on sdgen"
            )
        if self.resize_mode not in RESIZE_MODES:
            raise InvalidRequest(
                "resize_mode",
                self.resize_mode,
                "0 (just resize), 1 (crop and resize) or 2 (resize and fill) on sdgen",
            )
        init = decode_picture(
            self.init_images[0], "init_images", mode="RGBA", max_pixels=max_pixels
        )
        fields["init_image"] = _flattened(init)
        fields["strength"] = self.denoising_strength
        fields["resize"] = True  # A1111 resizes the init picture (and mask) to width x height
        fields["resize_mode"] = RESIZE_MODES[self.resize_mode]
        if self.mask is not None:
            mask = decode_picture(self.mask, "mask", mode="L", max_pixels=max_pixels)
            if self.inpainting_mask_invert:
                mask = InputPicture.from_image(ImageOps.invert(mask.image))
            # A1111 runs plain img2img when "Only masked" finds nothing masked
            if not (self.inpaint_full_res and mask.image.getextrema()[1] < 128):
                fields["mask"] = mask
                fields.update(self._mask_processing())
        return fields

    def _mask_processing(self) -> dict[str, Any]:
        """The request's mask processing, as A1111 processes the mask (with a mask only)."""
        if self.mask_blur is None and self.mask_blur_x != self.mask_blur_y:
            raise InvalidRequest(
                "mask_blur_y", self.mask_blur_y, "equal to mask_blur_x on sdgen (one blur radius)"
            )
        if self.inpainting_fill not in INPAINTING_FILLS:
            raise InvalidRequest(
                "inpainting_fill",
                self.inpainting_fill,
                "0 (fill), 1 (original), 2 (latent noise) or 3 (latent nothing)",
            )
        masked_content = INPAINTING_FILLS[self.inpainting_fill]
        if self.denoising_strength is not None and self.denoising_strength >= 1:
            masked_content = "original"  # sdgen starts from noise alone there: all are alike
        processing = {
            "mask_blur": self.mask_blur_x if self.mask_blur is None else self.mask_blur,
            "padding_mask_crop": None,
            "masked_content": masked_content,
            "overlay": True,  # A1111 always pastes the init picture back outside the mask
        }
        if self.inpaint_full_res:  # A1111 resizes only the masked area there, as it fits
            processing.update(
                padding_mask_crop=self.inpaint_full_res_padding, resize_mode="stretch"
            )
        return processing


def _flattened(picture: InputPicture) -> InputPicture:
    """An init picture laid on white where it is transparent, as A1111 does (``images.flatten``
    with its default ``img2img_background_color``); an opaque one as it is."""
    image = picture.image
    if image.getchannel("A").getextrema() == (255, 255):
        return InputPicture.from_image(image.convert("RGB"))
    white = Image.new("RGBA", image.size, (255, 255, 255, 255))
    return InputPicture.from_image(Image.alpha_composite(white, image).convert("RGB"))


def a1111_error(err: InvalidRequest) -> InvalidRequest:
    """The same error under the field name an A1111 client used."""
    field = A1111_FIELDS.get(err.field)
    if field is None:
        return err
    return InvalidRequest(field, err.value, err.allowed)


class PngInfoRequest(BaseModel):
    image: str = ""
