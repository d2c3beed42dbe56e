"""Throughput of concurrent requests batched across requests vs run one after another.

    python benchmarks/batching_throughput.py [--requests 8] [--steps 20] [--repeats 5]
        [--threads N] [--model PATH]

N single-picture txt2img requests (different prompts, seeds and samplers, guidance 7.5) on the
embedded model (or ``--model``): once through ``sdgen.engine.batching.Batcher`` (all added at
step 0, one shared UNet call per step), once as N ``txt2img`` calls in a row, alternately in the
same process, after a warm-up of each (tracing the UNet for each batch signature). Reports the
median wall time of each, the ratio, and the largest pixel difference between the batched and
the sequential pictures. Writes JSON to benchmarks/results/.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from sdgen.engine.batching import Batcher
from sdgen.models.loader import load_model
from sdgen.params import GenerationRequest
from sdgen.pipelines.txt2img import txt2img

RESULTS = Path(__file__).resolve().parent / "results"
PROMPTS = ["a red circle", "a blue square", "a white triangle", "a yellow star", "a green field",
           "a black cat", "an orange sun", "a grey wall"]  # fmt: skip
SAMPLERS = ["euler_a", "dpmpp_2m", "ddim"]


def requests_of(count: int, steps: int) -> list[GenerationRequest]:
    return [
        GenerationRequest(
            PROMPTS[i % len(PROMPTS)], steps=steps, seed=i, sampler=SAMPLERS[i % len(SAMPLERS)]
        )
        for i in range(count)
    ]


def run_batched(model, requests: list[GenerationRequest]) -> list[np.ndarray]:
    batcher = Batcher(model)
    order = {id(batcher.add(request)): i for i, request in enumerate(requests)}
    pictures = [None] * len(requests)
    for done in batcher.run_until_done():
        pictures[order[id(done.prepared)]] = np.asarray(done.result.images[0])
    return pictures


def run_sequential(model, requests: list[GenerationRequest]) -> list[np.ndarray]:
    return [np.asarray(txt2img(model, request).images[0]) for request in requests]


def timed(run, model, requests) -> tuple[float, list[np.ndarray]]:
    start = time.perf_counter()
    pictures = run(model, requests)
    return time.perf_counter() - start, pictures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=8)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    parser.add_argument("--model", default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    model = load_model(args.model, device="cpu")
    requests = requests_of(args.requests, args.steps)
    run_batched(model, requests)  # warm-up: traces for each signature, caches
    run_sequential(model, requests)
    batched_times, sequential_times, worst = [], [], 0
    for _ in range(args.repeats):  # alternated, so load changes on a shared machine hit both
        batched_time, batched = timed(run_batched, model, requests)
        sequential_time, sequential = timed(run_sequential, model, requests)
        batched_times.append(batched_time)
        sequential_times.append(sequential_time)
        for a, b in zip(batched, sequential, strict=True):
            worst = max(worst, int(np.abs(a.astype(np.int16) - b.astype(np.int16)).max()))
    batched_median = statistics.median(batched_times)
    sequential_median = statistics.median(sequential_times)
    result = {
        "benchmark": "batching_throughput",
        "model": model.name,
        "device": "cpu",
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "requests": args.requests,
        "steps": args.steps,
        "size": requests[0].width or model.native_size,
        "repeats": args.repeats,
        "batched_s": batched_times,
        "sequential_s": sequential_times,
        "batched_median_s": batched_median,
        "sequential_median_s": sequential_median,
        "throughput_ratio": sequential_median / batched_median,
        "max_pixel_diff": worst,
    }
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"batching_throughput-cpu-{torch.get_num_threads()}threads.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(
        f"{args.requests} requests x {args.steps} steps, {torch.get_num_threads()} threads: "
        f"batched {batched_median:.2f} s, one after another {sequential_median:.2f} s, "
        f"throughput x{result['throughput_ratio']:.2f}, max pixel diff {worst}/255 -> {path}"
    )


if __name__ == "__main__":
    main()
