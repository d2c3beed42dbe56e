"""A1111's variation seeds: each picture's starting noise slerped toward its variation seed's, as
A1111's ``slerp`` does; the pictures equal diffusers' pipeline started from those latents."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from helpers import TOLERANCE, diffusers_pipeline, max_pixel_diff

from sdgen.errors import InvalidRequest
from sdgen.params import GenerationRequest
from sdgen.pipelines.generate import generate

PROMPT, SEED, VARIATION, STEPS = "a red circle on a blue background", 50, 900, 4


def a1111_slerp(val, low, high):
    """A1111's modules/rng.py ``slerp``, written out here as the reference."""
    low_norm = low / torch.norm(low, dim=1, keepdim=True)
    high_norm = high / torch.norm(high, dim=1, keepdim=True)
    dot = (low_norm * high_norm).sum(1)
    if dot.mean() > 0.9995:
        return low * val + high * (1 - val)
    omega = torch.acos(dot)
    so = torch.sin(omega)
    res = (torch.sin((1.0 - val) * omega) / so).unsqueeze(1) * low
    return res + (torch.sin(val * omega) / so).unsqueeze(1) * high


def _request(**changes) -> GenerationRequest:
    base = GenerationRequest(
        PROMPT,
        steps=STEPS,
        seed=SEED,
        sampler="euler",
        width=32,
        height=32,
        variation_seed=VARIATION,
        variation_strength=0.3,
    )
    return base.replace(**changes)


