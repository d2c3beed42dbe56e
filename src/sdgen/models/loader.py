"""``load_model``: a local diffusers folder, a Hugging Face hub id, or a single checkpoint file."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import torch

from sdgen.errors import ModelNotFound, SdgenError
from sdgen.models.building import BUILD_LOCK
from sdgen.models.bundled import BUNDLED_MODELS, MINIATURE_MODEL
from sdgen.models.devices import resolve_device, resolve_dtype
from sdgen.models.fast_path import apply_fast_path, fast_path_parts
from sdgen.models.hub import is_hub_id
from sdgen.models.loaded import LoadedModel
from sdgen.models.lora import LoraLibrary, load_lora_library
from sdgen.models.safety import is_pickle, refuse_pickle
from sdgen.models.textual_inversion import TextualInversions, load_textual_inversions

log = logging.getLogger(__name__)

DEFAULT_MODEL = MINIATURE_MODEL
NETWORKS = ("unet", "vae", "text_encoder")  # the folders whose weights are loaded
SINGLE_FILE_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".pth", ".bin")
# model_index.json of a diffusers StableDiffusionPipeline folder without a safety checker: what
# sdgen writes for the models it makes (the miniature model, the tests' tiny models).
STABLE_DIFFUSION_MODEL_INDEX = {
    "_class_name": "StableDiffusionPipeline",
    "_diffusers_version": "0.30.0",
    "feature_extractor": [None, None],
    "requires_safety_checker": False,
    "safety_checker": [None, None],
    "scheduler": ["diffusers", "PNDMScheduler"],
    "text_encoder": ["transformers", "CLIPTextModel"],
    "tokenizer": ["transformers", "CLIPTokenizer"],
    "unet": ["diffusers", "UNet2DConditionModel"],
    "vae": ["diffusers", "AutoencoderKL"],
}


def load_model(
    model: str | os.PathLike | None = None,
    *,
    device: str = "auto",
    precision: str = "auto",
    token: str | None = None,
    allow_pickle: bool = False,
    fast_path: str = "auto",
    embeddings: str | os.PathLike | None = None,
    loras: str | os.PathLike | None = None,
) -> LoadedModel:
    """Load a Stable Diffusion 1.x/2.x model for generation.

    Args:
        model: a diffusers folder (with model_index.json), a single ``.safetensors`` checkpoint,
            a hub id such as ``stable-diffusion-v1-5/stable-diffusion-v1-5``, or the name of a
            model sdgen ships. ``None`` is the default: sdgen's own miniature model.
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
        precision: ``auto`` (fp16 on CUDA, fp32 on CPU), ``fp32``, ``fp16`` or ``bf16``.
        token: Hugging Face token for gated models; defaults to ``HF_TOKEN``.
        allow_pickle: load ``.ckpt``/``.bin`` files (through torch's weights-only loader).
        fast_path: ``auto`` (on for CUDA), ``on`` or ``off``: channels-last, fused QKV
            projections, ``torch.compile`` and CUDA graphs (``sdgen.models.fast_path``).
        embeddings: a folder of textual inversion embeddings that prompts name by file name,
            as A1111's embeddings folder (``sdgen.models.textual_inversion``); pickles only
            with ``allow_pickle``. Files that do not fit the model are skipped and listed.
        loras: a folder of LoRA ``.safetensors`` files that prompts name as
            ``<lora:file name:weight>``, as A1111's Lora folder (``sdgen.models.lora``).
    Returns:
        The loaded components, on ``device`` in the chosen precision, in eval mode.
    """
    name = str(model) if model is not None else DEFAULT_MODEL
    target = resolve_device(device)
    dtype = resolve_dtype(precision, target)
    fast = fast_path_parts(fast_path, target, loras=loras is not None)  # checked before loading
    if embeddings is not None and not Path(embeddings).is_dir():
        raise SdgenError(f"embeddings: {embeddings} is not a folder of embedding files")
    if loras is not None and not Path(loras).is_dir():
        raise SdgenError(f"lora_dir: {loras} is not a folder of LoRA files")
    kind, path = check_model_source(name, allow_pickle=allow_pickle)
    if kind == "hub":
        from sdgen.models.hub import download_model

        path = download_model(name, token=token, allow_pickle=allow_pickle)
    with BUILD_LOCK:  # not two threads at once: sdgen.models.building
        if kind == "file":
            from sdgen.models.single_file import load_single_file

            components = load_single_file(path, dtype=dtype, allow_pickle=allow_pickle)
        else:
            components = load_folder(path, dtype=dtype, allow_pickle=allow_pickle)
    for network in NETWORKS:
        components[network].to(target).eval().requires_grad_(False)
    apply_fast_path(components["unet"], components["vae"], fast)
    inversions = TextualInversions.none()
    if embeddings is not None:
        inversions = load_textual_inversions(
            embeddings,
            components["text_encoder"].get_input_embeddings().embedding_dim,
            components["tokenizer"].model_max_length - 2,
            allow_pickle=allow_pickle,
            max_value=torch.finfo(dtype).max,  # 65,504 in fp16
        )
    library = LoraLibrary.none()
    if loras is not None:
        networks = {"unet": components["unet"], "text_encoder": components["text_encoder"]}
        library = load_lora_library(loras, networks)
    return LoadedModel(
        name=name,
        source=path,
        device=target,
        dtype=dtype,
        fast_path=fast,
        textual_inversions=inversions,
        loras=library,
        **components,
    )


def check_model_source(name: str, *, allow_pickle: bool = False) -> tuple[str, Path]:
    """What ``name`` is, checked without reading weights: ("file" | "folder" | "hub", path).

    A file must have a checkpoint's suffix; a folder must have the layout ``load_folder``
    reads (model_index.json, a folder per component, safetensors weights unless
    ``allow_pickle``). A hub id is only recognised: fetching it is ``load_model``'s work.
    Raises ModelNotFound (PickleRefused for pickle-only weights) naming ``model``.
    """
    path = BUNDLED_MODELS.get(name) or Path(name).expanduser()
    if path.is_file():
        if path.suffix.lower() not in SINGLE_FILE_SUFFIXES:
            raise ModelNotFound(
                f"model: {path} is not a checkpoint; "
                f"expected one of {', '.join(SINGLE_FILE_SUFFIXES)}"
            )
        if not allow_pickle and is_pickle(path):
            refuse_pickle(path)
        return "file", path
    if path.is_dir():
        _folder_variants(path, allow_pickle)
        return "folder", path
    if is_hub_id(name):
        return "hub", path
    raise ModelNotFound(f"model: {name!r} is neither a file, a folder, nor a hub id (owner/name)")


def load_folder(folder: Path, *, dtype: torch.dtype, allow_pickle: bool) -> dict:
    """The components of a diffusers-format folder (model_index.json and one folder each)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    variant = _folder_variants(folder, allow_pickle)
    use_safetensors = None if allow_pickle else True
    return {
        "tokenizer": CLIPTokenizer.from_pretrained(folder / "tokenizer"),
        "text_encoder": CLIPTextModel.from_pretrained(
            folder / "text_encoder",
            dtype=dtype,
            use_safetensors=use_safetensors,
            variant=variant["text_encoder"],
        ),
        "unet": UNet2DConditionModel.from_pretrained(
            folder / "unet",
            torch_dtype=dtype,
            use_safetensors=use_safetensors,
            variant=variant["unet"],
        ),
        "vae": AutoencoderKL.from_pretrained(
            folder / "vae",
            torch_dtype=dtype,
            use_safetensors=use_safetensors,
            variant=variant["vae"],
        ),
        "scheduler_config": json.loads(
            (folder / "scheduler" / "scheduler_config.json").read_text()
        ),
    }


def _folder_variants(folder: Path, allow_pickle: bool) -> dict[str, str | None]:
    """Check a diffusers folder's layout; the weights variant of each network (None: plain)."""
    if not (folder / "model_index.json").is_file():
        raise ModelNotFound(
            f"model: {folder} is not a diffusers model folder (it has no model_index.json)"
        )
    for sub in (*NETWORKS, "tokenizer", "scheduler"):
        if not (folder / sub).is_dir():
            raise ModelNotFound(f"model: {folder} has no {sub}/ folder")
    return {sub: _weights_variant(folder / sub, allow_pickle) for sub in NETWORKS}


def _weights_variant(component: Path, allow_pickle: bool) -> str | None:
    """Which weights to load from a component folder: None (plain) or a variant such as fp16.

    Refuses a folder that has only pickle weights unless ``allow_pickle``.
    """
    files = [p for p in component.iterdir() if p.suffix in (".safetensors", ".bin")]
    safe = [p for p in files if p.suffix == ".safetensors"]
    usable = files if allow_pickle else safe
    if not usable:
        pickles = [p for p in files if is_pickle(p)]
        if pickles:
            refuse_pickle(pickles[0])
        raise ModelNotFound(f"model: {component} holds no weights (.safetensors)")
    # model.safetensors / diffusion_pytorch_model.safetensors have one dot; a variant has two.
    plain = [p for p in usable if len(p.name.split(".")) == 2]
    if plain:
        return None
    variant = usable[0].name.split(".")[-2]
    log.info("%s has only %s weights; loading those", component, variant)
    return variant


__all__ = ["DEFAULT_MODEL", "check_model_source", "load_model", "load_folder"]
