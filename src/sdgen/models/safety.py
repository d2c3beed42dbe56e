"""Safe loading: safetensors by default; pickle files only when asked, through weights_only."""

from __future__ import annotations

from pathlib import Path

from sdgen.errors import PickleRefused

PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")
ALLOW_PICKLE_FLAG = "--allow-pickle"


def is_pickle(path: Path) -> bool:
    return path.suffix.lower() in PICKLE_SUFFIXES


def refuse_pickle(path: Path) -> None:
    """Raise the refusal that names the flag allowing pickle checkpoints."""
    raise PickleRefused(
        f"model: {path} is a pickle checkpoint, which can run code when loaded; sdgen loads "
        f"safetensors only. Convert it to .safetensors, or pass {ALLOW_PICKLE_FLAG} "
        "(allow_pickle=True in Python) to load it with torch's weights-only loader"
    )


def load_pickle_state_dict(path: Path) -> dict:
    """A pickle checkpoint's tensors through ``torch.load(weights_only=True)``: no code runs."""
    import torch

    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    return checkpoint.get("state_dict", checkpoint)
