"""Bad input never reaches a worker: 422 naming the field, 413 for big bodies, 429 when full."""

from __future__ import annotations

import base64
import io
import threading

import pytest
from PIL import Image
from test_server_support import (  # noqa: F401 (autouse)
    FAST,
    client_for,
    png_base64,
    single_thread_torch,
    wait_for,
    wait_until,
)

from sdgen.engine.limits import Limits

RED = png_base64(Image.new("RGB", (64, 64), (200, 0, 0)))


def _bomb() -> str:
    """A small PNG that declares 20000 x 20000 pixels (a decompression bomb)."""
    out = io.BytesIO()
    Image.new("1", (20_000, 20_000)).save(out, format="PNG")
    return base64.b64encode(out.getvalue()).decode()


def _truncated() -> str:
    data = base64.b64decode(RED)
    return base64.b64encode(data[: len(data) // 2]).decode()


INVALID = [
    # (what is sent, the field the 422 must name)
    ({"width": 65}, "width"),  # not a multiple of the latent factor: never rounded
    ({"height": 100}, "height"),
    ({"width": 4096, "height": 4096}, "width"),  # over the server's pixel budget
    ({"width": 100_000, "height": 100_000}, "width"),
    ({"steps": 0}, "steps"),
    ({"steps": 151}, "steps"),  # over the server's maximum
    ({"steps": 2.5}, "steps"),
    ({"variation_seed": 5}, "variation_seed"),  # without a strength it would change nothing
    ({"variation_strength": 2}, "variation_strength"),
    ({"clip_skip": 0}, "clip_skip"),
    ({"clip_skip": 4}, "clip_skip"),  # the miniature's text encoder has 3 layers
    ({"eta": 1.5}, "eta"),  # DDIM's eta: 0..1
    ({"eta": True}, "eta"),
    ({"sampler": "euler", "eta": 0.5}, "eta"),  # eta is DDIM's only
    ({"num_images": 0}, "num_images"),
    ({"num_images": 17}, "num_images"),
    ({"guidance_scale": "nan"}, "guidance_scale"),
    ({"guidance_scale": "inf"}, "guidance_scale"),
    ({"guidance_scale": "-Infinity"}, "guidance_scale"),
    ({"seed": -1}, "seed"),
    ({"seed": 2**64}, "seed"),
    ({"sampler": "warp drive"}, "sampler"),
    ({"model": "no-such-model"}, "model"),
    ({"model": "../../etc/passwd"}, "model"),
    ({"model": "/etc/passwd"}, "model"),
    ({"model": "..%2F..%2Fetc%2Fpasswd"}, "model"),
    ({"strength": 1.5, "init_image": RED}, "strength"),
    ({"strength": 0.01, "init_image": RED}, "strength"),  # no step would run
    ({"init_image": "not base64!"}, "init_image"),
    ({"init_image": base64.b64encode(b"plain text, not a picture").decode()}, "init_image"),
    ({"init_image": _truncated()}, "init_image"),
    ({"init_image": _bomb()}, "init_image"),
    ({"init_image": png_base64(Image.new("RGB", (60, 60)))}, "init_image"),  # size
    ({"mask": RED}, "mask"),  # a mask without an init picture
    ({"init_image": RED, "mask": "%%%"}, "mask"),
    ({"init_image": RED, "mask": png_base64(Image.new("L", (32, 32)))}, "mask"),
    ({"prompt": "x" * 1_000_000}, "prompt"),  # a 1 MB prompt
    ({"prompt": 5}, "prompt"),
    ({"colour": "red"}, "colour"),  # unknown fields are named too
    ({"device": "cuda:7"}, "device"),  # the server picks devices, not the request
    ({"steps": True}, "steps"),  # JSON types as documented: true is not 1
    ({"steps": "5"}, "steps"),
    ({"resize": "yes", "init_image": RED}, "resize"),
    ({"init_image": png_base64(Image.new("RGB", (4096, 4096)))}, "init_image"),  # its size
    # the hires fix, named inside its object
    ({"hires": {"scale": 1.3}}, "hires.scale"),  # 83x83: not multiples of 8, never rounded
    ({"hires": {"scale": "2"}}, "hires.scale"),
    ({"hires": {"scale": 4}, "width": 1024, "height": 1024}, "hires.scale"),  # pixel budget
    # 16384x256 fits the budget, but is cropped from the 16384x16384 the picture is upscaled to
    ({"hires": {"width": 16384, "height": 256}}, "hires.width"),
    ({"hires": {"height": 4096}}, "hires.height"),  # 4096x4096: the side given is named
    ({"hires": {"strength": 0.001}}, "hires.strength"),  # a schedule of 50,000 steps
    ({"hires": {"width": 100}}, "hires.width"),
    ({"hires": {"scale": 2, "width": 128}}, "hires.scale"),  # one size: a scale or a width
    ({"hires": {"steps": 151}}, "hires.steps"),  # over the server's maximum
    ({"hires": {"strength": 0}}, "hires.strength"),
    ({"hires": {"upscaler": "4x-UltraSharp"}}, "hires.upscaler"),
    ({"hires": {"sampler": "warp drive"}}, "hires.sampler"),
    ({"hires": {"denoise": 0.5}}, "hires.denoise"),
    ({"hires": 2}, "hires"),
    ({"hires": {"prompt": 5}}, "hires.prompt"),
    ({"hires": {"prompt": "a (cat:[1:1000:2])"}, "emphasis": "original"}, "hires.prompt"),
    ({"hires": {"prompt": "a <lora:inkstyle:1>"}}, "hires.prompt"),  # no --lora-dir
    ({"hires": {}, "init_image": RED}, "hires"),  # txt2img's
]


@pytest.mark.parametrize(
    ("change", "allowed"), [({"steps": 0}, "1 to 150"), ({"num_images": 0}, "1 to 16")]
)
def test_the_allowed_values_are_the_servers(client, change, allowed):
    response = client.post("/v1/jobs", json={**FAST, **change})
    assert response.status_code == 422 and allowed in response.json()["error"]["message"]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (b'{"prompt": "cat \\ud83d", "steps": 2}', "prompt"),  # JSON's escape of a lone surrogate
        (b'{"prompt": "x", "negative_prompt": ["\\udfff"], "steps": 2}', "negative_prompt"),
    ],
)
def test_an_unpaired_surrogate_is_422_not_a_crash(client, body, field):
    response = client.post("/v1/jobs", content=body, headers={"content-type": "application/json"})
    assert response.status_code == 422 and response.json()["error"]["field"] == field


