"""AUTOMATIC1111's API as its clients call it: the exact JSON the ``webuiapi`` package sends."""

from __future__ import annotations

import base64
import io
import json
import threading
import time

import httpx
import numpy as np
import pytest
from PIL import Image
from test_server_support import (  # noqa: F401 (single_thread_torch: autouse)
    LiveServer,
    client_for,
    decode_png,
    make_app,
    png_base64,
    serial_pictures,
    single_thread_torch,
    wait_for,
    wait_until,
)

from sdgen.media.metadata import parse_parameters
from sdgen.params import GenerationRequest, InputPicture
from sdgen.sampling.samplers import SAMPLERS

# webuiapi.WebUIApi(sampler="Euler a").txt2img(prompt=..., seed=1234, batch_size=2, steps=3,
# width=64, height=64): its payload, field for field (webuiapi 0.9).
WEBUIAPI_TXT2IMG = {
    "enable_hr": False,
    "hr_scale": 2,
    "hr_upscaler": "Latent",
    "hr_second_pass_steps": 0,
    "hr_resize_x": 0,
    "hr_resize_y": 0,
    "denoising_strength": 0.7,
    "firstphase_width": 0,
    "firstphase_height": 0,
    "prompt": "a red circle",
    "styles": [],
    "seed": 1234,
    "subseed": -1,
    "subseed_strength": 0.0,
    "seed_resize_from_h": 0,
    "seed_resize_from_w": 0,
    "batch_size": 2,
    "n_iter": 1,
    "steps": 3,
    "cfg_scale": 7.0,
    "width": 64,
    "height": 64,
    "restore_faces": False,
    "tiling": False,
    "do_not_save_samples": False,
    "do_not_save_grid": False,
    "negative_prompt": "",
    "eta": 1.0,
    "s_churn": 0,
    "s_tmax": 0,
    "s_tmin": 0,
    "s_noise": 1,
    "override_settings": {},
    "override_settings_restore_afterwards": True,
    "sampler_name": "Euler a",
    "sampler_index": "Euler a",
    "script_name": None,
    "script_args": [],
    "send_images": True,
    "save_images": False,
    "alwayson_scripts": {},
}
INIT = Image.new("RGB", (64, 64), (30, 60, 220))
MASK = Image.new("L", (64, 64), 0)
MASK.paste(255, (0, 0, 32, 64))
MASK_BASE64 = "data:image/png;base64," + png_base64(MASK)
# webuiapi's img2img(images=[INIT], ...): the txt2img fields less hires fix, plus these.
WEBUIAPI_IMG2IMG = {
    **{k: v for k, v in WEBUIAPI_TXT2IMG.items() if not k.startswith(("hr_", "first"))},
    "init_images": ["data:image/png;base64," + png_base64(INIT)],
    "resize_mode": 0,
    "denoising_strength": 0.75,
    "mask_blur": 4,
    "inpainting_fill": 0,
    "inpaint_full_res": True,
    "inpaint_full_res_padding": 0,
    "inpainting_mask_invert": 0,
    "initial_noise_multiplier": 1,
    "image_cfg_scale": 1.5,
    "include_init_images": False,
    "batch_size": 1,
}
del WEBUIAPI_IMG2IMG["enable_hr"]
# WEBUIAPI_TXT2IMG as the library's request: the pictures its answers must hold
WEBUIAPI_REQUEST = GenerationRequest(
    "a red circle",
    steps=3,
    seed=1234,
    num_images=2,
    guidance_scale=7.0,
    sampler="euler_a",
    width=64,
    height=64,
)


def _same(a: Image.Image, b: Image.Image) -> bool:
    return np.array_equal(np.asarray(a.convert("RGB")), np.asarray(b))


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    with client_for(tmp_path_factory.mktemp("data")) as c:
        yield c


def test_txt2img_answers_as_a1111_with_the_serial_pictures(client):
    response = client.post("/sdapi/v1/txt2img", json=WEBUIAPI_TXT2IMG)
    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) == {"images", "parameters", "info"}
    expected = serial_pictures(WEBUIAPI_REQUEST)
    info = json.loads(body["info"])
    assert info["seed"] == 1234 and info["all_seeds"] == [1234, 1235]
    assert info["sampler_name"] == "Euler a" and info["cfg_scale"] == 7.0
    assert info["sd_model_name"] == "sdgen-miniature" and len(info["infotexts"]) == 2
    for index, data in enumerate(body["images"]):
        picture = decode_png(data)
        assert _same(picture, expected[index])
        fields = parse_parameters(picture.text["parameters"])
        assert fields["Seed"] == str(1234 + index) and fields["Sampler"] == "Euler a"
        assert picture.text["parameters"] == info["infotexts"][index]
    assert body["parameters"]["prompt"] == "a red circle" and body["parameters"]["steps"] == 3
    # The A1111 job is a job like any other: in the store, listed by the native API.
    jobs = client.get("/v1/jobs", params={"limit": 1}).json()["jobs"]
    assert jobs[0]["api"] == "a1111" and jobs[0]["status"] == "succeeded"


def test_a1111_defaults_seed_minus_one_and_a_bare_request(client):
    response = client.post(
        "/sdapi/v1/txt2img",
        json={"prompt": "", "steps": 2, "width": 64, "height": 64, "n_iter": 2},
    )
    assert response.status_code == 200, response.text
    info = json.loads(response.json()["info"])
    seed = info["seed"]
    assert 0 <= seed < 2**32 and info["all_seeds"] == [seed, seed + 1]
    assert info["sampler_name"] == "Euler"  # A1111's sampler_index default
    job = client.get("/v1/jobs", params={"limit": 1}).json()["jobs"][0]
    assert job["request"]["guidance_scale"] == 7.0  # A1111's cfg_scale default, not sdgen's


def test_img2img_and_inpainting_as_webuiapi_sends_them(client):
    # webuiapi's inpainting settings: blur 4, "fill", only masked with no padding, overlay.
    inpainting = {"mask_blur": 4, "padding_mask_crop": 0, "masked_content": "fill", "overlay": True}
    for extra, pictures, processing in (
        ({}, {"init_image": INIT}, {}),
        ({"mask": MASK_BASE64}, {"init_image": INIT, "mask": MASK}, inpainting),
    ):
        response = client.post("/sdapi/v1/img2img", json={**WEBUIAPI_IMG2IMG, **extra})
        assert response.status_code == 200, response.text
        expected = serial_pictures(
            WEBUIAPI_REQUEST.replace(
                num_images=1,
                strength=0.75,
                resize=True,
                **{k: InputPicture.from_image(v) for k, v in pictures.items()},
                **processing,
            )
        )
        assert _same(decode_png(response.json()["images"][0]), expected[0])
        info = json.loads(response.json()["info"])
        assert info["denoising_strength"] == 0.75
        assert info["is_using_inpainting_conditioning"] is False  # the model's UNet has 4


