"""LoRA networks: low-rank changes to a model's weights that a prompt names as
``<lora:name:weight>``, read from a folder as A1111 reads its ``models/Lora`` folder.

Each ``.safetensors`` file in the folder (subfolders too) is one LoRA, named after its file.
Two key layouts are read, the ones SD 1.x/2.x LoRAs are published in:

- kohya's (A1111's, civitai's): ``lora_unet_<module path with _>.lora_down.weight``,
  ``.lora_up.weight`` and ``.alpha``; ``lora_te_<path>`` for the text encoder. As A1111 does,
  a key is matched to a layer by writing the layer's dotted path with underscores.
- diffusers' and peft's: ``unet.<path>.lora_A.weight`` / ``.lora_B.weight`` (or
  ``.lora.down.weight`` / ``.lora.up.weight``), ``text_encoder.<path>...``; without an alpha
  the scale is 1, as diffusers' ``load_lora_weights`` reads them.

Linear layers and convolutions (LoCon) are read; a layer's change is
``weight * alpha / rank * up @ down``. Files of other network kinds (LoHa, LoKr, DoRA, full
diffs), of another model (layers of other shapes, or none that match) or that cannot be read
are refused with the reason when a prompt names them, and listed with it. A file is read when
a prompt first names it and kept (``MAX_LOADED``, the least recently used dropped).
``sdgen.models.lora_weights`` merges the named LoRAs into the weights while a request runs.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import threading
from collections import OrderedDict
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch

from sdgen.errors import InvalidRequest, SdgenError
from sdgen.models.lora_weights import LoraSet, LoraWeights

log = logging.getLogger(__name__)

MAX_FILES = 10_000
MAX_LOADED = 16  # LoRAs kept read (tens of MB each for SD 1.x)
COMPONENTS = ("unet", "text_encoder")
# Key suffixes: (down, up) of each layout
_KOHYA = (".lora_down.weight", ".lora_up.weight")
_PEFT = (".lora_A.weight", ".lora_B.weight")
_DIFFUSERS = (".lora.down.weight", ".lora.up.weight")
# What other network kinds' keys contain, and their names
_OTHER_KINDS = {
    "hada_": "a LoHa network",
    "lokr_": "a LoKr network",
    "dora_scale": "a DoRA network",
    "lora_mid": "a LoCon network with a Tucker middle (lora_mid)",
    ".diff": "a full weight difference",
    "oft_": "an OFT network",
    "lora_magnitude_vector": "a DoRA network",
    ".w_norm": "a LyCORIS network with norm layers",
    ".b_norm": "a LyCORIS network with norm layers",
}


@dataclass(frozen=True)
class LoraLayer:
    """One layer's low-rank change: ``weight += multiplier * scale * up @ down``."""

    component: str  # "unet" or "text_encoder"
    path: str  # the layer's dotted path in that network
    shape: tuple[int, ...]  # the layer's weight: (out, in) or (out, in, kh, kw)
    down: torch.Tensor  # (rank, in) or (rank, in, kh, kw), fp32 on the CPU
    up: torch.Tensor  # (out, rank) or (out, rank, 1, 1)
    scale: float  # alpha / rank

    def delta(self, device: torch.device) -> torch.Tensor:
        """The change at multiplier 1 in the weight's shape, fp32 on ``device``."""
        up, down = self.up.to(device).flatten(1), self.down.to(device).flatten(1)
        return ((up @ down) * self.scale).reshape(self.shape)  # (out, rank) @ (rank, in...)


@dataclass(frozen=True, eq=False)
class Lora:
    """A LoRA read from its file, matched to a model's layers."""

    name: str
    layers: tuple[LoraLayer, ...]
    short_hash: str  # A1111's, as its ``Lora hashes`` record it

    def touches(self, component: str) -> bool:
        return any(layer.component == component for layer in self.layers)


