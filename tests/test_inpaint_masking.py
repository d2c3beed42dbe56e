"""Inpainting's mask processing (A1111's): blur, only the masked area, masked content, overlay."""

from __future__ import annotations

import diffusers
import numpy as np
import pytest
import torch
from helpers import TOLERANCE, max_pixel_diff
from PIL import Image, ImageFilter, ImageOps
from test_img2img import NEGATIVE, PROMPT, SEED, STEPS, _load, _picture, _with_scheduler

from sdgen.errors import GenerationStopped, InvalidRequest
from sdgen.media.metadata import ImageRecord, parse_parameters
from sdgen.params import GenerationRequest, InputPicture
from sdgen.pipelines.generate import generate
from sdgen.pipelines.masking import fill

INIT_WIDTH, INIT_HEIGHT = 72, 60  # the init picture: not the processing size, not multiples of 8
WIDTH, HEIGHT = 48, 32  # where only the masked area is repainted, its size while denoising


def _box_mask(width=INIT_WIDTH, height=INIT_HEIGHT, box=(40, 12, 60, 30)) -> Image.Image:
    """White (repaint) inside ``box`` (x1, y1, x2, y2), black elsewhere."""
    array = np.zeros((height, width), dtype=np.uint8)
    x1, y1, x2, y2 = box
    array[y1:y2, x1:x2] = 255
    return Image.fromarray(array, mode="L")


def _request(**changes) -> GenerationRequest:
    fields = {
        "prompt": PROMPT,
        "negative_prompt": NEGATIVE,
        "steps": STEPS,
        "seed": SEED,
        "sampler": "euler_a",
        "init_image": InputPicture.from_image(_picture(INIT_WIDTH, INIT_HEIGHT)),
        "mask": InputPicture.from_image(_box_mask()),
        "strength": 0.7,
        **changes,
    }
    return GenerationRequest(**fields)


@pytest.mark.parametrize(
    ("kind", "strength"), [("ordinary", 0.7), ("ordinary", 1.0), ("inpainting", 0.7)]
)
def test_only_the_masked_area_matches_diffusers_padding_mask_crop(
    kind,
    strength,
    tiny_sd1,
    sd1_model,
    inpaint_folder,
):
    """mask_blur + padding_mask_crop = diffusers' pipeline given the blurred mask and
    padding_mask_crop: the crop, its resizing, the denoising and the paste back."""
    from sdgen.models.loader import load_model

    folder = tiny_sd1 if kind == "ordinary" else inpaint_folder
    model = sd1_model if kind == "ordinary" else load_model(inpaint_folder, device="cpu")
    request = _request(
        mask_blur=3, padding_mask_crop=4, width=WIDTH, height=HEIGHT, strength=strength
    )
    result = generate(model, request.replace(num_images=2))
    assert [image.size for image in result.images] == [(INIT_WIDTH, INIT_HEIGHT)] * 2
    pipe = _with_scheduler(_load(diffusers.StableDiffusionInpaintPipeline, folder), "euler_a")
    blurred = pipe.mask_processor.blur(_box_mask(), blur_factor=3)
    for i, image in enumerate(result.images):
        reference = pipe(
            prompt=PROMPT,
            negative_prompt=NEGATIVE,
            image=_picture(INIT_WIDTH, INIT_HEIGHT),
            mask_image=blurred,
            padding_mask_crop=4,
            strength=strength,
            num_inference_steps=STEPS,
            guidance_scale=7.5,
            height=HEIGHT,
            width=WIDTH,
            generator=[torch.Generator("cpu").manual_seed(SEED + i)],
        ).images[0]
        assert max_pixel_diff(image, reference) <= TOLERANCE, f"image {i}"


def test_only_the_masked_area_is_changed_and_pasted_back(sd1_model):
    init = _picture(INIT_WIDTH, INIT_HEIGHT)
    image = generate(sd1_model, _request(padding_mask_crop=2, width=WIDTH, height=HEIGHT)).images[0]
    changed = np.abs(np.asarray(image, np.int16) - np.asarray(init, np.int16)).max(axis=2)
    ys, xs = np.nonzero(changed)
    assert len(xs) > 0  # the masked box was repainted ...
    assert xs.min() >= 40 and xs.max() < 60 and ys.min() >= 12 and ys.max() < 30  # ... alone