A1111_INVALID = [
    ({"width": 65}, "width"),
    ({"prompt": "a red circle AND a square :1000"}, "prompt"),  # a part's weight
    ({"cfg_scale": "nan"}, "cfg_scale"),
    ({"steps": 0}, "steps"),
    ({"batch_size": 0}, "batch_size"),
    ({"batch_size": 17}, "batch_size"),
    ({"batch_size": 1, "n_iter": 100}, "n_iter"),  # named after the one raised
    ({"sampler_name": "Warp drive"}, "sampler_name"),
    ({"sampler_name": "DPM++ 2M", "scheduler": "Exponential"}, "scheduler"),
    ({"sampler_name": "Euler", "scheduler": "Karras"}, "scheduler"),  # DPM++ 2M's only
    ({"sampler_name": "Warp drive", "scheduler": "Karras"}, "sampler_name"),
    ({"seed": -5}, "seed"),
    # the hires fix, named as A1111 clients send it
    ({"enable_hr": True, "hr_scale": 1.3}, "hr_scale"),  # 83x83: not multiples of 8
    ({"enable_hr": True, "hr_scale": 40}, "hr_scale"),
    ({"enable_hr": True, "width": 512, "height": 512, "hr_scale": 8}, "hr_scale"),  # past 2048²
    ({"enable_hr": True, "hr_resize_x": 100}, "hr_resize_x"),
    ({"enable_hr": True, "hr_second_pass_steps": 151}, "hr_second_pass_steps"),
    ({"enable_hr": True, "denoising_strength": 0}, "denoising_strength"),
    ({"enable_hr": True, "hr_upscaler": "R-ESRGAN 4x+"}, "hr_upscaler"),
    ({"enable_hr": True, "hr_sampler_name": "Warp drive"}, "hr_sampler_name"),
    ({"enable_hr": True, "hr_checkpoint_name": "other.safetensors"}, "hr_checkpoint_name"),
    ({"enable_hr": True, "firstphase_width": 256}, "firstphase_width"),
    ({"restore_faces": True}, "restore_faces"),
    ({"subseed_strength": 1.5}, "subseed_strength"),
    ({"seed_resize_from_w": 100, "seed_resize_from_h": 64}, "seed_resize_from_w"),
    ({"styles": ["cinematic"]}, "styles"),
    ({"script_name": "x/y/z plot"}, "script_name"),
    (
        {"alwayson_scripts": {"ControlNet": {"args": [{"enabled": True}]}}},
        "alwayson_scripts.ControlNet",
    ),
    ({"override_settings": {"sd_model_checkpoint": "../x"}}, "override_settings"),
    ({"override_settings": {"CLIP_stop_at_last_layers": 13}}, "override_settings"),
    ({"override_settings": {"CLIP_stop_at_last_layers": 1.5}}, "override_settings"),
    ({"override_settings": {"CLIP_stop_at_last_layers": 12}}, "override_settings"),  # 3 layers
    ({"eta": 0.5}, "eta"),  # Euler a: diffusers' ancestral step has eta 1 only
    ({"eta": 0.0}, "eta"),
    ({"sampler_name": "DDIM", "eta": 1.5}, "eta"),  # DDIM's: 0..1
    ({"s_churn": 1.0}, "s_churn"),
    ({"s_noise": 0.5}, "s_noise"),
]


def test_eta_is_read_as_a1111_reads_it(client):
    """DDIM takes the request's eta (webuiapi sends 1; none means A1111's default 0) and records
    it as A1111 does; samplers without an eta ignore it, as in A1111."""
    request = GenerationRequest(
        "a red circle", steps=3, seed=9, guidance_scale=7.0, sampler="ddim", width=64, height=64
    )
    for sent, eta in ((1.0, 1.0), (None, 0.0)):
        body = {**WEBUIAPI_TXT2IMG, "sampler_name": "DDIM", "eta": sent, "seed": 9}
        response = client.post("/sdapi/v1/txt2img", json={**body, "batch_size": 1})
        assert response.status_code == 200, response.text
        picture = decode_png(response.json()["images"][0])
        assert _same(picture, serial_pictures(request.replace(eta=eta))[0]), sent
        fields = parse_parameters(picture.text["parameters"])
        assert fields.get("Eta DDIM") == ("1" if eta else None)
    body = {**WEBUIAPI_TXT2IMG, "sampler_name": "Euler", "eta": 0.5, "batch_size": 1}
    assert client.post("/sdapi/v1/txt2img", json=body).status_code == 200


def test_an_unpaired_surrogate_in_an_a1111_prompt_is_422(client):
    body = json.dumps({**WEBUIAPI_TXT2IMG, "prompt": "PROMPT"}).replace("PROMPT", "\\ud800")
    response = client.post(
        "/sdapi/v1/txt2img", content=body.encode(), headers={"content-type": "application/json"}
    )
    assert response.status_code == 422 and response.json()["error"]["field"] == "prompt"


def test_a1111_limits_are_stated_as_the_servers(client):
    response = client.post("/sdapi/v1/txt2img", json={**WEBUIAPI_TXT2IMG, "steps": 0})
    assert "from 1 to 150" in response.json()["error"]["message"]  # not the library's 10000


@pytest.mark.parametrize(("change", "field"), A1111_INVALID)
def test_invalid_a1111_requests_are_422_naming_a1111_fields(client, change, field):
    response = client.post("/sdapi/v1/txt2img", json={**WEBUIAPI_TXT2IMG, **change})
    assert response.status_code == 422, response.text
    assert response.json()["error"]["field"].startswith(field)


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"init_images": ["%%%"]}, "init_images"),
        ({"init_images": [base64.b64encode(b"GIF89a nonsense").decode()]}, "init_images"),
        ({"init_images": []}, "init_images"),
        ({"mask": "not-a-picture"}, "mask"),
        ({"resize_mode": 3}, "resize_mode"),  # latent upscale
        ({"denoising_strength": 2.0}, "denoising_strength"),
        ({"initial_noise_multiplier": 0.5}, "initial_noise_multiplier"),
        ({"latent_mask": "abc"}, "latent_mask"),
        # inpainting's mask processing, named as A1111 clients send it
        ({"mask": MASK_BASE64, "inpainting_fill": 4}, "inpainting_fill"),
        ({"mask": MASK_BASE64, "mask_blur": None, "mask_blur_y": 8}, "mask_blur_y"),
        ({"mask": MASK_BASE64, "mask_blur": -1}, "mask_blur"),
        (
            {"mask": MASK_BASE64, "mask_blur": None, "mask_blur_x": 300, "mask_blur_y": 300},
            "mask_blur_x",  # it is mask_blur_x's blur when mask_blur is not sent
        ),
        ({"mask": MASK_BASE64, "inpaint_full_res_padding": -1}, "inpaint_full_res_padding"),
        ({"mask": MASK_BASE64, "mask_round": False}, "mask_round"),
        ({"enable_hr": True}, "enable_hr"),  # txt2img's
    ],
)
def test_invalid_img2img_inputs_are_422(client, change, field):
    response = client.post("/sdapi/v1/img2img", json={**WEBUIAPI_IMG2IMG, **change})
    assert response.status_code == 422, response.text
    assert response.json()["error"]["field"] == field


