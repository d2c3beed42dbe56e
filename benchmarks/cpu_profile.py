"""Where the time of one picture goes, in sdgen and in diffusers' StableDiffusionPipeline.

    python benchmarks/cpu_profile.py [--model tiny|miniature|both] [--steps 20] [--repeats 5]

Wraps the parts both pipelines share (text encoder, scheduler.scale_model_input, UNet forward,
scheduler.step, VAE decode) in wall-clock timers, runs the two pipelines interleaved on the
same weights, sampler (euler), seed and guidance (7.5), and prints per-part medians in ms per
picture and per step; "rest" is what the pipeline does around those parts (guidance, tensor
bookkeeping, callbacks, picture conversion, Python). The timers add a few microseconds per call.
Findings are written down in benchmarks/results/cpu_profile.md.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections import defaultdict
from functools import wraps

import diffusers
import torch
from sd_benchmark import Contender, build_contenders, model_folders

from sdgen.sampling import loop

TracedUNet = getattr(loop, "TracedUNet", None)  # None: an sdgen before it (for before/after)

PARTS = ("text_encoder", "scale_model_input", "unet", "scheduler.step", "vae.decode")


class Timers:
    """Accumulated seconds per part for the run in progress."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)

    def wrap(self, name: str, function):
        @wraps(function)
        def timed(*args, **kwargs):
            started = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                self.seconds[name] += time.perf_counter() - started

        return timed


def instrument(timers: Timers, contender: Contender) -> None:
    """Time the networks of ``contender`` (sdgen's UNet runs as a TracedUNet on the CPU)."""
    if contender.name == "sdgen" and TracedUNet is not None:
        TracedUNet.__call__ = timers.wrap("unet", TracedUNet.__call__)
    else:
        contender.unet.forward = timers.wrap("unet", contender.unet.forward)
    contender.vae.decode = timers.wrap("vae.decode", contender.vae.decode)
    text_encoder = contender.text_encoder
    text_encoder.forward = timers.wrap("text_encoder", text_encoder.forward)


def instrument_schedulers(timers: Timers) -> None:
    for name in ("EulerDiscreteScheduler", "DPMSolverMultistepScheduler"):
        cls = getattr(diffusers, name)
        cls.step = timers.wrap("scheduler.step", cls.step)
        cls.scale_model_input = timers.wrap("scale_model_input", cls.scale_model_input)


def profile(
    contenders: list[Contender], batch: int, steps: int, repeats: int
) -> dict[str, dict[str, float]]:
    """Per contender, the median milliseconds of each part over ``repeats`` interleaved runs."""
    timers = Timers()
    instrument_schedulers(timers)
    for contender in contenders:
        instrument(timers, contender)
        contender.run(batch, "euler", steps)  # warm-up
    samples: dict[str, dict[str, list[float]]] = {c.name: defaultdict(list) for c in contenders}
    for _ in range(repeats):
        for contender in contenders:
            timers.seconds.clear()
            started = time.perf_counter()
            contender.run(batch, "euler", steps)
            total = time.perf_counter() - started
            parts = {p: timers.seconds.get(p, 0.0) for p in PARTS}
            parts["rest"] = total - sum(parts.values())
            parts["total"] = total
            for part, seconds in parts.items():
                samples[contender.name][part].append(1000 * seconds)
    return {
        name: {part: statistics.median(values) for part, values in parts.items()}
        for name, parts in samples.items()
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=("tiny", "miniature", "both"), default="both")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--fast-path", choices=("auto", "on", "off"), default="off")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(
        f"torch {torch.__version__}, diffusers {diffusers.__version__}, "
        f"{torch.get_num_threads()} threads, euler, {args.steps} steps, guidance 7.5, "
        f"batch {args.batch}, "
        f"median of {args.repeats} interleaved runs"
    )
    for label, (folder, size) in model_folders(args.model).items():
        contenders = build_contenders(
            folder, size, torch.device("cpu"), torch.float32, args.fast_path
        )
        result = profile(contenders, args.batch, args.steps, args.repeats)
        print(
            f"\n{label} ({size}x{size}), ms per run of {args.batch} "
            "pictures (per step for the per-step parts)"
        )
        print(f"{'part':<18}" + "".join(f"{c.name:>22}" for c in contenders))
        for part in (*PARTS, "rest", "total"):
            cells = []
            for c in contenders:
                ms = result[c.name][part]
                per_step = part in ("unet", "scheduler.step", "scale_model_input")
                cells.append(
                    f"{ms:9.1f}" + (f" ({ms / args.steps:6.2f}/step)" if per_step else " " * 13)
                )
            print(f"{part:<18}" + "".join(f"{cell:>22}" for cell in cells))


if __name__ == "__main__":
    main()
