"""sdgen on a CUDA GPU: the fast path (compile, CUDA graphs) and batching keep the pictures.

Skipped where there is no GPU (CI has none) and marked slow (compiling takes minutes). On a GPU
machine: ``pytest --runslow tests/test_cuda.py`` (``benchmarks/gpu_checks.sh tests``).
"""

from __future__ import annotations

import pytest
import torch
from helpers import max_pixel_diff, mean_pixel_diff
from test_batching import JOINS, REQUESTS, _picture, check_equal_to_alone

from sdgen.models.loader import load_model
from sdgen.params import GenerationRequest
from sdgen.pipelines.generate import generate

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]

ALL_ON_CUDA = ("channels_last", "fused_qkv", "compile", "cuda_graphs")


@pytest.fixture(scope="module")
def plain(tiny_sd1):
    return load_model(tiny_sd1, device="cuda", precision="fp32", fast_path="off")


@pytest.fixture(scope="module")
def fast(tiny_sd1):
    model = load_model(tiny_sd1, device="cuda", precision="fp32", fast_path="auto")
    assert model.fast_path == ALL_ON_CUDA
    return model


@pytest.fixture
def no_tf32():
    """Full fp32 convolutions and matmuls (cuDNN's default on an H100 is TF32), for comparing
    with the CPU."""
    before = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = before


def test_cpu_and_cuda_give_the_same_pictures(sd1_model, plain, no_tf32):
    request = GenerationRequest("a red circle", num_images=2, steps=6, seed=3, sampler="euler_a")
    on_cpu, on_cuda = generate(sd1_model, request), generate(plain, request)
    for a, b in zip(on_cpu.images, on_cuda.images, strict=True):
        assert max_pixel_diff(a, b) <= 2


@pytest.mark.parametrize("sampler", ["ddim", "pndm", "dpmpp_2m"])  # DDIM/PNDM's add_noise moves
def test_img2img_and_inpainting_run_on_cuda(sd1_model, plain, fast, sampler, no_tf32):
    # their alphas to the GPU, which the loop's x0 previews once read with .numpy()
    size = plain.native_size
    init, mask = _picture(size, 0), _picture(size, 0, "L")
    for extra in ({"strength": 0.6}, {"mask": mask, "strength": 0.8}):
        request = GenerationRequest(
            "a red circle", steps=6, seed=2, sampler=sampler, init_image=init, **extra
        )
        on_cpu = generate(sd1_model, request).images[0]
        assert max_pixel_diff(on_cpu, generate(plain, request).images[0]) <= 2
        assert max_pixel_diff(on_cpu, generate(fast, request).images[0]) <= 3


@pytest.mark.parametrize("sampler", ["pndm", "dpmpp_2m", "euler_a"])  # PLMS keeps predictions
def test_the_fast_path_keeps_the_pictures_as_batch_sizes_change(plain, fast, sampler):
    for count in (1, 3, 2):  # a new shape each request: compiled or recorded again
        request = GenerationRequest(
            "a blue square", num_images=count, steps=6, seed=10, sampler=sampler
        )
        expected, got = generate(plain, request), generate(fast, request)
        for a, b in zip(expected.images, got.images, strict=True):
            assert max_pixel_diff(a, b) <= 2, (sampler, count)


def test_requests_batched_on_the_compiled_unet_equal_each_alone(fast):
    assert check_equal_to_alone(fast, REQUESTS, JOINS) <= 2


def test_fp16_fast_path_stays_within_fp16_tolerance(tiny_sd1):
    plain16 = load_model(tiny_sd1, device="cuda", precision="fp16", fast_path="off")
    fast16 = load_model(tiny_sd1, device="cuda", precision="fp16", fast_path="auto")
    request = GenerationRequest("a white triangle", num_images=2, steps=6, seed=4, sampler="ddim")
    expected, got = generate(plain16, request), generate(fast16, request)
    for a, b in zip(expected.images, got.images, strict=True):
        assert mean_pixel_diff(a, b) <= 1.0
        assert max_pixel_diff(a, b) <= 8
