"""A1111's hires fix fields (``enable_hr``, ``hr_*``) as sdgen's ``hires`` settings
(``sdgen.hires.HiresFix``), for ``protocol``'s txt2img request.

A1111's hr_resize_x/y replace hr_scale; 0 means "not given" for them and for
hr_second_pass_steps; empty hires prompts and "Use same sampler"/"Use same scheduler" mean the
first pass's. Its "None" upscaler resizes with Lanczos, as "Lanczos" does.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sdgen.errors import InvalidRequest
from sdgen.hires import HIRES_UPSCALERS

from .schedule_types import sampler_with_schedule

if TYPE_CHECKING:
    from .protocol import Txt2ImgRequest

# A1111's hires upscaler labels -> sdgen's
HIRES_UPSCALER_NAMES = {label: name for name, label in HIRES_UPSCALERS.items()} | {
    "None": "lanczos"
}
HIRES_TXT2IMG_STRENGTH = 0.75  # A1111's StableDiffusionProcessingTxt2Img.denoising_strength


def hires_settings(body: Txt2ImgRequest) -> dict[str, Any] | None:
    """sdgen's hires settings for A1111's hires fix (``enable_hr``), else None."""
    if not body.enable_hr:
        return None
    if body.hr_upscaler is not None and body.hr_upscaler not in HIRES_UPSCALER_NAMES:
        raise InvalidRequest(
            "hr_upscaler",
            body.hr_upscaler,
            f"one of {', '.join(HIRES_UPSCALER_NAMES)} (sdgen has no upscaler models)",
        )
    strength = body.denoising_strength
    resize = body.hr_resize_x or body.hr_resize_y  # then A1111 ignores hr_scale
    return {
        **({} if resize else {"scale": body.hr_scale}),
        "width": body.hr_resize_x or None,  # 0: from the scale, or the other side
        "height": body.hr_resize_y or None,
        "steps": body.hr_second_pass_steps or None,  # 0: the first pass's
        "strength": HIRES_TXT2IMG_STRENGTH if strength is None else strength,
        "upscaler": HIRES_UPSCALER_NAMES.get(body.hr_upscaler, "latent"),  # None: Latent
        "sampler": _hires_sampler(body),
        # A1111's empty hires prompts are the first pass's
        "prompt": body.hr_prompt if body.hr_prompt not in ("", body.prompt) else None,
        "negative_prompt": body.hr_negative_prompt
        if body.hr_negative_prompt not in ("", body.negative_prompt)
        else None,
    }


def _hires_sampler(body: Txt2ImgRequest) -> str | None:
    """The hires pass's sampler and schedule type as one name, where they are not the first
    pass's (A1111's "Use same sampler" / "Use same scheduler", or none)."""
    sampler, schedule = body.hr_sampler_name, body.hr_scheduler
    sampler = None if sampler in (None, "", "Use same sampler") else sampler
    schedule = None if schedule in (None, "", "Use same scheduler") else schedule
    if sampler is None and schedule is None:
        return None
    try:
        return sampler_with_schedule(
            sampler or body.sampler_name or body.sampler_index, schedule or body.scheduler
        )
    except InvalidRequest as err:  # named as sent: the hires pass's own, where given
        given = {"sampler": ("hr_sampler_name", sampler), "scheduler": ("hr_scheduler", schedule)}
        field, value = given.get(err.field, (err.field, None))
        raise InvalidRequest(field if value else err.field, err.value, err.allowed) from None
