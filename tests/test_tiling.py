"""A1111's tiling: every convolution of the UNet and the VAE pads circularly. The pictures equal
diffusers' pipeline whose convolutions are switched to circular padding (A1111's
``apply_circular``), and the model's own networks never change."""

from __future__ import annotations

import pytest
import torch
from helpers import (
    TOLERANCE,
    batched_pictures,
    diffusers_pipeline,
    generated_and_reproduced,
    max_pixel_diff,
)

from sdgen.params import GenerationRequest
from sdgen.pipelines.generate import generate
from sdgen.sampling.samplers import make_scheduler, resolve_sampler

PROMPT = "a red circle on a blue background"
REQUEST = GenerationRequest(
    PROMPT, steps=4, seed=21, sampler="euler", width=32, height=32, tiling=True
)


def _circular_pipeline(folder, img2img: bool = False):
    """diffusers' pipeline (euler) with every Conv2d of its UNet and VAE padding circularly."""
    import diffusers

    pipe = diffusers_pipeline(folder)
    if img2img:
        pipe = diffusers.StableDiffusionImg2ImgPipeline(**pipe.components)
        pipe.set_progress_bar_config(disable=True)
    pipe.scheduler = make_scheduler(resolve_sampler("euler"), pipe.scheduler.config)
    for network in (pipe.unet, pipe.vae):
        for module in network.modules():
            if isinstance(module, torch.nn.Conv2d):
                module.padding_mode = "circular"
    return pipe


def test_tiled_pictures_equal_diffusers_with_circular_convolutions(tiny_sd1, sd1_model):
    result = generate(sd1_model, REQUEST.replace(num_images=2))
    pipe = _circular_pipeline(tiny_sd1)
    for i, image in enumerate(result.images):
        reference = pipe(
            PROMPT,
            num_inference_steps=4,
            width=32,
            height=32,
            generator=torch.Generator().manual_seed(21 + i),
        ).images[0]
        assert max_pixel_diff(image, reference) <= TOLERANCE, f"image {i}"
    plain = generate(sd1_model, REQUEST.replace(tiling=False)).images[0]
    assert max_pixel_diff(plain, result.images[0]) > 10  # tiling changes the picture


def test_img2img_encodes_and_decodes_with_circular_convolutions(tiny_sd1, sd1_model):
    from PIL import Image

    from sdgen.params import InputPicture

    picture = Image.new("RGB", (32, 32), (200, 40, 40))
    picture.paste((30, 30, 220), (0, 0, 12, 32))
    request = REQUEST.replace(init_image=InputPicture.from_image(picture), strength=0.6)
    result = generate(sd1_model, request).images[0]
    reference = _circular_pipeline(tiny_sd1, img2img=True)(
        PROMPT,
        image=picture,
        strength=0.6,
        num_inference_steps=4,
        generator=torch.Generator().manual_seed(21),
    ).images[0]
    assert max_pixel_diff(result, reference) <= TOLERANCE


def test_the_models_networks_stay_as_loaded_and_share_their_weights(sd1_model):
    """The circular copies hold the model's own parameters (a merged LoRA reaches them); the
    model's convolutions still pad with zeros, and requests of both kinds batch together."""
    from sdgen.models.tiling import tiled_networks

    plain_request = REQUEST.replace(tiling=False, seed=5)
    requests = [REQUEST, plain_request, REQUEST.replace(seed=9)]
    alone = [generate(sd1_model, r).images[0] for r in requests]
    for picture, own in zip(batched_pictures(sd1_model, requests), alone, strict=True):
        assert max_pixel_diff(picture, own) <= 1
    unet, vae = tiled_networks(sd1_model)
    for copy, network in ((unet, sd1_model.unet), (vae, sd1_model.vae)):
        pairs = zip(copy.parameters(), network.parameters(), strict=True)
        assert all(mine is theirs for mine, theirs in pairs)
        convolutions = [m for m in network.modules() if isinstance(m, torch.nn.Conv2d)]
        assert convolutions and {m.padding_mode for m in convolutions} == {"zeros"}
        circular = [m for m in copy.modules() if isinstance(m, torch.nn.Conv2d)]
        assert {m.padding_mode for m in circular} == {"circular"}


def test_a_compiled_network_is_copied_eager():
    """The fast path's compiled call belongs to the original: the copy runs its own modules."""
    from sdgen.models.fast_path import compile_with_fallback
    from sdgen.models.tiling import circular_copy

    network = torch.nn.Sequential(torch.nn.Conv2d(2, 2, 3, padding=1))
    compile_with_fallback(network)  # compiles lazily: nothing is compiled here
    copy = circular_copy(network)
    assert network._compiled_call_impl is not None and copy._compiled_call_impl is None
    x = torch.randn(1, 2, 4, 4)
    expected = torch.nn.functional.conv2d(
        torch.nn.functional.pad(x, (1, 1, 1, 1), mode="circular"),
        network[0].weight,
        network[0].bias,
    )
    assert torch.allclose(copy(x), expected, atol=1e-6)


@pytest.mark.parametrize("value", [1, "yes", None])
def test_tiling_is_true_or_false(value):
    from sdgen.errors import InvalidRequest

    with pytest.raises(InvalidRequest, match="tiling.*true or false"):
        REQUEST.replace(tiling=value)


def test_recorded_as_a1111_writes_it_and_reproduced(capsys, tmp_path):
    request, fields = generated_and_reproduced(capsys, tmp_path, ["--tiling"])
    assert request.tiling is True and fields["Tiling"] == "True"


def test_a1111s_tiling_is_sdgens(tmp_path):
    from test_server_a1111 import WEBUIAPI_REQUEST, WEBUIAPI_TXT2IMG
    from test_server_support import client_for, decode_png, serial_pictures

    body = {**WEBUIAPI_TXT2IMG, "batch_size": 1, "tiling": True}
    with client_for(tmp_path) as client:
        response = client.post("/sdapi/v1/txt2img", json=body)
        assert response.status_code == 200, response.text
    sent = decode_png(response.json()["images"][0])
    assert "Tiling: True" in sent.text["parameters"]
    expected = serial_pictures(WEBUIAPI_REQUEST.replace(num_images=1, tiling=True))[0]
    assert max_pixel_diff(sent.convert("RGB"), expected) == 0
