"""A1111's settings (its ``opts``, sent in ``override_settings`` and ``POST /options``) as far
as sdgen has them: the checkpoint, the emphasis mode and clip skip can change; the others sdgen
always runs at one value, accepted at that value and refused at any other.
"""

from __future__ import annotations

import json

from sdgen.checks import is_number
from sdgen.conditioning.chunks import COMMA_BACKTRACK
from sdgen.errors import InvalidRequest
from sdgen.params import MAX_CLIP_SKIP

# The settings that can change, per call (override_settings) or until a restart (POST /options).
CHANGEABLE = ("sd_model_checkpoint", "emphasis", "CLIP_stop_at_last_layers")

# A1111 settings (its ``opts``) that sdgen always runs at one value -> the values that mean it.
# Clients send them in override_settings and POST /options (Open WebUI posts back what
# GET /options gave); another value is refused.
FIXED_SETTINGS: dict[str, tuple] = {
    "sd_vae": ("Automatic", "None", None),  # the checkpoint's own VAE
    "samples_format": ("png",),  # sdgen's pictures are PNGs
    "eta_noise_seed_delta": (0,),  # ENSD
    "randn_source": ("CPU",),  # each picture's generator is a CPU one
    "forge_additional_modules": ([],),  # Forge's extra modules: none
    # long prompts' chunks end after a comma within this many tokens (sdgen.conditioning.chunks)
    "comma_padding_backtrack": (COMMA_BACKTRACK, float(COMMA_BACKTRACK)),
    # a prompt and its negative prompt of different chunk counts are run apart, not padded
    "pad_cond_uncond": (False,),
    "pad_cond_uncond_v0": (False,),
}


# A1111's emphasis modes (its "emphasis" setting) -> sdgen's: "None" reads brackets as text
# (and still reads prompt editing and AND).
EMPHASIS_LABELS = {"Original": "original", "No norm": "no_norm", "None": "none"}


def clip_skip_setting(field: str, value: object) -> int:
    """A1111's ``CLIP_stop_at_last_layers`` as sdgen's ``clip_skip``, or InvalidRequest naming
    ``field`` (a whole number; 2.0 is 2, as A1111's slider stores it)."""
    whole = is_number(value) and value == int(value)
    if not whole or not 1 <= value <= MAX_CLIP_SKIP:
        raise InvalidRequest(field, _AsJson(value), f"a whole number from 1 to {MAX_CLIP_SKIP}")
    return int(value)


def emphasis_mode(field: str, label: object) -> str:
    """sdgen's emphasis mode for A1111's label, or InvalidRequest naming ``field``."""
    if label not in EMPHASIS_LABELS:
        raise InvalidRequest(field, label, f"one of {', '.join(EMPHASIS_LABELS)}")
    return EMPHASIS_LABELS[label]


class _AsJson:
    """A value whose repr (what InvalidRequest's message shows) is its JSON, cut short."""

    def __init__(self, value: object):
        self.value = value

    def __repr__(self) -> str:
        return json.dumps(self.value)[:200]


def check_fixed_setting(field: str, key: str, value: object) -> None:
    """Refuse an A1111 setting other than sd_model_checkpoint unless it is one of the values
    sdgen runs with (``FIXED_SETTINGS``; names case-insensitive)."""
    allowed = FIXED_SETTINGS.get(key)
    shown = _AsJson(value)  # shown as the client sent it: true, null, [1], not True, None
    if allowed is not None:
        for same in allowed:  # of the same JSON type: true is not 1, nor false 0
            if type(value) is type(same) and (
                value == same or (isinstance(value, str) and value.lower() == same.lower())
            ):
                return
        values = " or ".join(json.dumps(a) for a in allowed)
        raise InvalidRequest(field, shown, f"{values}: what sdgen runs with")
    raise InvalidRequest(
        field,
        shown,
        f"only {', '.join(CHANGEABLE)} can change on sdgen; fixed: {', '.join(FIXED_SETTINGS)}",
    )
