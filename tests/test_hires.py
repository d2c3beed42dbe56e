"""The hires fix: parity with diffusers' txt2img and img2img pipelines composed as the fix does
it, sizes and steps as A1111 counts them, batching, progress, stopping, metadata."""

from __future__ import annotations

import diffusers
import pytest
import torch
import torch.nn.functional as F
from helpers import TOLERANCE, diffusers_pipeline, max_pixel_diff
from PIL import Image

from sdgen.errors import GenerationStopped, InvalidRequest
from sdgen.hires import HiresFix
from sdgen.params import GenerationRequest
from sdgen.pipelines.generate import generate
from sdgen.sampling.samplers import SAMPLERS

PROMPT, NEGATIVE = "a red circle on a blue background", "green"
SEED, STEPS, WIDTH, HEIGHT = 77, 5, 32, 48  # non-square on purpose


def _request(**changes) -> GenerationRequest:
    base = GenerationRequest(
        prompt=PROMPT,
        negative_prompt=NEGATIVE,
        steps=STEPS,
        seed=SEED,
        width=WIDTH,
        height=HEIGHT,
        sampler="euler_a",
        hires=HiresFix(scale=1.5, steps=3, strength=0.6),
    )
    return base.replace(**changes)


@pytest.fixture(scope="module")
def pipes(tiny_sd1):
    txt2img = diffusers_pipeline(tiny_sd1)
    img2img = diffusers.StableDiffusionImg2ImgPipeline(**txt2img.components)
    img2img.set_progress_bar_config(disable=True)
    return txt2img, img2img, dict(txt2img.scheduler.config)


def _scheduler(sampler: str, config: dict):
    entry = SAMPLERS[sampler]
    return getattr(diffusers, entry.scheduler_class).from_config(config, **entry.options)


def _reference(pipes, request: GenerationRequest, index: int, upscale, second=None):
    """Picture ``index`` as diffusers makes it: txt2img's latents, ``upscale``d, then img2img
    with the same generator, running ``run`` steps of a ``schedule``-step schedule (with the
    prompts of ``second``, where given)."""
    txt2img, img2img, config = pipes
    hires = request.hires
    generator = torch.Generator("cpu").manual_seed(request.seed + index)
    common = dict(prompt=PROMPT, negative_prompt=NEGATIVE, guidance_scale=7.5)
    txt2img.scheduler = _scheduler(request.sampler, config)
    latents = txt2img(
        **common,
        width=request.width,
        height=request.height,
        num_inference_steps=request.steps,
        generator=generator,
        output_type="latent",
    ).images  # (1, 4, h, w)
    image = upscale(latents, txt2img)
    img2img.scheduler = _scheduler(hires.sampler or request.sampler, config)
    run, schedule = hires.pass_steps(request.steps)
    return img2img(
        **{**common, **(second or {})},
        image=image,
        strength=min(1.0, (run + 0.5) / schedule),  # diffusers runs int(schedule * strength)
        num_inference_steps=schedule,
        generator=generator,
    ).images[0]


