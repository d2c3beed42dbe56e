"""sdgen against diffusers' StableDiffusionPipeline: same weights, sampler, seeds, same run.

    python benchmarks/sd_benchmark.py --device cpu     # these machines: about 2-3 minutes
    python benchmarks/sd_benchmark.py --device cuda    # SD 1.5 architecture, fp16, 512x512

For each model, sampler (dpmpp_2m, euler) and batch size (1, 8) it runs both pipelines
interleaved (alternating which goes first), with guidance 7.5, and reports:

- seconds per picture, end to end (prompt -> PIL pictures), median of ``--repeats`` runs after
  a warm-up run; the warm-up (or compile) time of each pipeline on its own line;
- denoising steps per second: steps / the time from the first UNet call to the VAE decode;
- peak GPU memory (CUDA only), in one more, untimed run of each after ``empty_cache()``, from
  the memory PyTorch reserves (allocated memory would miss the pools CUDA graphs keep: a replay
  allocates nothing): diffusers is charged its weights plus what its run reserves on top, sdgen
  everything reserved before its run except diffusers' weights (its own weights and its graphs'
  pools) plus what its run reserves on top;
- the largest pixel difference between sdgen's and diffusers' pictures (parity: <= 3), and the
  smallest standard deviation of one of sdgen's pictures' pixels (near 0: a flat picture, which
  parity cannot judge);
- on CUDA, the fraction of the GPU's peak: ~0.80 TFLOP per UNet pass per picture at 64x64
  latents (x2 with guidance) and ~2.5 TFLOP per 512x512 VAE decode (PyTorch's FLOP counter on
  SD 1.5's configs), against the measured rate of a large fp16 matrix product.

Models: on the CPU (fp32), sdgen's embedded miniature model at 64x64 and the tests' tiny random
model (tests/tiny_models.py) at 32x32, ``--steps`` 10; on CUDA (fp16), SD 1.5's architecture
(configs below) with random weights at 512x512, 50 steps. Both pipelines load the same folder.
Writes JSON and a markdown table to benchmarks/results/: ``sd_benchmark-cpu`` and
``sd_benchmark-cuda`` with the device's default fast path (off on the CPU, on on CUDA),
``-fastpath-on`` / ``-fastpath-off`` appended when ``--fast-path`` chose the other.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import wraps
from importlib.metadata import version
from pathlib import Path

import diffusers
import numpy as np
import torch
import transformers

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from tiny_models import build_tiny_model  # noqa: E402

from sdgen.models.bundled import BUNDLED_MODELS, CLIP_TOKENIZER_DIR, MINIATURE_MODEL  # noqa: E402
from sdgen.models.fast_path import fast_path_parts  # noqa: E402
from sdgen.models.loader import STABLE_DIFFUSION_MODEL_INDEX, load_model  # noqa: E402
from sdgen.params import FAST_PATH_MODES, GenerationRequest  # noqa: E402
from sdgen.pipelines.txt2img import txt2img  # noqa: E402
from sdgen.sampling.samplers import SAMPLERS  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
PROMPT = "a red circle on a blue background"
SEED, GUIDANCE = 1234, 7.5
SAMPLER_NAMES = ("dpmpp_2m", "euler")
BATCHES = (1, 8)

# Work per picture on SD 1.5 (benchmarks' reference: /work/shared/reference/performance.md).
UNET_TFLOP_PER_PASS = 0.80  # one picture, 64x64 latents
VAE_DECODE_TFLOP = 2.5  # one 512x512 picture

# SD 1.5's published configs (stable-diffusion-v1-5: unet/, vae/, text_encoder/, scheduler/).
SD15_UNET = dict(
    sample_size=64,
    in_channels=4,
    out_channels=4,
    layers_per_block=2,
    block_out_channels=(320, 640, 1280, 1280),
    down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
    up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
    cross_attention_dim=768,
    attention_head_dim=8,
    norm_num_groups=32,
    norm_eps=1e-5,
    act_fn="silu",
    downsample_padding=1,
    flip_sin_to_cos=True,
    freq_shift=0,
    mid_block_scale_factor=1,
    center_input_sample=False,
)
SD15_VAE = dict(
    in_channels=3,
    out_channels=3,
    latent_channels=4,
    layers_per_block=2,
    block_out_channels=(128, 256, 512, 512),
    down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4,
    norm_num_groups=32,
    act_fn="silu",
    sample_size=512,
    scaling_factor=0.18215,
)
SD15_TEXT_ENCODER = dict(  # CLIP ViT-L/14's text tower
    vocab_size=49408,
    hidden_size=768,
    intermediate_size=3072,
    num_hidden_layers=12,
    num_attention_heads=12,
    max_position_embeddings=77,
    hidden_act="quick_gelu",
    layer_norm_eps=1e-5,
    projection_dim=768,
    bos_token_id=0,
    eos_token_id=2,
    pad_token_id=1,
)
SD15_SCHEDULER = dict(
    num_train_timesteps=1000,
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    set_alpha_to_one=False,
    skip_prk_steps=True,
    steps_offset=1,
)  # and clip_sample: false, which PNDM does not take but DDIM reads: written into the JSON


def build_sd15_random(folder: Path, device: torch.device, dtype: torch.dtype) -> Path:
    """SD 1.5's architecture with random weights, saved in diffusers' folder layout."""
    from diffusers import AutoencoderKL, PNDMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    torch.manual_seed(0)
    with torch.device(device):  # initialise on the GPU: seconds instead of a minute on the CPU
        networks = {
            "unet": UNet2DConditionModel(**SD15_UNET),
            "vae": AutoencoderKL(**SD15_VAE),
            "text_encoder": CLIPTextModel(CLIPTextConfig(**SD15_TEXT_ENCODER)),
        }
    for name, network in networks.items():
        network.to(dtype).save_pretrained(folder / name, safe_serialization=True)
    CLIPTokenizer.from_pretrained(CLIP_TOKENIZER_DIR).save_pretrained(folder / "tokenizer")
    PNDMScheduler(**SD15_SCHEDULER).save_pretrained(folder / "scheduler")
    config_file = folder / "scheduler" / "scheduler_config.json"
    config = {**json.loads(config_file.read_text()), "clip_sample": False}
    config_file.write_text(json.dumps(config, indent=2))
    (folder / "model_index.json").write_text(json.dumps(STABLE_DIFFUSION_MODEL_INDEX, indent=2))
    return folder


def model_folders(which: str, device: torch.device | None = None) -> dict[str, tuple[Path, int]]:
    """label -> (diffusers folder, picture side) for the models benchmarked on ``device``."""
    if device is not None and device.type == "cuda":
        folder = Path(tempfile.mkdtemp(prefix="sd15-random-"))
        return {"sd15-random": (build_sd15_random(folder, device, torch.float16), 512)}
    folders = {}
    if which in ("miniature", "both"):
        folders["miniature"] = (BUNDLED_MODELS[MINIATURE_MODEL], 64)
    if which in ("tiny", "both"):
        folders["tiny"] = (build_tiny_model(Path(tempfile.mkdtemp()) / "tiny-sd1"), 32)
    return folders


@dataclass
class Contender:
    """One pipeline: ``run(batch, sampler, steps)`` makes ``batch`` pictures seeded SEED + i."""

    name: str
    run: Callable[[int, str, int], list]
    unet: torch.nn.Module
    vae: torch.nn.Module
    text_encoder: torch.nn.Module


def build_contenders(
    folder: Path, size: int, device: torch.device, dtype: torch.dtype, fast_path: str
) -> list[Contender]:
    """sdgen's txt2img and diffusers' StableDiffusionPipeline, each loading ``folder``."""
    model = load_model(folder, device=str(device), precision=_precision(dtype), fast_path=fast_path)
    print(f"  sdgen's fast path: {', '.join(model.fast_path) or 'off'}")

    def run_sdgen(batch: int, sampler: str, steps: int) -> list:
        request = GenerationRequest(
            PROMPT,
            num_images=batch,
            steps=steps,
            guidance_scale=GUIDANCE,
            sampler=sampler,
            width=size,
            height=size,
            seed=SEED,
        )
        return txt2img(model, request).images

    pipe = diffusers.StableDiffusionPipeline.from_pretrained(
        folder, torch_dtype=dtype, safety_checker=None, requires_safety_checker=False
    ).to(device)
    pipe.set_progress_bar_config(disable=True)
    own_config = dict(pipe.scheduler.config)
    schedulers = {
        name: getattr(diffusers, SAMPLERS[name].scheduler_class).from_config(
            own_config, **SAMPLERS[name].options
        )
        for name in SAMPLERS
    }

    def run_diffusers(batch: int, sampler: str, steps: int) -> list:
        pipe.scheduler = schedulers[sampler]
        generators = [torch.Generator("cpu").manual_seed(SEED + i) for i in range(batch)]
        return pipe(
            PROMPT,
            num_inference_steps=steps,
            guidance_scale=GUIDANCE,
            width=size,
            height=size,
            num_images_per_prompt=batch,
            generator=generators,
        ).images

    return [
        Contender("sdgen", run_sdgen, model.unet, model.vae, model.text_encoder),
        Contender("diffusers", run_diffusers, pipe.unet, pipe.vae, pipe.text_encoder),
    ]


def _precision(dtype: torch.dtype) -> str:
    return {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}[dtype]


class Clock:
    """Timestamps that do not stall the GPU: CUDA events there, perf_counter on the CPU."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"

    def now(self):
        if not self.cuda:
            return time.perf_counter()
        event = torch.cuda.Event(enable_timing=True)
        event.record()
        return event

    def seconds(self, start, end) -> float:
        if not self.cuda:
            return end - start
        end.synchronize()
        return start.elapsed_time(end) / 1000


