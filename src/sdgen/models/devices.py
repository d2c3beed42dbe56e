"""Device and precision choice: ``auto`` means CUDA in fp16 when there is a GPU, else CPU fp32."""

from __future__ import annotations

import re

import torch

from sdgen.errors import InvalidRequest

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def resolve_device(device: str) -> torch.device:
    """``auto``, ``cpu``, ``cuda`` or ``cuda:N`` -> a device that exists on this machine."""
    allowed = "auto, cpu, cuda or cuda:N"
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cpu":
        return torch.device("cpu")
    match = re.fullmatch(r"cuda(?::(\d+))?", device or "")
    if not match:
        raise InvalidRequest("device", device, allowed)
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    index = int(match.group(1) or 0)
    if index >= count:
        raise InvalidRequest("device", device, f"{allowed}; this machine has {count} CUDA devices")
    return torch.device("cuda", index)


def resolve_dtype(precision: str, device: torch.device) -> torch.dtype:
    """``auto`` is fp16 on CUDA (what people run SD in) and fp32 on CPU (fp16 is slow there)."""
    if precision == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    if precision not in DTYPES:
        raise InvalidRequest("precision", precision, "one of auto, fp32, fp16, bf16")
    if precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise InvalidRequest("precision", precision, "fp32 or fp16: this GPU has no bf16")
    return DTYPES[precision]


def precision_name(dtype: torch.dtype) -> str:
    """torch.float16 -> "fp16": the inverse of ``resolve_dtype`` for a resolved precision."""
    return next(name for name, value in DTYPES.items() if value == dtype)


def empty_cuda_cache() -> None:
    """Give cached CUDA memory back after a failure; nothing to do on a CPU-only machine."""
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.empty_cache()