def _inpainting_request(**fields) -> GenerationRequest:
    """An A1111 img2img body (A1111's defaults but for these) as sdgen's request."""
    from sdgen.server.a1111.protocol import Img2ImgRequest

    body = {"init_images": [png_base64(INIT)], "width": 64, "height": 64, **fields}
    return Img2ImgRequest(**body).to_request(model=None, max_pixels=1 << 20)


def _processing(request: GenerationRequest) -> tuple:
    return request.mask_blur, request.padding_mask_crop, request.masked_content, request.overlay


def test_a1111_resize_modes_become_sdgens():
    modes = [_inpainting_request(resize_mode=m).resize_mode for m in (0, 1, 2)]
    assert modes == ["stretch", "crop", "fill"]


def test_a1111_inpainting_settings_become_sdgens_mask_processing():
    """A1111's defaults with a mask: blur 4, only masked with no padding, fill, the init
    picture pasted back; each setting maps to its sdgen field."""
    assert _processing(_inpainting_request(mask=MASK_BASE64)) == (4, 0, "fill", True)
    whole = _inpainting_request(
        mask=MASK_BASE64, inpaint_full_res=False, inpaint_full_res_padding=8
    )
    assert whole.padding_mask_crop is None
    padded = _inpainting_request(mask=MASK_BASE64, inpaint_full_res_padding=32)
    assert padded.padding_mask_crop == 32
    fills = {0: "fill", 1: "original", 2: "latent_noise", 3: "latent_nothing"}
    for fill, content in fills.items():
        request = _inpainting_request(mask=MASK_BASE64, inpainting_fill=fill)
        assert request.masked_content == content, fill
    # mask_blur sets both radii, as A1111's setter does; without it, x and y equal are one blur
    assert _inpainting_request(mask=MASK_BASE64, mask_blur=9, mask_blur_y=2).mask_blur == 9
    assert _inpainting_request(mask=MASK_BASE64, mask_blur_x=6, mask_blur_y=6).mask_blur == 6
    assert _inpainting_request(mask=MASK_BASE64, mask_blur=0).mask_blur == 0
    # at denoising strength 1 sdgen starts the masked part from noise: every content is alike
    full = _inpainting_request(mask=MASK_BASE64, denoising_strength=1.0, inpainting_fill=2)
    assert full.masked_content == "original" and full.strength == 1.0
    # "Only masked" ignores the resize mode (the masked area is resized to fit), as A1111
    cropped = _inpainting_request(mask=MASK_BASE64, resize_mode=1)
    assert cropped.padding_mask_crop == 0 and cropped.resize_mode == "stretch"
    assert _inpainting_request(resize_mode=1).resize_mode == "crop"  # img2img keeps it


def test_a1111_only_masked_with_nothing_masked_is_img2img():
    """A1111 runs plain img2img when "Only masked" finds no masked pixel (a JPEG's faint noise
    below one half counts as none); without "Only masked" the mask is kept."""
    black = Image.new("L", (64, 64), 3)
    blank = "data:image/png;base64," + png_base64(black)
    request = _inpainting_request(mask=blank)
    assert request.mode == "img2img" and request.mask_blur == 0 and not request.overlay
    kept = _inpainting_request(mask=blank, inpaint_full_res=False)
    assert kept.mode == "inpaint"


def test_a1111_inpainting_settings_without_a_mask_are_ignored():
    """A1111 clients send the inpainting settings with every img2img call: without a mask they
    do nothing there, and nothing here (not even the ones refused with a mask)."""
    request = _inpainting_request()
    assert request.mask is None and _processing(request) == (0, None, "original", False)
    odd = _inpainting_request(mask_blur_y=8, inpainting_fill=7, mask_round=False, mask_blur=-1)
    assert _processing(odd) == (0, None, "original", False)


def test_png_info_reads_the_parameters_and_never_trusts_them(client):
    data = client.post("/sdapi/v1/txt2img", json={**WEBUIAPI_TXT2IMG, "batch_size": 1})
    image = data.json()["images"][0]
    info = client.post("/sdapi/v1/png-info", json={"image": "data:image/png;base64," + image})
    assert info.status_code == 200
    body = info.json()
    assert body["parameters"]["Seed"] == "1234" and body["info"].startswith("a red circle")
    assert "sdgen" in body["items"]
    # as A1111 parses it: the size split, its defaults for keys the text lacks
    parameters = body["parameters"]
    assert parameters["Size-1"] == "64" and parameters["Size-2"] == "64"
    assert "Size" not in parameters and parameters["Clip skip"] == "1"
    assert parameters["RNG"] == "CPU" and parameters["Schedule type"] == "Automatic"
    from PIL import PngImagePlugin

    hostile = PngImagePlugin.PngInfo()
    hostile.add_text("parameters", 'Steps: "unterminated, Seed: ::::\n\n,,')
    out = io.BytesIO()
    INIT.save(out, format="PNG", pnginfo=hostile)
    odd = client.post(
        "/sdapi/v1/png-info", json={"image": base64.b64encode(out.getvalue()).decode()}
    )
    assert odd.status_code == 200
    bad = client.post("/sdapi/v1/png-info", json={"image": base64.b64encode(b"nope").decode()})
    assert bad.status_code == 422 and bad.json()["error"]["field"] == "image"


