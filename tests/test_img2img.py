"""img2img and inpainting: parity with diffusers' pipelines, seeds, sizes, masks, chaining."""

from __future__ import annotations

import diffusers
import numpy as np
import pytest
import torch
from helpers import TOLERANCE, max_pixel_diff
from PIL import Image

from sdgen.errors import InvalidRequest
from sdgen.params import GenerationRequest, InputPicture
from sdgen.pipelines.generate import generate
from sdgen.sampling.samplers import SAMPLERS

PROMPT, NEGATIVE = "a blue square on a red background", "green"
SEED, STEPS, WIDTH, HEIGHT = 321, 6, 48, 32  # non-square on purpose


def _picture(width: int = WIDTH, height: int = HEIGHT, seed: int = 0) -> Image.Image:
    """A smooth coloured test picture (random pixels would be far from what a VAE sees)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width] / max(width, height)
    channels = [np.sin(6 * x * rng.uniform(0.5, 2) + rng.uniform(0, 6)) for _ in range(3)]
    array = ((np.stack(channels, -1) + 1) * 127.5).astype(np.uint8)
    return Image.fromarray(array)


def _mask(width: int = WIDTH, height: int = HEIGHT) -> Image.Image:
    """White (repaint) on the left half, black (keep) on the right."""
    array = np.zeros((height, width), dtype=np.uint8)
    array[:, : width // 2] = 255
    return Image.fromarray(array, mode="L")


def _with_scheduler(pipe, sampler_name: str):
    sampler = SAMPLERS[sampler_name]
    scheduler_class = getattr(diffusers, sampler.scheduler_class)
    extra = {"use_karras_sigmas": True} if sampler.name == "dpmpp_2m_karras" else {}
    pipe.scheduler = scheduler_class.from_config(pipe.model_scheduler_config, **extra)
    return pipe


def _load(cls, folder):
    pipe = cls.from_pretrained(folder, safety_checker=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    pipe.model_scheduler_config = dict(pipe.scheduler.config)
    return pipe


@pytest.fixture(scope="module")
def img2img_pipe(tiny_sd1):
    return _load(diffusers.StableDiffusionImg2ImgPipeline, tiny_sd1)


def _request(**changes) -> GenerationRequest:
    base = GenerationRequest(
        prompt=PROMPT,
        negative_prompt=NEGATIVE,
        steps=STEPS,
        seed=SEED,
        init_image=InputPicture.from_image(_picture()),
        strength=0.6,
    )
    return base.replace(**changes)


@pytest.mark.parametrize("sampler", ["ddim", "pndm", "euler_a", "dpmpp_2m_karras", "heun"])
def test_img2img_matches_diffusers(sampler, img2img_pipe, sd1_model):
    result = generate(sd1_model, _request(num_images=2, sampler=sampler))
    assert result.request.mode == "img2img" and result.images[0].size == (WIDTH, HEIGHT)
    pipe = _with_scheduler(img2img_pipe, sampler)
    for i, image in enumerate(result.images):
        reference = pipe(
            prompt=PROMPT,
            negative_prompt=NEGATIVE,
            image=_picture(),
            strength=0.6,
            num_inference_steps=STEPS,
            guidance_scale=7.5,
            generator=[torch.Generator("cpu").manual_seed(SEED + i)],
        ).images[0]
        assert max_pixel_diff(image, reference) <= TOLERANCE, f"image {i}"


@pytest.mark.parametrize("kind", ["ordinary", "inpainting"])
@pytest.mark.parametrize("strength", [1.0, 0.7])
def test_inpaint_matches_diffusers(kind, strength, tiny_sd1, sd1_model, inpaint_folder):
    from sdgen.models.loader import load_model

    folder = tiny_sd1 if kind == "ordinary" else inpaint_folder
    model = sd1_model if kind == "ordinary" else load_model(inpaint_folder, device="cpu")
    mask = InputPicture.from_image(_mask())
    request = _request(mask=mask, strength=strength, sampler="euler_a", num_images=2)
    result = generate(model, request)
    assert result.request.mode == "inpaint"
    pipe = _with_scheduler(_load(diffusers.StableDiffusionInpaintPipeline, folder), "euler_a")
    for i, image in enumerate(result.images):
        reference = pipe(
            prompt=PROMPT,
            negative_prompt=NEGATIVE,
            image=_picture(),
            mask_image=_mask(),
            strength=strength,
            num_inference_steps=STEPS,
            guidance_scale=7.5,
            height=HEIGHT,
            width=WIDTH,
            generator=[torch.Generator("cpu").manual_seed(SEED + i)],
        ).images[0]
        assert max_pixel_diff(image, reference) <= TOLERANCE, f"image {i}"


def test_a_batch_equals_single_runs_and_seeds_differ(sd1_model):
    mask = InputPicture.from_image(_mask())
    for request in (_request(num_images=3), _request(num_images=3, mask=mask)):
        batch = generate(sd1_model, request)
        for i, image in enumerate(batch.images):
            alone = generate(sd1_model, request.replace(num_images=1, seed=SEED + i)).images[0]
            assert max_pixel_diff(image, alone) <= 1, (request.mode, i)
        assert max_pixel_diff(batch.images[0], batch.images[1]) > 3


def test_strength_sets_how_far_the_picture_moves():
    """On the embedded trained model (its VAE reconstructs pictures; the tiny random one not)."""
    from sdgen.miniature.shapes import Scene, render
    from sdgen.models.loader import load_model

    model = load_model(device="cpu")
    init = render(Scene("square", "red", "white", cx=32, cy=32, size=28), 64)
    request = GenerationRequest(
        "a square", seed=5, steps=20, init_image=InputPicture.from_image(init)
    )
    distances = []
    for strength in (0.1, 0.5, 1.0):
        image = generate(model, request.replace(strength=strength)).images[0]
        distances.append(np.abs(np.asarray(image, float) - np.asarray(init, float)).mean())
    assert distances[0] < distances[1] < distances[2], distances


@pytest.mark.parametrize("mode", ["crop", "fill"])
def test_a_resize_mode_equals_resizing_the_picture_first_as_diffusers_does(sd1_model, mode):
    """resize_mode crops or fills as diffusers' VaeImageProcessor.resize does (A1111's crop
    and resize, resize and fill), the mask alike; the pictures equal those of the init picture
    and mask resized beforehand."""
    from diffusers.image_processor import VaeImageProcessor

    wide, wide_mask = _picture(width=96, height=32), _mask(width=96, height=32)
    wide.paste((0, 200, 0), (0, 12, 96, 20))  # a band across: where fill puts it shows
    processor = VaeImageProcessor()
    before = [processor.resize(p, HEIGHT, WIDTH, resize_mode=mode) for p in (wide, wide_mask)]
    for mask in (None, wide_mask):
        request = _request(
            init_image=InputPicture.from_image(wide),
            mask=None if mask is None else InputPicture.from_image(mask),
            width=WIDTH,
            height=HEIGHT,
            resize=True,
            resize_mode=mode,
        )
        resized = generate(sd1_model, request).images[0]
        first = request.replace(
            init_image=InputPicture.from_image(before[0]),
            mask=None if mask is None else InputPicture.from_image(before[1].convert("L")),
            resize=False,
            resize_mode="stretch",
        )
        assert np.array_equal(np.asarray(resized), np.asarray(generate(sd1_model, first).images[0]))
    # crop keeps the middle at full height; fill keeps all of it, scaled to fit
    stretched = np.asarray(wide.resize((WIDTH, HEIGHT), Image.Resampling.LANCZOS), np.int16)
    middle = np.asarray(wide.crop((24, 0, 72, 32)), np.int16)
    cropped = np.asarray(before[0], np.int16)
    if mode == "crop":
        assert np.array_equal(cropped, middle)
    else:
        assert np.abs(cropped - stretched).mean() > 10 and np.abs(cropped - middle).mean() > 10


def test_resize_modes_need_resize():
    picture = InputPicture.from_image(_picture())
    with pytest.raises(InvalidRequest, match="resize_mode.*crop.*resize=True"):
        GenerationRequest(prompt="x", init_image=picture, resize_mode="crop")
    with pytest.raises(InvalidRequest, match="resize_mode.*stretch, crop, fill"):
        GenerationRequest(prompt="x", init_image=picture, resize=True, resize_mode="zoom")


def test_sizes_and_masks_are_checked(sd1_model):
    odd = InputPicture.from_image(_picture(width=47))
    with pytest.raises(InvalidRequest, match="init_image.*resize"):
        generate(sd1_model, _request(init_image=odd))
    resized = generate(sd1_model, _request(init_image=odd, resize=True))
    assert resized.images[0].size == (48, 32)
    with pytest.raises(InvalidRequest, match="init_image.*64x32"):
        generate(sd1_model, _request(width=64))
    assert generate(sd1_model, _request(width=64, resize=True)).images[0].size == (64, 32)
    small_mask = InputPicture.from_image(_mask(width=32))
    with pytest.raises(InvalidRequest, match="mask.*48x32"):
        generate(sd1_model, _request(mask=small_mask))
    with pytest.raises(InvalidRequest, match="strength"):
        generate(sd1_model, _request(strength=0.1, steps=5))  # int(0.5) = 0 steps would run
    with pytest.raises(InvalidRequest, match="mask.*init_image"):
        GenerationRequest(prompt="x", mask=small_mask)


@pytest.mark.parametrize("kind", ["GIF", "BMP", "not a picture"])
def test_input_pictures_are_png_jpeg_or_webp_as_the_message_says(kind):
    import io

    from sdgen.media.images import read_picture

    data = io.BytesIO()
    if kind == "not a picture":
        data.write(b"plain text")
    else:
        Image.new("RGB", (8, 8)).save(data, format=kind)
    with pytest.raises(InvalidRequest, match="init_image.*a PNG, JPEG or WebP picture") as err:
        read_picture(data.getvalue(), "init_image")
    assert "<_io" not in str(err.value)  # no Python object in a user's message
    for accepted in ("PNG", "JPEG", "WEBP"):
        data = io.BytesIO()
        Image.new("RGB", (8, 8)).save(data, format=accepted)
        assert read_picture(data.getvalue(), "init_image").size == (8, 8)