class DenoisingWindow:
    """When the running pipeline's denoising starts (first scale_model_input) and ends (last
    scheduler.step): both pipelines call the scheduler from Python, whatever runs the UNet."""

    def __init__(self, clock: Clock):
        self.clock, self.start, self.end = clock, None, None
        for name in {SAMPLERS[s].scheduler_class for s in SAMPLERS}:
            cls = getattr(diffusers, name)
            cls.scale_model_input = self._marking(cls.scale_model_input, first=True)
            cls.step = self._marking(cls.step, first=False)

    def _marking(self, function, first: bool):
        @wraps(function)
        def marked(*args, **kwargs):
            if first and self.start is None:
                self.start = self.clock.now()
            result = function(*args, **kwargs)
            if not first:
                self.end = self.clock.now()
            return result

        return marked

    def reset(self) -> None:
        self.start = self.end = None

    def seconds(self) -> float:
        return self.clock.seconds(self.start, self.end)


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass
class Timing:
    seconds: list[float] = field(default_factory=list)  # whole runs
    denoise_seconds: list[float] = field(default_factory=list)
    peak_bytes: int = 0
    warmup_seconds: float = 0.0
    pictures: list = field(default_factory=list)


def weight_bytes(contender: Contender) -> int:
    networks = (contender.unet, contender.vae, contender.text_encoder)
    tensors = [t for n in networks for t in (*n.parameters(), *n.buffers())]
    return sum(t.numel() * t.element_size() for t in tensors)