def test_png_info_reads_a_huge_parameters_line_in_linear_time(client):
    """A1111's infotext pattern, with its unbounded key, took minutes to hours on one long line
    (the scan was quadratic), holding a server thread; keys are bounded now."""
    from PIL import PngImagePlugin

    hostile = PngImagePlugin.PngInfo()
    hostile.add_text("parameters", "prompt\n" + "x" * 300_000)  # ~6 minutes with the old one
    out = io.BytesIO()
    INIT.save(out, format="PNG", pnginfo=hostile)
    started = time.monotonic()
    body = {"image": base64.b64encode(out.getvalue()).decode()}
    info = client.post("/sdapi/v1/png-info", json=body)
    assert info.status_code == 200 and len(info.json()["info"]) == 300_007
    assert time.monotonic() - started < 10


def test_samplers_models_options_and_scripts(client):
    samplers = {s["name"]: s for s in client.get("/sdapi/v1/samplers").json()}
    assert {"Euler a", "DPM++ 2M Karras", "DDIM"} <= set(samplers)
    assert samplers["Euler a"]["aliases"] == ["k_euler_a", "k_euler_ancestral", "euler_a"]
    for alias in ("k_euler_a", "k_dpmpp_2m_ka", "plms"):  # A1111's aliases name its samplers
        body = {**WEBUIAPI_TXT2IMG, "batch_size": 1, "steps": 4, "sampler_name": alias}
        info = json.loads(client.post("/sdapi/v1/txt2img", json=body).json()["info"])
        assert info["sampler_name"] == {"k_euler_a": "Euler a", "plms": "PLMS"}.get(
            alias, "DPM++ 2M"
        )
    [model] = client.get("/sdapi/v1/sd-models").json()
    assert model["model_name"] == "sdgen-miniature"
    chosen = {**WEBUIAPI_TXT2IMG, "batch_size": 1, "override_settings": {}}
    chosen["override_settings"]["sd_model_checkpoint"] = model["title"]
    assert client.post("/sdapi/v1/txt2img", json=chosen).status_code == 200
    # once loaded (by this call or an earlier test's), the title carries the hash, as A1111's
    [model] = client.get("/sdapi/v1/sd-models").json()
    assert model["title"].startswith("sdgen-miniature [")
    assert client.get("/sdapi/v1/options").json()["sd_model_checkpoint"] == model["title"]
    assert client.get("/sdapi/v1/scripts").json() == {"txt2img": [], "img2img": []}


# A1111 v1.10's schedule types (modules/sd_schedulers.py): name -> label.
A1111_SCHEDULE_TYPES = {
    "automatic": "Automatic",
    "uniform": "Uniform",
    "karras": "Karras",
    "exponential": "Exponential",
    "polyexponential": "Polyexponential",
    "sgm_uniform": "SGM Uniform",
    "kl_optimal": "KL Optimal",
    "align_your_steps": "Align Your Steps",
    "simple": "Simple",
    "normal": "Normal",
    "ddim": "DDIM",
    "beta": "Beta",
}


def _sampler_having(label: str):
    """A registry sampler with this schedule type, preferring an algorithm that has several
    (for Automatic, one that A1111 does not give another type under Automatic)."""
    from sdgen.server.a1111.schedule_types import AUTOMATIC_SCHEDULES

    having = [
        s
        for s in SAMPLERS.values()
        if (s.schedule_type or "Automatic") == label
        and not (label == "Automatic" and s.a1111_name in AUTOMATIC_SCHEDULES)
    ]
    return max(having, key=lambda s: sum(o.a1111_name == s.a1111_name for o in SAMPLERS.values()))


def test_schedulers_lists_exactly_the_schedule_types_txt2img_accepts(client):
    listed = client.get("/sdapi/v1/schedulers").json()
    # A1111's shape and, for each type, A1111's own description of it.
    assert all(
        set(item) == {"name", "label", "aliases", "default_rho", "need_inner_model"}
        for item in listed
    )
    assert all(A1111_SCHEDULE_TYPES[item["name"]] == item["label"] for item in listed)
    by_name = {item["name"]: item for item in listed}
    assert by_name["automatic"] == {
        "name": "automatic",
        "label": "Automatic",
        "aliases": None,
        "default_rho": -1.0,
        "need_inner_model": False,
    }
    assert by_name["karras"]["default_rho"] == 7.0
    # Exactly the types the sampler registry runs: Automatic and those it names.
    registry = {"Automatic"} | {s.schedule_type for s in SAMPLERS.values() if s.schedule_type}
    assert {item["label"] for item in listed} == registry
    # Each listed type, by name and by label, runs with a sampler that has it, and the picture
    # says so ("Schedule type" is left out for Automatic, as A1111 does).
    for item in listed:
        sampler = _sampler_having(item["label"])
        for spelling in (item["name"], item["label"], *(item["aliases"] or [])):
            body = {
                **WEBUIAPI_TXT2IMG,
                "batch_size": 1,
                "sampler_name": sampler.a1111_name,
                "scheduler": spelling,
            }
            response = client.post("/sdapi/v1/txt2img", json=body)
            assert response.status_code == 200, (spelling, response.text)
            info = json.loads(response.json()["info"])
            assert info["sampler_name"] == sampler.a1111_name
            schedule = info["extra_generation_params"].get("Schedule type", "Automatic")
            assert schedule == item["label"], spelling
    # DPM++ 2M under Automatic runs Karras sigmas in A1111 (v1.9+), and says so
    for scheduler in (None, "automatic", "Automatic"):
        body = {**WEBUIAPI_TXT2IMG, "batch_size": 1, "sampler_name": "DPM++ 2M"}
        body["scheduler"] = scheduler
        info = json.loads(client.post("/sdapi/v1/txt2img", json=body).json()["info"])
        assert info["extra_generation_params"]["Schedule type"] == "Karras", scheduler
    # A1111's other types are refused, naming the field, with the types sdgen has.
    for name, label in A1111_SCHEDULE_TYPES.items():
        if name in by_name:
            continue
        for spelling in (name, label):
            body = {**WEBUIAPI_TXT2IMG, "sampler_name": "DPM++ 2M", "scheduler": spelling}
            response = client.post("/sdapi/v1/txt2img", json=body)
            assert response.status_code == 422, (spelling, response.text)
            error = response.json()["error"]
            assert error["field"] == "scheduler"
            assert all(listed_name in error["message"] for listed_name in by_name)


