"""The fast path (channels-last, fused QKV, torch.compile, CUDA graphs): when it is on, what it
changes in the networks, and that the pictures stay those of the plain path.

The CPU checks the arrangement and the math; the speed it is for is the GPU's
(benchmarks/sd_benchmark.py --device cuda).
"""

from __future__ import annotations

import dataclasses
import threading

import pytest
import torch
from diffusers.models.attention_processor import FusedAttnProcessor2_0
from helpers import max_pixel_diff

from sdgen.errors import InvalidRequest
from sdgen.models.fast_path import (
    GraphedUNet,
    apply_fast_path,
    compile_with_fallback,
    fast_path_parts,
    frozen_weights,
)
from sdgen.models.loader import load_model
from sdgen.params import GenerationRequest
from sdgen.pipelines.generate import generate
from sdgen.pipelines.stages import denoising_unet
from sdgen.sampling.loop import TracedUNet

CPU, CUDA = torch.device("cpu"), torch.device("cuda", 0)  # a device type; no GPU is needed
ALL_ON_CUDA = ("channels_last", "fused_qkv", "compile", "cuda_graphs")


def test_auto_is_on_for_cuda_and_off_on_the_cpu(monkeypatch):
    monkeypatch.delenv("SDGEN_FAST_PATH", raising=False)
    assert fast_path_parts("auto", CUDA) == ALL_ON_CUDA
    assert fast_path_parts("auto", CPU) == ()
    assert fast_path_parts("on", CPU) == ("channels_last", "fused_qkv", "compile", "freezing")
    assert fast_path_parts("off", CUDA) == ()


def test_the_environment_overrides_auto_only(monkeypatch):
    monkeypatch.setenv("SDGEN_FAST_PATH", "off")
    assert fast_path_parts("auto", CUDA) == ()
    assert fast_path_parts("on", CUDA) == ALL_ON_CUDA  # an explicit choice wins
    monkeypatch.setenv("SDGEN_FAST_PATH", "fast")
    with pytest.raises(InvalidRequest, match="SDGEN_FAST_PATH.*one of auto, on, off"):
        fast_path_parts("auto", CUDA)


def test_weights_that_lora_merges_change_are_never_frozen():
    """A frozen graph keeps packed copies of the weights: merges in place would not reach it."""
    assert fast_path_parts("on", CPU, loras=True) == ("channels_last", "fused_qkv", "compile")
    assert "freezing" not in fast_path_parts("on", CUDA)  # not measured on a GPU: not used


def test_freezing_is_on_in_the_calling_thread_only_while_its_call_runs():
    import torch._inductor.config as inductor_config

    seen = {}
    inside, release = threading.Event(), threading.Event()

    def frozen_call():
        with frozen_weights():
            seen["inside"] = inductor_config.freezing
            inside.set()
            release.wait(5)

    other = threading.Thread(target=frozen_call)
    other.start()
    inside.wait(5)
    seen["beside"] = inductor_config.freezing  # another thread's compile is not frozen
    release.set()
    other.join(5)
    assert seen == {"inside": True, "beside": False}
    with pytest.raises(ValueError), frozen_weights():
        raise ValueError("a failing call")
    assert inductor_config.freezing is False


def test_an_unknown_mode_is_refused_before_loading(tiny_sd1):
    with pytest.raises(InvalidRequest, match="fast_path.*one of auto, on, off"):
        load_model(tiny_sd1, device="cpu", fast_path="turbo")


@pytest.mark.parametrize("sampler", ["dpmpp_2m", "euler_a"])
def test_channels_last_and_fused_qkv_keep_the_pictures(tiny_sd1, sd1_model, sampler):
    arranged = load_model(tiny_sd1, device="cpu", fast_path="off")
    counts = [sum(p.numel() for p in n.parameters()) for n in (arranged.unet, arranged.vae)]
    apply_fast_path(arranged.unet, arranged.vae, ("channels_last", "fused_qkv"))
    # The separate projections the fused ones replace are freed: no weight is held twice.
    assert [sum(p.numel() for p in n.parameters()) for n in (arranged.unet, arranged.vae)] == counts
    processors = {type(p) for p in arranged.unet.attn_processors.values()}
    assert processors == {FusedAttnProcessor2_0}
    assert {type(p) for p in arranged.vae.attn_processors.values()} == {FusedAttnProcessor2_0}
    conv = arranged.unet.conv_in.weight
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
    request = GenerationRequest("a red circle", num_images=2, steps=4, seed=5, sampler=sampler)
    plain, fast = generate(sd1_model, request), generate(arranged, request)
    for a, b in zip(plain.images, fast.images, strict=True):
        assert max_pixel_diff(a, b) <= 1


