"""The hires fix's settings (A1111's "Hires. fix"): a txt2img request's second pass.

The pictures are first made at the request's size; their latents (or decoded pictures) are then
upscaled and denoised again as img2img, ``strength`` of the way, at the larger size. A model
trained at 512x512 composes a 512x512 picture well and a 1024x1024 one badly (repeated subjects);
its second pass adds detail to a composition already made. ``sdgen.pipelines.hires_pass`` runs it.

Light on purpose, like ``sdgen.params``: no torch here.
"""

from __future__ import annotations

from dataclasses import dataclass

from sdgen.checks import check_text, is_number, is_whole
from sdgen.errors import InvalidRequest

# How the first pass's result is brought to the larger size, as A1111's hires upscalers do it
# (shared.latent_upscale_modes and its built-in Lanczos and Nearest upscalers): the latents
# interpolated by torch (mode, antialias), or the decoded pictures resized by PIL and encoded
# again. A1111's label for each is what its infotext's "Hires upscaler" says.
HIRES_UPSCALERS = {
    "latent": "Latent",  # A1111's default
    "latent_antialiased": "Latent (antialiased)",
    "latent_bicubic": "Latent (bicubic)",
    "latent_bicubic_antialiased": "Latent (bicubic antialiased)",
    "latent_nearest": "Latent (nearest)",
    "latent_nearest_exact": "Latent (nearest-exact)",
    "lanczos": "Lanczos",
    "nearest": "Nearest",
}
LATENT_UPSCALERS = tuple(name for name in HIRES_UPSCALERS if name.startswith("latent"))
DEFAULT_HIRES_STRENGTH = 0.7  # A1111's UI default for the second pass's denoising strength
MAX_HIRES_SCALE = 8.0  # A1111's slider stops at 4; the server's pixel limit applies as well
_SCALES_TO_SUGGEST = (1.25, 1.5, 1.75, 2.0, 2.5, 3.0, 4.0)
Size = tuple[int, int]  # (width, height) in pixels