def test_a_sampler_name_that_carries_its_schedule_type_keeps_it(client):
    """A1111 reads "DPM++ 2M Karras" as DPM++ 2M with Karras, also beside scheduler Karras."""
    for scheduler in ("Karras", "Automatic", None):
        body = {
            **WEBUIAPI_TXT2IMG,
            "batch_size": 1,
            "sampler_name": "DPM++ 2M Karras",
            "scheduler": scheduler,
        }
        response = client.post("/sdapi/v1/txt2img", json=body)
        assert response.status_code == 200, response.text
        info = json.loads(response.json()["info"])
        assert info["extra_generation_params"] == {"Schedule type": "Karras"}
    euler = {**WEBUIAPI_TXT2IMG, "sampler_name": "Euler", "scheduler": "karras"}
    message = client.post("/sdapi/v1/txt2img", json=euler).json()["error"]["message"]
    assert "automatic with Euler" in message


def test_progress_and_interrupt_stop_only_a1111_jobs(tmp_path):
    app = make_app(tmp_path, step_delay=0.05)
    with LiveServer(app) as server, httpx.Client(base_url=server.url, timeout=60) as client:
        idle = client.get("/sdapi/v1/progress").json()
        assert idle["progress"] == 0 and idle["state"]["job_count"] == 0
        assert not idle["state"]["interrupted"] and not idle["state"]["skipped"]
        answer = {}

        def call():
            body = {**WEBUIAPI_TXT2IMG, "batch_size": 1, "steps": 150}
            answer["response"] = client.post("/sdapi/v1/txt2img", json=body)

        thread = threading.Thread(target=call)
        thread.start()
        progress = wait_until(
            lambda: (
                (p := client.get("/sdapi/v1/progress").json())["state"]["sampling_step"] > 1 and p
            )
        )
        native = client.post("/v1/jobs", json={"prompt": "x", "steps": 2, "seed": 1}).json()
        assert progress["state"]["sampling_steps"] == 150 and 0 < progress["progress"] < 1
        timestamp = progress["state"]["job_timestamp"]  # when the job began, as A1111 gives it
        assert len(timestamp) == 14 and timestamp.isdigit() and timestamp[:2] == "20"
        assert decode_png(progress["current_image"]).size[0] <= 128
        assert (
            client.get("/sdapi/v1/progress?skip_current_image=true").json()["current_image"] is None
        )
        assert client.post("/sdapi/v1/interrupt").status_code == 200
        thread.join(60)
        response = answer["response"]
        # As A1111: the picture predicted at the step it stopped at, which its metadata names.
        assert response.status_code == 200 and len(response.json()["images"]) == 1
        assert json.loads(response.json()["info"])["status"] == "succeeded"
        assert json.loads(response.json()["info"])["job_timestamp"] == timestamp
        fields = parse_parameters(decode_png(response.json()["images"][0]).text["parameters"])
        done, total = map(int, fields["Stopped at step"].split("/"))
        assert 1 < done < total == 150 and fields["Steps"] == "150"
        # A1111's state says so until its next job begins
        assert client.get("/sdapi/v1/progress").json()["state"]["interrupted"] is True
        assert wait_for(client, native["id"])["status"] == "succeeded"  # not interrupted
        # Progress shows what interrupt would stop: a native job is not A1111's current job.
        native = client.post("/v1/jobs", json={"prompt": "x", "steps": 60, "seed": 1}).json()
        wait_until(lambda: client.get(f"/v1/jobs/{native['id']}").json()["status"] == "running")
        assert client.get("/sdapi/v1/progress").json()["state"]["job"] == ""
        assert client.post("/sdapi/v1/interrupt").status_code == 200
        assert wait_for(client, native["id"])["status"] == "succeeded"


def test_skip_and_interrupt_end_the_current_a1111_job_all_its_iterations(tmp_path):
    """A1111 runs its calls one after another: its current job is the oldest running one here,
    the others beside it are those A1111 would have queued (another client's call). Skip and
    interrupt end that job alone, with the pictures of its last step. sdgen denoises an A1111
    request's n_iter x batch_size pictures together: skip has no next iteration to go on to."""
    app = make_app(tmp_path, step_delay=0.05)
    with LiveServer(app) as server, httpx.Client(base_url=server.url, timeout=60) as client:
        idle = client.post("/sdapi/v1/skip")
        assert idle.status_code == 200 and idle.json() is None  # A1111 answers null
        answers = {}

        def call(name, **change):
            body = {**WEBUIAPI_TXT2IMG, "batch_size": 1, "steps": 150, **change}
            answers[name] = client.post("/sdapi/v1/txt2img", json=body)

        def current_task():
            progress = client.get("/sdapi/v1/progress").json()
            return progress["state"]["sampling_step"] > 1 and progress["current_task"]

        first = threading.Thread(target=call, args=("first",), kwargs={"n_iter": 2})
        first.start()
        first_id = wait_until(current_task)
        second = threading.Thread(target=call, args=("second",))
        second.start()  # joins the first one's batch: both run at once

        def running_beside_it():
            jobs = client.get("/v1/jobs?status=running").json()["jobs"]
            return next((job["id"] for job in jobs if job["id"] != first_id), None)

        second_id = wait_until(running_beside_it)
        assert current_task() == first_id  # the oldest is A1111's current job
        # Skip ends it, both its iterations (one batch here), not the one beside it.
        skipped = client.post("/sdapi/v1/skip")
        assert skipped.status_code == 200 and skipped.json() is None
        first.join(60)
        response = answers["first"]
        assert response.status_code == 200 and len(response.json()["images"]) == 2
        assert json.loads(response.json()["info"])["status"] == "succeeded"
        assert "Stopped at step: " in decode_png(response.json()["images"][0]).text["parameters"]
        assert client.get(f"/v1/jobs/{second_id}").json()["status"] == "running"
        assert wait_until(current_task) == second_id
        assert client.get("/sdapi/v1/progress").json()["state"]["skipped"] is True
        # Interrupt ends the one that is current now.
        assert client.post("/sdapi/v1/interrupt").json() == {}
        second.join(60)
        response = answers["second"]
        assert response.status_code == 200 and len(response.json()["images"]) == 1
        assert "Stopped at step: " in decode_png(response.json()["images"][0]).text["parameters"]
        progress = client.get("/sdapi/v1/progress").json()
        assert progress["state"]["job"] == "" and progress["progress"] == 0
        assert progress["state"]["interrupted"] is True
        small = {**WEBUIAPI_TXT2IMG, "batch_size": 1, "steps": 2}
        assert client.post("/sdapi/v1/txt2img", json=small).status_code == 200
        state = client.get("/sdapi/v1/progress").json()["state"]
        assert state["skipped"] is False and state["interrupted"] is False  # a new job
        # A native job is not A1111's to skip.
        native = client.post("/v1/jobs", json={"prompt": "x", "steps": 30, "seed": 1}).json()
        wait_until(lambda: client.get(f"/v1/jobs/{native['id']}").json()["status"] == "running")
        assert client.post("/sdapi/v1/skip").status_code == 200
        assert wait_for(client, native["id"])["status"] == "succeeded"


