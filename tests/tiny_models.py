"""Tiny random Stable Diffusion models, built from configs, in diffusers' folder layout.

The same classes and layout as SD 1.x (epsilon, CLIP-style text tower) and SD 2.x (v-prediction,
linear projections, "!" padding), small enough to run every sampler in seconds on a CPU. The VAE
has two blocks, so its latent factor is 2, not 8: code that hard-codes 8 fails on it.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from diffusers import AutoencoderKL, PNDMScheduler, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from sdgen.models.bundled import CLIP_TOKENIZER_DIR
from sdgen.models.loader import STABLE_DIFFUSION_MODEL_INDEX

TEXT_DIM = 32


def build_tiny_model(
    folder: Path, *, family: str = "sd1", seed: int = 0, unet_in_channels: int = 4
) -> Path:
    """Write a random tiny SD model of ``family`` (sd1 | sd2) to ``folder`` and return it.

    ``unet_in_channels=9`` makes an inpainting model (latents, mask, masked picture's latents).
    """
    torch.manual_seed(seed)
    sd2 = family == "sd2"
    unet = UNet2DConditionModel(
        sample_size=16,
        block_out_channels=(32, 64),
        layers_per_block=1,
        in_channels=unet_in_channels,
        out_channels=4,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=TEXT_DIM,
        attention_head_dim=(2, 4) if sd2 else 8,
        use_linear_projection=sd2,
        norm_num_groups=8,
    )
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        block_out_channels=(16, 32),
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        latent_channels=4,
        norm_num_groups=8,
        sample_size=32,
    )
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=49408,
            hidden_size=TEXT_DIM,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=77,
            hidden_act="gelu" if sd2 else "quick_gelu",
            projection_dim=TEXT_DIM,
        )
    )
    tokenizer = CLIPTokenizer.from_pretrained(
        CLIP_TOKENIZER_DIR, **({"pad_token": "!"} if sd2 else {})
    )
    scheduler = PNDMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        num_train_timesteps=1000,
        skip_prk_steps=True,
        set_alpha_to_one=False,
        steps_offset=1,
        prediction_type="v_prediction" if sd2 else "epsilon",
    )
    folder.mkdir(parents=True, exist_ok=True)
    for name, part in (("unet", unet), ("vae", vae), ("text_encoder", text_encoder)):
        _randomize_zero_inits(part)
        part.save_pretrained(folder / name, safe_serialization=True)
    tokenizer.save_pretrained(folder / "tokenizer")
    scheduler.save_pretrained(folder / "scheduler")
    # SD 1.x/2.x's scheduler_config.json also carries clip_sample: false, which PNDM ignores but
    # DDIM reads (its default, True, would clip x0 to [-1, 1]).
    config_file = folder / "scheduler" / "scheduler_config.json"
    config_file.write_text(
        json.dumps({**json.loads(config_file.read_text()), "clip_sample": False})
    )
    (folder / "model_index.json").write_text(json.dumps(STABLE_DIFFUSION_MODEL_INDEX, indent=2))
    return folder


def _randomize_zero_inits(module: torch.nn.Module) -> None:
    """diffusers zero-initialises some output layers; random values make every layer matter."""
    with torch.no_grad():
        for param in module.parameters():
            if param.dim() > 0 and not param.any():
                param.normal_(0, 0.05)
