"""The one request type shared by the CLI, the Python API and (later) the HTTP server.

Validation lives here, once, with messages that name the field and the allowed values. Checks
that need the loaded model (the size against its latent factor) are functions here too, called by
the pipelines once the model is known.
"""

from __future__ import annotations

import dataclasses
import hashlib
import secrets
from dataclasses import dataclass, field
from typing import Any

from sdgen.checks import check_fraction, check_guidance, check_int, check_text
from sdgen.errors import InvalidRequest
from sdgen.hires import HiresFix

PRECISIONS = ("auto", "fp32", "fp16", "bf16")
FAST_PATH_MODES = ("auto", "on", "off")  # how a model is loaded: sdgen.models.fast_path
MAX_SEED = 2**63 - 1  # torch.Generator.manual_seed takes a signed 64-bit value
MAX_RANDOM_SEED = 2**32 - 1  # random seeds stay in A1111's range so they read well in metadata
DEFAULT_STRENGTH = 0.8  # diffusers' StableDiffusionImg2ImgPipeline default
INPAINT_STRENGTH = 1.0  # diffusers' StableDiffusionInpaintPipeline default
PICTURE_FIELDS = ("init_image", "mask")
# What the masked part of the init picture holds before it is noised (A1111's "Masked content"):
# the picture as it is, A1111's blurred fill from the colours around it, random latents, zeros.
MASKED_CONTENTS = ("original", "fill", "latent_noise", "latent_nothing")
# How resize brings a picture to the output size: stretched to it, scaled to cover it and
# centre-cropped, or scaled to fit and the rest filled from its edges (A1111's resize modes
# 0, 1, 2; diffusers' VaeImageProcessor resize modes "default", "crop", "fill").
RESIZE_MODES = ("stretch", "crop", "fill")
# How A1111's prompt syntax is read: off (all plain text, as diffusers), A1111's default
# ("Original"), its "No norm" (sdgen.conditioning.emphasis) or its "None" (brackets are text,
# prompt editing and AND are read).
EMPHASIS_MODES = ("off", "original", "no_norm", "none")
# How a prompt past the text encoder's 75 tokens is read: its first 75 only (diffusers), or in
# 75-token chunks whose embeddings are joined (A1111, ComfyUI): sdgen.conditioning.chunks.
LONG_PROMPT_MODES = ("truncate", "chunk")
MAX_MASK_BLUR = 256  # pixels (A1111's UI goes to 64)
MAX_CLIP_SKIP = 12  # A1111's slider; a model's text encoder may have fewer layers
MAX_SIDE = 65_536  # pixels: the most a size (or a padding around a mask) can be


@dataclass(frozen=True)
class InputPicture:
    """A picture that comes with a request (init picture or mask): pixels and their hash.

    Two input pictures are equal when their pixels are; the hash (of mode, size and pixel bytes,
    not of the file) is what the metadata records, so a re-encoded file still matches.
    """

    image: Any = field(compare=False, repr=False)  # PIL.Image.Image, already decoded
    sha256: str

    @classmethod
    def from_image(cls, image: Any) -> InputPicture:
        """Wrap a decoded PIL picture (``media.images.read_picture`` decodes files safely)."""
        header = f"{image.mode} {image.width}x{image.height}\n".encode()
        return cls(image=image, sha256=hashlib.sha256(header + image.tobytes()).hexdigest())

    @property
    def size(self) -> tuple[int, int]:
        return self.image.size