def test_overlay_keeps_the_init_picture_outside_the_mask(sd1_model):
    init, mask = _picture(72, 56), _box_mask(72, 56)
    request = _request(init_image=InputPicture.from_image(init), mask=InputPicture.from_image(mask))
    with_overlay = np.asarray(generate(sd1_model, request.replace(overlay=True)).images[0])
    without = np.asarray(generate(sd1_model, request).images[0])
    keep = np.asarray(mask) == 0
    assert np.array_equal(with_overlay[keep], np.asarray(init)[keep])
    assert not np.array_equal(without[keep], with_overlay[keep])  # the VAE changed them
    assert np.array_equal(with_overlay[~keep], without[~keep])  # the repainted part as it was


def test_a_blurred_mask_blends_the_seam(sd1_model):
    request = _request(width=72, height=56, resize=True, overlay=True)
    sharp = np.asarray(generate(sd1_model, request).images[0], np.float32)
    soft = np.asarray(generate(sd1_model, request.replace(mask_blur=4)).images[0], np.float32)
    init = np.asarray(_picture(INIT_WIDTH, INIT_HEIGHT).resize((72, 56), Image.LANCZOS), np.float32)
    # Just outside the box's left edge the sharp overlay shows the init picture exactly; the
    # blurred one mixes in the repainted picture there.
    column = slice(13, 26), 38
    assert np.array_equal(sharp[column], init[column])
    assert not np.array_equal(soft[column], init[column])


def test_fill_paints_the_masked_part_with_the_colours_around_it():
    array = np.zeros((32, 48, 3), np.uint8)
    array[:, :24] = (200, 30, 30)  # red left half
    array[:, 24:] = (30, 30, 200)  # blue right half
    picture = Image.fromarray(array)
    mask = _box_mask(48, 32, box=(36, 8, 48, 24))  # inside the blue half
    filled = np.asarray(fill(picture, mask), np.int16)
    keep = np.asarray(mask) == 0
    assert np.abs(filled[keep] - array[keep]).max() <= 1  # kept part unchanged (alpha rounding)
    inside = filled[8:24, 36:48]
    assert (inside[..., 2] > 150).all() and (inside[..., 0] < 80).all()  # blue from around it


@pytest.mark.parametrize("content", ["fill", "latent_noise", "latent_nothing"])
def test_masked_content_changes_the_start_and_keeps_seeds_per_picture(sd1_model, content):
    request = _request(width=72, height=56, resize=True)
    original = generate(sd1_model, request).images[0]
    batch = generate(sd1_model, request.replace(masked_content=content, num_images=2))
    alone = generate(sd1_model, request.replace(masked_content=content, seed=SEED + 1))
    assert max_pixel_diff(batch.images[1], alone.images[0]) <= TOLERANCE
    assert max_pixel_diff(batch.images[0], original) > TOLERANCE  # a different start
    again = generate(sd1_model, request.replace(masked_content=content, seed=SEED + 1))
    assert np.array_equal(np.asarray(again.images[0]), np.asarray(alone.images[0]))


