"""A1111's seed resize ("resize seed from"): each picture keeps, in its middle, the noise its seed
gives at another size. The pictures equal diffusers' pipeline started from the noise A1111's
``ImageRNG.first`` makes, written out here by hand."""

from __future__ import annotations

import json

import pytest
import torch
from helpers import TOLERANCE, diffusers_pipeline, generated_and_reproduced, max_pixel_diff
from test_variation_seeds import a1111_slerp

from sdgen.errors import InvalidRequest
from sdgen.params import GenerationRequest
from sdgen.pipelines.generate import generate
from sdgen.sampling.noise import initial_latents
from sdgen.sampling.samplers import make_scheduler, resolve_sampler

PROMPT, SEED = "a red circle on a blue background", 50


def _request(**changes) -> GenerationRequest:
    base = GenerationRequest(
        PROMPT, steps=4, seed=SEED, sampler="euler", width=32, height=32, seed_resize_from=(24, 40)
    )
    return base.replace(**changes)


def test_the_seeds_noise_is_pasted_with_a1111s_offsets():
    """A smaller source lands in the middle (offsets floored); a larger one is cropped, its
    middle taken with A1111's floored offsets (here rows 2-4 and columns 1-3 of 7 x 5)."""
    generators = [torch.Generator().manual_seed(3)]
    shape = (1, 8, 8)
    plain = initial_latents(generators, shape, device="cpu", dtype=torch.float32)
    generators = [torch.Generator().manual_seed(3)]
    small = initial_latents(
        generators, shape, device="cpu", dtype=torch.float32, resize_from=(4, 6)
    )
    source = torch.randn((1, 4, 6), generator=torch.Generator().manual_seed(3))
    expected = plain.clone()
    expected[0, :, 2:6, 1:7] = source
    assert torch.equal(small, expected)
    generators = [torch.Generator().manual_seed(3)]
    plain = initial_latents(generators, (1, 4, 4), device="cpu", dtype=torch.float32)
    generators = [torch.Generator().manual_seed(3)]
    large = initial_latents(
        generators, (1, 4, 4), device="cpu", dtype=torch.float32, resize_from=(7, 5)
    )
    source = torch.randn((1, 7, 5), generator=torch.Generator().manual_seed(3))
    expected = plain.clone()
    expected[0, :, 0:3, 0:3] = source[:, 2:5, 1:4]  # the bottom row and right column stay
    assert torch.equal(large, expected)


