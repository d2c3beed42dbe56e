"""The miniature model's dataset: pictures of one shape on a plain background, with captions.

A scene is one shape (circle, square, upright triangle) in one colour on a background of another
colour, with a random size (a third to two thirds of the side) and position (fully inside). Its
caption follows the grammar ``a {color} {shape} on a {background} background``, or a paraphrase, or
a partial form that leaves the shape's colour and/or the background open, so that the model learns
what a prompt fixes and what it leaves to chance.

Everything is deterministic: sample ``i`` of a dataset with seed ``s`` is drawn from its own
generator seeded ``(s, i)``, so it is the same picture and caption whatever ``n`` is.

    samples = make_dataset(1000, seed=0)          # list of Sample(image, caption, scene)
    pixels = stack_images(samples)                # (1000, 64, 64, 3) uint8
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from sdgen.errors import InvalidRequest

RGB = tuple[int, int, int]
Box = tuple[float, float, float, float]  # left, top, right, bottom in pixels

# Saturated, far-apart colours, so that the nearest named colour (plain Euclidean RGB distance,
# see detector.py) survives the blur, shifts and noise of a small generative model. The closest
# pairs are red/orange and orange/yellow, 128 apart; every other pair is at least 143 apart.
COLORS: dict[str, RGB] = {
    "red": (255, 0, 0),
    "green": (0, 192, 0),
    "blue": (0, 0, 255),
    "yellow": (255, 255, 0),
    "purple": (128, 0, 192),
    "orange": (255, 128, 0),
    "white": (255, 255, 255),
    "black": (0, 0, 0),
}

SUPERSAMPLING = 4  # shapes are drawn 4x larger and box-filtered down: smooth, deterministic edges
MIN_SIZE, MAX_SIZE = 1 / 3, 2 / 3  # shape size as a fraction of the picture's side
MARGIN = 1 / 32  # free border (2 px at 64): the detector reads the background from the outer ring


@dataclass(frozen=True)
class ShapeKind:
    """How a shape is drawn into its box, and which points of the unit box it covers."""

    draw: Callable[[ImageDraw.ImageDraw, Box, RGB], None]
    # (u, v) in [0, 1]^2, v pointing down -> bool mask; the detector's template for the shape.
    covers: Callable[[np.ndarray, np.ndarray], np.ndarray]
    fill: float  # the fraction of its box it covers
    depth: float  # how far down its box its centroid lies (0 top, 1 bottom)


def _draw_circle(draw: ImageDraw.ImageDraw, box: Box, fill: RGB) -> None:
    """A circle inscribed in the box."""
    draw.ellipse(box, fill=fill)


def _draw_square(draw: ImageDraw.ImageDraw, box: Box, fill: RGB) -> None:
    """An axis-aligned square filling the box."""
    draw.rectangle(box, fill=fill)


def _draw_triangle(draw: ImageDraw.ImageDraw, box: Box, fill: RGB) -> None:
    """An upright isosceles triangle: apex at the top middle, base along the bottom."""
    left, top, right, bottom = box
    draw.polygon([((left + right) / 2, top), (right, bottom), (left, bottom)], fill=fill)


def _circle_covers(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Points inside the circle inscribed in the unit box."""
    return (u - 0.5) ** 2 + (v - 0.5) ** 2 <= 0.25


