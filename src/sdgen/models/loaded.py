"""A loaded Stable Diffusion model: the components by name, as diffusers' pipelines hold them."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import torch

from sdgen.models.lora import LoraLibrary
from sdgen.models.textual_inversion import TextualInversions


@dataclass
class LoadedModel:
    """The networks and configs of one model, on one device in one precision.

    The components are the ecosystem's own classes (transformers ``CLIPTokenizer`` and
    ``CLIPTextModel``, diffusers ``UNet2DConditionModel`` and ``AutoencoderKL``), so a user can
    write their own loop with them as the diffusers tutorials do.
    """

    name: str  # what the user asked for: a path or a hub id
    source: Path  # the folder or single file the weights came from
    tokenizer: object
    text_encoder: torch.nn.Module
    unet: torch.nn.Module
    vae: torch.nn.Module
    scheduler_config: dict  # the model's own scheduler config; every request builds a fresh one
    device: torch.device
    dtype: torch.dtype
    fast_path: tuple[str, ...] = ()  # what sdgen.models.fast_path applied, e.g. ("compile", ...)
    # textual inversion embeddings that prompts can name (sdgen.models.textual_inversion)
    textual_inversions: TextualInversions = field(default_factory=TextualInversions.none)
    # LoRAs that prompts can name (sdgen.models.lora), merged into the weights while a request
    # that names them runs
    loras: LoraLibrary = field(default_factory=LoraLibrary.none)
    # What the layers above derive from the networks and keep for the model's life (negative
    # prompts' embeddings, traced UNets): the weights change only while LoRAs are merged, and
    # what depends on that is keyed by the LoRAs (the negative prompts' embeddings) or shares
    # the parameters (traces), so nothing has to invalidate it. Not an argument: a copy made
    # with dataclasses.replace starts empty.
    caches: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    @property
    def vae_scale_factor(self) -> int:
        """Pixels per latent cell: 2 ** (number of VAE down blocks - 1), 8 for SD 1.x/2.x."""
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def latent_channels(self) -> int:
        """Channels of the VAE's latents (4); an inpainting UNet takes 9 (latents, mask, masked)."""
        return self.vae.config.latent_channels

    @property
    def native_size(self) -> int:
        """The picture side the UNet was trained at: 512 for SD 1.x, 768 for SD 2.x (v)."""
        return self.unet.config.sample_size * self.vae_scale_factor

    @property
    def prediction_type(self) -> str:
        return self.scheduler_config.get("prediction_type", "epsilon")

    @property
    def family(self) -> str:
        """``sd1`` or ``sd2``: SD 2.x's UNet uses linear projections in its transformer blocks."""
        return "sd2" if self.unet.config.use_linear_projection else "sd1"

    @cached_property
    def short_hash(self) -> str:
        """A1111's ``Model hash``: the first 10 hex digits of the weights file's sha256."""
        return sha256_file(self.weights_file)[:10]

    @property
    def weights_file(self) -> Path:
        """The file the hash is taken of: the checkpoint, or a folder's UNet weights."""
        if self.source.is_file():
            return self.source
        # The file the loader reads: safetensors before pickles, plain weights before a variant
        # such as fp16 (one dot in the name); a .bin beside them changes nothing.
        files = sorted(
            (self.source / "unet").glob("diffusion_pytorch_model*"),
            key=lambda p: (p.suffix != ".safetensors", len(p.name.split(".")), p.name),
        )
        return files[0] if files else self.source / "model_index.json"

    @property
    def display_name(self) -> str:
        """A1111's ``Model`` value: the checkpoint or folder name without extension."""
        return self.source.stem if self.source.is_file() else Path(self.name).name  # hub: repo


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