def test_the_overlay_is_a1111s_blurred_mask_doubled_over_the_result(sd1_model, monkeypatch):
    """Whole-picture overlay, built by hand as A1111 builds it: the mask binarised, blurred at
    its own size, resized to the output size, doubled; the init picture laid over the result
    where it is below one half. A grey patch (below one half) and a half-size mask check the
    order (binarise, blur, resize)."""
    from sdgen.pipelines import masking

    mask = np.asarray(_box_mask(36, 28, box=(20, 6, 30, 14)), np.uint8).copy()
    mask[20:26, 2:10] = 100  # grey: binarised away before the blur
    init = _picture(72, 56)
    request = _request(
        init_image=InputPicture.from_image(init),
        mask=InputPicture.from_image(Image.fromarray(mask, mode="L")),
        resize=True,
        mask_blur=2,
        overlay=True,
    )
    seen = []
    apply = masking._Overlay.apply
    monkeypatch.setattr(masking._Overlay, "apply", lambda self, p: seen.append(p) or apply(self, p))
    result = generate(sd1_model, request).images[0]
    binary = Image.fromarray(np.where(mask >= 128, 255, 0).astype(np.uint8), mode="L")
    blurred = binary.filter(ImageFilter.GaussianBlur(2)).resize((72, 56), Image.LANCZOS)
    doubled = blurred.point(lambda v: min(255, 2 * v))
    layer = Image.new("RGBa", (72, 56))
    layer.paste(init.convert("RGBA").convert("RGBa"), mask=ImageOps.invert(doubled))
    expected = seen[0].convert("RGBA")
    expected.alpha_composite(layer.convert("RGBA"))
    assert np.array_equal(np.asarray(result), np.asarray(expected.convert("RGB")))
    far = np.asarray(doubled) == 0  # away from the box (and the grey patch): the init picture
    assert np.array_equal(np.asarray(result)[far], np.asarray(init)[far])


def test_a_stopped_crop_is_pasted_back(sd1_model):
    def stop_at_2(step):
        if step.index == 1:
            raise GenerationStopped(2, step.total, step.denoised)

    request = _request(padding_mask_crop=2, width=WIDTH, height=HEIGHT)
    result = generate(sd1_model, request, stop_at_2)
    assert result.stopped_at is not None and result.images[0].size == (INIT_WIDTH, INIT_HEIGHT)
    outside = np.asarray(_box_mask()) == 0
    init = np.asarray(_picture(INIT_WIDTH, INIT_HEIGHT))
    assert np.array_equal(np.asarray(result.images[0])[outside], init[outside])


def test_options_that_would_change_nothing_are_refused():
    with pytest.raises(InvalidRequest, match="masked_content.*strength below 1"):
        _request(masked_content="fill", strength=1.0)
    with pytest.raises(InvalidRequest, match="masked_content.*strength below 1"):
        _request(masked_content="latent_noise", strength=None)  # inpainting's default: 1
    with pytest.raises(InvalidRequest, match="mask_blur.*overlay, padding_mask_crop"):
        _request(mask_blur=4)
    for enough in ({"overlay": True}, {"padding_mask_crop": 0}, {"masked_content": "fill"}):
        assert _request(mask_blur=4, **enough).mask_blur == 4
    with pytest.raises(InvalidRequest, match="resize_mode.*stretch with padding_mask_crop"):
        _request(padding_mask_crop=4, resize=True, resize_mode="crop")


@pytest.mark.parametrize(
    ("size", "changes", "message"),
    [
        ((262144, 16), {"resize_mode": "crop"}, "nearer the output's shape.*cover"),
        ((2000, 2), {"resize_mode": "fill"}, "nearer the output's shape.*0 pixels"),
        ((1, 1000), {"padding_mask_crop": 0}, "0 pixels"),
    ],
)
def test_degenerate_resizes_are_refused_naming_the_init_picture(sd1_model, size, changes, message):
    """A resize that would go through a huge picture (crop) or make a side of 0 (fill, or the
    masked area of a 1-pixel-wide picture) is refused before anything is resized."""
    from sdgen.engine.limits import Limits, preflight

    picture = InputPicture.from_image(Image.new("RGB", size, "red"))
    mask = InputPicture.from_image(Image.new("L", size, 255))
    request = GenerationRequest(
        prompt="x", init_image=picture, mask=mask, width=64, height=64, resize=True, **changes
    )
    with pytest.raises(InvalidRequest, match=f"init_image.*{message}"):
        preflight(sd1_model, request, Limits())


def test_the_pasted_back_picture_is_held_to_the_servers_size_limit(sd1_model):
    from sdgen.engine.limits import Limits, preflight

    request = _request(padding_mask_crop=4, width=WIDTH, height=HEIGHT)
    assert preflight(sd1_model, request, Limits()).padding_mask_crop == 4
    with pytest.raises(InvalidRequest, match="init_image.*72x60.*at most 4096 pixels"):
        preflight(sd1_model, request, Limits(max_pixels=64 * 64))


