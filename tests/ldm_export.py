"""Write a diffusers-format SD folder as an original LDM (CompVis) single-file checkpoint.

The inverse of diffusers' single-file conversion, for tests: it lets the loader be checked against
the folder it came from. The key maps follow diffusers' scripts/convert_diffusers_to_original_
stable_diffusion.py, with the block counts read from the configs instead of hard-coded to SD's 4x2,
and with what real checkpoints also carry: SD 1.x's ``position_ids`` buffer, and for SD 2.x the
OpenCLIP layout (fused q/k/v, one more transformer layer than diffusers keeps, ln_final,
text_projection, logit_scale).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

# ResNet parts: diffusers name -> LDM name
UNET_RESNET = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "time_emb_proj": "emb_layers.1",
    "conv_shortcut": "skip_connection",
}
UNET_TOP = {
    "time_embedding.linear_1.": "time_embed.0.",
    "time_embedding.linear_2.": "time_embed.2.",
    "conv_in.": "input_blocks.0.0.",
    "conv_norm_out.": "out.0.",
    "conv_out.": "out.2.",
}
VAE_RESNET = {"conv_shortcut": "nin_shortcut"}
VAE_ATTENTION = {
    "group_norm": "norm",
    "to_q": "q",
    "to_k": "k",
    "to_v": "v",
    "to_out.0": "proj_out",
}
OPENCLIP_LAYER = {
    "layer_norm1": "ln_1",
    "layer_norm2": "ln_2",
    "self_attn.out_proj": "attn.out_proj",
    "mlp.fc1": "mlp.c_fc",
    "mlp.fc2": "mlp.c_proj",
}


def export_single_file(folder: Path, out: Path) -> Path:
    """Write ``folder`` (unet/, vae/, text_encoder/) to ``out`` in the LDM layout; return ``out``.

    ``.ckpt`` is written with ``torch.save`` as ``{"state_dict": ...}``, like the original
    checkpoints; anything else as safetensors.
    """
    parts = {name: _weights(folder / name) for name in ("unet", "vae", "text_encoder")}
    state = {k: v.contiguous() for k, v in ldm_state_dict(**parts).items()}
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix == ".ckpt":
        torch.save({"state_dict": state}, out)
    else:
        save_file(state, out)
    return out


def ldm_state_dict(*, unet: tuple, vae: tuple, text_encoder: tuple) -> dict:
    """One LDM state dict from each network's diffusers ``(state_dict, config)``."""
    return {
        **_prefixed("model.diffusion_model.", _unet_to_ldm(*unet)),
        **_prefixed("first_stage_model.", _vae_to_ldm(*vae)),
        **_text_to_ldm(*text_encoder),
        "alphas_cumprod": torch.linspace(0.999, 0.005, 1000),  # a DDPM buffer real files carry
    }


def _weights(component: Path) -> tuple[dict, dict]:
    """A component folder's safetensors weights and its config."""
    weights = {}
    for file in sorted(component.glob("*.safetensors")):
        weights.update(load_file(file))
    return weights, json.loads((component / "config.json").read_text())


def _prefixed(prefix: str, state: dict) -> dict:
    return {prefix + k: v for k, v in state.items()}


def _rename(state: dict, prefixes: dict[str, str], inner: dict[str, dict[str, str]]) -> dict:
    """Swap the longest matching prefix of each key; then, inside ``resnets``/``attentions``
    prefixes, the part name after it through ``inner[kind]``."""
    ordered = sorted(prefixes, key=len, reverse=True)
    renamed = {}
    for key, value in state.items():
        old = next((p for p in ordered if key.startswith(p)), "")
        rest = key[len(old) :]
        parts = next((names for kind, names in inner.items() if f".{kind}." in old), {})
        part = next((name for name in parts if rest.startswith(name + ".")), None)
        if part is not None:
            rest = parts[part] + rest[len(part) :]
        renamed[prefixes.get(old, "") + rest] = value
    return renamed


