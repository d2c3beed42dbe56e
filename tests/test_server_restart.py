"""A real ``sdgen serve`` killed with SIGKILL in the middle of a job: after a restart the job
runs again and finishes, the queued one too, with the pictures a serial run gives."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import httpx
import pytest
from helpers import max_pixel_diff
from test_server_support import (  # noqa: F401 (autouse)
    decode_png,
    free_port,
    serial_picture,
    single_thread_torch,
    wait_for,
    wait_until,
)

from sdgen.params import GenerationRequest

RED, BLUE = "a red circle", "a blue square"
SERVE = "import sys, sdgen.cli.serve; from sdgen.cli import main; sys.exit(main(sys.argv[1:]))"


def _start(data_dir, port: int, log, *extra: str) -> subprocess.Popen:
    command = [sys.executable, "-c", SERVE, "serve", "--port", str(port)]
    command += ["--data-dir", str(data_dir), "--devices", "cpu", *extra]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # as single_thread_torch, for a busy machine
    return subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)


def _healthy(url: str, process: subprocess.Popen) -> bool:
    if process.poll() is not None:
        raise AssertionError(f"sdgen serve exited with {process.returncode}")
    try:
        return httpx.get(f"{url}/health", timeout=2).json()["status"] == "ok"
    except httpx.HTTPError:
        return False


@pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL")
def test_a_job_running_when_the_server_is_killed_runs_again_after_restart(tmp_path):
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    data_dir = tmp_path / "data"
    log = open(tmp_path / "serve.log", "ab")  # noqa: SIM115 (closed below)
    server = _start(data_dir, port, log, "--step-delay", "0.05")  # a slow job: 40 x 50 ms
    try:
        wait_until(lambda: _healthy(url, server), timeout=120, every=0.2)
        with httpx.Client(base_url=url, timeout=30) as client:
            running = client.post("/v1/jobs", json={"prompt": RED, "steps": 40, "seed": 3})
            queued = client.post("/v1/jobs", json={"prompt": BLUE, "steps": 3, "seed": 4})
            assert running.status_code == queued.status_code == 202  # committed before the 202
            running, queued = running.json()["id"], queued.json()["id"]
            wait_until(
                lambda: client.get(f"/v1/jobs/{running}").json()["progress"]["step"] >= 2,
                timeout=60,
            )
        server.send_signal(signal.SIGKILL)  # no shutdown code runs
        server.wait(30)

        server = _start(data_dir, port, log)  # restarted at full speed
        wait_until(lambda: _healthy(url, server), timeout=120, every=0.2)
        with httpx.Client(base_url=url, timeout=30) as client:
            for job_id, request in (
                (running, GenerationRequest(RED, steps=40, seed=3)),
                (queued, GenerationRequest(BLUE, steps=3, seed=4)),
            ):
                job = wait_for(client, job_id, timeout=120)
                assert job["status"] == "succeeded", job
                picture = decode_png(client.get(job["results"][0]["url"]).content)
                # The two jobs run batched together: equal up to batch-size-dependent rounding.
                assert max_pixel_diff(picture, serial_picture(request)) <= 1
        server.send_signal(signal.SIGTERM)  # a graceful stop ends the process cleanly
        assert server.wait(60) in (0, -signal.SIGTERM)  # uvicorn re-raises it
    finally:
        if server.poll() is None:
            server.kill()
            server.wait(30)
        log.close()
        print((tmp_path / "serve.log").read_text(errors="replace")[-4000:])  # shown on failure