def timed_run(contender, batch, sampler, steps, device, window, timing: Timing):
    window.reset()
    _synchronize(device)
    started = time.perf_counter()
    pictures = contender.run(batch, sampler, steps)
    _synchronize(device)
    seconds = time.perf_counter() - started
    timing.pictures = pictures
    return seconds, window.seconds()


def peak_memory(contender, batch, sampler, steps, device, diffusers_weights: int) -> int:
    """Bytes of GPU memory ``contender`` needs for a run: one more run, untimed, from an emptied
    cache (emptying it before the timed runs would make them allocate afresh)."""
    torch.cuda.empty_cache()  # cached blocks go; CUDA graphs' pools stay (they are in use)
    before = torch.cuda.memory_reserved(device)
    torch.cuda.reset_peak_memory_stats(device)
    contender.run(batch, sampler, steps)
    _synchronize(device)
    # diffusers keeps only its weights between runs; the rest reserved before is sdgen's
    kept = diffusers_weights if contender.name == "diffusers" else before - diffusers_weights
    return kept + torch.cuda.max_memory_reserved(device) - before


def measure(contenders, batch: int, sampler: str, steps: int, repeats: int, device, window):
    """Interleaved runs of every contender; the first run of each is the warm-up; on CUDA a
    last run of each measures its memory."""
    timings = {c.name: Timing() for c in contenders}
    for c in contenders:
        timings[c.name].warmup_seconds, _ = timed_run(
            c, batch, sampler, steps, device, window, timings[c.name]
        )
    for repeat in range(repeats):
        order = contenders if repeat % 2 == 0 else contenders[::-1]
        for c in order:
            seconds, denoise = timed_run(c, batch, sampler, steps, device, window, timings[c.name])
            timings[c.name].seconds.append(seconds)
            timings[c.name].denoise_seconds.append(denoise)
    if device.type == "cuda":
        diffusers_weights = weight_bytes(next(c for c in contenders if c.name == "diffusers"))
        for c in contenders:
            timings[c.name].peak_bytes = peak_memory(
                c, batch, sampler, steps, device, diffusers_weights
            )
    return timings


def max_pixel_diff(pictures_a: list, pictures_b: list) -> int:
    return max(
        int(np.abs(np.asarray(a, np.int16) - np.asarray(b, np.int16)).max())
        for a, b in zip(pictures_a, pictures_b, strict=True)
    )