class LoraLibrary:
    """The LoRA files of a folder that a model's prompts can name, read on first use."""

    def __init__(self, folder: Path | None, files: dict[str, Path], networks: dict):
        self.folder = folder
        self.files = files  # name -> file
        self._networks = networks  # "unet"/"text_encoder" -> the model's module
        self._loaded: OrderedDict[str, Lora] = OrderedDict()
        self._failed: dict[str, str] = {}  # name -> why it cannot serve the model
        self._lock = threading.Lock()
        self.weights = LoraWeights(networks)  # which LoRAs the model's weights hold now

    @classmethod
    def none(cls) -> LoraLibrary:
        return cls(None, {}, {})

    @property
    def names(self) -> list[str]:
        return sorted(self.files, key=str.lower)

    def get(self, field: str, name: str) -> Lora:
        """The LoRA ``name``, read now if it is not yet.

        Raises:
            InvalidRequest: no such LoRA, or its file cannot serve the model, naming ``field``.
        """
        with self._lock:  # one read per file; requests name few LoRAs
            files = self.files
            if name in self._loaded:
                self._loaded.move_to_end(name)
                return self._loaded[name]
            if name in files and name not in self._failed:
                try:
                    lora = read_lora(name, files[name], self._networks)
                except _Refused as reason:
                    self._failed[name] = str(reason)
                else:
                    self._loaded[name] = lora
                    while len(self._loaded) > MAX_LOADED:
                        self._loaded.popitem(last=False)
                    return lora
            reason = self._failed.get(name)
        if reason is not None:
            allowed = f"a LoRA this model can use; {files[name].name} is {reason}"
        elif self.folder is None:
            allowed = "a LoRA from a LoRA folder, and none was given (--lora-dir)"
        else:
            listed = ", ".join(sorted(files, key=str.lower)[:50]) or "none"
            allowed = f"a LoRA of {self.folder}: {listed}"
        raise InvalidRequest(field, f"<lora:{name}>", allowed)

    def holding(self, loras: LoraSet):
        """A context in which the model's weights hold ``loras`` (``LoraWeights.holding``);
        nothing to hold for a model without a LoRA folder: its weights never change."""
        if self.folder is None:
            return nullcontext()
        return self.weights.holding(loras)

    def refresh(self) -> None:
        """Read the folder's file list again (A1111's ``refresh-loras``); files already read
        are read again when next named."""
        if self.folder is None:
            return
        files = lora_files(self.folder)
        with self._lock:
            self.files = files
            self._loaded.clear()
            self._failed.clear()

    @staticmethod
    def metadata(path: Path) -> dict:
        """The training metadata in a LoRA file's safetensors header (kohya's ``ss_*``), {}
        for none or an unreadable header."""
        metadata = _header(path).get("__metadata__", {})
        return metadata if isinstance(metadata, dict) else {}


