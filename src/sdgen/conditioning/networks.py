"""A1111's extra networks in prompts: ``<lora:name>``, ``<lora:name:weight>`` and
``<lora:name:te:unet>`` (the text encoder's and the UNet's weights apart; ``te=`` and
``unet=`` name them), read as A1111's ``extra_networks.parse_prompt`` reads them.

Each tag is cut out of the prompt and the text around it is left as it is ("a cat, <lora:x>"
is encoded as "a cat, "); its LoRA changes the model's weights for the whole request
(``sdgen.models.lora``). A1111 takes a batch's networks from its first prompt; sdgen asks
every picture's prompt to name the same ones, so that no picture silently gets another's.
A negative prompt naming a network is refused (A1111 reads it as text), as are A1111's other
networks (hypernetworks) and its ``dyn=`` rank option.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from sdgen.errors import InvalidRequest

_TAG = re.compile(r"<(\w+):([^>]+)>")  # A1111's re_extra_net
LORA_KINDS = ("lora", "lyco")  # A1111's Lora extension answers to both


@dataclass(frozen=True)
class LoraTag:
    """One ``<lora:...>`` of a prompt: the LoRA's name and its two multipliers."""

    name: str
    te: float = 1.0  # on the text encoder's weights
    unet: float = 1.0  # on the UNet's weights

    def __str__(self) -> str:
        weights = f"{self.te:g}" if self.te == self.unet else f"{self.te:g}:{self.unet:g}"
        return f"<lora:{self.name}:{weights}>"


def split_loras(field: str, text: str) -> tuple[str, tuple[LoraTag, ...]]:
    """``text`` without its LoRA tags, and the tags in the order written.

    Raises:
        InvalidRequest: a tag that is not a LoRA, or whose weights are not numbers, naming
            ``field``.
    """
    tags = []
    for match in _TAG.finditer(text):
        kind, arguments = match.groups()
        if kind not in LORA_KINDS:
            raise InvalidRequest(
                field, match.group(0), "<lora:name:weight>; other extra networks are not on sdgen"
            )
        tags.append(_lora_tag(field, match.group(0), arguments))
    return _TAG.sub("", text), tuple(tags)


def refuse_networks(field: str, text: str) -> None:
    """Refuse any extra-network tag in ``text`` (a negative prompt), naming ``field``."""
    if found := _TAG.search(text):
        raise InvalidRequest(
            field, found.group(0), "text without <lora:...>: LoRAs are named in the prompt"
        )


def _lora_tag(field: str, tag: str, arguments: str) -> LoraTag:
    """``name[:te[:unet]]``, ``te=`` and ``unet=`` as A1111 reads them: the UNet's weight is
    the text encoder's unless given."""
    positional, named = [], {}
    for item in arguments.split(":"):
        key, equals, value = item.partition("=")
        if equals:
            named[key.strip()] = value.strip()
        else:
            positional.append(item.strip())
    allowed = "<lora:name>, <lora:name:weight> or <lora:name:te_weight:unet_weight>"
    unknown = set(named) - {"te", "unet"}
    if not positional or not positional[0] or len(positional) > 3 or unknown:
        raise InvalidRequest(field, tag, allowed)
    te = _weight(field, tag, named.get("te", positional[1] if len(positional) > 1 else "1"))
    unet_text = named.get("unet", positional[2] if len(positional) > 2 else None)
    unet = te if unet_text is None else _weight(field, tag, unet_text)
    return LoraTag(positional[0], te, unet)


def _weight(field: str, tag: str, text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise InvalidRequest(field, tag, "a LoRA weight that is a finite number, e.g. <lora:x:0.8>")
    return value


def check_networks(request) -> list[tuple[str, str]]:
    """Read the tags of every text of ``request`` (a ``GenerationRequest``): (field, text
    without its LoRA tags) for each, in ``named_texts`` order.

    Raises:
        InvalidRequest: a malformed tag, a tag in a negative prompt, or prompts of one request
            that name different LoRAs, naming the field.
    """
    texts, first = [], None
    for name, text in request.named_texts():
        if "negative_prompt" in name:
            refuse_networks(name, text)
            texts.append((name, text))
            continue
        plain, tags = split_loras(name, text)
        texts.append((name, plain))
        if name.startswith("hires."):  # the second pass reads its own
            continue
        if first is None:
            first = tags
        elif tags != first:
            named = " ".join(str(tag) for tag in first) or "none"
            raise InvalidRequest(
                name, text, f"the LoRAs the first prompt names ({named}): one set per request"
            )
    return texts


def request_loras(request) -> tuple[LoraTag, ...]:
    """The LoRAs ``request``'s prompts name (every prompt names the same: ``check_networks``)."""
    return split_loras("prompt", request.prompts[0])[1]


def without_loras(request):
    """``request`` with its prompts' LoRA tags cut out (the hires fix's prompt's too): the
    texts the text encoder reads."""
    import dataclasses

    prompts = tuple(split_loras("prompt", p)[0] for p in request.prompts)
    changes: dict = {"prompt": prompts if isinstance(request.prompt, tuple) else prompts[0]}
    if request.hires is not None and request.hires.prompt is not None:
        plain = split_loras("hires.prompt", request.hires.prompt)[0]
        changes["hires"] = dataclasses.replace(request.hires, prompt=plain)
    return request.replace(**changes)