@pytest.mark.parametrize(
    ("kind", "status"), [("invalid_request", 422), ("model_load", 503), ("out_of_memory", 500)]
)
def test_a_failed_job_answers_with_the_status_of_its_cause(kind, status):
    """A job accepted, then failed on its worker: the txt2img call's status says why."""
    from pathlib import Path

    from sdgen.server.a1111.protocol import Txt2ImgRequest
    from sdgen.server.a1111.serving import A1111Handler
    from sdgen.server.config import ServerConfig
    from sdgen.server.serving import ApiError
    from sdgen.server.store import JobRecord

    error = {"kind": kind, "field": None, "message": "it failed"}
    record = JobRecord("j1", "a1111", "failed", {}, created_at=0.0, error=error)
    handler = A1111Handler(service=None, config=ServerConfig(data_dir=Path("unused")))
    with pytest.raises(ApiError) as raised:
        handler._response(Txt2ImgRequest(prompt="x"), record)
    assert (raised.value.status, raised.value.kind) == (status, kind)


def test_a_call_being_checked_does_not_hold_up_progress(tmp_path, monkeypatch):
    """Decoding and checking an A1111 call (pictures, mask processing, a first model load) runs
    off the event loop: progress is answered meanwhile."""
    from sdgen.server.a1111.protocol import Txt2ImgRequest

    to_request = Txt2ImgRequest.to_request

    def slow_to_request(self, *args, **kwargs):
        time.sleep(1.5)  # as a large picture's decoding, or a model's first load
        return to_request(self, *args, **kwargs)

    monkeypatch.setattr(Txt2ImgRequest, "to_request", slow_to_request)
    app = make_app(tmp_path)
    with LiveServer(app) as server, httpx.Client(base_url=server.url, timeout=60) as client:
        body = {**WEBUIAPI_TXT2IMG, "batch_size": 1, "steps": 2}
        thread = threading.Thread(target=lambda: client.post("/sdapi/v1/txt2img", json=body))
        thread.start()
        time.sleep(0.3)  # the call is being checked
        started = time.monotonic()
        assert client.get("/sdapi/v1/progress").status_code == 200
        assert time.monotonic() - started < 0.8
        thread.join(60)


def test_options_switch_the_model_a1111_calls_use(tmp_path, tiny_sd1):
    """webuiapi's util_set_model: POST /sdapi/v1/options with sd_model_checkpoint (a title or a
    name); later calls without override_settings use it; other settings only as they are."""
    from sdgen.models.bundled import MINIATURE_MODEL
    from sdgen.server.a1111.serving import A1111Handler

    with client_for(tmp_path, models=(MINIATURE_MODEL, str(tiny_sd1))) as client:
        handler: A1111Handler = client.app.state.a1111_handler
        served = handler.service.engine.models.names
        first = client.get("/sdapi/v1/options").json()["sd_model_checkpoint"]
        assert first.split(" [")[0] == served[0]
        answer = client.post("/sdapi/v1/options", json={"sd_model_checkpoint": first})
        assert answer.status_code == 200 and answer.json() is None  # as A1111
        assert handler.checkpoint == served[0]
        unknown = client.post("/sdapi/v1/options", json={"sd_model_checkpoint": "nope"})
        assert unknown.status_code == 422
        assert unknown.json()["error"]["field"] == "sd_model_checkpoint"
        assert "nope" in unknown.json()["error"]["message"]
        same = client.post("/sdapi/v1/options", json={"samples_format": "PNG"})
        assert same.status_code == 200
        everything = client.get("/sdapi/v1/options").json()  # Open WebUI posts it all back
        assert client.post("/sdapi/v1/options", json=everything).status_code == 200
        assert everything["CLIP_stop_at_last_layers"] == 1 and everything["randn_source"] == "CPU"
        other = client.post(
            "/sdapi/v1/options", json={"CLIP_stop_at_last_layers": 0, "sd_model_checkpoint": "x"}
        )
        assert other.status_code == 422
        assert other.json()["error"]["field"] == "CLIP_stop_at_last_layers"
        assert handler.checkpoint == served[0]  # a refused call changes nothing
        body = {**WEBUIAPI_TXT2IMG, "batch_size": 1, "steps": 2}
        for name in served[::-1]:
            assert client.post("/sdapi/v1/options", json={"sd_model_checkpoint": name}).is_success
            assert client.get("/sdapi/v1/options").json()["sd_model_checkpoint"].startswith(name)
            info = json.loads(client.post("/sdapi/v1/txt2img", json=body).json()["info"])
            assert name.endswith(info["sd_model_name"])  # a folder: its last part


def test_lists_of_what_sdgen_has_none_of_answer_empty(client):
    """What A1111 clients read when they connect (SillyTavern: upscalers, latent upscale modes,
    VAEs) answers as an A1111 without any of them: empty, not 404."""
    from sdgen.server.a1111.routes import NONE_OF

    for name in NONE_OF:
        response = client.get(f"/sdapi/v1/{name}")
        assert response.status_code == 200 and response.json() == [], name
    assert client.get("/sdapi/v1/embeddings").json() == {"loaded": {}, "skipped": {}}
    for name in ("refresh-checkpoints", "refresh-vae"):
        response = client.post(f"/sdapi/v1/{name}")
        assert response.status_code == 200 and response.json() is None, name
    assert client.get("/sdapi/v1/upscalers-typo").status_code == 404


def test_the_hires_upscalers_are_listed_as_a1111_lists_them(client):
    upscalers = client.get("/sdapi/v1/upscalers").json()
    assert [u["name"] for u in upscalers] == ["Lanczos", "Nearest", "None"]
    assert set(upscalers[0]) == {"name", "model_name", "model_path", "model_url", "scale"}
    modes = [m["name"] for m in client.get("/sdapi/v1/latent-upscale-modes").json()]
    assert modes[0] == "Latent" and "Latent (nearest-exact)" in modes and len(modes) == 6
    for name in [u["name"] for u in upscalers] + modes:  # each one a hires fix takes
        body = {**WEBUIAPI_TXT2IMG, "enable_hr": True, "hr_upscaler": name, "steps": 1}
        body |= {"batch_size": 1, "hr_second_pass_steps": 1, "width": 32, "height": 32}
        response = client.post("/sdapi/v1/txt2img", json=body)
        assert response.status_code == 200, (name, response.text)


