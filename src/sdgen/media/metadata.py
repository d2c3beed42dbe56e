"""PNG metadata: A1111's ``parameters`` text and sdgen's own JSON record of the request.

The ``parameters`` chunk makes sdgen's pictures readable by A1111, its png-info and every tool
that follows it (format in shared/reference/a1111.md). The ``sdgen`` chunk holds the request as
JSON, exactly, so ``sdgen reproduce`` can regenerate the picture.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image, PngImagePlugin

from sdgen.errors import SdgenError
from sdgen.hires import HIRES_UPSCALERS
from sdgen.params import GenerationRequest, InputPicture

JSON_KEY = "sdgen"
PARAMETERS_KEY = "parameters"
# A1111's infotext parser (modules/infotext_utils.py), used to read the parameters line back,
# with keys of at most 64 characters: A1111's unbounded key makes the scan quadratic in a line's
# length (a 900,000-character line from an uploaded PNG would take hours); its keys are short.
# params.MASKED_CONTENTS -> A1111's "Masked content" (it writes none for "original").
_MASKED_CONTENT_LABELS = {
    "fill": "fill",
    "latent_noise": "latent noise",
    "latent_nothing": "latent nothing",
}
_PARAM_RE = re.compile(r'\s*(\w[\w \-/]{1,63}):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')


@dataclass(frozen=True)
class ImageRecord:
    """What one picture was made from: the request of exactly this picture, and the model."""

    request: GenerationRequest  # num_images=1, seed = the picture's own seed
    sampler_label: tuple[str, str | None]  # A1111 "Sampler" and "Schedule type"
    model_name: str
    model_hash: str
    version: str
    # Facts found after generation, e.g. {"CLIP score": 24.1, "CLIP rank": 1, "NSFW": True}:
    # written into A1111's settings line and the JSON chunk's "extra".
    extra: dict[str, object] = field(default_factory=dict)
    # A1111 "Hires sampler" and "Hires schedule type", where the hires fix's sampler differs
    hires_sampler_label: tuple[str, str | None] | None = None

    def parameters_text(self) -> str:
        """A1111's infotext: prompt, ``Negative prompt:`` line, then the settings line."""
        r = self.request
        sampler, schedule = self.sampler_label
        fields = {
            "Steps": r.steps,
            "Sampler": sampler,
            "Schedule type": schedule,
            "CFG scale": f"{r.guidance_scale:g}",
            "Seed": r.seed,
            "Size": f"{r.width}x{r.height}",
            "Model hash": self.model_hash,
            "Model": self.model_name,
            # A1111's variation seed ("subseed"): this picture's, and how far it goes
            "Variation seed": r.variation_seed if r.variation else None,
            "Variation seed strength": f"{r.variation_strength:g}" if r.variation else None,
            "Seed resize from": "x".join(map(str, r.seed_resize_from or ())) or None,
            "Denoising strength": _denoising_strength(r),
            "Clip skip": r.clip_skip if r.clip_skip > 1 else None,  # A1111 writes it past 1
            "Init image hash": r.init_image.sha256[:12] if r.init_image is not None else None,
            "Mask hash": r.mask.sha256[:12] if r.mask is not None else None,
            # where the noise is drawn (A1111 writes it unless GPU, its default): each
            # picture's generator is a CPU one, as A1111's CPU source seeds its initial noise
            "RNG": "CPU",
            "Tiling": "True" if r.tiling else None,  # A1111 writes it when on
            "Eta DDIM": f"{r.eta:g}" if r.eta else None,  # A1111 writes it when not 0
            # A1111 writes its emphasis mode unless Original, its default; sdgen's "off"
            # (brackets are text, prompt editing too) is nearest A1111's "None"
            "Emphasis": {"off": "None", "none": "None", "no_norm": "No norm"}.get(r.emphasis),
            **_mask_processing(r),
            **_hires_fix(r, self.hires_sampler_label),
            **self.extra,
            "Version": self.version,
        }
        settings = ", ".join(f"{k}: {_quote(v)}" for k, v in fields.items() if v is not None)
        lines = [r.prompts[0]]
        if r.negative_prompts[0]:
            lines.append(f"Negative prompt: {r.negative_prompts[0]}")
        return "\n".join([*lines, settings])

    def to_json(self) -> str:
        return json.dumps(
            {
                "request": self.request.to_dict(),
                "model_hash": self.model_hash,
                "version": self.version,
                "extra": self.extra,
            }
        )


def _denoising_strength(r: GenerationRequest) -> str | None:
    """img2img's strength, or the hires fix's (A1111 writes both as "Denoising strength")."""
    if r.init_image is not None:
        return f"{r.strength:g}"
    return f"{r.hires.strength:g}" if r.hires is not None else None


def _hires_fix(r: GenerationRequest, sampler_label: tuple[str, str | None] | None) -> dict:
    """The hires fix's settings under A1111's infotext keys, in the order A1111 adds them."""
    hires = r.hires
    if hires is None:
        return {}
    sampler, schedule = sampler_label or (None, None)
    if hires.width is None and hires.height is None:
        size = {"Hires upscale": f"{hires.scale:g}"}
    else:  # A1111 writes 0 for the side it works out itself
        size = {"Hires resize": f"{hires.width or 0}x{hires.height or 0}"}
    return {
        "Hires sampler": sampler,
        # A1111 writes the second pass's prompts where they are not the first pass's
        "Hires prompt": _unless(hires.prompt, r.prompts[0]),
        "Hires negative prompt": _unless(hires.negative_prompt, r.negative_prompts[0]),
        "Hires schedule type": schedule,
        **size,
        "Hires steps": hires.steps,
        "Hires upscaler": HIRES_UPSCALERS[hires.upscaler],
    }


