"""A1111's tiling: pictures whose left edge continues their right, and top their bottom.

As A1111's ``apply_circular`` does, every convolution of the UNet and the VAE pads circularly
(wrapping around the picture) instead of with zeros. Here a tiled request runs on copies of
the two networks whose modules are new but whose parameters and buffers are the model's own
tensors: no weights are copied, merged LoRAs (changed in place) reach them, and the model's
networks, which other requests share at the same time, never change. The copies run eagerly
(traced on the CPU): the fast path's compiled graphs and CUDA graphs belong to the originals.
"""

from __future__ import annotations

import copy
import itertools
import threading

import torch

from sdgen.models.loaded import LoadedModel

_LOCK = threading.Lock()  # one pair of copies per model, made once


def tiled_networks(model: LoadedModel) -> tuple[torch.nn.Module, torch.nn.Module]:
    """The model's (UNet, VAE) with circular padding, made on first use and kept."""
    with _LOCK:
        if "tiled_networks" not in model.caches:
            model.caches["tiled_networks"] = (circular_copy(model.unet), circular_copy(model.vae))
    return model.caches["tiled_networks"]


def circular_copy(network: torch.nn.Module) -> torch.nn.Module:
    """``network``'s modules anew, holding its very parameters and buffers, every Conv2d padding
    circularly; eager even where ``network`` was compiled."""
    shared = {id(t): t for t in itertools.chain(network.parameters(), network.buffers())}
    tiled = copy.deepcopy(network, memo=shared)
    for module in tiled.modules():
        if getattr(module, "_compiled_call_impl", None) is not None:
            module._compiled_call_impl = None  # the original's compiled call: not this copy's
        if isinstance(module, torch.nn.Conv2d):
            module.padding_mode = "circular"
    return tiled
