"""LoRAs merged into a model's weights while the requests that name them run, as A1111 merges
them.

A loaded model is shared by the requests on its device (a server's workers, batched requests),
so its weights hold one set of LoRAs at a time. Every text encoding and UNet call of a model
with a LoRA folder runs inside ``LoraWeights.holding(set)``: calls that want the set the
weights hold run together; a call that wants another set waits until none holds them, and
calls wait their turn first come, first served, so no set starves. The last holder leaves the
weights as they are; the next set changes them.

A change restores each weight the last set changed from its backup (exact: after a LoRA
request a plain request gets the plain picture, bit for bit), then adds the new set's changes
``sum(multiplier * scale * up @ down)`` in fp32 and casts to the weights' precision. Backups are
taken on first change and kept on the CPU, as A1111 keeps them: a GPU holds one copy of the
weights.

Merged weights serve every way sdgen runs a network: eagerly, as the CPU's TorchScript traces
(which share the parameters), compiled and as CUDA graphs (which read the parameters' memory).
Where the fast path fused the attention projections, a change of ``to_q``/``to_k``/``to_v``
goes to its rows of ``to_qkv`` (``to_kv`` for cross-attention's key and value).
"""

from __future__ import annotations

import threading
from collections import deque
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from sdgen.models.lora import Lora, LoraLayer


@dataclass(frozen=True)
class AppliedLora:
    """A LoRA as a request names it: with its text encoder and UNet multipliers."""

    lora: Lora  # compared by identity: a file read again is another LoRA
    te: float
    unet: float

    def multiplier(self, component: str) -> float:
        return self.te if component == "text_encoder" else self.unet


LoraSet = tuple[AppliedLora, ...]


class LoraWeights:
    """Which set of LoRAs a model's weights hold, and the turn of the calls that want one."""

    def __init__(self, networks: dict):
        self._networks = networks  # "unet"/"text_encoder" -> module
        self._cond = threading.Condition()
        self._current: LoraSet | None = ()  # None: unknown (a change failed part-way)
        self._holders = 0
        self._turns: deque[object] = deque()  # the calls waiting, first come first
        self._backups: dict[int, tuple[torch.nn.Parameter, torch.Tensor]] = {}
        self._changed: set[int] = set()  # ids of the parameters the current set changed
        self._local = threading.local()  # the set this thread holds, if any

    @property
    def current(self) -> LoraSet | None:
        return self._current

    @contextmanager
    def holding(self, loras: LoraSet):
        """While inside, the weights hold ``loras`` (() for none) and no call changes them.
        A thread already inside may enter again for the same set (for another it could only
        wait for itself: that is refused)."""
        held = getattr(self._local, "held", None)
        if held is not None:
            if held != loras:
                raise RuntimeError("a call holding one set of LoRAs asked for another")
            yield
            return
        turn = object()
        with self._cond:
            self._turns.append(turn)
            try:
                while self._turns[0] is not turn or (self._holders and self._current != loras):
                    self._cond.wait()
                if self._current != loras:  # none holds the weights: change them
                    self._change(loras)
                self._holders += 1
            finally:
                self._turns.remove(turn)
                self._cond.notify_all()  # the next in turn may share this set
        self._local.held = loras
        try:
            yield
        finally:
            self._local.held = None
            with self._cond:
                self._holders -= 1
                self._cond.notify_all()

    @torch.no_grad()
    def _change(self, loras: LoraSet) -> None:
        """Make the weights hold ``loras`` (under the lock, with no holder): each parameter the
        current set changed and the new one does not is restored; each the new one changes is
        merged from its backup, one parameter at a time (one fp32 copy of a weight at once)."""
        self._current = None  # until done: a failure part-way leaves it unknown
        changes: dict[int, list[tuple[LoraLayer, float, slice | None]]] = {}
        params: dict[int, torch.nn.Parameter] = {}
        for applied in loras:
            for layer in applied.lora.layers:
                multiplier = applied.multiplier(layer.component)
                if multiplier == 0:
                    continue
                param, rows = self._target(layer.component, layer.path)
                params[id(param)] = param
                changes.setdefault(id(param), []).append((layer, multiplier, rows))
        for key in list(self._changed - changes.keys()):
            param, backup = self._backups[key]
            param.copy_(backup)
            self._changed.discard(key)
        for key, layers in changes.items():
            param = params[key]
            if key not in self._backups:  # never changed yet: its own weights
                self._backups[key] = (param, param.detach().to("cpu", copy=True))
            self._changed.add(key)  # changed, or about to be: restored by the next change
            # a copy: on the CPU in fp32, .to() would return the backup itself
            merged = self._backups[key][1].to(param.device, torch.float32, copy=True)
            for layer, multiplier, rows in layers:
                delta = layer.delta(param.device) * multiplier
                if rows is None:
                    merged += delta
                else:
                    merged[rows] += delta
            param.copy_(merged.to(param.dtype))
        self._current = loras

    def _target(self, component: str, path: str) -> tuple[torch.nn.Parameter, slice | None]:
        """The parameter a layer's change goes to, and its rows where the fast path fused the
        layer into its attention's ``to_qkv``/``to_kv``."""
        network = self._networks[component]
        layer = network.get_submodule(path)
        parent_path, _, name = path.rpartition(".")
        parent = network.get_submodule(parent_path) if parent_path else network
        if name not in ("to_q", "to_k", "to_v") or not getattr(parent, "fused_projections", False):
            return layer.weight, None
        if parent.is_cross_attention:
            if name == "to_q":  # cross-attention's query is not fused
                return layer.weight, None
            fused, order = parent.to_kv, ("to_k", "to_v")
        else:
            fused, order = parent.to_qkv, ("to_q", "to_k", "to_v")
        start = sum(getattr(parent, n).out_features for n in order[: order.index(name)])
        return fused.weight, slice(start, start + layer.out_features)
