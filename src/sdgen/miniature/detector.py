"""Read a picture of the miniature dataset back: the shape, its colour and the background.

The rule (numpy only, deterministic), made to grade a small generative model's pictures, whose
edges are soft, colours shifted and pixels a little noisy:

1. Pictures of 128 pixels a side or more are box-averaged down by a whole factor (a 512 picture
   is read at 64): the same thresholds then hold at every size, and noise averages out.
2. Background: the per-channel median of the outer ring (1/32 of the side, at least one pixel),
   named by the nearest palette colour. If fewer than half of the ring's pixels lie near that
   median, the picture has no plain background and nothing is reported.
3. Shape colour: of the pixels farther from the background than half the palette's closest
   separation (64), the per-channel median of the farther half (the shape's core, not its soft
   edge), named by the nearest palette colour. Nothing is reported if too few pixels stand out,
   or if they name the background's own colour.
4. Shape mask: the pixels nearer the shape's colour than the background's (past half-way along
   the line between them, so soft edges split where the drawn edge was), keeping the largest
   4-connected region so that specks elsewhere add nothing to its area or centroid.
5. Shape: each shape's template (``SHAPE_KINDS[name].covers``) is placed on the mask as that
   shape would have to be to give the mask's area and centroid (a square, a circle and a triangle
   of one area differ in size, pi/4 : 1 : 1/2 of their box, and the triangle's centroid sits 2/3
   down); the template with the highest intersection over union with the mask wins. Area and
   centroid barely move when blur eats a triangle's tip or rounds a square's corners, where the
   bounding box would.

Nearest named colour is plain Euclidean distance in RGB: the palette is saturated and spread out
(no two colours closer than 128), so any shift under 64 still names the right colour, and a
perceptual space would add nothing but code.
"""

from __future__ import annotations

import math
from itertools import combinations

import numpy as np
from PIL import Image

from sdgen.errors import InvalidRequest
from sdgen.miniature.shapes import COLORS, SHAPE_KINDS, Attributes

# What the detector reads: the same three fields a prompt asks for, None where nothing is seen,
# so that ``parse_prompt(prompt)`` and ``detect(picture)`` compare field by field.
Detection = Attributes

WORK_SIZE = 64  # larger pictures are box-averaged to 64..127 pixels on their short side
RING = 1 / 32  # width of the border ring read as background, as a fraction of the side
MIN_SHAPE_FRACTION = 0.01  # the smallest drawn shape (a triangle a third of the side) covers 5.5%
MIN_SIDE = 8
CORE_QUANTILE = 0.5  # the shape's colour is read from its pixels farthest from the background


def color_separation() -> float:
    """The smallest RGB distance between two palette colours (128 for the shipped palette)."""
    return min(
        float(np.linalg.norm(np.subtract(a, b))) for a, b in combinations(COLORS.values(), 2)
    )


def nearest_color(rgb: np.ndarray) -> str:
    """The palette colour nearest to ``rgb`` (3 values in 0..255) in Euclidean RGB distance."""
    names = list(COLORS)
    palette = np.array([COLORS[name] for name in names], dtype=np.float64)  # (C, 3)
    return names[int(np.argmin(np.linalg.norm(palette - np.asarray(rgb), axis=-1)))]


def detect(image: Image.Image | np.ndarray) -> Detection:
    """Read the shape, its colour and the background from a picture.

    Args:
        image: a PIL picture, or an (H, W, 3) uint8 array; any size from 8 pixels a side.

    Returns:
        The detection; ``shape`` and ``color`` are ``None`` when no shape stands out from the
        background, and all three are ``None`` when the border is not one plain colour.
    """
    pixels = _working_pixels(image)  # (H, W, 3) float64 in 0..255
    threshold = color_separation() / 2
    background_rgb = _background_rgb(pixels, threshold)
    if background_rgb is None:
        return Detection()
    background = nearest_color(background_rgb)
    nothing = Detection(background=background)
    candidates = np.linalg.norm(pixels - background_rgb, axis=-1) > threshold  # (H, W)
    if candidates.mean() < MIN_SHAPE_FRACTION:
        return nothing
    shape_rgb = _core_rgb(pixels[candidates], background_rgb)
    color = nearest_color(shape_rgb)
    if color == background:
        return nothing
    mask = _largest_region(_nearer_to(pixels, shape_rgb, background_rgb))
    if mask.mean() < MIN_SHAPE_FRACTION:
        return nothing
    return Detection(_classify(mask), color, background)