def matmul_peak_tflops(device: torch.device, dtype: torch.dtype) -> float:
    """Measured rate of a large matrix product: the GPU's practical peak for this dtype."""
    n = 8192
    a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))
    for _ in range(3):
        a @ b
    torch.cuda.synchronize(device)
    started, reps = time.perf_counter(), 20
    for _ in range(reps):
        a @ b
    torch.cuda.synchronize(device)
    return 2 * n**3 * reps / (time.perf_counter() - started) / 1e12


def row_for(label, size, sampler, batch, steps, timings, diff, device, peak_tflops):
    ours, theirs = timings["sdgen"], timings["diffusers"]
    row = {
        "model": label,
        "size": size,
        "sampler": sampler,
        "batch": batch,
        "steps": steps,
        "max_pixel_diff": diff,
        # the parity check means something only if no picture is flat (e.g. NaN -> black)
        "pixel_std": round(min(float(np.std(np.asarray(p))) for p in ours.pictures), 2),
    }
    for name, t in (("sdgen", ours), ("diffusers", theirs)):
        per_picture = statistics.median(t.seconds) / batch
        row[name] = {
            "seconds_per_picture": round(per_picture, 4),
            "steps_per_second": round(steps / statistics.median(t.denoise_seconds), 2),
            "warmup_seconds": round(t.warmup_seconds, 3),
            "runs_seconds": [round(s, 4) for s in t.seconds],
        }
        if device.type == "cuda":
            row[name]["peak_memory_gib"] = round(t.peak_bytes / 2**30, 2)
            scale = (size / 512) ** 2
            tflop = steps * 2 * UNET_TFLOP_PER_PASS * scale + VAE_DECODE_TFLOP * scale
            row[name]["fraction_of_peak"] = round(tflop / per_picture / peak_tflops, 3)
    row["ratio_sdgen_to_diffusers"] = round(
        row["sdgen"]["seconds_per_picture"] / row["diffusers"]["seconds_per_picture"], 3
    )
    return row


