"""``load_single_file``: an SD 1.x / 2.x checkpoint in the original LDM (CompVis) layout, offline.

Model sites hand out Stable Diffusion as one file whose keys follow the original training code:
``model.diffusion_model.*`` (UNet), ``first_stage_model.*`` (VAE) and ``cond_stage_model.*`` (text
encoder). diffusers' ``from_single_file`` fetches the matching configs from the hub; sdgen
infers them from the tensor shapes instead, so that real and tiny test checkpoints load offline.
The key renaming is diffusers' own (``diffusers.loaders.single_file_utils``).

What the shapes tell: channels per block, number of blocks and of layers per block, which blocks
attend, cross-attention width, linear vs 1x1-conv projections, text width/depth, latent channels.
What they cannot tell, because the weights have the same shapes either way:

- GroupNorm's group count: 32, as LDM hard-codes it.
- Attention heads: SD 1.x has 8 heads in every UNet block (LDM ``num_heads: 8``, diffusers
  ``attention_head_dim: 8``); SD 2.x has 64-wide heads (``num_head_channels: 64``), i.e. heads per
  block = channels // 64, which gives diffusers' ``[5, 10, 20, 20]``. Text encoders have 64-wide
  heads (CLIP ViT-L 12, OpenCLIP ViT-H 16).
- Networks narrower than any real SD (first block under 128 channels, i.e. test-sized models) cannot
  use these (GroupNorm(32) does not divide 16 channels) and follow the convention of sdgen's tiny
  test models instead: 8 groups, 16-wide SD 2.x UNet heads, 8-wide text heads.
- v-prediction vs epsilon: SD 2.x defaults to v (SD 2.1 768). 2.x-base (512, epsilon) checkpoints
  need A1111's YAML beside them (same stem, e.g. ``model.yaml``); one without
  ``parameterization: "v"`` means epsilon. The YAML is read for SD 1.x too.
"""

from __future__ import annotations

import pickle
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from sdgen.errors import ModelNotFound, SdgenError
from sdgen.models.safety import is_pickle, load_pickle_state_dict, refuse_pickle

if TYPE_CHECKING:
    from transformers import CLIPTextConfig

UNET = "model.diffusion_model."
VAE = "first_stage_model."
_REAL_MIN_WIDTH = 128  # narrower than any real SD network: SD's UNet starts at 320, its VAE at 128


@dataclass(frozen=True)
class _Family:
    """What differs between SD 1.x and SD 2.x beyond tensor shapes."""

    text_prefix: str  # where the text encoder's tensors live
    hidden_act: str  # CLIP ViT-L uses quick_gelu; OpenCLIP ViT-H plain gelu
    pad_token: str | None  # None: the tokenizer's own (<|endoftext|>)
    unet_heads: int | None  # a fixed head count per block, or None for 64-wide heads
    default_prediction: str


_FAMILIES = {
    "sd1": _Family("cond_stage_model.transformer.text_model.", "quick_gelu", None, 8, "epsilon"),
    "sd2": _Family("cond_stage_model.model.", "gelu", "!", None, "v_prediction"),
}

_LABELS = {"sd1": "SD 1.x", "sd2": "SD 2.x"}

# SD 1.5's scheduler_config.json; SD 2.x differs only in prediction_type. clip_sample is not PNDM's,
# but other schedulers built from this config read it (DDIM's default, True, clips x0 to [-1, 1]).
_SCHEDULER_CONFIG = {
    "_class_name": "PNDMScheduler",
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "num_train_timesteps": 1000,
    "skip_prk_steps": True,
    "set_alpha_to_one": False,
    "steps_offset": 1,
    "timestep_spacing": "leading",
    "trained_betas": None,
    "clip_sample": False,
}
_V_PARAMETERIZATION = re.compile(r"""^\s*parameterization:\s*["']?v["']?\s*(#.*)?$""", re.MULTILINE)


def load_single_file(path: Path, *, dtype: torch.dtype, allow_pickle: bool) -> dict:
    """Components of a single-file SD 1.x / 2.x checkpoint (original LDM/CompVis key layout).

    Args:
        path: a ``.safetensors`` file, or a pickle (``.ckpt``/``.pt``/``.pth``/``.bin``).
        dtype: the dtype of the returned networks.
        allow_pickle: read pickle files (through torch's weights-only loader); else refuse them.
    Returns:
        ``tokenizer``, ``text_encoder``, ``unet``, ``vae`` (on CPU, in ``dtype``) and
        ``scheduler_config`` (a diffusers scheduler config dict with ``_class_name``).
    """
    state = read_state_dict(path, allow_pickle=allow_pickle)
    return components_from_state_dict(state, path=path, dtype=dtype)


