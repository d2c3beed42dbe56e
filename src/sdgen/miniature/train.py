"""Train the miniature Stable Diffusion from scratch: tokenizer, CLIP, VAE, UNet, then export.

    python -m sdgen.miniature.train OUT_DIR [--device auto] [--seed 0]

Stages run in order, each skipped when its result is already in OUT_DIR; an interrupted stage
resumes from its last checkpoint (OUT_DIR/checkpoints). Every batch is drawn from a generator
seeded by (seed, stage, step), so a resumed run sees the same batches as an uninterrupted one.
Losses go to OUT_DIR/logs/STAGE.csv; the exported diffusers folder is OUT_DIR/model.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from sdgen.miniature import architecture as arch
from sdgen.miniature.shapes import caption, make_dataset, stack_images
from sdgen.miniature.tokenizer import learn_merges, write_clip_tokenizer
from sdgen.models.loader import STABLE_DIFFUSION_MODEL_INDEX

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainConfig:
    seed: int = 0
    dataset_size: int = 20_000  # pictures rendered once; captions are drawn afresh each step
    clip_steps: int = 1_500
    clip_batch: int = 128
    vae_steps: int = 2_500
    vae_batch: int = 32
    unet_steps: int = 10_000
    unet_batch: int = 64
    caption_dropout: float = 0.1  # empty prompts, so classifier-free guidance has an uncond
    checkpoint_every: int = 500


@dataclass
class Data:
    """The rendered dataset: pixels in [-1, 1] and the scenes they show."""

    pixels: torch.Tensor  # (N, 3, 64, 64)
    scenes: list

    def batch(self, rng: np.random.Generator, size: int) -> tuple[torch.Tensor, list]:
        index = rng.integers(0, len(self.scenes), size)
        return self.pixels[index], [self.scenes[i] for i in index]


def load_data(config: TrainConfig) -> Data:
    samples = make_dataset(config.dataset_size, seed=config.seed)
    pixels = torch.from_numpy(stack_images(samples)).permute(0, 3, 1, 2).float() / 127.5 - 1
    return Data(pixels=pixels, scenes=[s.scene for s in samples])


def step_rng(config: TrainConfig, stage: str, step: int) -> np.random.Generator:
    """The generator of one training step: the same whether or not the run was resumed."""
    return np.random.default_rng([config.seed, sum(map(ord, stage)), step])


def run_stage(
    name: str,
    out: Path,
    module: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    steps: int,
    loss_of_step: Callable[[int], torch.Tensor],
    config: TrainConfig,
    after_step: Callable[[], None] | None = None,
) -> float:
    """The training loop every stage shares: resume, step, log, checkpoint. Returns last loss."""
    checkpoint = out / "checkpoints" / f"{name}.pt"
    start, extra = 0, {}
    if checkpoint.exists():
        state = torch.load(checkpoint, map_location="cpu", weights_only=True)
        module.load_state_dict(state["module"])
        optimizer.load_state_dict(state["optimizer"])
        start, extra = state["step"], state.get("extra", {})
        log.info("%s: resuming at step %d", name, start)
    log_file = out / "logs" / f"{name}.csv"
    log_file.parent.mkdir(parents=True, exist_ok=True)
    if start == 0:
        log_file.write_text("step,loss,seconds\n")
    started, recent = time.monotonic(), []
    bar = tqdm(range(start, steps), desc=name, initial=start, total=steps)
    for step in bar:
        loss = loss_of_step(step)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(module.parameters(), 1.0)
        optimizer.step()
        if after_step:
            after_step()
        recent.append(loss.item())
        if (step + 1) % 50 == 0:
            mean = sum(recent) / len(recent)
            recent = []
            bar.set_postfix(loss=f"{mean:.4f}")
            with log_file.open("a") as f:
                f.write(f"{step + 1},{mean:.6f},{time.monotonic() - started:.1f}\n")
            extra["last_loss"] = mean
        if (step + 1) % config.checkpoint_every == 0 or step + 1 == steps:
            checkpoint.parent.mkdir(parents=True, exist_ok=True)
            state = {"module": module.state_dict(), "optimizer": optimizer.state_dict()}
            # written beside it, then renamed: a run killed while saving keeps the last one
            partial = checkpoint.with_suffix(".pt.partial")
            torch.save({**state, "step": step + 1, "extra": extra}, partial)
            partial.replace(checkpoint)
    return extra.get("last_loss", float("nan"))


def captions_for(scenes: list, rng: np.random.Generator, dropout: float = 0.0) -> list[str]:
    """A fresh caption per scene; with probability ``dropout`` the empty prompt instead."""
    texts = [caption(scene, rng) for scene in scenes]
    return ["" if rng.random() < dropout else text for text in texts]


def tokenize(tokenizer, texts: list[str]) -> torch.Tensor:
    return tokenizer(
        texts,
        padding="max_length",
        max_length=tokenizer.model_max_length,
        truncation=True,
        return_tensors="pt",
    ).input_ids


def train_tokenizer(out: Path, data: Data, config: TrainConfig):
    folder = out / "model" / "tokenizer"
    if not (folder / "vocab.json").exists():
        rng = step_rng(config, "tokenizer", 0)
        write_clip_tokenizer(learn_merges(captions_for(data.scenes, rng)), folder)
    from transformers import CLIPTokenizer

    return CLIPTokenizer.from_pretrained(folder)


def train_clip(out: Path, data: Data, tokenizer, config: TrainConfig, device: torch.device):
    """Contrastive training of both towers on (picture, caption) pairs."""
    clip = arch.build_clip(
        len(tokenizer), bos_id=tokenizer.bos_token_id, eos_id=tokenizer.eos_token_id
    ).to(device)
    optimizer = torch.optim.AdamW(clip.parameters(), lr=5e-4, weight_decay=0.01)

    def loss_of_step(step: int) -> torch.Tensor:
        rng = step_rng(config, "clip", step)
        pixels, scenes = data.batch(rng, config.clip_batch)
        ids = tokenize(tokenizer, captions_for(scenes, rng)).to(device)
        return clip(input_ids=ids, pixel_values=pixels.to(device), return_loss=True).loss

    loss = run_stage("clip", out, clip, optimizer, config.clip_steps, loss_of_step, config)
    return clip.eval().requires_grad_(False), loss


def train_vae(out: Path, data: Data, config: TrainConfig, device: torch.device):
    """Reconstruction (L1 + MSE) with a small KL term, as SD's autoencoder is trained."""
    vae = arch.build_vae().to(device)
    optimizer = torch.optim.AdamW(vae.parameters(), lr=5e-4)

    def loss_of_step(step: int) -> torch.Tensor:
        rng = step_rng(config, "vae", step)
        pixels, _ = data.batch(rng, config.vae_batch)
        pixels = pixels.to(device)
        generator = torch.Generator().manual_seed(int(rng.integers(2**31)))
        posterior = vae.encode(pixels).latent_dist
        noise = torch.randn(posterior.mean.shape, generator=generator).to(device)
        latents = posterior.mean + posterior.std * noise
        decoded = vae.decode(latents).sample
        reconstruction = (decoded - pixels).abs().mean() + (decoded - pixels).pow(2).mean()
        return reconstruction + 1e-5 * posterior.kl().mean()

    loss = run_stage("vae", out, vae, optimizer, config.vae_steps, loss_of_step, config)
    return vae.eval().requires_grad_(False), loss


