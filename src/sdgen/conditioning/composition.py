"""A1111's composable prompts: ``a castle AND a dragon :0.8``.

With an emphasis mode (where sdgen reads A1111's syntax), a prompt is cut at each ``AND``
(a whole word, in capitals) into parts, and a part may end with a weight, ``:0.8`` (default 1):
A1111's ``get_multicond_prompt_list``, after the paper "Compositional Visual Generation with
Composable Diffusion Models" (Liu et al., 2022). Each part is read on its own: its own
emphasis, prompt editing and chunks. The UNet predicts the noise for the negative prompt and
for each part in one batched call, and guidance adds each part's pull in turn::

    noise = uncond + sum_k (part_k - uncond) * weight_k * guidance_scale

(A1111's ``combine_denoised``, there on denoised latents, here on noise: the two differ by the
same affine map, so the pictures are the same). One part of weight 1 is plain guidance.
Negative prompts are one text, as in A1111. ``AND`` is text where prompts are read plainly
(``emphasis="off"``).
"""

from __future__ import annotations

import re

from sdgen.errors import InvalidRequest

# A1111's prompt_parser.re_AND and re_weight: a weight is a number after a colon at the very
# end of a part; text over several lines has none (``.`` stops at a line break)
_AND = re.compile(r"\bAND\b")
_WEIGHT = re.compile(r"^(\s*.*?)(?:\s*:\s*([-+]?(?:\d+\.?|\d*\.\d+)))?\s*$")

Parts = tuple[tuple[str, float], ...]  # (text, weight) of each part, in the prompt's order

MAX_PART_WEIGHT = 100.0  # |weight| of a part; larger ones overflow half precision
MAX_PARTS = 32  # parts of one prompt: each adds a UNet row per picture at every step


def prompt_parts(text: str) -> Parts | None:
    """The parts of a composable prompt, each (text, weight); None for a prompt that is one
    text of weight 1 written without one (the usual prompt: read as written)."""
    pieces = _AND.split(text)
    parts = []
    for piece in pieces:
        match = _WEIGHT.search(piece)
        if match is None or match.group(2) is None:
            parts.append((piece if match is None else match.group(1), 1.0, False))
        else:
            parts.append((match.group(1), float(match.group(2)), True))
    if len(parts) == 1 and not parts[0][2]:
        return None
    return tuple((part, weight) for part, weight, _ in parts)


def is_prompt_field(field: str) -> bool:
    """Whether ``field`` (a request's text field, as ``named_texts`` names it) may be
    composable: prompts, not negative prompts."""
    return "negative" not in field


def texts_of(field: str, text: str, emphasis: str) -> list[str]:
    """The texts ``text`` of ``field`` is read as: its parts' where it is composable, else
    itself."""
    parts = prompt_parts(text) if emphasis != "off" and is_prompt_field(field) else None
    return [text] if parts is None else [part for part, _ in parts]


def check_parts(field: str, text: str) -> None:
    """Refuse more than MAX_PARTS parts and a part's weight past MAX_PART_WEIGHT, naming
    ``field``."""
    parts = prompt_parts(text) or ()
    if len(parts) > MAX_PARTS:
        raise InvalidRequest(field, f"{len(parts)} parts", f"at most {MAX_PARTS} (cut at AND)")
    for part, weight in parts:
        if not abs(weight) <= MAX_PART_WEIGHT:
            limit = f"{MAX_PART_WEIGHT:g}"
            raise InvalidRequest(
                field, f"{part.strip()} :{weight:g}", f"a part weight from -{limit} to {limit}"
            )


def composes(request) -> bool:
    """Whether any prompt of ``request`` (a ``GenerationRequest``) is composable: then its
    negative prompts are read at every guidance scale."""
    if request.emphasis == "off":
        return False
    named = request.named_texts()
    return any(is_prompt_field(f) and prompt_parts(t) is not None for f, t in named)