def test_a_huge_offset_is_422_not_a_crash(client):
    response = client.get("/v1/jobs", params={"offset": 2**64})
    assert response.status_code == 422 and response.json()["error"]["field"] == "offset"


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("data")
    with client_for(data_dir, max_input_pixels=4096 * 4096, limits=Limits(max_steps=150)) as c:
        yield c


@pytest.mark.parametrize(("change", "field"), INVALID, ids=[f for _, f in INVALID])
def test_every_invalid_input_is_422_naming_the_field(client, change, field):
    response = client.post("/v1/jobs", json={**FAST, **change})
    assert response.status_code == 422, response.text
    body = response.json()
    assert body["error"]["kind"] == "invalid_request"
    assert body["error"]["field"] == field, body
    assert field in body["detail"]
    assert client.get("/v1/jobs").json()["total"] == 0  # nothing was stored or queued


def test_malformed_json_is_422_naming_the_body(client):
    response = client.post(
        "/v1/jobs", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert response.status_code == 422 and response.json()["error"]["field"] == "body"


@pytest.mark.parametrize("path", ["/v1/jobs", "/sdapi/v1/txt2img"])
def test_json_nested_too_deep_is_an_error_naming_the_body(client, path):
    """The JSON parser's recursion limit: FastAPI answers 400, now in sdgen's error body."""
    deep = b'{"prompt": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    response = client.post(path, content=deep, headers={"content-type": "application/json"})
    assert response.status_code == 400
    error = response.json()["error"]
    assert (error["kind"], error["field"]) == ("invalid_request", "body")
    assert response.json()["detail"].startswith("body: ")


def test_unknown_paths_and_methods_have_the_same_error_body(client):
    missing = client.get("/v1/nothing-here")
    assert missing.status_code == 404 and missing.json()["error"]["kind"] == "not_found"
    wrong = client.put("/v1/jobs")
    assert wrong.status_code == 405 and wrong.json()["error"]["kind"] == "method_not_allowed"
    assert "POST" in wrong.headers["allow"]  # the framework's Allow header is kept


@pytest.mark.parametrize("literal", [b"NaN", b"Infinity", b"-Infinity"])
def test_json_nan_and_infinity_literals_are_422(client, literal):
    body = b'{"prompt": "x", "steps": 2, "guidance_scale": ' + literal + b"}"
    response = client.post("/v1/jobs", content=body, headers={"content-type": "application/json"})
    assert response.status_code == 422 and response.json()["error"]["field"] == "guidance_scale"


def test_a_prompt_over_77_tokens_is_accepted_with_a_truncation_warning(client):
    from test_server_support import shared_model

    limit = shared_model().tokenizer.model_max_length  # 77 for SD; the miniature model's is less
    long = " ".join(["red circle"] * 50)  # 100 words
    response = client.post("/v1/jobs", json={**FAST, "prompt": long, "negative_prompt": long})
    assert response.status_code == 202
    assert len(response.json()["warnings"]) == 2  # known when accepted, before the job runs
    job = wait_for(client, response.json()["id"])
    assert job["status"] == "succeeded"
    prompt, negative = job["warnings"]
    assert prompt.startswith("prompt: ") and prompt.endswith(f" tokens, truncated to {limit}")
    assert negative.startswith("negative_prompt: ")
    assert int(prompt.split()[1]) > limit
    short = client.post("/v1/jobs", json=FAST).json()
    assert short["warnings"] == [] and wait_for(client, short["id"])["warnings"] == []


def test_a_long_prompt_read_in_chunks_has_no_warning_and_too_many_chunks_are_422(client):
    from test_server_support import shared_model

    from sdgen.conditioning.chunks import MAX_CHUNKS

    size = shared_model().tokenizer.model_max_length - 2  # tokens per chunk
    long = " ".join(["red circle"] * 50)
    response = client.post("/v1/jobs", json={**FAST, "prompt": long, "long_prompt": "chunk"})
    assert response.status_code == 202 and response.json()["warnings"] == []
    assert wait_for(client, response.json()["id"])["status"] == "succeeded"
    too_long = {**FAST, "negative_prompt": "red " * (size * MAX_CHUNKS + 1), "long_prompt": "chunk"}
    refused = client.post("/v1/jobs", json=too_long)
    assert refused.status_code == 422, refused.text
    assert refused.json()["error"]["field"] == "negative_prompt"
    assert f"at most {MAX_CHUNKS} chunks" in refused.json()["error"]["message"]
    wrong = client.post("/v1/jobs", json={**FAST, "long_prompt": "split"})
    assert wrong.status_code == 422 and wrong.json()["error"]["field"] == "long_prompt"


def test_a1111_reads_long_prompts_in_chunks_with_break(client):
    """A1111 reads every prompt in 75-token chunks, BREAK starting one: nothing is truncated."""
    import json

    from sdgen.server.a1111.protocol import Txt2ImgRequest

    body = {"prompt": " ".join(["red circle"] * 50), "steps": 2, "width": 64, "height": 64}
    assert Txt2ImgRequest(**body).to_request(None, 1 << 20).long_prompt == "chunk"
    response = client.post("/sdapi/v1/txt2img", json=body)
    assert response.status_code == 200, response.text
    assert json.loads(response.json()["info"])["warnings"] == []
    body = {**body, "prompt": "a red circle BREAK grey", "seed": 3}
    broken = client.post("/sdapi/v1/txt2img", json=body)
    assert broken.status_code == 200, broken.text
    # with A1111's emphasis "None", BREAK is a word: another picture
    as_word = {**body, "override_settings": {"emphasis": "None"}}
    word = client.post("/sdapi/v1/txt2img", json=as_word)
    assert word.json()["images"][0] != broken.json()["images"][0]
    inside = client.post("/sdapi/v1/txt2img", json={**body, "prompt": "(a circle BREAK grey)"})
    assert inside.status_code == 422 and "BREAK outside brackets" in inside.text


def test_a_body_over_the_limit_is_413_before_it_is_read(tmp_path):
    with client_for(tmp_path, max_body_bytes=10_000) as client:
        big = {**FAST, "init_image": "A" * 20_000}
        response = client.post("/v1/jobs", json=big)  # Content-Length says so
        assert response.status_code == 413 and response.json()["error"]["kind"] == "too_large"

        def chunks():  # no Content-Length: the bytes are counted as they come
            yield b'{"prompt": "'
            for _ in range(20):
                yield b"x" * 1000
            yield b'"}'

        streamed = client.post(
            "/v1/jobs", content=chunks(), headers={"content-type": "application/json"}
        )
        assert streamed.status_code == 413
        assert client.post("/v1/jobs", json=FAST).status_code == 202  # small ones still pass


def test_a_full_queue_is_429_with_retry_after_and_stores_nothing(tmp_path):
    gate = threading.Event()
    from sdgen.pipelines.generate import start

    def held(model, request, callback):
        gate.wait(30)
        return start(model, request, callback)

    with client_for(tmp_path, start=held, max_queue=2) as client:
        try:
            first = client.post("/v1/jobs", json=FAST).json()  # taken by the worker
            wait_until(lambda: client.get(f"/v1/jobs/{first['id']}").json()["status"] == "running")
            for _ in range(2):
                assert client.post("/v1/jobs", json=FAST).status_code == 202
            full = client.post("/v1/jobs", json=FAST)
            assert full.status_code == 429 and full.json()["error"]["kind"] == "queue_full"
            assert int(full.headers["Retry-After"]) >= 1
            assert client.get("/v1/jobs").json()["total"] == 3
            metrics = client.get("/metrics").text
            assert 'sdgen_jobs_refused_total{reason="queue_full"} 1.0' in metrics
        finally:
            gate.set()
        for job in client.get("/v1/jobs").json()["jobs"]:
            assert wait_for(client, job["id"])["status"] == "succeeded"


@pytest.mark.parametrize(
    "path",
    [
        "/v1/images/..%2F..%2Fjobs.sqlite3",
        "/v1/images/%2Fetc%2Fpasswd",
        "/v1/images/../../etc/passwd",
        "/v1/images/..",
        "/v1/images/" + "0" * 32,
        "/v1/images/secret",
        "/v1/jobs/..%2Fsecret",
    ],
)
def test_path_traversal_finds_nothing(tmp_path, path):
    outside = tmp_path / "secret"
    outside.write_text("do not read me")
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "images").mkdir()
    (tmp_path / "data" / "images" / "secret").write_text("do not read me either")
    with client_for(tmp_path / "data") as client:
        response = client.get(path)
        assert response.status_code in (404, 422)
        assert "do not read me" not in response.text