def _square_covers(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Points inside the unit box."""
    return (u >= 0) & (u <= 1) & (v >= 0) & (v <= 1)


def _triangle_covers(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Points inside the upright triangle of the unit box (half as wide as it is low)."""
    return (v >= 0) & (v <= 1) & (np.abs(u - 0.5) <= v / 2)


SHAPE_KINDS: dict[str, ShapeKind] = {
    "circle": ShapeKind(_draw_circle, _circle_covers, fill=math.pi / 4, depth=1 / 2),
    "square": ShapeKind(_draw_square, _square_covers, fill=1.0, depth=1 / 2),
    "triangle": ShapeKind(_draw_triangle, _triangle_covers, fill=1 / 2, depth=2 / 3),
}
SHAPES: tuple[str, ...] = tuple(SHAPE_KINDS)
ATTRIBUTES = ("shape", "color", "background")  # the fields of Attributes, for per-field scores


@dataclass(frozen=True)
class Attributes:
    """What a prompt asks for or a picture shows; ``None`` where it is open or unreadable."""

    shape: str | None = None
    color: str | None = None
    background: str | None = None


@dataclass(frozen=True)
class Scene:
    """One picture's content: a ``size`` x ``size`` shape centred at (``cx``, ``cy``) pixels."""

    shape: str
    color: str
    background: str
    cx: float
    cy: float
    size: float

    def __post_init__(self) -> None:
        if self.shape not in SHAPE_KINDS:
            raise InvalidRequest("shape", self.shape, f"one of {', '.join(SHAPES)}")
        for name in ("color", "background"):
            if getattr(self, name) not in COLORS:
                raise InvalidRequest(name, getattr(self, name), f"one of {', '.join(COLORS)}")
        if self.background == self.color:
            raise InvalidRequest("background", self.background, "a colour other than the shape's")
        if not self.size > 0:
            raise InvalidRequest("size", self.size, "a positive number of pixels")

    @property
    def attributes(self) -> Attributes:
        """The scene's shape, colour and background, as a prompt or the detector gives them."""
        return Attributes(self.shape, self.color, self.background)

    @property
    def box(self) -> Box:
        """The shape's bounding box (left, top, right, bottom) in pixels."""
        half = self.size / 2
        return (self.cx - half, self.cy - half, self.cx + half, self.cy + half)


@dataclass(frozen=True)
class Sample:
    """One dataset item: the picture, its caption, and the scene both were made from."""

    image: Image.Image
    caption: str
    scene: Scene


@dataclass(frozen=True)
class CaptionTemplate:
    """A ``str.format`` pattern over ``color``, ``shape`` and ``background``, and its weight."""

    text: str
    weight: float


# The grammar form is the most common, so it is always understood; the partial forms teach the
# model that an unnamed colour or background is free; the paraphrases, that wording may vary.
CAPTION_TEMPLATES: dict[str, CaptionTemplate] = {
    "full": CaptionTemplate("a {color} {shape} on a {background} background", 0.40),
    "full_over": CaptionTemplate("a {color} {shape} over a {background} background", 0.05),
    "full_list": CaptionTemplate("{color} {shape}, {background} background", 0.05),
    "color_shape": CaptionTemplate("a {color} {shape}", 0.18),
    "shape_background": CaptionTemplate("a {shape} on a {background} background", 0.18),
    "shape": CaptionTemplate("a {shape}", 0.14),
}
FULL_TEMPLATE = "full"


def _check_image_size(image_size: int) -> None:
    """Raise if the picture's side is not a usable whole number of pixels."""
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 16:
        raise InvalidRequest("image_size", image_size, "a whole number of pixels, at least 16")


def _pick(rng: np.random.Generator, names: list[str]) -> str:
    """One name, uniformly."""
    return names[int(rng.integers(len(names)))]


def random_scene(
    rng: np.random.Generator,
    image_size: int = 64,
    *,
    shape: str | None = None,
    color: str | None = None,
    background: str | None = None,
) -> Scene:
    """Draw a scene; the attributes given are kept and only the others are drawn.

    Args:
        rng: the generator every draw comes from.
        image_size: the picture's side in pixels.
        shape, color, background: fixed attributes (e.g. from ``parse_prompt``); ``None`` draws.

    Returns:
        A scene whose shape, fully inside with a margin, is a third to two thirds of the side.
    """
    _check_image_size(image_size)
    shape = shape or _pick(rng, list(SHAPES))
    color = color or _pick(rng, [name for name in COLORS if name != background])
    background = background or _pick(rng, [name for name in COLORS if name != color])
    size = rng.uniform(MIN_SIZE, MAX_SIZE) * image_size
    low, high = MARGIN * image_size + size / 2, (1 - MARGIN) * image_size - size / 2
    cx, cy = rng.uniform(low, high), rng.uniform(low, high)
    return Scene(shape, color, background, float(cx), float(cy), float(size))


def render(scene: Scene, image_size: int = 64) -> Image.Image:
    """Draw the scene as an ``image_size`` x ``image_size`` RGB picture with smooth edges."""
    _check_image_size(image_size)
    left, top, right, bottom = scene.box
    if left < 0 or top < 0 or right > image_size or bottom > image_size:
        raise InvalidRequest("scene", scene, f"a shape fully inside {image_size}x{image_size}")
    big = image_size * SUPERSAMPLING
    canvas = Image.new("RGB", (big, big), COLORS[scene.background])
    # PIL's boxes include their right and bottom pixel, hence the - 1 on the far edges.
    k = SUPERSAMPLING
    box = (left * k, top * k, right * k - 1, bottom * k - 1)
    SHAPE_KINDS[scene.shape].draw(ImageDraw.Draw(canvas), box, COLORS[scene.color])
    return canvas.resize((image_size, image_size), Image.Resampling.BOX)


def _with_articles(text: str) -> str:
    """Write "an" before a vowel ("an orange circle"), as people do and as CLIP has read."""
    return re.sub(r"\ba (?=[aeiou])", "an ", text)


def _fill(text: str, attributes: Attributes) -> str:
    """A caption template filled in with the attributes, articles made right."""
    filled = text.format(
        shape=attributes.shape, color=attributes.color, background=attributes.background
    )
    return _with_articles(filled)


def format_caption(scene: Scene, template: str) -> str:
    """The scene's caption in the named template of ``CAPTION_TEMPLATES``."""
    if template not in CAPTION_TEMPLATES:
        raise InvalidRequest("template", template, f"one of {', '.join(CAPTION_TEMPLATES)}")
    return _fill(CAPTION_TEMPLATES[template].text, scene.attributes)


def full_caption(scene: Scene) -> str:
    """The grammar form: ``a {color} {shape} on a {background} background``."""
    return format_caption(scene, FULL_TEMPLATE)


def caption(scene: Scene, rng: np.random.Generator) -> str:
    """A caption in a template drawn by weight: the full grammar, a paraphrase or a partial one."""
    names = list(CAPTION_TEMPLATES)
    weights = np.array([CAPTION_TEMPLATES[name].weight for name in names])
    return format_caption(scene, names[int(rng.choice(len(names), p=weights / weights.sum()))])


def _one_of(kind: str, found: list[str], prompt: str) -> str | None:
    """The one value a prompt names for an attribute, ``None`` if none; raise if it names two."""
    if len(set(found)) > 1:
        raise InvalidRequest("prompt", prompt, f"name at most one {kind}, not {sorted(set(found))}")
    return found[0] if found else None


def parse_prompt(prompt: str) -> Attributes:
    """What a prompt asks for: a shape word, a colour word, a colour word before "background".

    Word order and filler words are free, so the grammar, its paraphrases and its partial forms
    all parse ("red circle, blue background", "a triangle"); ``None`` marks what is left open.
    """
    words = re.findall(r"[a-z]+", prompt.lower())
    shapes = [word for word in words if word in SHAPE_KINDS]
    colors, backgrounds = [], []
    for word, following in zip(words, [*words[1:], ""], strict=True):
        if word in COLORS:
            (backgrounds if following == "background" else colors).append(word)
    return Attributes(
        shape=_one_of("shape", shapes, prompt),
        color=_one_of("shape colour", colors, prompt),
        background=_one_of("background colour", backgrounds, prompt),
    )


def all_full_prompts() -> list[str]:
    """The grammar prompt of every shape, colour and background: 3 * 8 * 7 = 168 prompts."""
    return [
        _fill(CAPTION_TEMPLATES[FULL_TEMPLATE].text, attributes) for attributes in all_attributes()
    ]


def all_attributes() -> list[Attributes]:
    """Every (shape, colour, background) a scene can have, colour-major."""
    return [
        Attributes(shape, color, background)
        for color in COLORS
        for shape in SHAPES
        for background in COLORS
        if background != color
    ]


def make_sample(seed: int, index: int, image_size: int = 64) -> Sample:
    """Sample ``index`` of the dataset with ``seed``, drawn from its own generator."""
    for name, value in (("seed", seed), ("index", index)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise InvalidRequest(name, value, "a whole number, 0 or more")
    rng = np.random.default_rng([seed, index])
    scene = random_scene(rng, image_size)
    return Sample(render(scene, image_size), caption(scene, rng), scene)


def iter_dataset(seed: int, image_size: int = 64, start: int = 0) -> Iterator[Sample]:
    """Samples ``start``, ``start + 1``, ... of the dataset with ``seed``, without end."""
    index = start
    while True:
        yield make_sample(seed, index, image_size)
        index += 1


def make_dataset(n: int, seed: int, image_size: int = 64) -> list[Sample]:
    """The first ``n`` samples of the dataset with ``seed``.

    Args:
        n: how many samples.
        seed: the dataset's seed; the same seed gives byte-identical pictures and captions.
        image_size: the pictures' side in pixels.

    Returns:
        ``n`` samples; sample ``i`` does not depend on ``n``.
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise InvalidRequest("n", n, "a whole number, 0 or more")
    return [make_sample(seed, index, image_size) for index in range(n)]


def stack_images(samples: list[Sample]) -> np.ndarray:
    """The samples' pictures as one (N, H, W, 3) uint8 array, for training code."""
    return np.stack([np.asarray(sample.image, dtype=np.uint8) for sample in samples])
