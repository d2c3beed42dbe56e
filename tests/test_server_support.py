"""What the server tests share: one loaded embedded model, apps around it, a live server.

Imported by the other ``test_server_*`` modules; it holds no tests itself.
"""

from __future__ import annotations

import base64
import contextlib
import functools
import io
import socket
import threading
import time
from pathlib import Path

import pytest
from PIL import Image

pytest.importorskip("fastapi")
pytest.importorskip("httpx")

BASE_URL = "http://127.0.0.1:7860"  # a loopback Host, as a local browser or client sends
TERMINAL = ("succeeded", "failed", "cancelled", "interrupted")
FAST = {"prompt": "a red circle", "steps": 3, "seed": 7}  # a 64x64 job in well under a second


@pytest.fixture(autouse=True)
def single_thread_torch():
    """One intra-op thread while a server test runs (autouse where imported).

    The 64x64 model gains nothing from a second thread, and on a busy 2-core machine OpenMP
    threads that spin against the server's own threads make a 3-step job take seconds.
    Generation and the serial reference run under the same setting, so pictures compare equal.
    """
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@functools.lru_cache(maxsize=1)
def shared_model():
    """The embedded model, loaded once for all server tests (read-only during generation)."""
    from sdgen.models.loader import load_model

    return load_model(device="cpu")


def shared_loader(name: str, device: str):
    from sdgen.models.bundled import MINIATURE_MODEL
    from sdgen.models.loader import load_model

    return shared_model() if name == MINIATURE_MODEL else load_model(name, device=device)


def make_config(data_dir: Path, **overrides):
    from sdgen.server.config import ServerConfig

    settings = {"data_dir": data_dir, "devices": ("cpu",), "preview_interval": 0.0}
    return ServerConfig(**{**settings, **overrides})


def make_app(data_dir: Path, *, start=None, **overrides):
    from sdgen.server.app import create_app

    return create_app(make_config(data_dir, **overrides), load=shared_loader, start=start)


@contextlib.contextmanager
def client_for(data_dir: Path, *, start=None, **overrides):
    """A TestClient on a started app (its lifespan runs inside the ``with``)."""
    from fastapi.testclient import TestClient

    app = make_app(data_dir, start=start, **overrides)
    with TestClient(app, base_url=BASE_URL) as client:
        yield client


def wait_for(client, job_id: str, statuses=TERMINAL, timeout: float = 60.0) -> dict:
    """Poll a job until its status is one of ``statuses``; its JSON."""
    deadline = time.monotonic() + timeout
    while True:
        job = client.get(f"/v1/jobs/{job_id}").json()
        if job["status"] in statuses:
            return job
        if time.monotonic() > deadline:
            raise AssertionError(f"job {job_id} still {job['status']} after {timeout} s")
        time.sleep(0.02)


def wait_until(predicate, timeout: float = 30.0, every: float = 0.01):
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(every)
    return value


def png_base64(image: Image.Image) -> str:
    out = io.BytesIO()
    image.save(out, format="PNG")
    return base64.b64encode(out.getvalue()).decode()


def decode_png(data: bytes | str) -> Image.Image:
    if isinstance(data, str):
        data = base64.b64decode(data)
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


def serial_pictures(request) -> list[Image.Image]:
    """The pictures of ``request`` run directly, without the server."""
    from sdgen.pipelines.generate import generate

    return generate(shared_model(), request).images


def serial_picture(request) -> Image.Image:
    return serial_pictures(request)[0]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class LiveServer:
    """uvicorn in a thread on a free loopback port: real sockets, streaming and disconnects."""

    def __init__(self, app):
        import uvicorn

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> LiveServer:
        self.thread.start()
        wait_until(lambda: self.server.started, timeout=30)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(30)