def _latent_upscale(size, mode="bilinear", antialias=False):
    def upscale(latents, pipe):
        factor = pipe.vae_scale_factor
        shape = (size[1] // factor, size[0] // factor)
        return F.interpolate(latents, size=shape, mode=mode, antialias=antialias)

    return upscale


@pytest.mark.parametrize(
    "upscaler,mode,antialias",
    [("latent", "bilinear", False), ("latent_bicubic_antialiased", "bicubic", True)],
)
def test_latent_hires_matches_diffusers(upscaler, mode, antialias, pipes, sd1_model):
    hires = HiresFix(scale=1.5, steps=3, strength=0.6, upscaler=upscaler)
    request = _request(num_images=2, hires=hires)
    result = generate(sd1_model, request)
    assert [image.size for image in result.images] == [(48, 72)] * 2
    for i, image in enumerate(result.images):
        reference = _reference(pipes, request, i, _latent_upscale((48, 72), mode, antialias))
        assert max_pixel_diff(image, reference) <= TOLERANCE, f"image {i}"


def test_lanczos_hires_matches_diffusers(pipes, sd1_model):
    request = _request(hires=HiresFix(scale=2, strength=0.5, upscaler="lanczos", sampler="ddim"))

    @torch.no_grad()
    def upscale(latents, pipe):
        picture = pipe.image_processor.postprocess(
            pipe.vae.decode(latents / pipe.vae.config.scaling_factor).sample
        )[0]
        return picture.resize((64, 96), resample=3)  # PIL's Lanczos

    result = generate(sd1_model, request)
    assert result.images[0].size == (64, 96)
    assert max_pixel_diff(result.images[0], _reference(pipes, request, 0, upscale)) <= TOLERANCE


class Steps:
    """A step callback that keeps (index, total, latent size) of every step."""

    def __init__(self, stop_at: int | None = None):
        self.seen, self.stop_at, self.denoised = [], stop_at, None

    def __call__(self, step):
        self.seen.append((step.index, step.total, tuple(step.latents.shape[2:])))
        if step.index + 1 == self.stop_at:
            self.denoised = step.denoised.clone()
            raise GenerationStopped(step.index + 1, step.total, step.denoised)


def test_progress_counts_both_passes_as_one_run(sd1_model):
    steps = Steps()
    generate(sd1_model, _request(), steps)  # 5 steps, then 3 at 1.5x
    factor = sd1_model.vae_scale_factor
    small, large = (HEIGHT // factor, WIDTH // factor), (72 // factor, 48 // factor)
    assert steps.seen == [(i, 8, small) for i in range(5)] + [(i, 8, large) for i in range(5, 8)]


@pytest.mark.parametrize("stop_at,size", [(2, (WIDTH, HEIGHT)), (7, (48, 72))])
def test_a_stopped_hires_request_keeps_the_pictures_of_its_step(stop_at, size, sd1_model):
    from sdgen.media.images import decode_latents

    steps = Steps(stop_at)
    result = generate(sd1_model, _request(), steps)
    assert result.stopped_at == (stop_at, 8) and result.images[0].size == size
    expected = decode_latents(sd1_model.vae, steps.denoised)[0]
    assert max_pixel_diff(result.images[0], expected) == 0


def test_batched_hires_requests_equal_each_alone(sd1_model):
    """A hires request's second pass is larger than the requests it started with: the batch
    calls it apart, and every request gets its pictures alone, steps reported alike."""
    from sdgen.engine.batching import Batcher

    requests = [
        _request(),
        _request(prompt="a green tree", seed=5, hires=None),
        _request(prompt="a cat", seed=9, sampler="dpmpp_2m", hires=HiresFix(scale=2)),
    ]
    batcher = Batcher(sd1_model)
    recorders = [Steps() for _ in requests]
    pairs = enumerate(zip(requests, recorders, strict=True))
    tickets = {id(batcher.add(r, c)): i for i, (r, c) in pairs}
    finished = {tickets[id(done.prepared)]: done for done in batcher.run_until_done()}
    for i, request in enumerate(requests):
        alone_steps = Steps()
        alone = generate(sd1_model, request, alone_steps)
        assert finished[i].error is None
        assert max_pixel_diff(finished[i].result.images[0], alone.images[0]) <= 1
        assert recorders[i].seen == alone_steps.seen


@pytest.mark.parametrize(
    "hires,cover,size",
    [
        (HiresFix(scale=2), (64, 96), (64, 96)),
        (HiresFix(width=64), (64, 96), (64, 96)),  # the aspect ratio gives the height
        (HiresFix(height=72), (48, 72), (48, 72)),
        (HiresFix(width=64, height=64), (64, 96), (64, 64)),  # covered, its middle cropped
        (HiresFix(width=96, height=48), (96, 144), (96, 48)),
    ],
)
def test_sizes_as_a1111_calculates_them(hires, cover, size, sd1_model):
    assert hires.sizes(WIDTH, HEIGHT, 8) == (cover, size)
    result = generate(sd1_model, _request(hires=hires, steps=2))
    assert result.images[0].size == size


def test_a_cropped_hires_pass_takes_the_middle_of_the_upscaled_latents(sd1_model):
    """Both sides given: the latents upscaled to cover the size are cropped to their middle,
    an odd row or column off the far side, as A1111 crops them."""
    from sdgen.pipelines.hires_pass import _crop_middle

    latents = torch.arange(2 * 12 * 8, dtype=torch.float32).reshape(1, 2, 12, 8)
    cropped = _crop_middle(latents, (64, 96), (64, 64), 8)
    assert torch.equal(cropped, latents[:, :, 2:10])
    odd = _crop_middle(latents, (64, 96), (64, 72), 8)  # 3 rows off: 1 at the top, 2 below
    assert torch.equal(odd, latents[:, :, 1:10])


@pytest.mark.parametrize(
    "hires,field,message",
    [
        (HiresFix(scale=1.3), "hires.scale", r"not 41x62: e.g. 1.5 \(48x72\) or 2 \(64x96\)"),
        (HiresFix(width=52), "hires.width", "a multiple of 8, this model's latent factor$"),
        (HiresFix(width=40), "hires.height", "the 32x48 picture's aspect ratio gives it"),
    ],
)
def test_sizes_not_made_of_multiples_of_the_latent_factor_are_refused(hires, field, message):
    with pytest.raises(InvalidRequest, match=message) as err:
        hires.sizes(WIDTH, HEIGHT, 8)
    assert err.value.field == field


def test_the_model_checks_the_second_pass_before_any_step(sd1_model):
    steps = Steps()
    factor = sd1_model.vae_scale_factor
    with pytest.raises(InvalidRequest) as err:  # 32 * 1.3 = 41.6
        generate(sd1_model, _request(hires=HiresFix(scale=1.3 if factor > 1 else 9)), steps)
    assert err.value.field == "hires.scale"
    assert steps.seen == []


def test_a_second_pass_too_short_for_its_sampler_is_refused_by_its_field():
    """The embedded model's schedule starts PLMS with Runge-Kutta steps: 4 at least."""
    from sdgen.models.loader import load_model

    model, steps = load_model(device="cpu"), Steps()
    request = _request(width=64, height=64, sampler="pndm", hires=HiresFix(steps=2, strength=1))
    with pytest.raises(InvalidRequest, match="schedule of 2 steps is too short for pndm") as err:
        generate(model, request, steps)
    assert err.value.field == "hires.steps" and steps.seen == []


@pytest.mark.parametrize(
    "fields,field",
    [
        (dict(scale=0.5), "hires.scale"),
        (dict(scale=float("nan")), "hires.scale"),
        (dict(strength=0), "hires.strength"),
        (dict(steps=0), "hires.steps"),
        (dict(upscaler="R-ESRGAN 4x+"), "hires.upscaler"),
        (dict(sampler="nope"), "hires.sampler"),
        (dict(width=True), "hires.width"),
    ],
)
def test_bad_hires_settings_are_refused_by_name(fields, field):
    with pytest.raises(InvalidRequest) as err:
        HiresFix(**fields)
    assert err.value.field == field


def test_hires_is_txt2img_only_and_round_trips_as_a_dict():
    from sdgen.params import InputPicture

    picture = InputPicture.from_image(Image.new("RGB", (32, 48)))
    with pytest.raises(InvalidRequest, match="txt2img only"):
        _request(init_image=picture)
    with pytest.raises(InvalidRequest) as err:
        _request(hires={"scale": 2, "denoise": 0.5})
    assert err.value.field == "hires.denoise"
    request = _request(hires=HiresFix(scale=2, upscaler="lanczos", sampler="DPM++ 2M"))
    assert request.hires.sampler == "dpmpp_2m"
    assert GenerationRequest.from_dict(request.to_dict()) == request


def test_metadata_records_the_hires_fix_as_a1111_writes_it(sd1_model, tmp_path):
    from sdgen.api import save_result
    from sdgen.media.metadata import parse_parameters, read_request

    hires = HiresFix(scale=1.5, steps=3, strength=0.6, upscaler="latent_nearest_exact")
    result = generate(sd1_model, _request(hires=hires))
    path = save_result(result, sd1_model, tmp_path)[0]
    text = Image.open(path).text["parameters"]
    assert "Size: 32x48" in text  # the first pass's, as A1111 writes it
    assert (
        "Denoising strength: 0.6, RNG: CPU, Emphasis: None, Hires upscale: 1.5, Hires steps: 3, "
        "Hires upscaler: Latent (nearest-exact), Version" in text
    )
    assert read_request(path) == result.request
    other = _request(hires=HiresFix(width=64, sampler="dpmpp_2m_karras"), steps=2)
    path = save_result(generate(sd1_model, other), sd1_model, tmp_path)[0]
    fields = parse_parameters(Image.open(path).text["parameters"])
    assert fields["Hires sampler"] == "DPM++ 2M" and fields["Hires schedule type"] == "Karras"
    assert fields["Hires resize"] == "64x0" and fields["Hires upscaler"] == "Latent"
    assert fields["Denoising strength"] == "0.7" and "Hires steps" not in fields


def _cli(capsys, *args) -> tuple[int, str, str]:
    from sdgen.cli import main

    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def test_the_cli_adds_a_second_pass_and_reproduces_it(capsys, tmp_path, tiny_sd1):
    from pathlib import Path

    args = ["--model", tiny_sd1, "--steps", 3, "--seed", 4, "--width", 32, "--height", 48]
    hires = ["--hires-width", 48, "--hires-steps", 2, "--hires-upscaler", "nearest"]
    video = tmp_path / "denoise.gif"
    code, out, err = _cli(
        capsys, "generate", PROMPT, *args, *hires, "--save-steps", video, "--out", tmp_path / "a"
    )
    assert code == 0, err
    picture = Path(out.splitlines()[0])
    with Image.open(picture) as image, Image.open(video) as frames:
        assert image.size == (48, 72)
        assert frames.size == (48, 72) and frames.n_frames == 5  # 3 steps, then 2 larger
        assert (
            "Hires resize: 48x0, Hires steps: 2, Hires upscaler: Nearest"
            in image.text["parameters"]
        )
    code, out, err = _cli(capsys, "reproduce", picture, "--out", tmp_path / "b")
    assert code == 0, err
    with Image.open(picture) as a, Image.open(out.strip()) as b:
        assert max_pixel_diff(a, b) == 0


@pytest.mark.parametrize(
    "flags,message",
    [
        (["--hires-steps", 2], "--hires-steps: 2 is not allowed; a second pass to apply to"),
        (["--hires-scale", 1.33], "hires.scale: 1.33 is not allowed"),  # 53x53
        (["--hires-scale", 2, "--hires-upscaler", "esrgan"], "'esrgan' is not one of"),
        (["--hires-scale", 2, "--hires-width", 80], "--hires-scale: 2.0 is not allowed; nothing"),
    ],
)
def test_cli_hires_mistakes_exit_2_in_one_line(flags, message, capsys, tmp_path, tiny_sd1):
    args = ["--model", tiny_sd1, "--steps", 2, "--width", 40, "--height", 40]
    code, _, err = _cli(capsys, "generate", PROMPT, *args, *flags, "--out", tmp_path)
    assert code == 2 and message in err and "Traceback" not in err


def test_a_ddim_eta_goes_to_a_second_pass_only_where_its_sampler_has_one(pipes, sd1_model):
    """A DDIM first pass with eta and a second pass with a sampler without one (A1111 runs it so:
    its eta_ddim is DDIM's only) is the DDIM run's latents, then the other sampler's pass."""
    request = _request(sampler="ddim", eta=0.5, hires=HiresFix(scale=1.5, steps=2, sampler="euler"))
    result = generate(sd1_model, request)
    txt2img, img2img, config = pipes
    generator = torch.Generator("cpu").manual_seed(SEED)
    common = dict(prompt=PROMPT, negative_prompt=NEGATIVE, guidance_scale=7.5)
    txt2img.scheduler = _scheduler("ddim", config)
    latents = txt2img(
        **common,
        width=WIDTH,
        height=HEIGHT,
        num_inference_steps=STEPS,
        eta=0.5,
        generator=generator,
        output_type="latent",
    ).images
    img2img.scheduler = _scheduler("euler", config)
    run, schedule = request.hires.pass_steps(STEPS)
    reference = img2img(
        **common,
        image=_latent_upscale((48, 72))(latents, txt2img),
        strength=min(1.0, (run + 0.5) / schedule),
        num_inference_steps=schedule,
        generator=generator,
    ).images[0]
    assert max_pixel_diff(result.images[0], reference) <= TOLERANCE


def test_a_second_pass_past_the_models_timesteps_is_refused_by_its_strength(sd1_model):
    with pytest.raises(
        InvalidRequest, match="at least 0.005: the second pass runs the last 5"
    ) as err:
        generate(sd1_model, _request(hires=HiresFix(scale=1.5, strength=0.004)))
    assert err.value.field == "hires.strength"


def test_the_second_pass_reads_its_own_prompts(pipes, sd1_model, tmp_path):
    """A1111's Hires prompt: the second pass is diffusers' img2img with those prompts; recorded
    as A1111 records them."""
    from sdgen.api import save_result
    from sdgen.media.metadata import parse_parameters, read_request

    own = dict(prompt="a green tree, tall", negative_prompt="red")
    request = _request(hires=HiresFix(scale=1.5, steps=3, strength=0.6, **own))
    result = generate(sd1_model, request)
    reference = _reference(pipes, request, 0, _latent_upscale((48, 72)), second=own)
    assert max_pixel_diff(result.images[0], reference) <= TOLERANCE
    plain = generate(sd1_model, _request()).images[0]
    assert max_pixel_diff(plain, result.images[0]) > 3
    path = save_result(result, sd1_model, tmp_path)[0]
    fields = parse_parameters(Image.open(path).text["parameters"])
    assert (
        fields["Hires prompt"] == "a green tree, tall" and fields["Hires negative prompt"] == "red"
    )
    assert read_request(path) == result.request
    assert ("hires.prompt", "a green tree, tall") in result.request.named_texts()


def _a1111_hires_latents(width, height, scale, resize_x, resize_y, f=8):
    """A1111's calculate_target_resolution and sample_hr_pass's crop, ported as the reference:
    (the latent size interpolated to, the rows and columns kept, the asked-for size)."""
    truncate_x = truncate_y = 0
    if resize_x == 0 and resize_y == 0:
        to_x, to_y = int(width * scale), int(height * scale)
        target = (to_x, to_y)
    else:
        if resize_y == 0:
            to_x, to_y = resize_x, resize_x * height // width
        elif resize_x == 0:
            to_x, to_y = resize_y * width // height, resize_y
        else:
            if width / height < resize_x / resize_y:
                to_x, to_y = resize_x, resize_x * height // width
            else:
                to_x, to_y = resize_y * width // height, resize_y
            truncate_x, truncate_y = (to_x - resize_x) // f, (to_y - resize_y) // f
        target = (resize_x or to_x, resize_y or to_y)
    h, w = to_y // f, to_x // f
    rows = range(truncate_y // 2, h - (truncate_y + 1) // 2)
    cols = range(truncate_x // 2, w - (truncate_x + 1) // 2)
    return (w, h), (rows, cols), target


def test_sizes_and_crops_are_a1111s_wherever_they_are_exact():
    """2,000 random first passes and hires settings: where sdgen accepts the settings, the latents
    are upscaled to A1111's size and cropped to A1111's rows and columns; where it refuses them,
    A1111's pictures would not have the size asked for (it rounds down)."""
    import random

    from sdgen.pipelines.hires_pass import _crop_middle

    rng, accepted, refused = random.Random(5), 0, 0
    for _ in range(2000):
        width, height = 8 * rng.randint(4, 128), 8 * rng.randint(4, 128)
        scale, resize_x, resize_y = 1 + rng.random() * 3, 0, 0
        kind = rng.choice(["scale", "nice", "x", "y", "both"])
        if kind == "nice":
            scale = rng.choice([1.25, 1.5, 2.0, 2.5, 3.0])
        if kind in ("x", "both"):
            resize_x = rng.choice([8 * rng.randint(8, 256), rng.randint(64, 2048)])
        if kind in ("y", "both"):
            resize_y = rng.choice([8 * rng.randint(8, 256), rng.randint(64, 2048)])
        (w, h), (rows, cols), target = _a1111_hires_latents(
            width, height, scale, resize_x, resize_y
        )
        exact = (len(cols) * 8, len(rows) * 8) == target
        hires = HiresFix(scale=scale, width=resize_x or None, height=resize_y or None)
        try:
            cover, size = hires.sizes(width, height, 8)
        except InvalidRequest:
            refused += 1
            assert not exact, (width, height, scale, resize_x, resize_y)
            continue
        accepted += 1
        assert (cover[0] // 8, cover[1] // 8) == (w, h) and size == target
        grid = torch.arange(h * w, dtype=torch.float32).reshape(1, 1, h, w)
        expected = grid[:, :, rows.start : rows.stop, cols.start : cols.stop]
        assert torch.equal(_crop_middle(grid, cover, size, 8), expected)
    assert accepted > 300 and refused > 300  # both sides were tried