def test_a_transparent_init_picture_is_laid_on_white_as_a1111_does():
    """A1111 flattens an init picture onto its img2img background colour (white by default);
    dropping the alpha would show whatever colour the transparent pixels hold (here black)."""
    clear = Image.new("RGBA", (64, 64), (0, 0, 0, 0))
    clear.paste((200, 20, 20, 255), (16, 16, 48, 48))
    request = _inpainting_request(init_images=[png_base64(clear)])
    pixels = np.asarray(request.init_image.image)
    assert request.init_image.image.mode == "RGB"
    assert (pixels[0, 0] == 255).all() and list(pixels[32, 32]) == [200, 20, 20]
    opaque = _inpainting_request(init_images=[png_base64(INIT)])
    assert opaque.init_image == InputPicture.from_image(INIT)  # as before


def test_settings_at_the_values_sdgen_runs_with_are_accepted():
    """SillyTavern overrides clip skip (1 by default) in every call, others the VAE
    ("Automatic") or Forge's modules ([]): values that change nothing are accepted, others get
    422 naming the setting and what sdgen runs with."""
    from sdgen.errors import InvalidRequest
    from sdgen.server.a1111.protocol import Txt2ImgRequest

    same = {"CLIP_stop_at_last_layers": 1, "sd_vae": "Automatic", "forge_additional_modules": []}
    same["comma_padding_backtrack"] = 20.0  # as older A1111 versions write it
    body = {**WEBUIAPI_TXT2IMG, "override_settings": same}
    assert Txt2ImgRequest(**body).to_request(model=None, max_pixels=1 << 20).steps == 3
    for key, value in [
        ("sd_vae", "kl-f8.safetensors"),
        ("comma_padding_backtrack", 0),
    ]:
        body = {**WEBUIAPI_TXT2IMG, "override_settings": {key: value}}
        with pytest.raises(InvalidRequest, match=f"override_settings.{key}.*what sdgen runs"):
            Txt2ImgRequest(**body).to_request(model=None, max_pixels=1 << 20)


def test_img2img_echoes_its_pictures_only_when_asked(client):
    """A1111 echoes the request with init_images and mask null unless include_init_images."""
    body = {**WEBUIAPI_IMG2IMG, "mask": MASK_BASE64, "denoising_strength": 0.5}
    echoed = client.post("/sdapi/v1/img2img", json=body).json()["parameters"]
    assert echoed["init_images"] is None and echoed["mask"] is None
    asked = client.post("/sdapi/v1/img2img", json={**body, "include_init_images": True}).json()
    assert asked["parameters"]["init_images"] == body["init_images"]
    assert asked["parameters"]["mask"] == MASK_BASE64
    info = json.loads(asked["info"])
    assert info["is_using_inpainting_conditioning"] is False  # a 4-channel UNet, mask or not


def test_a1111_endpoints_for_features_sdgen_lacks_say_so(client):
    from sdgen.server.a1111.routes import NOT_SUPPORTED

    for path, message in NOT_SUPPORTED.items():
        response = client.post(f"/sdapi/v1{path}", json={})
        assert response.status_code == 501, path
        assert response.json()["error"] == {
            "kind": "not_supported",
            "field": None,
            "message": message,
        }
    assert client.get("/sdapi/v1/cmd-flags").json() == {}
    assert client.get("/sdapi/v1/script-info").json() == []
    assert client.get("/sdapi/v1/extensions").json() == []


def test_a_null_seed_is_random_as_minus_one():
    from sdgen.server.a1111.protocol import Txt2ImgRequest

    body = {**WEBUIAPI_TXT2IMG, "seed": None}
    assert Txt2ImgRequest(**body).to_request(model=None, max_pixels=1 << 20).seed is None


def test_png_info_reads_a1111s_jpeg_user_comment(client):
    """A1111 writes a JPEG's or WebP's parameters into the EXIF UserComment ("UNICODE" and
    UTF-16, as piexif writes it)."""
    text = "a cat\nSteps: 20, Sampler: Euler a, CFG scale: 7, Seed: 5, Size: 512x768"
    exif = Image.Exif()
    exif.get_ifd(0x8769)[0x9286] = b"UNICODE\x00" + text.encode("utf_16_be")
    out = io.BytesIO()
    INIT.save(out, format="JPEG", exif=exif)
    body = {"image": base64.b64encode(out.getvalue()).decode()}
    info = client.post("/sdapi/v1/png-info", json=body).json()
    assert info["info"] == text
    assert info["parameters"]["Prompt"] == "a cat" and info["parameters"]["Size-2"] == "768"


def test_a1111_prompts_are_read_with_a1111s_emphasis():
    """(words:1.2) weighs words, as in A1111 (its default emphasis mode); syntax sdgen does not
    read is refused naming the prompt rather than read as text."""
    from sdgen.errors import InvalidRequest
    from sdgen.server.a1111.protocol import Txt2ImgRequest

    body = {**WEBUIAPI_TXT2IMG, "prompt": "a (red:1.3) circle"}
    assert Txt2ImgRequest(**body).to_request(model=None, max_pixels=1 << 20).emphasis == "original"
    body["prompt"] = "a <hypernet:style:1> circle"
    with pytest.raises(InvalidRequest, match="prompt.*other extra networks are not on sdgen"):
        Txt2ImgRequest(**body).to_request(model=None, max_pixels=1 << 20)
    body["prompt"] = "a [cat:dog:0.5] circle"  # prompt editing: read (test_prompt_editing)
    assert Txt2ImgRequest(**body).to_request(model=None, max_pixels=1 << 20).prompt == (
        "a [cat:dog:0.5] circle"
    )


def test_a1111_prompts_compose_their_parts(client):
    """A1111's AND through its API: two pulls of one part at cfg 3.5 make the picture of one
    at 7.0 (sdgen.conditioning.composition)."""
    pictures = []
    for prompt, cfg_scale in (("a red circle AND a red circle", 3.5), ("a red circle", 7.0)):
        body = {**WEBUIAPI_TXT2IMG, "prompt": prompt, "cfg_scale": cfg_scale, "batch_size": 1}
        response = client.post("/sdapi/v1/txt2img", json=body)
        assert response.status_code == 200, response.text
        pictures.append(np.asarray(decode_png(response.json()["images"][0]), dtype=int))
    assert np.abs(pictures[0] - pictures[1]).max() <= 1