def _working_pixels(image: Image.Image | np.ndarray) -> np.ndarray:
    """The picture as (H, W, 3) float64, box-averaged to 64..127 pixels on its short side."""
    if isinstance(image, Image.Image):
        array = np.asarray(image.convert("RGB"))
    else:
        array = np.asarray(image)
        if array.dtype != np.uint8 or array.ndim != 3 or array.shape[-1] != 3:
            raise InvalidRequest("image", f"{array.dtype} {array.shape}", "(H, W, 3) uint8 pixels")
    height, width = array.shape[:2]
    if min(height, width) < MIN_SIDE:
        raise InvalidRequest("image", f"{width}x{height}", f"at least {MIN_SIDE} pixels a side")
    factor = min(height, width) // WORK_SIZE
    if factor < 2:
        return array.astype(np.float64)
    height, width = height // factor, width // factor
    blocks = array[: height * factor, : width * factor].astype(np.float64)
    return blocks.reshape(height, factor, width, factor, 3).mean(axis=(1, 3))


def _background_rgb(pixels: np.ndarray, threshold: float) -> np.ndarray | None:
    """The border ring's median colour, or ``None`` if most of the ring is not near it."""
    height, width = pixels.shape[:2]
    ring_width = max(1, round(min(height, width) * RING))
    ring = np.ones((height, width), dtype=bool)
    ring[ring_width:-ring_width, ring_width:-ring_width] = False
    border = pixels[ring]  # (N, 3)
    median = np.median(border, axis=0)
    near = np.linalg.norm(border - median, axis=-1) <= threshold
    return median if near.mean() >= 0.5 else None


def _core_rgb(candidates: np.ndarray, background_rgb: np.ndarray) -> np.ndarray:
    """The shape's colour: the median of the candidates farthest from the background.

    Soft edges mix the two colours, and on a small shape they are many of its pixels (white and
    black mix to a grey the palette names purple); the far half is the shape's untouched core.
    """
    distance = np.linalg.norm(candidates - background_rgb, axis=-1)  # (N,)
    core = candidates[distance >= np.quantile(distance, CORE_QUANTILE)]
    return np.median(core, axis=0)


def _nearer_to(pixels: np.ndarray, shape_rgb: np.ndarray, background_rgb: np.ndarray) -> np.ndarray:
    """Pixels past half-way from the background colour towards the shape's, as (H, W) bool."""
    axis = shape_rgb - background_rgb
    along = (pixels - background_rgb) @ axis / float(axis @ axis)  # 0 at background, 1 at shape
    return along > 0.5


def _largest_region(mask: np.ndarray) -> np.ndarray:
    """The largest 4-connected region of the mask (first found on ties)."""
    height, width = mask.shape
    inside = mask.tolist()  # plain lists: the flood fill is per pixel, and lists are faster there
    labels = [[0] * width for _ in range(height)]
    best_label, best_size, label = 0, 0, 0
    for y, x in zip(*np.nonzero(mask), strict=True):
        if labels[y][x]:
            continue
        label += 1
        size = _flood(inside, labels, int(y), int(x), label)
        if size > best_size:
            best_label, best_size = label, size
    return np.array(labels) == best_label


def _flood(inside: list[list[bool]], labels: list[list[int]], y: int, x: int, label: int) -> int:
    """Give ``label`` to the 4-connected region of ``inside`` holding (y, x); return its size."""
    height, width = len(inside), len(inside[0])
    labels[y][x] = label
    stack, size = [(y, x)], 0
    while stack:
        y, x = stack.pop()
        size += 1
        for ny, nx in ((y - 1, x), (y + 1, x), (y, x - 1), (y, x + 1)):
            if 0 <= ny < height and 0 <= nx < width and inside[ny][nx] and not labels[ny][nx]:
                labels[ny][nx] = label
                stack.append((ny, nx))
    return size


def _classify(mask: np.ndarray) -> str:
    """The shape whose template, placed by the mask's area and centroid, overlaps it best."""
    rows, cols = np.nonzero(mask)
    area = float(mask.sum())
    cy, cx = rows.mean() + 0.5, cols.mean() + 0.5  # pixel (j, i) spans [j, j + 1] x [i, i + 1]
    height, width = mask.shape
    scores = {}
    for name, kind in SHAPE_KINDS.items():
        # The box a shape of this kind would need to cover this area around this centroid;
        # unlike the mask's bounding box, blur (a lost triangle tip) and specks barely move it.
        size = math.sqrt(area / kind.fill)
        left, top = cx - size / 2, cy - kind.depth * size
        u = ((np.arange(width) + 0.5 - left) / size)[None, :]  # (1, W)
        v = ((np.arange(height) + 0.5 - top) / size)[:, None]  # (H, 1)
        scores[name] = _iou(mask, kind.covers(u, v))
    return max(scores, key=scores.__getitem__)


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union of two boolean masks of one shape."""
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 0.0
