"""Who may call the server: API key, same origin only, loopback unless a key is set."""

from __future__ import annotations

import base64
import subprocess
import sys

import pytest
from test_server_support import (  # noqa: F401 (autouse)
    BASE_URL,
    FAST,
    client_for,
    single_thread_torch,
)

KEY = "correct horse battery staple"
SERVE = "import sys, sdgen.cli.serve; from sdgen.cli import main; sys.exit(main(sys.argv[1:]))"


@pytest.fixture(scope="module")
def keyed(tmp_path_factory):
    with client_for(tmp_path_factory.mktemp("data"), api_key=KEY) as client:
        yield client


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer wrong"},
        {"Authorization": f"Bearer {KEY}x"},
        {"Authorization": KEY},
        {"Authorization": "Basic " + base64.b64encode(b"user:wrong").decode()},
        {"Authorization": "Basic ###"},
    ],
    ids=["none", "wrong", "longer", "no-scheme", "basic-wrong", "basic-garbage"],
)
def test_a_missing_or_wrong_key_is_401(keyed, headers):
    for method, path in (("POST", "/v1/jobs"), ("GET", "/v1/jobs"), ("GET", "/sdapi/v1/sd-models")):
        response = keyed.request(method, path, json=FAST, headers=headers)
        assert response.status_code == 401, (method, path)
        assert response.json()["error"]["kind"] == "unauthorized"
        assert response.headers["www-authenticate"].startswith("Bearer")


def test_the_right_key_passes_as_bearer_or_basic_password(keyed):
    bearer = {"Authorization": f"Bearer {KEY}"}
    assert keyed.post("/v1/jobs", json=FAST, headers=bearer).status_code == 202
    basic = {"Authorization": "Basic " + base64.b64encode(f"any:{KEY}".encode()).decode()}
    assert keyed.get("/sdapi/v1/sd-models", headers=basic).status_code == 200
    assert keyed.get("/health").json()["status"] in ("ok", "loading")  # no key needed


def test_the_key_is_compared_in_constant_time(monkeypatch, keyed):
    import hmac

    calls = []
    real = hmac.compare_digest
    monkeypatch.setattr(hmac, "compare_digest", lambda a, b: calls.append(1) or real(a, b))
    keyed.get("/v1/jobs", headers={"Authorization": "Bearer nope"})
    assert calls


def test_cross_origin_browser_requests_are_403(tmp_path):
    with client_for(tmp_path) as client:
        for origin in (
            "http://evil.example",
            "null",
            "http://127.0.0.1:9999",
            "https://127.0.0.1:7860",
        ):
            response = client.post("/v1/jobs", json=FAST, headers={"Origin": origin})
            assert response.status_code == 403, origin
            assert response.json()["error"]["field"] == "origin"
        preflight = client.options(
            "/v1/jobs",
            headers={"Origin": "http://evil.example", "Access-Control-Request-Method": "POST"},
        )
        assert preflight.status_code == 403
        assert client.get("/v1/jobs").json()["total"] == 0
        # The server's own origin (its page) and clients without an Origin header pass.
        assert client.post("/v1/jobs", json=FAST, headers={"Origin": BASE_URL}).status_code == 202
        assert client.post("/v1/jobs", json=FAST).status_code == 202


def test_a_loopback_server_refuses_other_host_names(tmp_path):
    """DNS rebinding: evil.example resolved to 127.0.0.1 still sends its own Host."""
    with client_for(tmp_path) as client:
        response = client.get("/v1/jobs", headers={"Host": "evil.example:7860"})
        assert response.status_code == 403 and response.json()["error"]["field"] == "host"
        for host in ("localhost:7860", "127.0.0.1", "[::1]:7860"):
            assert client.get("/v1/jobs", headers={"Host": host}).status_code == 200, host


@pytest.mark.parametrize("host", ["0.0.0.0", "192.0.2.10", "::"])
def test_a_non_loopback_bind_without_a_key_refuses_to_start(tmp_path, host):
    result = subprocess.run(
        [sys.executable, "-c", SERVE, "serve", "--host", host, "--data-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**_env(), "SDGEN_API_KEY": ""},
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "--api-key" in lines[0], result.stderr
    assert not (tmp_path / "jobs.sqlite3").exists()


def _env() -> dict:
    import os

    return {k: v for k, v in os.environ.items() if k != "SDGEN_API_KEY"}