@pytest.mark.slow  # torch.compile on the CPU: about 30-50 s of compiling on 2 cores
def test_compiled_networks_keep_the_pictures_and_skip_tracing(
    tiny_sd1, sd1_model, tmp_path, monkeypatch
):
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))  # a cold cache
    model = load_model(tiny_sd1, device="cpu", fast_path="on")
    assert model.fast_path == ("channels_last", "fused_qkv", "compile", "freezing")
    assert not isinstance(denoising_unet(model), TracedUNet)
    request = GenerationRequest("a blue square", num_images=2, steps=4, seed=9)
    fast = generate(model, request)
    assert any((tmp_path / "inductor").iterdir())  # compiled artefacts kept for the next process
    for a, b in zip(generate(sd1_model, request).images, fast.images, strict=True):
        assert max_pixel_diff(a, b) <= 1
    # frozen: the convolutions run from packed weights, not from each call's aten.convolution
    code = "".join(p.read_text() for p in (tmp_path / "inductor").rglob("*.py"))
    assert "mkldnn._convolution_pointwise" in code

    # another model of the same architecture gets its own frozen graph, with its own weights
    other = load_model(tiny_sd1, device="cpu", fast_path="on")
    plain_other = load_model(tiny_sd1, device="cpu", fast_path="off")
    with torch.no_grad():
        for network in (other.unet, plain_other.unet):
            for name, param in network.named_parameters():
                if name.endswith("conv_out.weight"):
                    param.mul_(-1)
    turned = generate(other, request).images
    for a, b, c in zip(generate(plain_other, request).images, turned, fast.images, strict=True):
        assert max_pixel_diff(a, b) <= 1 and max_pixel_diff(b, c) > 10


def test_with_cuda_graphs_the_loop_gets_copies_of_the_predictions(sd1_model):
    """PLMS keeps past predictions: with graphs they must not be the graph's output buffers."""
    graphed = dataclasses.replace(sd1_model, fast_path=("cuda_graphs",))  # the call path only
    unet = denoising_unet(graphed)
    assert isinstance(unet, GraphedUNet) and denoising_unet(graphed) is unet
    raw = []
    hook = sd1_model.unet.register_forward_hook(lambda m, a, out: raw.append(out[0]))
    try:
        returned = unet(*_unet_inputs(sd1_model))[0]
    finally:
        hook.remove()
    assert torch.equal(returned, raw[0]) and returned.data_ptr() != raw[0].data_ptr()
    request = GenerationRequest("a red circle", steps=4, seed=2, sampler="pndm")
    pictures = generate(graphed, request).images
    assert max_pixel_diff(pictures[0], generate(sd1_model, request).images[0]) == 0


def _unet_inputs(model):
    side = model.unet.config.sample_size
    sample = torch.randn(2, 4, side, side)
    embeddings = torch.randn(2, 77, model.text_encoder.config.hidden_size)
    return sample, torch.tensor(10), embeddings


def test_a_failing_compile_falls_back_to_the_eager_network(caplog):
    def broken_backend(graph, example_inputs):
        raise RuntimeError("no compiler for this graph")

    layer = _Scaled()
    x = torch.randn(2, 4)
    expected = layer(x)
    compile_with_fallback(layer, backend=broken_backend)
    with caplog.at_level("WARNING", logger="sdgen.models.fast_path"):
        assert torch.equal(layer(x), expected)
    assert "torch.compile failed, running eagerly" in caplog.text
    assert layer._compiled_call_impl is None  # eager from now on, no second attempt
    errors = _Scaled()
    compile_with_fallback(errors, backend="eager")
    with pytest.raises(RuntimeError, match="mat1 and mat2"):  # a real error is not hidden
        errors(torch.randn(2, 5))


class _Scaled(torch.nn.Module):
    """A module of the test's own: dynamo compiles user code, not torch's own modules."""

    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(4, 3)

    def forward(self, x):
        return self.linear(x) * 2 + 1
