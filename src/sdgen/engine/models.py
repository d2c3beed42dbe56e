"""The models a server offers: chosen by name among those configured, loaded once per device.

Only configured names are ever loaded; a name from a request is looked up, never opened, so a
request cannot make the server read a path (``../``, absolute, URL-encoded) of its choosing.
"""

from __future__ import annotations

import copy
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from sdgen.errors import InvalidRequest, SdgenError
from sdgen.models.loaded import LoadedModel

Loader = Callable[[str, str], LoadedModel]  # (configured name, device) -> model


def load_configured(
    name: str,
    device: str,
    precision: str = "auto",
    fast_path: str = "auto",
    embeddings: Path | None = None,
    loras: Path | None = None,
) -> LoadedModel:
    """The default loader: ``load_model`` with the server's precision, fast path, textual
    inversions and LoRAs, pickles refused."""
    from sdgen.models.loader import load_model

    return load_model(
        name,
        device=device,
        precision=precision,
        fast_path=fast_path,
        embeddings=embeddings,
        loras=loras,
    )


class ModelPool:
    """Configured model names -> one loaded model per (name, device), loaded on first use."""

    def __init__(self, names: Sequence[str], load: Loader = load_configured):
        if not names:
            raise ValueError("a model pool needs at least one model name")
        self.names: tuple[str, ...] = tuple(dict.fromkeys(names))  # order kept, repeats dropped
        self._load = load
        self._models: dict[tuple[str, str], LoadedModel] = {}
        self._locks: dict[tuple[str, str], threading.Lock] = {}
        # (name, device) -> when its last load failed, and why (read under the pair's lock)
        self._failures: dict[tuple[str, str], tuple[float, Exception]] = {}
        self._lock = threading.Lock()

    @property
    def default(self) -> str:
        """The first configured model: what a request without ``model`` gets."""
        return self.names[0]

    def resolve_name(self, name: str | None, field: str = "model") -> str:
        """The configured model called ``name`` (``None``: the default); others are refused."""
        if name is None:
            return self.default
        if name not in self.names:
            raise InvalidRequest(field, name, f"one of the served models: {', '.join(self.names)}")
        return name

    def get(self, name: str, device: str) -> LoadedModel:
        """The model ``name`` on ``device``, loaded now if it is not yet (one load per pair).

        Callers that waited while a load of the pair failed get that load's error without
        trying again: a burst of requests for a model that cannot load (a hub the network
        cannot reach, 10 s a try) fails at once instead of retrying one after another; a call
        that comes later tries again (the model may have been fixed).
        """
        key = (self.resolve_name(name), device)
        arrived = time.monotonic()
        with self._lock:
            model = self._models.get(key)
            if model is not None:
                return model
            lock = self._locks.setdefault(key, threading.Lock())
        with lock:  # two callers for the same pair wait for one load; other pairs load freely
            if key not in self._models:
                failed = self._failures.get(key)
                if failed is not None and failed[0] >= arrived:  # failed while this call waited
                    raise _frameless(failed[1])
                try:
                    model = self._load(*key)
                except Exception as err:
                    # A copy without the traceback: the failed load's frames (tensors of a load
                    # that ran out of memory) are not kept, and each waiter raises its own.
                    self._failures[key] = (time.monotonic(), _frameless(err))
                    raise
                with self._lock:
                    self._models[key] = model
                self._failures.pop(key, None)
            return self._models[key]

    def any(self, name: str, fallback_device: str) -> LoadedModel:
        """The model ``name`` on whichever device has it, else loaded on ``fallback_device``."""
        name = self.resolve_name(name)
        with self._lock:
            for (loaded_name, _), model in self._models.items():
                if loaded_name == name:
                    return model
        return self.get(name, fallback_device)

    def loaded(self) -> list[tuple[str, str]]:
        """(name, device) of every loaded model."""
        with self._lock:
            return sorted(self._models)


def _frameless(error: Exception) -> Exception:
    """A new exception like ``error``, with no traceback: its type where it can be rebuilt from
    its message, else an SdgenError with the message."""
    try:
        copied = copy.copy(error)
    except Exception:  # noqa: BLE001 - a type whose __init__ takes other arguments
        copied = SdgenError(f"{type(error).__name__}: {error}")
    return copied.with_traceback(None)
