"""Output PNG metadata: it round-trips the request, a server can leave it out, and metadata in
uploaded pictures is never trusted (server case 18)."""

from __future__ import annotations

import base64
import io
import json

import numpy as np
from PIL import Image, PngImagePlugin
from test_server_support import (  # noqa: F401 (single_thread_torch: autouse)
    FAST,
    client_for,
    decode_png,
    png_base64,
    serial_pictures,
    single_thread_torch,
    wait_for,
)

from sdgen.media.metadata import JSON_KEY, PARAMETERS_KEY, parse_parameters, read_request
from sdgen.params import GenerationRequest, InputPicture
from sdgen.sampling.samplers import resolve_sampler

INIT = Image.new("RGB", (64, 64), (220, 40, 40))


def _run(client, body: dict) -> dict:
    response = client.post("/v1/jobs", json=body)
    assert response.status_code == 202, response.text
    job = wait_for(client, response.json()["id"])
    assert job["status"] == "succeeded", job["error"]
    return job


def test_the_parameters_chunk_round_trips_the_request(tmp_path):
    body = {
        "prompt": "a red circle, on grey: centred",  # a comma and a colon, as A1111 quotes them
        "negative_prompt": "blurry",
        "steps": 4,
        "guidance_scale": 6.5,
        "sampler": "euler",
        "seed": 41,
        "num_images": 2,
    }
    with client_for(tmp_path) as client:
        job = _run(client, body)
        request = job["request"]
        label = resolve_sampler(request["sampler"])
        for index, result in enumerate(job["results"]):
            png = client.get(result["url"]).content
            assert decode_png(png).text[PARAMETERS_KEY] == result["parameters"]
            fields = parse_parameters(result["parameters"])
            assert fields["Prompt"] == request["prompt"] == body["prompt"]
            assert fields["Negative prompt"] == request["negative_prompt"]
            assert fields["Steps"] == str(request["steps"])
            assert fields["CFG scale"] == f"{request['guidance_scale']:g}"
            assert fields["Seed"] == str(request["seed"] + index)
            assert fields["Size"] == f"{request['width']}x{request['height']}"
            assert fields["Sampler"] == label.a1111_name
            path = tmp_path / f"{index}.png"
            path.write_bytes(png)
            expected = GenerationRequest.from_dict(request).replace(
                num_images=1, seed=request["seed"] + index
            )
            assert read_request(path) == expected


def test_a_server_without_metadata_writes_bare_pngs(tmp_path):
    with client_for(tmp_path, metadata=False) as client:
        job = _run(client, FAST)
        picture = decode_png(client.get(job["results"][0]["url"]).content)
        assert picture.text == {}  # neither the parameters nor the sdgen chunk
        expected = serial_pictures(GenerationRequest(**FAST))[0]
        assert np.array_equal(np.asarray(picture.convert("RGB")), np.asarray(expected))
        assert parse_parameters(job["results"][0]["parameters"])["Seed"] == "7"  # the API's own
        a1111 = client.post(
            "/sdapi/v1/txt2img", json={"prompt": "x", "steps": 2, "width": 64, "height": 64}
        )
        assert decode_png(a1111.json()["images"][0]).text == {}


def test_serve_no_metadata_reaches_the_server(tmp_path, monkeypatch):
    import uvicorn
    from click.testing import CliRunner

    import sdgen.cli.serve  # noqa: F401 (registers the command)
    import sdgen.server.app
    from sdgen.cli.common import cli

    configs = []

    def fake_create_app(config, *, store):
        configs.append(config)
        store.close()

    monkeypatch.setattr(sdgen.server.app, "create_app", fake_create_app)
    monkeypatch.setattr(uvicorn, "run", lambda *args, **kwargs: None)
    for flags, expected in (([], True), (["--no-metadata"], False)):
        data_dir = str(tmp_path / str(expected))
        args = ["serve", "--data-dir", data_dir, "--devices", "cpu", *flags]
        result = CliRunner().invoke(cli, args)
        assert result.exit_code == 0, result.output
        assert configs[-1].metadata is expected


def _hostile_png(image: Image.Image) -> str:
    """``image`` whose text chunks claim another prompt, seed and request."""
    lies = PngImagePlugin.PngInfo()
    lies.add_text(PARAMETERS_KEY, "a lie\nSteps: 99, Sampler: Euler, CFG scale: 30, Seed: 999")
    lies.add_text(JSON_KEY, json.dumps({"request": {"prompt": "a lie", "seed": 999}}))
    out = io.BytesIO()
    image.save(out, format="PNG", pnginfo=lies)
    return base64.b64encode(out.getvalue()).decode()


def test_metadata_in_an_uploaded_picture_is_never_trusted(tmp_path):
    body = {**FAST, "steps": 4, "strength": 0.5}
    with client_for(tmp_path) as client:
        clean = _run(client, {**body, "init_image": png_base64(INIT)})
        hostile = _run(client, {**body, "init_image": _hostile_png(INIT)})
        assert hostile["request"] == clean["request"]  # the job is the one asked for
        assert hostile["request"]["prompt"] == "a red circle" and hostile["request"]["seed"] == 7
        assert hostile["results"][0]["parameters"] == clean["results"][0]["parameters"]
        png = client.get(hostile["results"][0]["url"]).content
        picture = decode_png(png)
        clean_picture = decode_png(client.get(clean["results"][0]["url"]).content)
        assert np.array_equal(np.asarray(picture), np.asarray(clean_picture))
        assert "a lie" not in json.dumps(picture.text) and "999" not in picture.text["parameters"]
        path = tmp_path / "out.png"
        path.write_bytes(png)
        recorded = read_request(path, {"init_image": InputPicture.from_image(INIT)})
        assert recorded.prompts == ("a red circle",) and recorded.seed == 7
    stored = list((tmp_path / "inputs").glob("*-init_image.png"))
    assert len(stored) == 2
    for file in stored:  # the kept upload is the pixels only
        with Image.open(file) as kept:
            assert not kept.text