@dataclass(frozen=True)
class GenerationRequest:
    """Everything that determines the pictures of one request: txt2img, img2img or inpainting.

    Image ``i`` (counted over all prompts) is drawn from a CPU generator seeded ``seed + i`` and
    depends on nothing else but these settings. ``None`` means "the model's own default" for
    ``sampler``, ``width`` and ``height`` (for img2img: the init picture's size), and "draw one at
    random" for ``seed``. An ``init_image`` makes it img2img; a ``mask`` as well, inpainting
    (white = repaint, black = keep). ``strength`` (0..1) is how much of the init picture is
    noised away (default diffusers': 0.8 for img2img, 1.0 for inpainting); ``resize`` allows
    the init picture and mask to be resized to the output size, as ``resize_mode`` says
    (``RESIZE_MODES``).
    ``eta`` is DDIM's (0: deterministic, its default; 1: fresh noise from each picture's own
    generator at every step, like DDPM); samplers without one take only 0.

    ``emphasis`` reads A1111's attention syntax in the prompts, ``(words:1.3)``, ``(words)``,
    ``[words]`` (``sdgen.conditioning.emphasis``): "original" as A1111 does by default,
    "no_norm" without rescaling; "off" (the default) reads them as plain text, as diffusers.
    These three modes read the rest of A1111's syntax too (prompt editing, alternation, AND);
    "none" is A1111's "None": that syntax read, emphasis brackets and BREAK left as text.
    ``long_prompt`` says how a prompt past the text encoder's 75 tokens is read
    (``LONG_PROMPT_MODES``): "truncate" (the default) reads its first 75, as diffusers; "chunk"
    reads it all, in 75-token chunks, as A1111 (``sdgen.conditioning.chunks``), where ``BREAK``
    starts a new chunk when emphasis is on.

    ``variation_strength`` (0..1) and ``variation_seed`` are A1111's variation seeds: each
    image's starting noise is slerped, that much of the way, toward the noise of its variation
    seed (``variation_seed + i``; drawn at random when not given), so pictures near a seed's
    picture can be explored; 0 (the default) leaves the noise alone. ``seed_resize_from``
    (width, height) is A1111's "resize seed from": each picture keeps, in its middle, the noise
    its seed gives at that size, so a seed's picture keeps its composition at another size.
    ``tiling`` is A1111's: every convolution pads circularly, so the pictures tile seamlessly.

    ``clip_skip`` is A1111's "Clip skip": the prompts are read from the text encoder's
    ``clip_skip``-th layer from the end (1, the default: its last), then its final layer norm, as
    diffusers' ``clip_skip`` argument does with one less (diffusers' 1 is A1111's 2).

    ``hires`` (txt2img only) adds A1111's hires fix: a second pass that upscales the pictures and
    denoises them again at the larger size (``sdgen.hires.HiresFix``; a dict of its fields is
    taken too). ``width`` and ``height`` stay the first pass's size, as in A1111's metadata.

    Inpainting's mask processing, as A1111 does it (all off by default, as in diffusers):
    ``mask_blur`` blurs the mask's edge by that many pixels (a Gaussian's standard deviation);
    ``padding_mask_crop`` repaints only the mask's bounding box, grown by that many pixels and
    to the output's aspect ratio, at width x height, and pastes it back into the init picture
    (diffusers' ``padding_mask_crop``, A1111's "Only masked"; the pictures have the init
    picture's size); ``masked_content`` is what the masked part starts from
    (``MASKED_CONTENTS``); ``overlay`` pastes the init picture back over the result where the
    mask keeps it, its blurred edge blending the two (always done with ``padding_mask_crop``).
    """

    prompt: str | tuple[str, ...]
    negative_prompt: str | tuple[str, ...] = ""
    model: str | None = None
    num_images: int = 1
    steps: int = 50
    guidance_scale: float = 7.5
    sampler: str | None = None
    width: int | None = None
    height: int | None = None
    seed: int | None = None
    variation_seed: int | None = None
    variation_strength: float = 0.0
    seed_resize_from: tuple[int, int] | None = None  # (width, height)
    tiling: bool = False  # pictures that tile seamlessly (sdgen.models.tiling)
    precision: str = "auto"
    device: str = "auto"
    init_image: InputPicture | None = None
    mask: InputPicture | None = None
    strength: float | None = None  # None: diffusers' for the mode, set when resolved
    resize: bool = False
    resize_mode: str = "stretch"
    eta: float = 0.0
    mask_blur: int = 0
    padding_mask_crop: int | None = None
    masked_content: str = "original"
    overlay: bool = False
    emphasis: str = "off"
    long_prompt: str = "truncate"
    clip_skip: int = 1
    hires: HiresFix | None = None

    def __post_init__(self) -> None:
        # Lists become tuples so the request stays hashable and immutable.
        for name in ("prompt", "negative_prompt", "seed_resize_from"):
            value = getattr(self, name)
            if isinstance(value, list):
                object.__setattr__(self, name, tuple(value))
        check_text("prompt", self.prompt)
        check_text("negative_prompt", self.negative_prompt)
        object.__setattr__(self, "hires", HiresFix.from_value(self.hires))
        self._check_emphasis()
        if isinstance(self.prompt, tuple) and not self.prompt:
            raise InvalidRequest("prompt", [], "give at least one prompt")
        if isinstance(self.negative_prompt, tuple) and len(self.negative_prompt) != len(
            self.prompts
        ):
            raise InvalidRequest(
                "negative_prompt",
                list(self.negative_prompt),
                f"give one negative prompt, or one per prompt ({len(self.prompts)})",
            )
        check_int("num_images", self.num_images, 1, 10_000)
        check_int("steps", self.steps, 1, 10_000)
        check_int("clip_skip", self.clip_skip, 1, MAX_CLIP_SKIP)
        check_guidance(self.guidance_scale)
        for name in ("width", "height"):
            if getattr(self, name) is not None:
                check_int(name, getattr(self, name), 1, MAX_SIDE)
        for name in ("seed", "variation_seed"):  # picture i takes seed + i: so must the last
            if getattr(self, name) is not None:
                last = MAX_SEED - 10_000 - (self.total_images - 1)
                check_int(name, getattr(self, name), 0, last)
        allowed = "a number from 0 to 1 (0: no variation; 1: the variation seed's noise)"
        check_fraction("variation_strength", self.variation_strength, allowed)
        if self.variation_seed is not None and not self.variation_strength:
            allowed = "nothing without a variation_strength above 0, which it would not change"
            raise InvalidRequest("variation_seed", self.variation_seed, allowed)
        self._check_seed_resize()
        if not isinstance(self.tiling, bool):
            raise InvalidRequest("tiling", self.tiling, "true or false")
        if self.precision not in PRECISIONS:
            raise InvalidRequest("precision", self.precision, f"one of {', '.join(PRECISIONS)}")
        if self.sampler is not None:
            # Imported here: the sampler registry pulls in diffusers, and params stays light.
            from sdgen.sampling.samplers import resolve_sampler

            object.__setattr__(self, "sampler", resolve_sampler(self.sampler).name)
        self._check_pictures()
        if self.hires is not None and self.init_image is not None:
            raise InvalidRequest("hires", "given", "nothing with an init_image: txt2img only")

    def _check_emphasis(self) -> None:
        if self.emphasis not in EMPHASIS_MODES:
            raise InvalidRequest("emphasis", self.emphasis, f"one of {', '.join(EMPHASIS_MODES)}")
        if self.long_prompt not in LONG_PROMPT_MODES:
            raise InvalidRequest(
                "long_prompt", self.long_prompt, f"one of {', '.join(LONG_PROMPT_MODES)}"
            )
        from sdgen.conditioning.networks import check_networks  # text only: light

        texts = check_networks(self)  # each text without its <lora:...> tags
        if self.emphasis != "off":
            # Imported here: the emphasis module pulls in torch, and params stays light.
            from sdgen.conditioning.composition import check_parts, texts_of
            from sdgen.conditioning.emphasis import WEIGHING_MODES, check_syntax
            from sdgen.conditioning.schedules import scheduled_texts

            hires_steps = None if self.hires is None else (self.hires.steps or self.steps)
            for name, text in texts:  # each text a prompt's schedule reads (prompt editing)
                check_parts(name, text)  # of each part of a prompt with AND
                if self.emphasis not in WEIGHING_MODES:
                    continue  # "none": brackets and BREAK are text
                for part in texts_of(name, text, self.emphasis):
                    for read in scheduled_texts(part, self.steps, hires_steps):
                        check_syntax(name, read, breaks=self.long_prompt == "chunk")

    def _check_seed_resize(self) -> None:
        size = self.seed_resize_from
        if size is None:
            return
        whole = isinstance(size, tuple) and len(size) == 2
        whole = whole and all(isinstance(v, int) and not isinstance(v, bool) for v in size)
        if not (whole and all(1 <= v <= MAX_SIDE for v in size)):
            allowed = f"(width, height), each a whole number from 1 to {MAX_SIDE}, or nothing"
            raise InvalidRequest("seed_resize_from", size, allowed)

    def seed_noise_size(self, factor: int) -> tuple[int, int] | None:
        """The latent (height, width) of ``seed_resize_from`` for a model of latent ``factor``
        (it must be made of multiples of it: nothing is rounded), or None."""
        if self.seed_resize_from is None:
            return None
        width, height = self.seed_resize_from
        if width % factor or height % factor:
            raise InvalidRequest(
                "seed_resize_from",
                f"{width}x{height}",
                f"sides that are multiples of {factor} (this model's latent factor)",
            )
        return height // factor, width // factor

    def _check_pictures(self) -> None:
        for name in PICTURE_FIELDS:
            value = getattr(self, name)
            if value is not None and not isinstance(value, InputPicture):
                raise InvalidRequest(name, value, "a picture (InputPicture) or nothing")
        if self.mask is not None and self.init_image is None:
            raise InvalidRequest("mask", "given", "a mask needs an init_image to inpaint")
        if self.strength is not None:
            allowed = "a number from 0 to 1 (0 keeps the init picture, 1 replaces it)"
            check_fraction("strength", self.strength, allowed)
        if not isinstance(self.resize, bool):
            raise InvalidRequest("resize", self.resize, "true or false")
        if self.resize_mode not in RESIZE_MODES:
            raise InvalidRequest(
                "resize_mode", self.resize_mode, f"one of {', '.join(RESIZE_MODES)}"
            )
        if self.resize_mode != "stretch" and not (self.resize and self.init_image is not None):
            raise InvalidRequest(
                "resize_mode",
                self.resize_mode,
                "stretch, unless an init picture is resized (resize=True, --resize)",
            )
        check_fraction("eta", self.eta, "a number from 0 to 1 (DDIM's eta: 0 is deterministic)")
        self._check_mask_processing()

    def _check_mask_processing(self) -> None:
        check_int("mask_blur", self.mask_blur, 0, MAX_MASK_BLUR)
        if self.padding_mask_crop is not None:
            check_int("padding_mask_crop", self.padding_mask_crop, 0, MAX_SIDE)
        if self.masked_content not in MASKED_CONTENTS:
            raise InvalidRequest(
                "masked_content", self.masked_content, f"one of {', '.join(MASKED_CONTENTS)}"
            )
        if not isinstance(self.overlay, bool):
            raise InvalidRequest("overlay", self.overlay, "true or false")
        if self.mask is None:  # each of them does something to the mask only
            asked = {
                "mask_blur": self.mask_blur != 0,
                "padding_mask_crop": self.padding_mask_crop is not None,
                "masked_content": self.masked_content != "original",
                "overlay": self.overlay,
            }
            for name, on in asked.items():
                if on:
                    allowed = "a mask to work on (inpainting)"
                    raise InvalidRequest(name, getattr(self, name), allowed)
            return
        self._check_mask_options_act()

    def _check_mask_options_act(self) -> None:
        """Refuse mask options that would change nothing in the pictures asked for."""
        strength = self.default_strength if self.strength is None else self.strength
        if self.masked_content != "original" and strength >= 1.0:
            raise InvalidRequest(
                "masked_content",
                self.masked_content,
                "original at strength 1 (inpainting's default), where the masked part starts "
                "from noise alone; the others need a strength below 1",
            )
        if self.mask_blur and not (
            self.overlay or self.padding_mask_crop is not None or self.masked_content != "original"
        ):
            raise InvalidRequest(
                "mask_blur",
                self.mask_blur,
                "0, unless overlay, padding_mask_crop or masked_content uses the blurred mask "
                "(the denoising reads the mask binarised, where a blur changes next to nothing)",
            )
        if self.padding_mask_crop is not None and self.resize_mode != "stretch":
            raise InvalidRequest(
                "resize_mode",
                self.resize_mode,
                "stretch with padding_mask_crop, which resizes the masked area to fit itself",
            )

    @property
    def default_strength(self) -> float:
        """The strength a request without one runs with: diffusers' for its mode."""
        return INPAINT_STRENGTH if self.mask is not None else DEFAULT_STRENGTH

    @property
    def mode(self) -> str:
        """ "txt2img", "img2img" or "inpaint", from the pictures given."""
        if self.init_image is None:
            return "txt2img"
        return "inpaint" if self.mask is not None else "img2img"

    @property
    def prompts(self) -> tuple[str, ...]:
        """The prompts, one per group of ``num_images`` pictures."""
        return self.prompt if isinstance(self.prompt, tuple) else (self.prompt,)

    @property
    def negative_prompts(self) -> tuple[str, ...]:
        """One negative prompt per prompt."""
        if isinstance(self.negative_prompt, tuple):
            return self.negative_prompt
        return (self.negative_prompt,) * len(self.prompts)

    def named_texts(self) -> list[tuple[str, str]]:
        """(field, text) of every prompt and negative prompt the pictures are made from, the
        hires fix's included: "prompt[1]" for the second of a list, "hires.prompt"."""
        texts = []
        for name in ("prompt", "negative_prompt"):
            value = getattr(self, name)
            values = value if isinstance(value, tuple) else (value,)
            texts += [
                (f"{name}[{i}]" if len(values) > 1 else name, t) for i, t in enumerate(values)
            ]
        for name in ("prompt", "negative_prompt"):
            value = getattr(self.hires, name) if self.hires is not None else None
            if value is not None:
                texts.append((f"hires.{name}", value))
        return texts

    @property
    def total_images(self) -> int:
        return len(self.prompts) * self.num_images

    def image_prompts(self) -> list[tuple[str, str]]:
        """(prompt, negative prompt) of every image, in order; each prompt's images together."""
        pairs = zip(self.prompts, self.negative_prompts, strict=True)
        return [pair for pair in pairs for _ in range(self.num_images)]

    def with_seed(self) -> GenerationRequest:
        """This request with a seed (and a variation seed where a variation strength asks for
        one): its own, or one drawn at random (then recorded everywhere)."""
        drawn: dict[str, int] = {}
        if self.seed is None:
            drawn["seed"] = secrets.randbelow(MAX_RANDOM_SEED)
        if self.variation_strength and self.variation_seed is None:
            drawn["variation_seed"] = secrets.randbelow(MAX_RANDOM_SEED)
        return dataclasses.replace(self, **drawn) if drawn else self

    def from_image(self, index: int, **changes: object) -> GenerationRequest:
        """The request whose first picture is this one's picture ``index``: its seeds moved on
        by ``index`` (a seed has been drawn), with ``changes``."""
        variation = self.variation_seed
        return self.replace(
            seed=self.seed + index,
            variation_seed=None if variation is None else variation + index,
            **changes,
        )

    @property
    def variation(self) -> tuple[int, float] | None:
        """(variation seed, strength) where the noise is varied, else None; the seed must have
        been drawn (``with_seed``, which the pipelines' ``resolve_request`` calls)."""
        if not self.variation_strength:
            return None
        if self.variation_seed is None:
            raise ValueError("the variation seed is not drawn yet: call with_seed() first")
        return self.variation_seed, self.variation_strength

    def replace(self, **changes: object) -> GenerationRequest:
        """A copy with some fields changed, validated again."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        """JSON-ready fields: tuples become lists, input pictures their hash and size."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        for key, value in out.items():
            if isinstance(value, tuple):
                out[key] = list(value)
            elif isinstance(value, InputPicture):
                out[key] = {"sha256": value.sha256, "width": value.size[0], "height": value.size[1]}
            elif isinstance(value, HiresFix):
                out[key] = value.to_dict()
        return out

    @classmethod
    def from_dict(
        cls, data: dict, pictures: dict[str, InputPicture] | None = None
    ) -> GenerationRequest:
        """The inverse of ``to_dict``; unknown keys are refused by name.

        A recorded input picture is only a hash: the picture itself must be given in
        ``pictures`` (by field name), and must be the one recorded.
        """
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise InvalidRequest(unknown[0], data[unknown[0]], f"known fields: {sorted(known)}")
        data, pictures = dict(data), pictures or {}
        for name in PICTURE_FIELDS:
            recorded, given = data.get(name), pictures.get(name)
            if recorded is None:
                if given is not None:
                    raise InvalidRequest(name, "given", "nothing: the recorded request has none")
                continue
            if given is None:
                raise InvalidRequest(name, "missing", f"the picture recorded ({_short(recorded)})")
            if given.sha256 != recorded.get("sha256"):
                raise InvalidRequest(
                    name,
                    f"sha256 {given.sha256[:12]}",
                    f"the picture recorded ({_short(recorded)})",
                )
            data[name] = given
        return cls(**data)


def check_size(width: int, height: int, factor: int) -> None:
    """Refuse a size the model cannot produce exactly; nothing is rounded silently."""
    for name, value in (("width", width), ("height", height)):
        if value % factor:
            lower, upper = value - value % factor, value - value % factor + factor
            nearest = f"{lower} or {upper}" if lower else str(upper)
            raise InvalidRequest(
                name, value, f"a multiple of {factor} (this model's latent factor), e.g. {nearest}"
            )


def _short(recorded: object) -> str:
    if not isinstance(recorded, dict):
        return str(recorded)
    size = f"{recorded.get('width')}x{recorded.get('height')}"
    return f"{size}, sha256 {str(recorded.get('sha256', ''))[:12]}"