@torch.no_grad()
def encode_dataset(vae, data: Data, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Posterior mean and std of every picture, (N, 4, 8, 8) each, computed once for the UNet."""
    means, stds = [], []
    for chunk in data.pixels.split(256):
        posterior = vae.encode(chunk.to(device)).latent_dist
        means.append(posterior.mean.cpu())
        stds.append(posterior.std.cpu())
    return torch.cat(means), torch.cat(stds)


class TextCache:
    """The frozen text encoder's embeddings (16, 64) per distinct caption, computed once each."""

    def __init__(self, tokenizer, text_model, device: torch.device):
        self.tokenizer, self.text_model, self.device, self.cache = tokenizer, text_model, device, {}

    @torch.no_grad()
    def __call__(self, texts: list[str]) -> torch.Tensor:
        missing = sorted({t for t in texts if t not in self.cache})
        if missing:
            ids = tokenize(self.tokenizer, missing).to(self.device)
            for text, row in zip(missing, self.text_model(ids)[0], strict=True):
                self.cache[text] = row
        return torch.stack([self.cache[t] for t in texts])


def latent_scaling(means: torch.Tensor, stds: torch.Tensor, seed: int) -> float:
    """SD's scaling factor, measured: 1 / std of posterior samples, for unit-variance latents."""
    generator = torch.Generator().manual_seed(seed)
    samples = means + stds * torch.randn(means.shape, generator=generator)
    return float(1.0 / samples.std())


def train_unet(out, data, tokenizer, clip, vae, config: TrainConfig, device: torch.device):
    """Epsilon prediction on SD's scaled-linear schedule, with caption dropout; EMA weights kept."""
    from diffusers import DDPMScheduler

    means, stds = encode_dataset(vae, data, device)
    scaling = latent_scaling(means, stds, config.seed)
    noise_schedule = DDPMScheduler(**arch.NOISE_SCHEDULE)
    texts = TextCache(tokenizer, clip.text_model, device)
    unet = arch.build_unet().to(device)
    ema = arch.build_unet().to(device).requires_grad_(False)
    ema.load_state_dict(unet.state_dict())
    both = torch.nn.ModuleDict({"unet": unet, "ema": ema})
    optimizer = torch.optim.AdamW(unet.parameters(), lr=3e-4, weight_decay=0.01)

    def loss_of_step(step: int) -> torch.Tensor:
        rng = step_rng(config, "unet", step)
        index = rng.integers(0, len(data.scenes), config.unet_batch)
        scenes = [data.scenes[i] for i in index]
        generator = torch.Generator().manual_seed(int(rng.integers(2**31)))
        sample_noise = torch.randn(means[index].shape, generator=generator)
        latents = (means[index] + stds[index] * sample_noise) * scaling  # (B, 4, 8, 8)
        noise = torch.randn(latents.shape, generator=generator)
        timesteps = torch.randint(0, 1000, (len(index),), generator=generator)
        noisy = noise_schedule.add_noise(latents, noise, timesteps)
        embeddings = texts(captions_for(scenes, rng, config.caption_dropout))
        prediction = unet(noisy.to(device), timesteps.to(device), embeddings).sample
        return (prediction - noise.to(device)).pow(2).mean()

    @torch.no_grad()
    def update_ema(decay: float = 0.999) -> None:
        for average, current in zip(ema.parameters(), unet.parameters(), strict=True):
            average.lerp_(current, 1 - decay)

    loss = run_stage(
        "unet", out, both, optimizer, config.unet_steps, loss_of_step, config, update_ema
    )
    return ema.eval(), scaling, loss


def export(out: Path, clip, vae, unet, scaling: float, report: dict) -> Path:
    """Write the diffusers folder (plus clip/ for ranking) that sdgen and diffusers load."""
    from transformers import CLIPImageProcessor, CLIPTextModel

    folder = out / "model"
    text_encoder = CLIPTextModel(clip.config.text_config)
    # transformers 4 wraps the tower as .text_model; 5 is the tower itself.
    getattr(text_encoder, "text_model", text_encoder).load_state_dict(clip.text_model.state_dict())
    vae.register_to_config(scaling_factor=scaling)
    for name, module in (("text_encoder", text_encoder), ("vae", vae), ("unet", unet)):
        module.to("cpu").save_pretrained(folder / name, safe_serialization=True)
    clip.to("cpu").save_pretrained(folder / "clip", safe_serialization=True)
    # Pixels in [-1, 1], as CLIP was trained here (mean 0.5, std 0.5 after rescaling to [0, 1]).
    CLIPImageProcessor(
        size={"shortest_edge": arch.IMAGE_SIZE},
        crop_size={"height": arch.IMAGE_SIZE, "width": arch.IMAGE_SIZE},
        image_mean=[0.5] * 3,
        image_std=[0.5] * 3,
    ).save_pretrained(folder / "clip")
    for name in ("vocab.json", "merges.txt", "tokenizer_config.json"):  # clip/ stands alone
        shutil.copy(folder / "tokenizer" / name, folder / "clip" / name)
    scheduler = arch.scheduler_config()
    (folder / "scheduler").mkdir(exist_ok=True)
    (folder / "scheduler" / "scheduler_config.json").write_text(json.dumps(scheduler, indent=2))
    index = {**STABLE_DIFFUSION_MODEL_INDEX, "scheduler": ["diffusers", scheduler["_class_name"]]}
    (folder / "model_index.json").write_text(json.dumps(index, indent=2))
    (folder / "training.json").write_text(json.dumps(report, indent=2))
    return folder


def train(out: Path, config: TrainConfig, device: torch.device) -> Path:
    """Every stage in order; returns the exported model folder."""
    started = time.monotonic()
    torch.manual_seed(config.seed)  # network initialisation; batches have their own generators
    data = load_data(config)
    tokenizer = train_tokenizer(out, data, config)
    clip, clip_loss = train_clip(out, data, tokenizer, config, device)
    vae, vae_loss = train_vae(out, data, config, device)
    unet, scaling, unet_loss = train_unet(out, data, tokenizer, clip, vae, config, device)
    report = {
        "command": f"python -m sdgen.miniature.train {out}",
        "config": asdict(config),
        "device": device_name(device),
        "torch": torch.__version__,
        "seconds": round(time.monotonic() - started),
        "final_losses": {"clip": clip_loss, "vae": vae_loss, "unet": unet_loss},
        "vae_scaling_factor": scaling,
        "parameters": {
            "text_encoder": arch.count_parameters(clip.text_model),
            "clip": arch.count_parameters(clip),
            "vae": arch.count_parameters(vae),
            "unet": arch.count_parameters(unet),
        },
    }
    return export(out, clip, vae, unet, scaling, report)


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    import platform

    return f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def main(argv: list[str] | None = None) -> None:
    from sdgen.models.devices import resolve_device

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("out", type=Path, help="folder for checkpoints, logs and the model")
    parser.add_argument("--device", default="auto", help="auto (CUDA if present), cpu, cuda:N")
    parser.add_argument("--seed", type=int, default=0)
    for field in ("dataset_size", "clip_steps", "vae_steps", "unet_steps"):
        parser.add_argument(f"--{field.replace('_', '-')}", type=int)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    overrides = {k: v for k, v in vars(args).items() if k in TrainConfig.__annotations__}
    config = TrainConfig(**{k: v for k, v in overrides.items() if v is not None})
    folder = train(args.out, config, resolve_device(args.device))
    print(folder)


if __name__ == "__main__":
    main()
