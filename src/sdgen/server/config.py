"""A server's settings: what ``sdgen serve``'s flags become."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from pathlib import Path

from sdgen.engine.limits import Limits
from sdgen.models.bundled import MINIATURE_MODEL

LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")
MiB = 1 << 20


def is_loopback(host: str) -> bool:
    """Whether ``host`` (a bind address or a Host header's name) is this machine only."""
    host = host.strip("[]").lower()
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class ServerConfig:
    data_dir: Path
    models: tuple[str, ...] = (MINIATURE_MODEL,)  # names a request may choose; the first is default
    devices: tuple[str, ...] = ("cpu",)  # one worker each
    precision: str = "auto"
    fast_path: str = "auto"  # sdgen.models.fast_path: auto is on for CUDA devices
    embeddings: Path | None = None  # textual inversions for every model (load_model's)
    lora_dir: Path | None = None  # LoRAs for every model (load_model's loras)
    styles: Path | None = None  # A1111's styles.csv, for the A1111 API's ``styles``
    warmup: bool = True  # workers whose model compiles run a warm-up before taking jobs
    host: str = "127.0.0.1"
    port: int = 7860
    api_key: str | None = None
    max_queue: int = 64
    max_batch: int = 8  # pictures a worker denoises together from several jobs (1: no batching)
    max_body_bytes: int = 32 * MiB  # a request body; larger ones get 413 before decoding
    max_input_pixels: int = 4096 * 4096  # an uploaded picture; larger are decompression bombs
    limits: Limits = field(default_factory=Limits)
    preview_interval: float = 0.5  # seconds between two preview pictures of a running job
    step_delay: float = 0.0  # seconds slept after every step: only for tests of slow jobs
    metadata: bool = True  # output PNGs carry the parameters and sdgen chunks (--no-metadata)

    @property
    def allowed_hosts(self) -> tuple[str, ...] | None:
        """Host header names accepted; None: any. A loopback server accepts only loopback names,
        so a page on another domain cannot reach it through DNS rebinding."""
        return LOOPBACK_NAMES if is_loopback(self.host) else None
