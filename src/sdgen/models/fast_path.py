"""The fast path: the same networks and math, arranged for the GPU.

Applied once, when a model is loaded (``load_model(..., fast_path=...)``):

- ``channels_last``: the UNet's and VAE's convolutions run in NHWC, the layout cuDNN's fp16
  tensor-core kernels want (no transposes around every convolution).
- ``fused_qkv``: diffusers' ``fuse_qkv_projections``: one matrix product for the query, key and
  value of self-attention (key and value of cross-attention) instead of three; the weights are
  concatenated, the products are the same. Attention itself is PyTorch's
  ``scaled_dot_product_attention`` (flash / memory-efficient kernels), diffusers' default.
- ``compile``: ``torch.compile`` of the UNet and of the VAE's decoder (inductor: fused
  elementwise kernels, autotuned layouts). Compiled artefacts go to inductor's on-disk caches
  under ``~/.cache/sdgen/torchinductor`` (or ``TORCHINDUCTOR_CACHE_DIR``), so a second process
  loads them instead of compiling again.
- ``freezing`` (CPU): inductor's freezing: the compiled graphs take the weights as constants,
  so convolutions and linear layers run from weights packed once for oneDNN and MKL, instead
  of each call's ``aten.convolution`` and ``mm`` (the packed copies are held beside the
  weights). Weights that change in place are not seen by a frozen graph, so a model with a
  LoRA folder (``sdgen.models.lora_weights`` merges into the weights) is compiled without it.
- ``cuda_graphs``: the UNet compiled in ``reduce-overhead`` mode, which replays each step as one
  CUDA graph (one launch instead of ~1,900 kernel launches at batch 1). Shapes are static per
  batch size and picture size; each new shape is compiled and captured once.

The denoising loop itself keeps the host out of the GPU's way: sigmas and step bookkeeping stay
on the CPU (diffusers' schedulers keep them there), nothing in the loop reads a GPU value back
unless a step callback asks for one, and the negative prompt's embedding is computed once per
model.

``auto`` turns it on for CUDA devices and off elsewhere, and off for the one-off commands
(``for_one_off_command``: compiling takes longer than it saves there). Without it the CPU runs
the UNet as TorchScript traces (``sampling.loop.TracedUNet``: bit-identical to the eager UNet,
nothing to compile); with it (``on``) the embedded model's pictures took 0.57-0.59 of
diffusers' time at batch 1 (traced 0.59-0.73) and 0.76-0.79 at batch 8 (traced 0.73-0.85),
while the tests' tiny model gained little at batch 8 and lost at batch 1, and each new shape
compiles for 30-120 s on two cores (benchmarks/results/cpu_profile.md): ``auto`` leaves it off
there.
``SDGEN_FAST_PATH`` (``on``/``off``) overrides ``auto``. Pictures with and without it agree
within fp16's rounding (benchmarks/sd_benchmark.py checks them against diffusers' eager
pipeline).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch

from sdgen.errors import InvalidRequest
from sdgen.models.building import BUILD_LOCK
from sdgen.params import FAST_PATH_MODES

log = logging.getLogger(__name__)

ENV_VAR = "SDGEN_FAST_PATH"
RECOMPILE_LIMIT = 64  # shapes per compiled network (batch sizes x guidance x picture sizes)


def fast_path_parts(mode: str, device: torch.device, *, loras: bool = False) -> tuple[str, ...]:
    """What the fast path does on ``device`` for ``mode`` (auto, on, off); () when off.
    ``loras``: the model has a LoRA folder, whose merges change its weights in place."""
    if mode not in FAST_PATH_MODES:
        raise InvalidRequest("fast_path", mode, f"one of {', '.join(FAST_PATH_MODES)}")
    if mode == "auto":
        mode = os.environ.get(ENV_VAR, "").strip().lower() or "auto"
        if mode not in FAST_PATH_MODES:
            raise InvalidRequest(ENV_VAR, mode, f"one of {', '.join(FAST_PATH_MODES)}")
        if mode == "auto":
            mode = "on" if device.type == "cuda" else "off"
    if mode == "off":
        return ()
    parts = ("channels_last", "fused_qkv", "compile")
    if device.type == "cuda":
        return (*parts, "cuda_graphs")
    return parts if loras else (*parts, "freezing")


def for_one_off_command(mode: str) -> str:
    """The fast path for a command that makes its pictures and exits (``sdgen generate``,
    ``img2img``, ``inpaint``, ``reproduce``, ``sweep``): there ``auto`` means off.

    Such a command runs one batch of tens of steps (a sweep one per cell), and compiling does not
    pay for it: on an H100 compiling SD 1.5's UNet and decoder took 87 s (106 s more for a first
    batch of 8), and the compiled loop saves about 24 ms a step against an eager one (150.7
    against 32.2 steps/s at batch 1, benchmarks/results/sd_benchmark-cuda.md), 1.2 s for a
    50-step picture. With inductor's cache filled a new process still loads the compiled graphs
    and records the CUDA graphs (on the CPU: 17.5 s against 121.2 s cold; not yet measured on a
    GPU), more than such a command gains. A server or a Python program that keeps its model pays
    once and gains on every picture: there ``auto`` is on for CUDA. ``on``, or
    ``SDGEN_FAST_PATH=on``, still turns it on for a command (a large sweep may pay).
    """
    if mode == "auto" and os.environ.get(ENV_VAR, "").strip().lower() in ("", "auto"):
        return "off"
    return mode


def apply_fast_path(unet: torch.nn.Module, vae: torch.nn.Module, parts: tuple[str, ...]) -> None:
    """Arrange ``unet`` and ``vae`` (loaded, on their device, in eval mode) as ``parts`` say."""
    if "channels_last" in parts:
        unet.to(memory_format=torch.channels_last)
        vae.to(memory_format=torch.channels_last)
    if "fused_qkv" in parts:
        for network in (unet, vae):
            with BUILD_LOCK:  # new layers and parameters: built as a load builds its own
                try:
                    network.fuse_qkv_projections()
                except (AttributeError, ValueError) as err:  # e.g. added KV projections
                    log.warning("%s: QKV projections not fused (%s)", type(network).__name__, err)
                    continue
                drop_unfused_projections(network)
    if "compile" in parts:
        use_compile_cache()
        # reduce-overhead: CUDA graphs; the VAE decoder's kernels are large, launches are not
        # what it waits for, and graphs would keep its big activations in their own pool.
        mode = "reduce-overhead" if "cuda_graphs" in parts else None
        freezing = "freezing" in parts
        compile_with_fallback(unet, mode=mode, fullgraph=True, freezing=freezing)
        compile_with_fallback(vae.decoder, freezing=freezing)


def drop_unfused_projections(network: torch.nn.Module) -> int:
    """Free the projections that fused attention no longer reads; the parameters freed.

    diffusers' ``fuse_projections`` adds ``to_qkv`` (self-attention) or ``to_kv``
    (cross-attention) beside the separate layers and keeps them, which costs the memory of the
    attention's projections twice. Its fused processor reads ``to_qkv``, or ``to_q`` and
    ``to_kv``; the others become empty (they cannot be unfused afterwards, which sdgen never
    does).
    """
    from diffusers.models.attention_processor import Attention

    freed = 0
    for module in network.modules():
        if not isinstance(module, Attention) or not getattr(module, "fused_projections", False):
            continue
        unused = ("to_k", "to_v") if module.is_cross_attention else ("to_q", "to_k", "to_v")
        for name in unused:
            layer = getattr(module, name)
            for param_name, param in list(layer.named_parameters(recurse=False)):
                freed += param.numel()
                empty = torch.empty(0, device=param.device, dtype=param.dtype)
                setattr(layer, param_name, torch.nn.Parameter(empty, requires_grad=False))
    return freed


def compile_with_fallback(module: torch.nn.Module, *, freezing: bool = False, **options) -> None:
    """``module.compile(**options)``, except that if compiling fails (an unsupported operator,
    no working compiler) the module logs it once and runs eagerly from then on, instead of
    failing every generation. Errors while running are not hidden: they are raised.
    ``freezing``: compile with inductor's freezing (``frozen_weights``)."""
    from torch._dynamo.exc import TorchDynamoException  # inductor's errors derive from it too

    compiled = torch.compile(module._call_impl, **options)
    if freezing:
        unfrozen = compiled

        def compiled(*args, **kwargs):
            with frozen_weights():
                return unfrozen(*args, **kwargs)

    def call(*args, **kwargs):
        try:
            return compiled(*args, **kwargs)
        except TorchDynamoException as err:
            log.warning(
                "%s: torch.compile failed, running eagerly (%s)",
                type(module).__name__,
                str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__,
            )
            module._compiled_call_impl = None  # what nn.Module.compile sets; None: eager
            return module._call_impl(*args, **kwargs)

    module._compiled_call_impl = call