def test_the_options_need_a_mask_and_valid_values():
    picture = InputPicture.from_image(_picture())
    for field, value in [
        ("mask_blur", 4),
        ("padding_mask_crop", 0),
        ("masked_content", "fill"),
        ("overlay", True),
    ]:
        with pytest.raises(InvalidRequest, match=f"{field}.*a mask"):
            GenerationRequest(prompt="x", init_image=picture, **{field: value})
    for field, value, allowed in [
        ("mask_blur", -1, "0 to 256"),
        ("mask_blur", 2.5, "whole number"),
        ("padding_mask_crop", -3, "0 to 65536"),
        ("masked_content", "noise", "original, fill, latent_noise, latent_nothing"),
        ("overlay", 1, "true or false"),
    ]:
        with pytest.raises(InvalidRequest, match=f"{field}.*{allowed}"):
            _request(**{field: value})


def test_an_empty_mask_cannot_be_cropped_to(sd1_model):
    empty = InputPicture.from_image(Image.new("L", (INIT_WIDTH, INIT_HEIGHT)))
    with pytest.raises(InvalidRequest, match="mask.*empty.*padding_mask_crop"):
        generate(sd1_model, _request(mask=empty, padding_mask_crop=8, width=WIDTH, height=HEIGHT))


def test_a_differently_sized_mask_needs_resize(sd1_model):
    small = InputPicture.from_image(_box_mask(36, 30, box=(20, 6, 30, 15)))
    with pytest.raises(InvalidRequest, match="mask.*36x30.*resize"):
        generate(sd1_model, _request(mask=small, padding_mask_crop=2, width=WIDTH, height=HEIGHT))
    image = generate(
        sd1_model,
        _request(mask=small, padding_mask_crop=2, width=WIDTH, height=HEIGHT, resize=True),
    ).images[0]
    assert image.size == (INIT_WIDTH, INIT_HEIGHT)


def test_the_settings_are_written_as_a1111_writes_them():
    request = _request(
        mask_blur=4, padding_mask_crop=32, masked_content="latent_noise", seed=1, width=48
    )
    record = ImageRecord(request, ("Euler a", None), "m", "abc", "sdgen 0")
    fields = parse_parameters(record.parameters_text())
    assert fields["Mask blur"] == "4"
    assert fields["Inpaint area"] == "Only masked"
    assert fields["Masked area padding"] == "32"
    assert fields["Masked content"] == "latent noise"
    plain = ImageRecord(_request(seed=1), ("Euler a", None), "m", "abc", "sdgen 0")
    assert not {"Mask blur", "Inpaint area", "Masked content"} & set(
        parse_parameters(plain.parameters_text())
    )
    assert (
        GenerationRequest.from_dict(
            request.to_dict(), {"init_image": request.init_image, "mask": request.mask}
        )
        == request
    )


def test_a_mask_with_transparency_is_its_alpha_as_a1111_reads_it(tmp_path):
    """Painted on a transparent layer, a mask's opaque strokes are what is repainted, whatever
    their colour (A1111's create_binary_mask); an opaque mask is read by its grey levels."""
    from sdgen.media.images import read_picture

    layer = Image.new("RGBA", (16, 8), (255, 255, 255, 0))  # transparent white: kept
    layer.paste((0, 0, 0, 255), (4, 2, 8, 6))  # opaque black strokes: repainted
    layer.save(tmp_path / "layer.png")
    mask = np.asarray(read_picture(tmp_path / "layer.png", "mask", mode="L").image)
    expected = np.zeros((8, 16), np.uint8)
    expected[2:6, 4:8] = 255
    assert np.array_equal(mask, expected)
    opaque = Image.new("RGBA", (16, 8), (0, 0, 0, 255))
    opaque.paste((255, 255, 255, 255), (4, 2, 8, 6))
    opaque.save(tmp_path / "opaque.png")
    assert np.array_equal(
        np.asarray(read_picture(tmp_path / "opaque.png", "mask", mode="L").image), expected
    )
    init = read_picture(tmp_path / "layer.png", "init_image", mode="RGB").image
    assert init.mode == "RGB"  # an init picture's transparency is dropped, as before
