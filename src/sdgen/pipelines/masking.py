"""Inpainting's mask processing, as A1111 does it: the mask's edge blurred, only the masked area
repainted at full size and pasted back, the masked part pre-filled, the init picture laid back
over the result.

The crop region, its resizing and the overlay are diffusers' (``VaeImageProcessor``'s
``get_crop_region``, ``resize(resize_mode="fill")``, ``apply_overlay``, which follow A1111's
``masking`` module), so ``padding_mask_crop`` gives diffusers' StableDiffusionInpaintPipeline's
pictures. The blur is diffusers' ``VaeImageProcessor.blur``: PIL's Gaussian blur, where A1111
uses OpenCV's truncated kernel; a blurred edge differs from A1111's by up to 5 levels of 255 at
A1111's default of 4 pixels (17 at 64).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageFilter, ImageOps

from sdgen.errors import InvalidRequest
from sdgen.params import GenerationRequest
from sdgen.pipelines.init_images import PROCESSOR, check_resizable, sized_picture

# A1111's fill (modules/masking.py): the kept colours blurred into the masked part, widest first.
FILL_BLURS = ((256, 1), (64, 1), (16, 2), (4, 4), (2, 2), (0, 1))  # (radius, times laid over)


@dataclass(frozen=True)
class InpaintPictures:
    """The init picture and mask as the denoising sees them (the request's width x height), and
    how its pictures become the request's output."""

    picture: Image.Image  # RGB, cropped to the masked area where padding_mask_crop is given
    mask: Image.Image  # L, 255 = repaint; blurred edges are binarised when turned into latents
    overlay: _Overlay | None

    def finish(self, pictures: list[Image.Image]) -> list[Image.Image]:
        """The denoised pictures as the request's output: pasted back where asked."""
        if self.overlay is None:
            return pictures
        return [self.overlay.apply(picture) for picture in pictures]


class _Overlay:
    """The init picture laid over a result where the mask keeps it: diffusers' apply_overlay,
    with the init picture's layer made once for all the request's pictures (at 4096x4096 it
    takes ~0.2 s, paid per picture by apply_overlay)."""

    def __init__(self, init: Image.Image, mask: Image.Image, crop: tuple | None):
        # init and mask at the output size; mask 0 = the init picture shows, 255 = the result
        self.layer = Image.new("RGBa", init.size)
        self.layer.paste(init.convert("RGBA").convert("RGBa"), mask=ImageOps.invert(mask))
        self.layer = self.layer.convert("RGBA")
        self.crop = crop  # where a repainted crop goes back: x1, y1, x2, y2

    def apply(self, picture: Image.Image) -> Image.Image:
        if self.crop is not None:
            x1, y1, x2, y2 = self.crop
            base = Image.new("RGBA", self.layer.size)
            base.paste(PROCESSOR.resize(picture, y2 - y1, x2 - x1, resize_mode="crop"), (x1, y1))
            picture = base.convert("RGB")
        picture = picture.convert("RGBA")
        picture.alpha_composite(self.layer)
        return picture.convert("RGB")


def inpaint_pictures(request: GenerationRequest) -> InpaintPictures:
    """The resolved request's init picture and mask, processed as its mask options say."""
    init, mask, crop = _prepared_mask(request)
    size = (request.width, request.height)
    if crop is not None:
        picture = PROCESSOR.resize(init.crop(crop), size[1], size[0], resize_mode="fill")
        processed_mask = PROCESSOR.resize(mask.crop(crop), size[1], size[0], resize_mode="fill")
        processed_mask = processed_mask.convert("L")  # "fill" makes an RGB picture
        overlay = _Overlay(init, mask, crop)
    else:
        picture = sized_picture(init, request, "init_image")
        processed_mask = sized_picture(mask, request, "mask")
        overlay = None
        if request.overlay:  # A1111 doubles the blurred mask here: the init picture shows only
            # where the denoising kept it (mask < 1/2), fading out towards the repainted part
            doubled = processed_mask.point(lambda value: min(255, 2 * value))
            overlay = _Overlay(picture, doubled, None)
    if request.masked_content != "original":  # A1111 fills for latent noise and nothing too
        picture = fill(picture, processed_mask)
    return InpaintPictures(picture, processed_mask, overlay)


def check_inpaint_pictures(request: GenerationRequest) -> None:
    """What ``inpaint_pictures`` would refuse (sizes, an empty mask to crop to), checked without
    its costly part (the fill: 1.6 s at 2048x2048 here), as a server checks a job it accepts."""
    init, mask, crop = _prepared_mask(request)
    if crop is None:
        sized_picture(init, request, "init_image", check_only=True)
        sized_picture(mask, request, "mask", check_only=True)


def _prepared_mask(request: GenerationRequest):
    """The init picture (RGB), the mask at its size (L: binarised and blurred as asked) and, for
    padding_mask_crop, the region to repaint."""
    init = request.init_image.image.convert("RGB")
    mask = request.mask.image.convert("L")
    if mask.size != init.size and not request.resize:
        raise InvalidRequest(
            "mask",
            "{}x{}".format(*mask.size),
            f"a mask of the init picture's size ({init.width}x{init.height}), or resize=True "
            "(--resize)",
        )
    if request.mask_blur or request.padding_mask_crop is not None:
        # A1111: binarised first (a JPEG's faint halo would widen the crop), then blurred at
        # the mask's own size
        mask = _binarised(mask)
    if request.mask_blur:
        mask = PROCESSOR.blur(mask, request.mask_blur)
    if request.padding_mask_crop is None:
        return init, mask, None
    if mask.size != init.size:
        mask = mask.resize(init.size, Image.Resampling.LANCZOS)
    crop = _crop_region(mask, request)
    check_resizable(crop[2] - crop[0], crop[3] - crop[1], request, "fill", "init_image")
    return init, mask, crop


def fill(picture: Image.Image, mask: Image.Image) -> Image.Image:
    """A1111's "fill": the masked part painted with the kept colours around it, blurred."""
    kept = Image.new("RGBa", picture.size)  # premultiplied alpha: blurs ignore the masked part
    kept.paste(picture.convert("RGBA").convert("RGBa"), mask=ImageOps.invert(mask))
    filled = Image.new("RGBA", picture.size)
    for radius, times in FILL_BLURS:
        blurred = kept.filter(ImageFilter.GaussianBlur(radius)).convert("RGBA")
        for _ in range(times):
            filled.alpha_composite(blurred)
    return filled.convert("RGB")


def _binarised(mask: Image.Image) -> Image.Image:
    """0 or 255 at one half, as the denoising reads a mask."""
    return mask.point(lambda value: 255 if value >= 128 else 0)


def _crop_region(mask: Image.Image, request: GenerationRequest) -> tuple[int, int, int, int]:
    """The masked area's bounding box, grown by the padding and to the output's aspect ratio."""
    if not np.asarray(mask).any():
        raise InvalidRequest(
            "mask",
            "empty (all black)",
            "a mask with some white to crop to (padding_mask_crop repaints only the masked area)",
        )
    return PROCESSOR.get_crop_region(
        mask, request.width, request.height, pad=request.padding_mask_crop
    )