def test_varied_pictures_equal_diffusers_from_a1111s_varied_noise(tiny_sd1, sd1_model):
    """Picture i starts from slerp(0.3, noise of seed + i, noise of variation seed + i); diffusers'
    pipeline given those latents (and the same generator for its draws) makes the same picture."""
    import diffusers

    result = generate(sd1_model, _request(num_images=2, sampler="euler_a"))
    pipe = diffusers_pipeline(tiny_sd1)
    pipe.scheduler = diffusers.EulerAncestralDiscreteScheduler.from_config(pipe.scheduler.config)
    shape = (4, 32 // sd1_model.vae_scale_factor, 32 // sd1_model.vae_scale_factor)
    for i, image in enumerate(result.images):
        generator = torch.Generator().manual_seed(SEED + i)
        noise = torch.randn((1, *shape), generator=generator)[0]
        other = torch.randn(shape, generator=torch.Generator().manual_seed(VARIATION + i))
        latents = a1111_slerp(0.3, noise, other)[None]
        reference = pipe(
            PROMPT,
            num_inference_steps=STEPS,
            width=32,
            height=32,
            latents=latents,
            generator=generator,
        ).images[0]
        assert max_pixel_diff(image, reference) <= TOLERANCE, f"image {i}"
    plain = generate(sd1_model, _request(variation_seed=None, variation_strength=0)).images[0]
    assert max_pixel_diff(plain, result.images[0]) > 10  # the variation changes the picture


def test_full_strength_is_the_variation_seeds_picture_and_a_batch_varies_each(sd1_model):
    """Strength 1 starts from the variation seed's noise: with a deterministic sampler, the
    picture of that seed. Picture i of a batch is varied by variation seed + i, as alone."""
    full = generate(sd1_model, _request(variation_strength=1.0)).images[0]
    own = generate(sd1_model, _request(seed=VARIATION, variation_seed=None, variation_strength=0))
    assert max_pixel_diff(full, own.images[0]) <= 1
    batch = generate(sd1_model, _request(num_images=2))
    alone = generate(sd1_model, batch.image_request(1))
    assert batch.image_request(1).variation_seed == VARIATION + 1
    assert max_pixel_diff(batch.images[1], alone.images[0]) <= 1


def test_a_random_variation_seed_is_drawn_recorded_and_reproduced(capsys, tmp_path):
    from PIL import Image

    from sdgen.cli import main
    from sdgen.media.metadata import parse_parameters, read_request

    args = ["--steps", 2, "--width", 64, "--height", 64, "--seed", 3, "--variation-strength", 0.4]
    assert main(["generate", "a red circle", *map(str, args), "--out", str(tmp_path / "a")]) == 0
    picture = Path(capsys.readouterr().out.strip())
    request = read_request(picture)
    assert request.variation_seed is not None and request.variation_strength == 0.4
    with Image.open(picture) as image:
        fields = parse_parameters(image.text["parameters"])
    assert fields["Variation seed"] == str(request.variation_seed)
    assert fields["Variation seed strength"] == "0.4"
    assert main(["reproduce", str(picture), "--out", str(tmp_path / "b")]) == 0
    again = Path(capsys.readouterr().out.strip())
    with Image.open(picture) as a, Image.open(again) as b:
        assert max_pixel_diff(a, b) == 0


@pytest.mark.parametrize(
    "changes,field",
    [
        (dict(variation_strength=1.5), "variation_strength"),
        (dict(variation_strength=float("nan")), "variation_strength"),
        (dict(variation_strength=True), "variation_strength"),
        (dict(variation_strength=0), "variation_seed"),  # a seed it would not use
        (dict(variation_seed=-1), "variation_seed"),
    ],
)
def test_bad_variation_settings_are_refused_by_name(changes, field):
    with pytest.raises(InvalidRequest) as err:
        _request(**changes)
    assert err.value.field == field


def test_a1111_subseeds_are_variation_seeds(tmp_path):
    """A1111's subseed and subseed_strength: the same pictures and infotext, named as A1111
    names them."""
    from test_server_a1111 import WEBUIAPI_REQUEST, WEBUIAPI_TXT2IMG
    from test_server_support import client_for, decode_png, serial_pictures

    body = {**WEBUIAPI_TXT2IMG, "subseed": 77, "subseed_strength": 0.25}
    with client_for(tmp_path) as client:
        response = client.post("/sdapi/v1/txt2img", json=body)
        assert response.status_code == 200, response.text
        info = json.loads(response.json()["info"])
        assert info["all_subseeds"] == [77, 78] and info["subseed_strength"] == 0.25
        expected = serial_pictures(
            WEBUIAPI_REQUEST.replace(variation_seed=77, variation_strength=0.25)
        )
        for data, picture in zip(response.json()["images"], expected, strict=True):
            sent = decode_png(data)
            assert max_pixel_diff(sent.convert("RGB"), picture) == 0
        assert "Variation seed: 78, Variation seed strength: 0.25" in info["infotexts"][1]
        bad = client.post("/sdapi/v1/txt2img", json={**body, "subseed_strength": 2})
        assert bad.status_code == 422 and bad.json()["error"]["field"] == "subseed_strength"


def test_slerp_is_a1111s_and_stays_finite_on_one_row_latents():
    from sdgen.sampling.noise import slerp

    low, high = torch.randn(4, 8, 6), torch.randn(4, 8, 6)
    assert torch.allclose(slerp(0.3, low, high), a1111_slerp(0.3, low, high), atol=1e-6)
    one_row = torch.randn(4, 1, 6), torch.randn(4, 1, 6)  # a picture 8 pixels high on SD
    mixed = slerp(0.3, *one_row)
    assert torch.isfinite(mixed).all()
    assert torch.allclose(mixed, 0.7 * one_row[0] + 0.3 * one_row[1])


@pytest.mark.parametrize("mode", ["img2img", "inpaint", "hires", "devices"])
def test_every_noise_a1111_varies_is_varied_per_picture(mode, sd1_model):
    """img2img's and inpainting's noise, the hires pass's, and a run spread over devices: picture
    1 of a varied batch is its own request's picture (variation seed + 1), not the unvaried one."""
    from PIL import Image

    from sdgen.engine.devices import generate_on_devices
    from sdgen.hires import HiresFix
    from sdgen.params import InputPicture

    picture = InputPicture.from_image(Image.new("RGB", (32, 32), (200, 40, 40)))
    mask = Image.new("L", (32, 32), 0)
    mask.paste(255, (0, 0, 16, 32))
    changes = {
        "img2img": dict(init_image=picture, strength=0.7),
        "inpaint": dict(init_image=picture, mask=InputPicture.from_image(mask), strength=0.7),
        "hires": dict(hires=HiresFix(scale=1.5, steps=2, strength=0.6)),
        "devices": {},
    }[mode]
    request = _request(num_images=2, **changes)
    if mode == "devices":
        batch = generate_on_devices(request, [sd1_model, sd1_model])
        # the second device's run is picture 1's request: the one image_request(1) gives
    else:
        batch = generate(sd1_model, request)
    alone = generate(sd1_model, batch.image_request(1)).images[0]
    assert max_pixel_diff(batch.images[1], alone) <= 1
    unvaried = batch.image_request(1).replace(variation_seed=None, variation_strength=0)
    assert max_pixel_diff(generate(sd1_model, unvaried).images[0], alone) > 3