def components_from_state_dict(
    state: dict[str, torch.Tensor], *, path: Path, dtype: torch.dtype
) -> dict:
    """``load_single_file``'s components from an already read LDM state dict.

    ``path`` names the checkpoint in errors and locates the YAML beside it.
    """
    from transformers import CLIPTokenizer

    from sdgen.models.bundled import CLIP_TOKENIZER_DIR

    name = detect_family(state, path)
    family = _FAMILIES[name]
    prediction_type = _prediction_type(path, family)
    # 768-px latents for SD 2.x v-prediction (2.1 768), 512-px otherwise
    sample_size = 96 if name == "sd2" and prediction_type == "v_prediction" else 64
    pad = {"pad_token": family.pad_token} if family.pad_token else {}
    try:
        networks = {
            "text_encoder": _load_text_encoder(state, name, path, dtype),
            "unet": _load_unet(state, name, sample_size, path, dtype),
            "vae": _load_vae(state, sample_size, path, dtype),
        }
    except (KeyError, ValueError) as err:  # a tensor SD has is absent, or a layout SD's is not
        reason = f"it has no {err.args[0]}" if isinstance(err, KeyError) else str(err)
        raise SdgenError(
            f"model: {path} looks like {_LABELS[name]} but its tensors do not form one: {reason}"
        ) from err
    return {
        "tokenizer": CLIPTokenizer.from_pretrained(CLIP_TOKENIZER_DIR, **pad),
        **networks,
        "scheduler_config": {**_SCHEDULER_CONFIG, "prediction_type": prediction_type},
    }


def read_state_dict(path: Path, *, allow_pickle: bool) -> dict[str, torch.Tensor]:
    """All tensors of a checkpoint file; pickle files only when allowed, and never running code."""
    if not is_pickle(path):
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(path)
        except SafetensorError as err:
            raise SdgenError(f"model: {path} is not a readable .safetensors file ({err})") from err
    if not allow_pickle:
        refuse_pickle(path)
    try:
        state = load_pickle_state_dict(path)
    except pickle.UnpicklingError as err:
        raise SdgenError(
            f"model: {path} holds objects other than tensors, which could run code when loaded; "
            "torch's weights-only loader refused it and sdgen will not load it"
        ) from err
    except (RuntimeError, KeyError, EOFError, ValueError, AttributeError) as err:
        reason = f"{type(err).__name__}: {err}"
        raise SdgenError(f"model: {path} is not a readable checkpoint ({reason})") from err
    if not isinstance(state, dict):
        raise SdgenError(f"model: {path} holds a {type(state).__name__}, not a state dict")
    return state


def detect_family(state: dict[str, torch.Tensor], path: Path) -> str:
    """``sd1`` or ``sd2`` from the text encoder's key layout; anything else is refused."""
    from diffusers.loaders.single_file_utils import (
        infer_diffusers_model_type,
        is_clip_model,
        is_open_clip_model,
    )

    has_networks = any(k.startswith(UNET) for k in state) and any(k.startswith(VAE) for k in state)
    if has_networks and is_clip_model(state):
        return "sd1"
    if has_networks and is_open_clip_model(state):
        return "sd2"
    try:
        kind = infer_diffusers_model_type(state)
    except (KeyError, ValueError, IndexError):
        kind = "v1"
    # infer_diffusers_model_type falls back to "v1" for anything it does not recognise
    found = f"a {kind!r} checkpoint" if kind not in ("v1", "v2") else _sample_keys(state)
    raise ModelNotFound(
        f"model: {path} is not an SD 1.x/2.x checkpoint: found {found}; supported are single files "
        f"in the original LDM layout ({UNET}*, {VAE}*, and cond_stage_model.transformer.* for "
        "SD 1.x or cond_stage_model.model.* for SD 2.x)"
    )


def _sample_keys(state: dict) -> str:
    """A short description of a state dict's keys, for error messages."""
    keys = sorted(state)
    return f"{len(keys)} tensors such as {', '.join(keys[:3]) or 'none'}"


def _prediction_type(path: Path, family: _Family) -> str:
    """v_prediction or epsilon: the YAML beside the checkpoint if any, else the family default."""
    yaml = path.with_suffix(".yaml")
    if not yaml.is_file():
        return family.default_prediction
    return "v_prediction" if _V_PARAMETERIZATION.search(yaml.read_text()) else "epsilon"


def _count(state: dict, prefix: str) -> int:
    """How many numbered children ``prefix{i}.`` exist (one more than the largest i)."""
    pattern = re.compile(re.escape(prefix) + r"(\d+)\.")
    found = [int(m.group(1)) for key in state if (m := pattern.match(key))]
    return max(found) + 1 if found else 0