def load_lora_library(folder: str | os.PathLike, networks: dict) -> LoraLibrary:
    """The LoRAs of ``folder`` for a model whose ``networks`` are {"unet": ..., "text_encoder":
    ...}; only the file names are read now.

    Raises:
        SdgenError: ``folder`` is not a folder.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise SdgenError(f"lora_dir: {folder} is not a folder of LoRA files")
    return LoraLibrary(folder, lora_files(folder), networks)


def lora_files(folder: Path) -> dict[str, Path]:
    """name -> file of the ``.safetensors`` files under ``folder``, through linked folders
    too, each real folder once; a name seen twice keeps its first file (sorted walk)."""
    files: dict[str, Path] = {}
    seen = set()
    for root, folders, names in os.walk(folder, followlinks=True):
        real = os.path.realpath(root)
        if real in seen:
            folders[:] = []
            continue
        seen.add(real)
        folders.sort()
        for name in sorted(names):
            path = Path(root) / name
            if path.suffix.lower() == ".safetensors" and path.is_file():
                if path.stem in files:
                    log.warning("LoRA %s: %s has the same name; skipped", path.stem, path)
                    continue
                files[path.stem] = path
                if len(files) >= MAX_FILES:
                    log.warning("LoRA folder %s: only the first %d files read", folder, MAX_FILES)
                    return files
    return files


class _Refused(Exception):
    """Why a file cannot serve the model."""


def read_lora(name: str, path: Path, networks: dict) -> Lora:
    """The LoRA in ``path``, its layers matched to ``networks``' (see the module's note)."""
    from safetensors.torch import load_file

    try:
        tensors = load_file(path)
    except Exception as err:  # noqa: BLE001 - any unreadable file is refused, named
        raise _Refused(f"not a safetensors file ({str(err).splitlines()[0][:200]})") from None
    for marker, kind in _OTHER_KINDS.items():
        if any(marker in key for key in tensors):
            raise _Refused(f"{kind}; sdgen reads LoRA (lora_down/lora_up, lora_A/lora_B)")
    try:
        layers, unmatched = _matched_layers(tensors, networks)
    except _Refused:
        raise
    except Exception as err:  # noqa: BLE001 - tensors of unexpected shapes or kinds
        raise _Refused(f"not a LoRA sdgen can read ({type(err).__name__}: {err})") from None
    if not layers:
        raise _Refused("a file without LoRA layers of this model (made for another model?)")
    if unmatched:
        log.warning("LoRA %s: %d layers not in this model, skipped", name, len(unmatched))
    return Lora(name, tuple(layers), _short_hash(path))


def _matched_layers(tensors: dict, networks: dict) -> tuple[list[LoraLayer], list[str]]:
    """The layers of ``tensors`` that name a layer of ``networks``, and the key stems that
    name none."""
    targets = _layer_names(networks)
    layers, unmatched = [], []
    for key, down in tensors.items():
        layout = next((pair for pair in (_KOHYA, _PEFT, _DIFFUSERS) if key.endswith(pair[0])), None)
        if layout is None:
            continue
        stem = key[: -len(layout[0])]
        up = tensors.get(stem + layout[1])
        target = targets.get(stem)
        if up is None or target is None:
            unmatched.append(stem)
            continue
        layers.append(_layer(stem, target, down, up, tensors.get(stem + ".alpha"), networks))
    return layers, unmatched


def _layer(stem: str, target: tuple[str, str], down, up, alpha, networks: dict) -> LoraLayer:
    component, path = target
    shape = _unfused_weight_shape(networks[component].get_submodule(path))
    if down.ndim not in (2, 4) or up.ndim != down.ndim or down.shape[0] < 1:
        raise _Refused(f"not a LoRA: {stem} is {tuple(up.shape)} @ {tuple(down.shape)}")
    rank = down.shape[0]
    if up.shape[1] != rank or up.shape[2:] not in ((), (1, 1)):
        raise _Refused(f"not a LoRA: {stem} is {tuple(up.shape)} @ {tuple(down.shape)}")
    inputs = int(torch.tensor(shape[1:]).prod())  # in (x kh x kw)
    if up.shape[0] != shape[0] or down[0].numel() != inputs:
        raise _Refused(
            f"made for another model: its {stem} changes a {tuple(up.shape[:1])} x "
            f"{tuple(down.shape[1:])} layer, this model's is {shape}"
        )
    if alpha is not None and alpha.numel() != 1:
        raise _Refused(f"not a LoRA: {stem}.alpha has {alpha.numel()} values, not one")
    scale = 1.0 if alpha is None else float(alpha) / rank
    finite = all(bool(torch.isfinite(t).all()) for t in (down, up)) and math.isfinite(scale)
    if not finite:
        raise _Refused(f"a LoRA whose {stem} is not finite")
    down, up = down.float().contiguous(), up.float().contiguous()
    return LoraLayer(component, path, shape, down, up, scale)


def _unfused_weight_shape(module: torch.nn.Module) -> tuple[int, ...]:
    """A linear or convolution layer's weight shape, also where the fast path fused it away
    (its weight emptied: ``sdgen.models.fast_path.drop_unfused_projections``)."""
    if isinstance(module, torch.nn.Linear):
        return (module.out_features, module.in_features)
    return (module.out_channels, module.in_channels // module.groups, *module.kernel_size)


def _layer_names(networks: dict) -> dict[str, tuple[str, str]]:
    """Every key stem that names a layer of ``networks``, in each layout -> (component, path)."""
    names: dict[str, tuple[str, str]] = {}
    for component in COMPONENTS:
        network = networks.get(component)
        if network is None:
            continue
        flat = not hasattr(network, "text_model")  # transformers >= 5: no text_model level
        for path, module in network.named_modules():
            if not isinstance(module, torch.nn.Linear | torch.nn.Conv2d):
                continue
            full = f"text_model.{path}" if component == "text_encoder" and flat else path
            kohya = "lora_te" if component == "text_encoder" else "lora_unet"
            names[f"{kohya}_{full.replace('.', '_')}"] = (component, path)
            names[f"{component}.{full}"] = (component, path)
            names[f"{component}.{path}"] = (component, path)
            if component == "unet":  # diffusers' UNet-only files have no prefix
                names[path] = (component, path)
    return names


def _short_hash(path: Path) -> str:
    """A1111's LoRA hash: the file's ``sshs_model_hash`` metadata, else the sha256 of the
    safetensors file after its header (kohya's "addnet" hash), 12 hex digits."""
    recorded = _header(path).get("__metadata__", {}).get("sshs_model_hash")
    if recorded:
        return str(recorded)[:12]
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        f.seek(8 + int.from_bytes(f.read(8), "little"))
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:12]


def _header(path: Path) -> dict:
    """A safetensors file's JSON header, {} when it cannot be read."""
    try:
        with open(path, "rb") as f:
            size = int.from_bytes(f.read(8), "little")
            if not 0 < size <= 100 << 20:
                return {}
            header = json.loads(f.read(size))
    except (OSError, ValueError):
        return {}
    return header if isinstance(header, dict) else {}