def _unet_to_ldm(state: dict, config: dict) -> dict:
    """diffusers UNet2DConditionModel keys -> LDM ``openaimodel.UNetModel`` keys."""
    layers, levels = config["layers_per_block"], len(config["block_out_channels"])
    prefixes = dict(UNET_TOP)
    for i in range(levels):
        for j in range(
            layers
        ):  # input_blocks: conv_in, then (layers resnets, downsampler) per level
            ldm = (layers + 1) * i + j + 1
            prefixes[f"down_blocks.{i}.resnets.{j}."] = f"input_blocks.{ldm}.0."
            prefixes[f"down_blocks.{i}.attentions.{j}."] = f"input_blocks.{ldm}.1."
        prefixes[f"down_blocks.{i}.downsamplers.0.conv."] = (
            f"input_blocks.{(layers + 1) * (i + 1)}.0.op."
        )
        for j in range(layers + 1):  # output_blocks: layers + 1 per level, upsampler on the last
            prefixes[f"up_blocks.{i}.resnets.{j}."] = f"output_blocks.{(layers + 1) * i + j}.0."
            prefixes[f"up_blocks.{i}.attentions.{j}."] = f"output_blocks.{(layers + 1) * i + j}.1."
        attends = config["up_block_types"][i].startswith("CrossAttn")
        last = (layers + 1) * i + layers
        prefixes[f"up_blocks.{i}.upsamplers.0."] = f"output_blocks.{last}.{2 if attends else 1}."
    prefixes["mid_block.attentions.0."] = "middle_block.1."
    for j in range(2):
        prefixes[f"mid_block.resnets.{j}."] = f"middle_block.{2 * j}."
    return _rename(state, prefixes, {"resnets": UNET_RESNET})


def _vae_to_ldm(state: dict, config: dict) -> dict:
    """diffusers AutoencoderKL keys -> LDM ``AutoencoderKL`` keys (decoder levels reversed)."""
    levels = len(config["block_out_channels"])
    prefixes = {}
    for i in range(levels):
        prefixes[f"encoder.down_blocks.{i}.downsamplers.0."] = f"encoder.down.{i}.downsample."
        prefixes[f"decoder.up_blocks.{i}.upsamplers.0."] = f"decoder.up.{levels - 1 - i}.upsample."
        for j in range(config["layers_per_block"] + 1):
            prefixes[f"encoder.down_blocks.{i}.resnets.{j}."] = f"encoder.down.{i}.block.{j}."
            prefixes[f"decoder.up_blocks.{i}.resnets.{j}."] = (
                f"decoder.up.{levels - 1 - i}.block.{j}."
            )
    for part in ("encoder", "decoder"):
        prefixes[f"{part}.conv_norm_out."] = f"{part}.norm_out."
        prefixes[f"{part}.mid_block.attentions.0."] = f"{part}.mid.attn_1."
        for j in range(2):
            prefixes[f"{part}.mid_block.resnets.{j}."] = f"{part}.mid.block_{j + 1}."
    renamed = _rename(state, prefixes, {"resnets": VAE_RESNET, "attentions": VAE_ATTENTION})
    # modern diffusers' VAE attention is Linear (to_q ... to_out.0); LDM's is 1x1 convs
    return {
        k: v[:, :, None, None] if ".mid.attn_1." in k and v.dim() == 2 else v
        for k, v in renamed.items()
    }


def _text_to_ldm(state: dict, config: dict) -> dict:
    """The text encoder in SD 1.x's (transformers) or SD 2.x's (OpenCLIP) layout, by activation."""
    state = {
        k.removeprefix("text_model."): v for k, v in state.items()
    }  # either transformers layout
    if config["hidden_act"] == "quick_gelu":  # CLIP ViT-L: SD 1.x
        state["embeddings.position_ids"] = torch.arange(config["max_position_embeddings"])[None]
        return _prefixed("cond_stage_model.transformer.text_model.", state)
    return _prefixed("cond_stage_model.model.", _openclip(state, config))


def _openclip(state: dict, config: dict) -> dict:
    """transformers CLIPTextModel keys -> OpenCLIP text tower keys, plus the layer SD 2.x skips."""
    hidden, layers = config["hidden_size"], config["num_hidden_layers"]
    clip = {
        "token_embedding.weight": state["embeddings.token_embedding.weight"],
        "positional_embedding": state["embeddings.position_embedding.weight"],
        "ln_final.weight": state["final_layer_norm.weight"],
        "ln_final.bias": state["final_layer_norm.bias"],
    }
    for i in range(layers):
        layer = f"encoder.layers.{i}."
        block = f"transformer.resblocks.{i}."
        for part in ("weight", "bias"):
            qkv = [state[f"{layer}self_attn.{p}_proj.{part}"] for p in "qkv"]
            clip[f"{block}attn.in_proj_{part}"] = torch.cat(qkv)  # OpenCLIP fuses q, k, v
            for old, new in OPENCLIP_LAYER.items():
                clip[f"{block}{new}.{part}"] = state[f"{layer}{old}.{part}"]
    # the final layer SD 2.x never uses: random, so a loader that kept it would be caught
    generator = torch.Generator().manual_seed(0)
    last = {
        k.replace(f"resblocks.{layers - 1}.", f"resblocks.{layers}."): v
        for k, v in clip.items()
        if k.startswith(f"transformer.resblocks.{layers - 1}.")
    }
    clip.update({k: torch.randn(v.shape, generator=generator) for k, v in last.items()})
    clip["text_projection"] = torch.randn(hidden, hidden, generator=generator)
    clip["logit_scale"] = torch.tensor(4.6052)
    return clip