def frozen_weights():
    """A context in which graphs that torch.compile captures and compiles are frozen.

    Dynamo reads inductor's ``freezing`` while it captures a graph, before the options given
    to ``torch.compile`` apply (with ``options={"freezing": True}`` the graph was frozen but
    kept its ``aten.convolution``), so the setting is turned on around each call of a frozen
    network: compiling happens inside the call that first meets a shape. Inductor's settings
    are per thread in torch 2.13 (``ContextVar``s), so other threads' compiles are not
    touched; a torch whose settings are global (older releases were not checked) could leave
    ``freezing`` on after overlapping calls, which is harmless while no model of the process
    has weights that change (every model a server loads shares its one LoRA folder, or none).
    A frozen graph guards on its module: another model of the same architecture compiles its
    own.
    """
    import torch._inductor.config as inductor_config

    return inductor_config.patch(freezing=True)


def use_compile_cache() -> Path:
    """Point inductor's on-disk caches at sdgen's cache folder unless the user chose one, and
    let each network compile enough shapes; the folder used."""
    import torch._dynamo
    import torch._inductor.config as inductor_config
    from torch._inductor.runtime.cache_dir_utils import default_cache_dir

    # Importing diffusers already sets the variable to torch's default (a temporary folder,
    # gone after a reboot): only that value is replaced.
    folder = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    if not folder or os.path.abspath(folder) == os.path.abspath(default_cache_dir()):
        base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
        folder = str(base / "sdgen" / "torchinductor")
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = folder

    inductor_config.fx_graph_cache = True  # compiled kernels and graphs, reused across processes
    limit = "recompile_limit" if hasattr(torch._dynamo.config, "recompile_limit") else None
    setattr(torch._dynamo.config, limit or "cache_size_limit", RECOMPILE_LIMIT)
    return Path(folder)


class GraphedUNet:
    """The UNet compiled with CUDA graphs, called the way graph replay needs.

    A CUDA graph writes every replay's output into the same buffers, so an output kept from
    one step to the next (PLMS keeps its past noise predictions) would be overwritten: each
    call marks a new step for torch's graph trees and returns a copy of the prediction
    (2B x 4 x 64 x 64 in fp16 for SD 1.5 at 512: 64 KiB a picture, nothing next to the UNet).
    """

    def __init__(self, unet: torch.nn.Module):
        self.unet = unet

    def __call__(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        return_dict: bool = False,
    ) -> tuple[torch.Tensor]:
        """``(noise_pred,)`` as ``UNet2DConditionModel(..., return_dict=False)`` returns it."""
        torch.compiler.cudagraph_mark_step_begin()
        output = self.unet(sample, timestep, encoder_hidden_states, return_dict=False)
        return (output[0].clone(),)