def _norm_groups(width: int) -> int:
    """GroupNorm's group count, which no tensor records (see the module docstring)."""
    return 32 if width >= _REAL_MIN_WIDTH else 8


def unet_config(state: dict, family_name: str, sample_size: int) -> dict:
    """A diffusers ``UNet2DConditionModel`` config inferred from LDM tensor shapes."""
    family = _FAMILIES[family_name]
    levels = (
        sum(k.startswith(UNET + "input_blocks.") and k.endswith(".0.op.weight") for k in state) + 1
    )
    # input_blocks: conv_in, then per level `layers` resnets (+attention) and a downsampler but last
    layers, rest = divmod(_count(state, UNET + "input_blocks.") - levels, levels)
    if rest or layers < 1:
        raise ValueError(f"its UNet has {levels} levels and {layers} layers per level")
    first = [f"{UNET}input_blocks.{1 + level * (layers + 1)}." for level in range(levels)]
    channels = [state[block + "0.out_layers.3.weight"].shape[0] for block in first]
    attends = [block + "1.proj_in.weight" in state for block in first]
    attention = first[attends.index(True)] + "1." if any(attends) else UNET + "middle_block.1."
    if family.unet_heads is not None:
        heads: int | list[int] = family.unet_heads
    else:
        width = 64 if channels[0] >= _REAL_MIN_WIDTH else 16
        heads = [c // width for c in channels]  # diffusers' "attention_head_dim" counts heads
    return {
        "sample_size": sample_size,
        "in_channels": state[UNET + "input_blocks.0.0.weight"].shape[1],
        "out_channels": state[UNET + "out.2.weight"].shape[0],
        "down_block_types": ["CrossAttnDownBlock2D" if a else "DownBlock2D" for a in attends],
        "up_block_types": ["CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attends)],
        "block_out_channels": channels,
        "layers_per_block": layers,
        "cross_attention_dim": state[attention + "transformer_blocks.0.attn2.to_k.weight"].shape[1],
        "attention_head_dim": heads,
        # SD 2.x projects in and out of its transformers with Linear layers, SD 1.x with 1x1 convs
        "use_linear_projection": state[attention + "proj_in.weight"].dim() == 2,
        "transformer_layers_per_block": _count(state, attention + "transformer_blocks."),
        "norm_num_groups": _norm_groups(channels[0]),
        # as SD 2.1's own config: attention scores in fp32 against fp16 overflow (no-op in fp32)
        "upcast_attention": family_name == "sd2",
    }


def vae_config(state: dict, sample_size: int) -> dict:
    """A diffusers ``AutoencoderKL`` config inferred from LDM tensor shapes."""
    encoder = VAE + "encoder."
    levels = _count(state, encoder + "down.")
    channels = [state[f"{encoder}down.{i}.block.0.conv2.weight"].shape[0] for i in range(levels)]
    return {
        "in_channels": state[encoder + "conv_in.weight"].shape[1],
        "out_channels": state[VAE + "decoder.conv_out.weight"].shape[0],
        "down_block_types": ["DownEncoderBlock2D"] * levels,
        "up_block_types": ["UpDecoderBlock2D"] * levels,
        "block_out_channels": channels,
        "layers_per_block": _count(state, encoder + "down.0.block."),
        "latent_channels": state[VAE + "decoder.conv_in.weight"].shape[1],
        "norm_num_groups": _norm_groups(channels[0]),
        "mid_block_add_attention": any(k.startswith(encoder + "mid.attn_1.") for k in state),
        "sample_size": sample_size * 2 ** (levels - 1),  # image pixels: one halving per level
        "scaling_factor": 0.18215,  # LDM's scale_factor for SD 1.x and 2.x
    }


def text_config(state: dict, family_name: str) -> CLIPTextConfig:
    """A transformers ``CLIPTextConfig`` inferred from the text encoder's tensor shapes."""
    from transformers import CLIPTextConfig

    family = _FAMILIES[family_name]
    prefix = family.text_prefix
    if family_name == "sd1":  # transformers' own layout
        vocab, hidden = state[prefix + "embeddings.token_embedding.weight"].shape
        positions = state[prefix + "embeddings.position_embedding.weight"].shape[0]
        layers = _count(state, prefix + "encoder.layers.")
        intermediate = state[prefix + "encoder.layers.0.mlp.fc1.weight"].shape[0]
    else:  # OpenCLIP; SD 2.x conditions on the penultimate layer, so the last one is dropped
        vocab, hidden = state[prefix + "token_embedding.weight"].shape
        positions = state[prefix + "positional_embedding"].shape[0]
        layers = _count(state, prefix + "transformer.resblocks.") - 1
        intermediate = state[prefix + "transformer.resblocks.0.mlp.c_fc.weight"].shape[0]
    return CLIPTextConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_hidden_layers=layers,
        num_attention_heads=hidden // (64 if hidden >= _REAL_MIN_WIDTH else 8),
        max_position_embeddings=positions,
        hidden_act=family.hidden_act,
    )


def _load_unet(
    state: dict, name: str, sample_size: int, path: Path, dtype: torch.dtype
) -> torch.nn.Module:
    """The UNet, built from its inferred config and loaded strictly."""
    from diffusers import UNet2DConditionModel
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint

    config = unet_config(state, name, sample_size)
    model = _empty(lambda: UNet2DConditionModel(**config))
    return _load_strict(model, convert_ldm_unet_checkpoint(state, config), "unet", path, dtype)


def _load_vae(
    state: dict, unet_sample_size: int, path: Path, dtype: torch.dtype
) -> torch.nn.Module:
    """The VAE, built from its inferred config and loaded strictly."""
    from diffusers import AutoencoderKL
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

    config = vae_config(state, unet_sample_size)
    model = _empty(lambda: AutoencoderKL(**config))
    return _load_strict(model, convert_ldm_vae_checkpoint(state, config), "vae", path, dtype)


def _load_text_encoder(state: dict, name: str, path: Path, dtype: torch.dtype) -> torch.nn.Module:
    """The text encoder (CLIP ViT-L for SD 1.x, OpenCLIP ViT-H less its last layer for SD 2.x)."""
    from diffusers.loaders.single_file_utils import (
        convert_ldm_clip_checkpoint,
        convert_open_clip_checkpoint,
    )
    from transformers import CLIPTextModel

    config = text_config(state, name)
    model = _empty(lambda: CLIPTextModel(config))
    if name == "sd1":
        # older transformers saved position_ids (an arange(77)) with the weights; it is rebuilt
        weights = {
            k: v for k, v in convert_ldm_clip_checkpoint(state).items() if "position_ids" not in k
        }
    else:
        # drop the last resblock as diffusers does (its list stops at SD 2.x's resblocks.23)
        prefix = _FAMILIES[name].text_prefix
        last = f"{prefix}transformer.resblocks.{config.num_hidden_layers}."
        kept = {k: v for k, v in state.items() if not k.startswith(last)}
        weights = convert_open_clip_checkpoint(model, kept, prefix=prefix)
        weights.pop("text_projection.weight", None)  # CLIPTextModel has no projection
    if not hasattr(model, "text_model"):
        # transformers >= 5.6 flattened CLIPTextModel: its keys no longer start with "text_model."
        weights = {k.removeprefix("text_model."): v for k, v in weights.items()}
    return _load_strict(model, weights, "text_encoder", path, dtype)


def _empty(make: Callable[[], torch.nn.Module]) -> torch.nn.Module:
    """``make()`` with its parameters on the meta device: no time spent on random weights."""
    from accelerate import init_empty_weights

    with init_empty_weights():  # buffers stay real: a checkpoint need not carry them
        return make()


def _load_strict(
    model: torch.nn.Module, weights: dict, name: str, path: Path, dtype: torch.dtype
) -> torch.nn.Module:
    """``model`` holding ``weights`` (none missing, none left over), in ``dtype``."""
    expected = set(model.state_dict())
    missing, unexpected = sorted(expected - set(weights)), sorted(set(weights) - expected)
    if missing or unexpected:
        raise SdgenError(
            f"model: {path}: the {name} weights do not fit the layout inferred from them "
            f"(missing {len(missing)}: {', '.join(missing[:3]) or '-'}; "
            f"unexpected {len(unexpected)}: {', '.join(unexpected[:3]) or '-'})"
        )
    # contiguous: the VAE's attention weights arrive as [:, :, 0, 0] views of 1x1 convs
    weights = {
        k: (v.to(dtype) if v.is_floating_point() else v).contiguous() for k, v in weights.items()
    }
    try:
        model.load_state_dict(weights, strict=True, assign=True)
    except RuntimeError as err:  # a shape that disagrees with the inferred config
        reason = str(err).strip().splitlines()[-1].strip()
        raise SdgenError(f"model: {path}: the {name} weights do not fit: {reason}") from err
    if any(b.is_floating_point() and b.dtype != dtype for b in model.buffers()):
        model.to(dtype)  # the parameters are in dtype already; none of SD's networks gets here
    return model.eval()
