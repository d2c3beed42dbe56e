"""Throughput of ``sdgen serve`` for concurrent requests: batched across requests vs one by one.

    python benchmarks/server_throughput.py [--requests 8] [--steps 20] [--repeats 5]
        [--threads N] [--device cpu|cuda] [--model PATH|HUB_ID] [--size N]

On CUDA without ``--model`` it serves SD 1.5's architecture with random weights (built as
benchmarks/sd_benchmark.py builds it) at 512x512, 50 steps, fp16, the issue's setting.

Starts two real servers (``sdgen serve`` subprocesses, each its own data dir): one with the
default ``--max-batch 8`` and one with ``--max-batch 1`` (each job alone, the way a server
without cross-request batching runs them). In each round, N clients submit one single-picture
txt2img request each at the same moment (different prompts, seeds and samplers, guidance 7.5)
through ``POST /v1/jobs``, and the round's time runs until the last job has succeeded. Rounds
alternate between the servers, after two warm-up rounds each (the UNet is traced once per batch
shape). Reports the median round time of each, the throughput ratio, and the largest pixel
difference between the two servers' pictures of each request. Writes JSON to
benchmarks/results/.

The servers start one after the other with a fresh compile cache of their own
(``TORCHINDUCTOR_CACHE_DIR``): where the fast path compiles (CUDA), the first server's start-up
(process start to ``/health`` ok, its warm-up included) pays the compile and the second's shows
what a second process pays with the cache filled; both are reported.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

RESULTS = Path(__file__).resolve().parent / "results"
PROMPTS = ["a red circle", "a blue square", "a white triangle", "a yellow circle",
           "a green square", "a purple triangle", "an orange circle", "a black square"]  # fmt: skip
SAMPLERS = ["euler_a", "dpmpp_2m", "ddim"]
SERVE = "import sys; from sdgen.cli import main; sys.exit(main(sys.argv[1:]))"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Server:
    """``sdgen serve`` in a subprocess on a free loopback port."""

    def __init__(self, data_dir: Path, max_batch: int, args: argparse.Namespace, cache: Path):
        self.started = time.monotonic()
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.max_batch = max_batch
        command = [sys.executable, "-c", SERVE, "serve", "--port", str(self.port)]
        command += ["--data-dir", str(data_dir), "--devices", args.device]
        command += ["--max-batch", str(max_batch), "--max-queue", str(4 * args.requests)]
        if args.model:
            command += ["--model", args.model]
        command += ["--fast-path", args.fast_path]
        env = {
            **os.environ,
            "OMP_NUM_THREADS": str(args.threads),
            "TORCHINDUCTOR_CACHE_DIR": str(cache),
        }
        self.process = subprocess.Popen(command, env=env, stderr=subprocess.DEVNULL)

    def wait_healthy(self, timeout: float = 600) -> float:  # compiling servers warm up first
        """Seconds from starting the process to its /health saying ok."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise SystemExit(f"sdgen serve exited with {self.process.returncode}")
            try:
                if httpx.get(f"{self.url}/health", timeout=2).json()["status"] == "ok":
                    return time.monotonic() - self.started
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise SystemExit(f"sdgen serve on {self.url} not healthy after {timeout} s")

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()


def bodies(count: int, steps: int) -> list[dict]:
    return [
        {
            "prompt": PROMPTS[i % len(PROMPTS)],
            "seed": 1000 + i,
            "sampler": SAMPLERS[i % len(SAMPLERS)],
            "steps": steps,
            "guidance_scale": 7.5,
        }
        for i in range(count)
    ]


