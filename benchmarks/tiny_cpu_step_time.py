"""Time per denoising step of sdgen and of diffusers' StableDiffusionPipeline, same tiny model, CPU.

    python benchmarks/tiny_cpu_step_time.py [--steps 20] [--repeats 5]

Builds the tests' tiny random SD 1.x model (tests/tiny_models.py), then times end-to-end
generation (prompt encoding, N steps with guidance, VAE decode) of one 32x32 picture with the
euler sampler, median of ``repeats`` runs after one warm-up, both in this one process.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import diffusers
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from tiny_models import build_tiny_model  # noqa: E402

from sdgen.models.loader import load_model  # noqa: E402
from sdgen.params import GenerationRequest  # noqa: E402
from sdgen.pipelines.txt2img import txt2img  # noqa: E402


def median_seconds(run, repeats: int) -> float:
    run()  # warm-up
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        run()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    folder = build_tiny_model(Path(tempfile.mkdtemp()) / "tiny-sd1")
    model = load_model(folder, device="cpu")
    pipe = diffusers.StableDiffusionPipeline.from_pretrained(
        folder, safety_checker=None, requires_safety_checker=False
    )
    pipe.scheduler = diffusers.EulerDiscreteScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    request = GenerationRequest("a red circle", steps=args.steps, seed=0, sampler="euler")

    def run_sdgen():
        txt2img(model, request)

    def run_diffusers():
        pipe("a red circle", num_inference_steps=args.steps, generator=torch.manual_seed(0))

    ours = median_seconds(run_sdgen, args.repeats)
    theirs = median_seconds(run_diffusers, args.repeats)
    print(f"torch {torch.__version__}, diffusers {diffusers.__version__}, "
          f"{torch.get_num_threads()} threads, {args.steps} steps, median of {args.repeats}")
    print(f"sdgen:     {ours:.3f} s/picture, {1000 * ours / args.steps:.1f} ms/step")
    print(f"diffusers: {theirs:.3f} s/picture, {1000 * theirs / args.steps:.1f} ms/step")
    print(f"ratio sdgen/diffusers: {ours / theirs:.2f}")


if __name__ == "__main__":
    main()