def markdown(report: dict) -> str:
    cuda = report["device"]["type"] == "cuda"
    lines = [
        f"# sd_benchmark: sdgen vs diffusers on {report['device']['name']}",
        "",
        f"torch {report['versions']['torch']}, diffusers {report['versions']['diffusers']}, "
        f"transformers {report['versions']['transformers']}, sdgen {report['versions']['sdgen']}; "
        f"{report['settings']['dtype']}, guidance {GUIDANCE}, sdgen's fast path: "
        f"{', '.join(report['settings'].get('fast_path') or ()) or 'off'}, "
        f"median of {report['settings']['repeats']} interleaved runs after a warm-up; "
        f"{report['device']['threads']} CPU threads.",
        "",
        "| model | size | sampler | batch | steps | sdgen s/picture | diffusers s/picture "
        "| ratio | sdgen steps/s | diffusers steps/s | max pixel diff | pixel std |"
        + (
            " sdgen peak GiB | diffusers peak GiB | sdgen % of peak | diffusers % of peak |"
            if cuda
            else ""
        ),
        "|---|---|---|---|---|---|---|---|---|---|---|---|" + ("---|---|---|---|" if cuda else ""),
    ]
    for r in report["rows"]:
        s, d = r["sdgen"], r["diffusers"]
        cells = [
            r["model"],
            f"{r['size']}x{r['size']}",
            r["sampler"],
            r["batch"],
            r["steps"],
            f"{s['seconds_per_picture']:.4f}",
            f"{d['seconds_per_picture']:.4f}",
            f"**{r['ratio_sdgen_to_diffusers']:.2f}**",
            s["steps_per_second"],
            d["steps_per_second"],
            r["max_pixel_diff"],
            r.get("pixel_std", "-"),
        ]
        if cuda:
            cells += [
                s["peak_memory_gib"],
                d["peak_memory_gib"],
                f"{100 * s['fraction_of_peak']:.1f}",
                f"{100 * d['fraction_of_peak']:.1f}",
            ]
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    lines += ["", "Warm-up (first run, includes any compile) in seconds:", ""]
    for r in report["rows"]:
        lines.append(
            f"- {r['model']} {r['sampler']} batch {r['batch']}: sdgen "
            f"{r['sdgen']['warmup_seconds']}, diffusers {r['diffusers']['warmup_seconds']}"
        )
    if cuda:
        lines += [
            "",
            f"GPU peak (measured fp16 matrix product): "
            f"{report['device']['matmul_peak_tflops']:.0f} TFLOP/s.",
        ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--steps", type=int, default=None, help="default: 50 CUDA, 10 CPU")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument(
        "--model",
        choices=("tiny", "miniature", "both"),
        default="both",
        help="CPU models to run (CUDA always runs SD 1.5's architecture)",
    )
    parser.add_argument("--batches", default=",".join(map(str, BATCHES)))
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="CPU intra-op threads (default: torch's); 1 is steadier on a shared machine",
    )
    parser.add_argument("--samplers", default=",".join(SAMPLER_NAMES))
    parser.add_argument(
        "--fast-path",
        choices=FAST_PATH_MODES,
        default="auto",
        help="sdgen's fast path (auto: on for CUDA); compile time shows in the warm-up line",
    )
    args = parser.parse_args()
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    cuda = device.type == "cuda"
    dtype = torch.float16 if cuda else torch.float32
    steps = args.steps or (50 if cuda else 10)
    batches = [int(b) for b in args.batches.split(",")]
    samplers = args.samplers.split(",")
    peak = matmul_peak_tflops(device, dtype) if cuda else None
    name = torch.cuda.get_device_name(device) if cuda else platform.processor() or "cpu"
    report = {
        "benchmark": "sd_benchmark",
        "device": {
            "type": device.type,
            "name": name,
            "threads": torch.get_num_threads(),
            "matmul_peak_tflops": peak,
        },
        "versions": {
            "torch": torch.__version__,
            "diffusers": diffusers.__version__,
            "transformers": transformers.__version__,
            "sdgen": version("sdgen"),
            "python": platform.python_version(),
        },
        "settings": {
            "dtype": str(dtype).removeprefix("torch."),
            "guidance_scale": GUIDANCE,
            "steps": steps,
            "repeats": args.repeats,
            "batches": batches,
            "samplers": samplers,
            "prompt": PROMPT,
            "seed": SEED,
            "fast_path": fast_path_parts(args.fast_path, device),
        },
        "rows": [],
    }
    print(
        f"{name}: torch {torch.__version__}, diffusers {diffusers.__version__}, "
        f"{torch.get_num_threads()} threads, {report['settings']['dtype']}, {steps} steps"
    )
    window = DenoisingWindow(Clock(device))
    for label, (folder, size) in model_folders(args.model, device).items():
        started = time.perf_counter()
        contenders = build_contenders(folder, size, device, dtype, args.fast_path)
        print(f"\n{label} {size}x{size}: loaded in {time.perf_counter() - started:.1f} s")
        for sampler in samplers:
            for batch in batches:
                timings = measure(contenders, batch, sampler, steps, args.repeats, device, window)
                diff = max_pixel_diff(timings["sdgen"].pictures, timings["diffusers"].pictures)
                row = row_for(label, size, sampler, batch, steps, timings, diff, device, peak)
                report["rows"].append(row)
                write_report(report)
                s, d = row["sdgen"], row["diffusers"]
                print(
                    f"  {sampler:<9} batch {batch}: warm-up sdgen {s['warmup_seconds']:.2f} s, "
                    f"diffusers {d['warmup_seconds']:.2f} s"
                )
                print(
                    f"  {sampler:<9} batch {batch}: sdgen {s['seconds_per_picture']:.4f} "
                    f"s/picture ({s['steps_per_second']} steps/s), diffusers "
                    f"{d['seconds_per_picture']:.4f} ({d['steps_per_second']} steps/s), "
                    f"ratio {row['ratio_sdgen_to_diffusers']:.2f}, max pixel diff {diff} "
                    f"(least pixel spread of a picture {row['pixel_std']})"
                )
    print(f"\nwritten: {write_report(report)}")


def write_report(report: dict) -> str:
    """The JSON and the table so far (written after every row: a run cut short keeps its rows)."""
    RESULTS.mkdir(exist_ok=True)
    device = report["device"]["type"]
    # the fast path as the device has it by default keeps the plain name: -cuda on, -cpu off
    fast = bool(report["settings"]["fast_path"])
    other = "" if fast == (device == "cuda") else ("-fastpath-on" if fast else "-fastpath-off")
    stem = RESULTS / f"sd_benchmark-{device}{other}"
    for suffix, text in ((".json", json.dumps(report, indent=2) + "\n"), (".md", markdown(report))):
        partial = stem.with_suffix(suffix + ".partial")  # renamed whole: never half a file
        partial.write_text(text)
        partial.replace(stem.with_suffix(suffix))
    return f"{stem}.json, {stem}.md"


if __name__ == "__main__":
    main()