def test_the_emphasis_mode_is_an_a1111_setting(client):
    """A1111's "emphasis" setting: per call in override_settings, for later calls by POST
    /options ("None": brackets are text, prompt editing is read), shown by GET /options."""
    from sdgen.server.a1111.protocol import Txt2ImgRequest

    body = {**WEBUIAPI_TXT2IMG, "override_settings": {"emphasis": "No norm"}}
    assert Txt2ImgRequest(**body).to_request(None, 1 << 20).emphasis == "no_norm"
    assert client.get("/sdapi/v1/options").json()["emphasis"] == "Original"
    try:
        assert client.post("/sdapi/v1/options", json={"emphasis": "None"}).status_code == 200
        assert client.get("/sdapi/v1/options").json()["emphasis"] == "None"
        handler = client.app.state.a1111_handler
        assert handler.emphasis == "none"
        refused = client.post("/sdapi/v1/options", json={"emphasis": "Strong"})
        assert refused.status_code == 422 and refused.json()["error"]["field"] == "emphasis"
        both = {"emphasis": "Original", "sd_model_checkpoint": "nope"}
        assert client.post("/sdapi/v1/options", json=both).status_code == 422
        assert handler.emphasis == "none"  # nothing set when anything is refused
    finally:
        client.post("/sdapi/v1/options", json={"emphasis": "Original"})
    odd = client.post("/sdapi/v1/options", json={"CLIP_stop_at_last_layers": True})
    assert odd.status_code == 422 and "true" in odd.json()["error"]["message"]  # JSON, not 1


def test_the_hires_fix_is_sdgens_with_a1111s_counting(client):
    """enable_hr: the pictures are sdgen's hires fix of the same settings, at the larger size;
    the infotext says so as A1111 writes it, and the progress counted both passes."""
    from sdgen.hires import HiresFix

    body = {
        **WEBUIAPI_TXT2IMG,
        "enable_hr": True,
        "hr_scale": 1.5,
        "hr_second_pass_steps": 2,
        "hr_upscaler": "Latent (bicubic antialiased)",
        "hr_sampler_name": "DPM++ 2M",
        "hr_scheduler": "Karras",
        "batch_size": 1,
    }
    response = client.post("/sdapi/v1/txt2img", json=body)
    assert response.status_code == 200, response.text
    hires = HiresFix(
        scale=1.5,
        steps=2,
        strength=0.7,
        upscaler="latent_bicubic_antialiased",
        sampler="dpmpp_2m_karras",
    )
    request = WEBUIAPI_REQUEST.replace(num_images=1, hires=hires)
    picture = decode_png(response.json()["images"][0])
    assert picture.size == (96, 96) and _same(picture, serial_pictures(request)[0])
    fields = parse_parameters(picture.text["parameters"])
    assert fields["Size"] == "64x64"  # the first pass's, as A1111 writes it
    assert fields["Hires upscale"] == "1.5" and fields["Hires steps"] == "2"
    assert fields["Hires upscaler"] == "Latent (bicubic antialiased)"
    assert fields["Hires sampler"] == "DPM++ 2M" and fields["Hires schedule type"] == "Karras"
    assert fields["Denoising strength"] == "0.7"
    info = json.loads(response.json()["info"])
    assert info["denoising_strength"] == 0.7


def test_a1111_hires_defaults_and_upscaler_names():
    from sdgen.server.a1111.protocol import Txt2ImgRequest

    def hires(**fields):
        body = {"enable_hr": True, "width": 64, "height": 64, **fields}
        return Txt2ImgRequest(**body).to_request(model=None, max_pixels=1 << 20).hires

    bare = hires()  # A1111's defaults: 2x, Latent, 0.75, the first pass's steps and sampler
    assert (bare.scale, bare.upscaler, bare.strength, bare.steps, bare.sampler) == (
        2.0,
        "latent",
        0.75,
        None,
        None,
    )
    assert hires(hr_upscaler="None").upscaler == "lanczos"  # A1111 resizes with Lanczos
    assert hires(hr_upscaler="Nearest").upscaler == "nearest"
    assert (
        hires(hr_sampler_name="Use same sampler", hr_scheduler="Use same scheduler").sampler is None
    )
    assert hires(sampler_name="DPM++ 2M", hr_scheduler="Karras").sampler == "dpmpp_2m_karras"
    assert hires(hr_resize_x=128, hr_resize_y=96).sizes(64, 64, 8) == ((128, 128), (128, 96))
    assert hires(hr_resize_x=128, hr_scale=0).width == 128  # A1111 ignores the scale then
    assert hires(hr_prompt="a red circle", prompt="a red circle").prompt is None  # the same
    assert hires(hr_prompt="a blue circle").prompt == "a blue circle"
    assert hires(hr_negative_prompt="green").negative_prompt == "green"


def test_clip_skip_is_an_a1111_setting(client):
    """CLIP_stop_at_last_layers, per call (override_settings, as SillyTavern sends it) or until
    a restart (POST /options): sdgen's clip_skip, recorded as A1111's "Clip skip"."""
    body = {**WEBUIAPI_TXT2IMG, "batch_size": 1}
    expected = WEBUIAPI_REQUEST.replace(num_images=1, clip_skip=2)
    picture = serial_pictures(expected)[0]
    override = {**body, "override_settings": {"CLIP_stop_at_last_layers": 2}}
    response = client.post("/sdapi/v1/txt2img", json=override)
    assert response.status_code == 200, response.text
    sent = decode_png(response.json()["images"][0])
    assert _same(sent, picture)
    assert parse_parameters(sent.text["parameters"])["Clip skip"] == "2"
    assert json.loads(response.json()["info"])["clip_skip"] == 2
    plain = decode_png(client.post("/sdapi/v1/txt2img", json=body).json()["images"][0])
    assert not _same(plain, picture) and "Clip skip" not in plain.text["parameters"]
    try:
        # past the miniature's 3 layers, set by POST /options: named so, not as an override
        assert client.post("/sdapi/v1/options", json={"CLIP_stop_at_last_layers": 5}).is_success
        refused = client.post("/sdapi/v1/txt2img", json=body)
        assert refused.status_code == 422
        assert refused.json()["error"]["field"] == "CLIP_stop_at_last_layers"
        assert "POST /sdapi/v1/options" in refused.json()["error"]["message"]
        assert client.post("/sdapi/v1/options", json={"CLIP_stop_at_last_layers": 2.0}).is_success
        assert client.get("/sdapi/v1/options").json()["CLIP_stop_at_last_layers"] == 2
        again = decode_png(client.post("/sdapi/v1/txt2img", json=body).json()["images"][0])
        assert _same(again, picture)
    finally:
        client.post("/sdapi/v1/options", json={"CLIP_stop_at_last_layers": 1})