@dataclass(frozen=True)
class HiresFix:
    """The second pass of a txt2img request (A1111's hires fix).

    The larger size is ``scale`` times the request's, or ``width`` x ``height`` where given (A1111's
    "Resize width/height to"): one of them keeps the aspect ratio; both scale the picture to cover
    that size and crop its middle, as A1111 does. ``steps`` are the steps the second pass runs
    (None: the request's), of a schedule of ``int(steps / strength)`` steps, as A1111 counts
    them; ``strength`` (0..1] is how much the upscaled picture is noised again. ``upscaler`` is
    one of ``HIRES_UPSCALERS``; ``sampler`` the second pass's (None: the request's).
    ``prompt`` and ``negative_prompt`` are the second pass's, for every picture (None: the
    request's own, A1111's empty "Hires prompt").
    """

    scale: float = 2.0
    width: int | None = None
    height: int | None = None
    steps: int | None = None
    strength: float = DEFAULT_HIRES_STRENGTH
    upscaler: str = "latent"
    sampler: str | None = None
    prompt: str | None = None
    negative_prompt: str | None = None

    def __post_init__(self) -> None:
        allowed = f"a number from 1 to {MAX_HIRES_SCALE:g}"
        if not is_number(self.scale) or not 1.0 <= self.scale <= MAX_HIRES_SCALE:
            raise InvalidRequest("hires.scale", self.scale, allowed)
        for name in ("width", "height"):
            value = getattr(self, name)
            if value is not None and not (is_whole(value) and 1 <= value <= 65_536):
                raise InvalidRequest(f"hires.{name}", value, "a whole number from 1 to 65536")
        if self.steps is not None and not (is_whole(self.steps) and 1 <= self.steps <= 10_000):
            raise InvalidRequest(
                "hires.steps", self.steps, "a whole number from 1 to 10000 (or none: the steps)"
            )
        if not is_number(self.strength) or not 0.0 < self.strength <= 1.0:
            raise InvalidRequest(
                "hires.strength", self.strength, "a number above 0, at most 1 (1 noises it all)"
            )
        if self.upscaler not in HIRES_UPSCALERS:
            raise InvalidRequest(
                "hires.upscaler", self.upscaler, f"one of {', '.join(HIRES_UPSCALERS)}"
            )
        for name in ("prompt", "negative_prompt"):
            if getattr(self, name) is not None:
                if not isinstance(getattr(self, name), str):
                    raise InvalidRequest(f"hires.{name}", getattr(self, name), "a string or none")
                check_text(f"hires.{name}", getattr(self, name))
        if self.sampler is not None:
            # Imported here: the sampler registry pulls in diffusers, and this module stays light.
            from sdgen.sampling.samplers import resolve_sampler

            sampler = resolve_sampler(self.sampler, field="hires.sampler").name
            object.__setattr__(self, "sampler", sampler)

    def pass_steps(self, steps: int) -> tuple[int, int]:
        """(steps the second pass runs, steps of its schedule) for a request of ``steps``:
        A1111 runs the last ``run`` steps of ``int(run / min(strength, 0.999))``."""
        run = self.steps or steps
        return run, int(run / min(self.strength, 0.999))

    def sizes(self, width: int, height: int, factor: int) -> tuple[Size, Size]:
        """((cover width, cover height), (width, height)) of the second pass for a first pass of
        ``width`` x ``height``: the size the latents are upscaled to, then the size they are
        cropped to (the same unless both ``width`` and ``height`` are given). A1111's
        ``calculate_target_resolution``; a size that is not made of multiples of ``factor`` is
        refused, where A1111 would round it down."""
        if self.width is None and self.height is None:
            size = (int(width * self.scale), int(height * self.scale))
            if size[0] % factor or size[1] % factor:
                raise InvalidRequest(
                    "hires.scale", self.scale, _scale_hint(width, height, factor, size)
                )
            return size, size
        if self.height is None:
            cover = (self.width, self.width * height // width)
        elif self.width is None:
            cover = (self.height * width // height, self.height)
        elif width / height < self.width / self.height:  # wider: cover the width, crop height
            cover = (self.width, self.width * height // width)
        else:
            cover = (self.height * width // height, self.height)
        size = (self.width or cover[0], self.height or cover[1])
        for name, value in zip(("hires.width", "hires.height"), size, strict=True):
            if value % factor:
                given = getattr(self, name.split(".")[1]) is not None
                why = "" if given else f" (the {width}x{height} picture's aspect ratio gives it)"
                raise InvalidRequest(
                    name, value, f"a multiple of {factor}, this model's latent factor{why}"
                )
        return cover, size

    def to_dict(self) -> dict:
        return {name: getattr(self, name) for name in self.__dataclass_fields__}

    @classmethod
    def from_value(cls, value: object) -> HiresFix | None:
        """A ``hires`` field as requests carry it: None, a HiresFix, or its dict."""
        if value is None or isinstance(value, HiresFix):
            return value
        if not isinstance(value, dict):
            raise InvalidRequest("hires", value, "an object of hires settings, or nothing")
        unknown = sorted(set(value) - set(cls.__dataclass_fields__))
        if unknown:
            known = ", ".join(cls.__dataclass_fields__)
            raise InvalidRequest(f"hires.{unknown[0]}", value[unknown[0]], f"known: {known}")
        return cls(**value)


def _scale_hint(width: int, height: int, factor: int, size: tuple[int, int]) -> str:
    """What to give instead of a scale whose size is not made of multiples of ``factor``."""
    exact = [
        f"{s:g} ({int(width * s)}x{int(height * s)})"
        for s in _SCALES_TO_SUGGEST
        if int(width * s) % factor == 0 and int(height * s) % factor == 0
    ]
    hint = f"e.g. {' or '.join(exact[:2])}" if exact else "hires.width and hires.height"
    return (
        f"a scale that makes {width}x{height} a size of multiples of {factor} (this model's "
        f"latent factor), not {size[0]}x{size[1]}: {hint}"
    )