@pytest.mark.parametrize("variation", [None, (900, 0.3)])
def test_resized_pictures_equal_diffusers_from_a1111s_noise(tiny_sd1, sd1_model, variation):
    """Picture i: its own generator's full-size draw, the middle replaced by the noise seed + i
    gives at the source size (varied there, with a variation seed), as A1111 makes it."""
    changes = {} if variation is None else dict(variation_seed=900, variation_strength=0.3)
    result = generate(sd1_model, _request(num_images=2, **changes))
    factor = sd1_model.vae_scale_factor
    shape, source_shape = (4, 32 // factor, 32 // factor), (4, 40 // factor, 24 // factor)
    pipe = diffusers_pipeline(tiny_sd1)
    pipe.scheduler = make_scheduler(resolve_sampler("euler"), pipe.scheduler.config)
    for i, image in enumerate(result.images):
        generator = torch.Generator().manual_seed(SEED + i)
        latents = torch.randn((1, *shape), generator=generator)
        source = torch.randn(source_shape, generator=torch.Generator().manual_seed(SEED + i))
        if variation is not None:
            other = torch.randn(source_shape, generator=torch.Generator().manual_seed(900 + i))
            source = a1111_slerp(0.3, source, other)
        # 16 x 16 from 20 x 12: columns 2-13 from all 12, rows 0-15 from rows 2-17
        latents[0, :, 0:16, 2:14] = source[:, 2:18, 0:12]
        reference = pipe(
            PROMPT, num_inference_steps=4, width=32, height=32, latents=latents, generator=generator
        ).images[0]
        assert max_pixel_diff(image, reference) <= TOLERANCE, f"image {i}"
    plain = generate(sd1_model, _request(seed_resize_from=None, **changes)).images[0]
    assert max_pixel_diff(plain, result.images[0]) > 10  # the resize changes the picture


def test_resizing_from_the_pictures_own_size_changes_nothing(sd1_model):
    same = generate(sd1_model, _request(seed_resize_from=(32, 32))).images[0]
    plain = generate(sd1_model, _request(seed_resize_from=None)).images[0]
    assert max_pixel_diff(same, plain) == 0


def test_img2img_and_the_hires_pass_resize_their_noise_too(sd1_model):
    """As A1111's img2img and hires pass (a fresh ImageRNG with the same seed resize)."""
    from PIL import Image

    from sdgen.params import InputPicture

    init = InputPicture.from_image(Image.new("RGB", (32, 32), (200, 40, 40)))
    for changes in (dict(init_image=init, strength=0.7), dict(hires={"scale": 2, "steps": 2})):
        resized = generate(sd1_model, _request(**changes)).images[0]
        plain = generate(sd1_model, _request(seed_resize_from=None, **changes)).images[0]
        assert max_pixel_diff(resized, plain) > 10, changes


@pytest.mark.parametrize("value", [(0, 64), (64,), (64, 64.0), (True, 64), "64x64", (64, 10**9)])
def test_bad_sizes_are_refused_by_name(value):
    with pytest.raises(InvalidRequest) as err:
        _request(seed_resize_from=value)
    assert err.value.field == "seed_resize_from"


def test_a_size_the_model_cannot_make_is_refused_by_name(sd1_model):
    with pytest.raises(InvalidRequest, match="seed_resize_from: '33x32'.*multiples of 2"):
        generate(sd1_model, _request(seed_resize_from=(33, 32)))


def test_recorded_in_a1111s_metadata_and_reproduced(capsys, tmp_path):
    from sdgen.cli import main

    request, fields = generated_and_reproduced(capsys, tmp_path, ["--seed-resize-from", "48x80"])
    assert request.seed_resize_from == (48, 80) and fields["Seed resize from"] == "48x80"
    bad = ["generate", "x", "--seed-resize-from", "48by80", "--out", str(tmp_path / "c")]
    assert main(bad) == 2
    assert "'48by80' is not WxH" in capsys.readouterr().err


def test_a1111s_seed_resize_fields(tmp_path):
    """Both sides above 0: sdgen's seed_resize_from, echoed in the info; one at 0: none, as
    A1111 reads them; a side that is not a multiple of 8 is a 422 naming the field."""
    from test_server_a1111 import WEBUIAPI_REQUEST, WEBUIAPI_TXT2IMG
    from test_server_support import client_for, decode_png, serial_pictures

    body = {**WEBUIAPI_TXT2IMG, "batch_size": 1, "seed_resize_from_w": 48}
    with client_for(tmp_path) as client:
        ignored = client.post("/sdapi/v1/txt2img", json={**body, "seed_resize_from_h": 0})
        assert ignored.status_code == 200, ignored.text
        resized = client.post("/sdapi/v1/txt2img", json={**body, "seed_resize_from_h": 80})
        assert resized.status_code == 200, resized.text
        info = json.loads(resized.json()["info"])
        assert (info["seed_resize_from_w"], info["seed_resize_from_h"]) == (48, 80)
        assert "Seed resize from: 48x80" in info["infotexts"][0]
        request = WEBUIAPI_REQUEST.replace(num_images=1)
        for response, resize in ((resized, (48, 80)), (ignored, None)):
            expected = serial_pictures(request.replace(seed_resize_from=resize))[0]
            sent = decode_png(response.json()["images"][0]).convert("RGB")
            assert max_pixel_diff(sent, expected) == 0
        bad = client.post("/sdapi/v1/txt2img", json={**body, "seed_resize_from_h": 81})
        assert bad.status_code == 422 and bad.json()["error"]["field"] == "seed_resize_from_w"