def run_round(server: Server, requests: list[dict]) -> tuple[float, list[np.ndarray]]:
    """All requests submitted at once by their own clients; seconds until the last succeeded."""
    barrier = threading.Barrier(len(requests) + 1)
    ids: list[str | None] = [None] * len(requests)
    errors: list[BaseException] = []

    def submit(index: int) -> None:
        try:
            with httpx.Client(base_url=server.url, timeout=60) as client:
                barrier.wait()
                response = client.post("/v1/jobs", json=requests[index])
                response.raise_for_status()
                ids[index] = response.json()["id"]
        except BaseException as err:  # noqa: BLE001 - reported by the main thread
            errors.append(err)

    threads = [threading.Thread(target=submit, args=(i,)) for i in range(len(requests))]
    for thread in threads:
        thread.start()
    barrier.wait()
    began = time.perf_counter()
    for thread in threads:
        thread.join()
    if errors:
        raise SystemExit(f"a request failed: {errors[0]!r}")
    pictures = []
    with httpx.Client(base_url=server.url, timeout=60) as client:
        for job_id in ids:
            while (job := client.get(f"/v1/jobs/{job_id}").json())["status"] in (
                "queued",
                "running",
            ):
                time.sleep(0.005)
            if job["status"] != "succeeded":
                raise SystemExit(f"job {job_id} {job['status']}: {job.get('error')}")
        elapsed = time.perf_counter() - began
        for job_id in ids:
            job = client.get(f"/v1/jobs/{job_id}").json()
            png = client.get(job["results"][0]["url"]).content
            pictures.append(np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), dtype=np.int16))
    return elapsed, pictures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=8)
    parser.add_argument("--steps", type=int, default=None, help="default: 20 CPU, 50 CUDA")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1, help="torch threads of each server")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--model", default=None)
    parser.add_argument(
        "--fast-path",
        choices=("auto", "on", "off"),
        default="auto",
        help="the servers' fast path; compiled, each new batch shape compiles in the warm-up",
    )
    parser.add_argument("--size", type=int, default=None, help="picture side (default: model's)")
    args = parser.parse_args()
    cuda = args.device.startswith("cuda")
    args.steps = args.steps or (50 if cuda else 20)
    requests = bodies(args.requests, args.steps)
    if args.size:
        requests = [{**body, "width": args.size, "height": args.size} for body in requests]
    with tempfile.TemporaryDirectory() as tmp:
        if cuda and not args.model:  # SD 1.5's architecture, random weights, fp16
            import torch
            from sd_benchmark import build_sd15_random

            folder = Path(tmp) / "sd15-random"
            build_sd15_random(folder, torch.device(args.device), torch.float16)
            args.model = str(folder)
        cache = Path(tmp) / "inductor-cache"  # fresh: the first server fills it
        servers, startup = [], []
        try:
            for n in (args.requests, 1):  # one after the other: the second finds the cache
                servers.append(Server(Path(tmp) / f"batch{n}", n, args, cache))
                startup.append(servers[-1].wait_healthy())
                print(f"--max-batch {n}: healthy {startup[-1]:.1f} s after starting", flush=True)
            for _ in range(2):  # warm-up: traces per batch shape, first-use caches
                for server in servers:
                    run_round(server, requests)
            times: dict[int, list[float]] = {server.max_batch: [] for server in servers}
            worst = 0
            for _ in range(args.repeats):  # alternated: load changes hit both
                outputs = []
                for server in servers:
                    elapsed, pictures = run_round(server, requests)
                    times[server.max_batch].append(elapsed)
                    outputs.append(pictures)
                for a, b in zip(*outputs, strict=True):
                    worst = max(worst, int(np.abs(a - b).max()))
        finally:
            for server in servers:
                server.stop()
    batched = statistics.median(times[args.requests])
    alone = statistics.median(times[1])
    result = {
        "benchmark": "server_throughput",
        "model": "sd15-random"
        if "sd15-random" in str(args.model)
        else args.model or "embedded miniature",
        "device": args.device,
        "threads": args.threads,
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "fast_path": args.fast_path,
        "requests": args.requests,
        "steps": args.steps,
        "repeats": args.repeats,
        "batched_s": times[args.requests],
        "one_by_one_s": times[1],
        "batched_median_s": batched,
        "one_by_one_median_s": alone,
        "throughput_ratio": alone / batched,
        "max_pixel_diff": worst,
        "startup_s": {"first_server": startup[0], "second_server": startup[1]},
    }
    RESULTS.mkdir(exist_ok=True)
    fast = "" if args.fast_path == "auto" else f"-fastpath-{args.fast_path}"
    path = (
        RESULTS
        / f"server_throughput-{args.device.replace(':', '')}-{args.threads}threads{fast}.json"
    )
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(
        f"{args.requests} concurrent requests x {args.steps} steps through sdgen serve "
        f"({args.device}, {args.threads} threads): --max-batch {args.requests} {batched:.2f} s, "
        f"--max-batch 1 {alone:.2f} s, throughput x{result['throughput_ratio']:.2f}, "
        f"max pixel diff {worst}/255; start-up {startup[0]:.1f} s, then "
        f"{startup[1]:.1f} s with the compile cache filled -> {path}"
    )


if __name__ == "__main__":
    main()