def _unless(value: str | None, same: str) -> str | None:
    return None if value is None or value == same else value


def _mask_processing(r: GenerationRequest) -> dict[str, object]:
    """Inpainting's mask settings under A1111's infotext keys, where they are not the defaults
    (A1111 has no key for the overlay: it always pastes the init picture back)."""
    return {
        "Mask blur": r.mask_blur or None,
        "Inpaint area": "Only masked" if r.padding_mask_crop is not None else None,
        "Masked area padding": r.padding_mask_crop,
        "Masked content": _MASKED_CONTENT_LABELS.get(r.masked_content),
    }


def save_png(image: Image.Image, path: Path, record: ImageRecord, *, metadata: bool = True) -> Path:
    """Write ``image`` with both metadata chunks, or with none when not ``metadata``."""
    info = PngImagePlugin.PngInfo()  # empty: nothing the picture object carries is written
    if metadata:
        info.add_text(PARAMETERS_KEY, record.parameters_text())
        info.add_text(JSON_KEY, record.to_json())
    image.save(path, pnginfo=info)
    return path


def read_request(path: Path, pictures: dict[str, InputPicture] | None = None) -> GenerationRequest:
    """The request recorded in a PNG written by sdgen.

    An img2img or inpainting request records only its input pictures' hashes: give the pictures
    in ``pictures`` (``init_image``, ``mask``); they must be the ones recorded.
    """
    return read_recorded(path, pictures).request


@dataclass(frozen=True)
class Recorded:
    """What a PNG written by sdgen records for ``sdgen reproduce``."""

    request: GenerationRequest
    model_hash: str | None  # A1111's Model hash of the weights it was made with
    stopped_at: int | None  # the step a stopped generation's picture was taken at
    ti_hashes: str = ""  # the textual inversions its prompts named, A1111's "TI hashes"
    lora_hashes: str = ""  # the LoRAs its prompts named, A1111's "Lora hashes"


def read_recorded(path: Path, pictures: dict[str, InputPicture] | None = None) -> Recorded:
    """The request, model hash, stopping step and embeddings recorded in a PNG written by
    sdgen (one read); ``pictures`` as for ``read_request``."""
    recorded = _recorded(path)
    model_hash = recorded.get("model_hash")
    extra = recorded.get("extra")
    extra = extra if isinstance(extra, dict) else {}
    stopped, ti_hashes = extra.get("Stopped at step"), extra.get("TI hashes", "")
    lora_hashes = extra.get("Lora hashes", "")
    return Recorded(
        request=GenerationRequest.from_dict(recorded["request"], pictures),
        model_hash=model_hash if isinstance(model_hash, str) else None,
        stopped_at=None if stopped is None else _stopped_step(path, stopped),
        ti_hashes=ti_hashes if isinstance(ti_hashes, str) else "",
        lora_hashes=lora_hashes if isinstance(lora_hashes, str) else "",
    )


def _stopped_step(path: Path, value: object) -> int:
    """k of a ``Stopped at step: k/n`` record."""
    done, _, total = str(value).partition("/")
    if not (done.isdigit() and total.isdigit() and 0 < int(done) < int(total)):
        raise SdgenError(f"image: {path} has unreadable sdgen metadata (Stopped at step {value!r})")
    return int(done)


def _recorded(path: Path) -> dict:
    """The sdgen JSON chunk of a PNG, checked to hold a request object."""
    try:
        with Image.open(path) as image:
            text = getattr(image, "text", {}).get(JSON_KEY)  # PNG text chunks; JPEGs have none
    except (OSError, ValueError) as err:
        raise SdgenError(f"image: {path} cannot be read as a PNG ({err})") from err
    if text is None:
        raise SdgenError(f"image: {path} has no sdgen metadata (was it written by sdgen?)")
    try:
        recorded = json.loads(text)
        if not isinstance(recorded["request"], dict):
            raise TypeError("the request is not a JSON object")
    except (ValueError, KeyError, TypeError) as err:
        raise SdgenError(
            f"image: {path} has unreadable sdgen metadata ({type(err).__name__}: {err})"
        ) from err
    return recorded


def parse_parameters(text: str) -> dict[str, str]:
    """A1111's infotext -> fields, as A1111's own parser reads it (prompt, negative, settings)."""
    *lines, last = text.strip().split("\n")
    if len(_PARAM_RE.findall(last)) < 3:
        lines.append(last)
        last = ""
    prompt, negative, in_negative = [], [], False
    for line in lines:
        if line.startswith("Negative prompt:"):
            in_negative = True
            line = line[len("Negative prompt:") :].strip()
        (negative if in_negative else prompt).append(line)
    fields = {"Prompt": "\n".join(prompt), "Negative prompt": "\n".join(negative)}
    for key, value in _PARAM_RE.findall(last):
        fields[key.strip()] = json.loads(value) if value.startswith('"') else value
    return fields


def _quote(value: object) -> str:
    """A1111 JSON-quotes values that contain a comma, a colon or a newline."""
    text = str(value)
    return json.dumps(text) if any(c in text for c in ",:\n") else text
