"""sdgen is faster than diffusers' StableDiffusionPipeline on the CPU, and its shortcuts (traced
UNet, cached negative-prompt embeddings) leave every picture bit-identical.

benchmarks/sd_benchmark.py measures the full matrix; this is the quick guard for the suite.
"""

from __future__ import annotations

import statistics
import time

import numpy as np
import pytest
import torch

from sdgen.conditioning.prompts import encode_conditioning
from sdgen.models.bundled import BUNDLED_MODELS, MINIATURE_MODEL
from sdgen.models.loader import load_model
from sdgen.params import GenerationRequest
from sdgen.pipelines.txt2img import txt2img
from sdgen.sampling.loop import TracedUNet

PROMPT, SIZE, STEPS, REPEATS = "a red circle on a blue background", 64, 10, 7
# The target. Measured with one thread: 0.63-0.65 (median of 7 paired runs) on this
# shared 2-core machine while another test suite loaded it, single pairs 0.51-0.82; without the
# traced UNet the ratio is ~1.0. Timing with two threads there is not robust (see one_thread).
RATIO_BOUND = 0.8


@pytest.fixture(scope="module")
def miniature():
    return load_model(device="cpu")


def _pictures(result) -> list[np.ndarray]:
    return [np.asarray(image) for image in result.images]


@pytest.fixture(autouse=True)
def one_thread():
    """One intra-op thread: with two on a shared 2-core machine, a thread that loses its core
    stalls every operator at the next barrier, and a run of 0.1 s has been seen to take 11 s
    (eager or traced, sdgen or diffusers alike). Both pipelines are timed under this setting."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_faster_than_diffusers_on_the_embedded_model(miniature):
    import diffusers

    pipe = diffusers.StableDiffusionPipeline.from_pretrained(
        BUNDLED_MODELS[MINIATURE_MODEL], safety_checker=None, requires_safety_checker=False
    )
    pipe.set_progress_bar_config(disable=True)
    pipe.scheduler = diffusers.EulerDiscreteScheduler.from_config(pipe.scheduler.config)
    request = GenerationRequest(
        PROMPT, steps=STEPS, sampler="euler", width=SIZE, height=SIZE, seed=0
    )

    def run_sdgen():
        return txt2img(miniature, request).images[0]

    def run_diffusers():
        generator = torch.Generator("cpu").manual_seed(0)
        return pipe(
            PROMPT, num_inference_steps=STEPS, width=SIZE, height=SIZE, generator=generator
        ).images[0]

    def seconds(run) -> float:
        started = time.perf_counter()
        run()
        return time.perf_counter() - started

    ours, theirs = run_sdgen(), run_diffusers()  # warm-up (sdgen traces its UNet here)
    assert np.abs(np.asarray(ours, np.int16) - np.asarray(theirs, np.int16)).max() <= 3
    ratios = []
    for repeat in range(REPEATS):  # paired and interleaved, alternating which runs first
        if repeat % 2:
            theirs_s, ours_s = seconds(run_diffusers), seconds(run_sdgen)
        else:
            ours_s, theirs_s = seconds(run_sdgen), seconds(run_diffusers)
        ratios.append(ours_s / theirs_s)
    ratio = statistics.median(ratios)
    assert ratio <= RATIO_BOUND, f"sdgen/diffusers time ratio {ratio:.2f} (runs: {ratios})"


def test_cached_negative_embedding_gives_identical_pictures(miniature):
    request = GenerationRequest(
        PROMPT, negative_prompt="green", num_images=2, steps=4, width=SIZE, height=SIZE, seed=7
    )
    miniature.caches.clear()
    uncached = _pictures(txt2img(miniature, request))
    # (text, emphasis, long_prompt, clip_skip, the LoRAs merged into the text encoder)
    assert ("green", "off", "truncate", 1, ()) in miniature.caches["negative_embeddings"]
    cached = _pictures(txt2img(miniature, request))
    for a, b in zip(uncached, cached, strict=True):
        assert np.array_equal(a, b)


def test_cached_negative_embedding_is_the_uncached_one(miniature):
    pairs = [(PROMPT, ""), ("a blue square", "green"), (PROMPT, "")]
    args = (miniature.tokenizer, miniature.text_encoder, pairs)
    options = dict(guided=True, device=miniature.device, dtype=miniature.dtype)
    cache: dict = {}
    first = encode_conditioning(*args, **options, negative_cache=cache)
    assert set(cache) == {("", "off", "truncate", 1, ()), ("green", "off", "truncate", 1, ())}
    again = encode_conditioning(*args, **options, negative_cache=cache)
    uncached = encode_conditioning(*args, **options)
    first, again, uncached = (torch.stack(e.rows) for e in (first, again, uncached))
    assert torch.equal(first, uncached) and torch.equal(again, uncached)
    assert first.shape == (6, *uncached.shape[1:])


@pytest.mark.parametrize("batch", [1, 3])
def test_traced_unet_equals_the_eager_unet(miniature, batch):
    unet = miniature.unet
    traced = TracedUNet(unet)
    generator = torch.Generator().manual_seed(batch)
    tokens = miniature.tokenizer.model_max_length
    embeddings = torch.randn(batch, tokens, unet.config.cross_attention_dim, generator=generator)
    with torch.inference_mode():
        for t in (torch.tensor(981), torch.tensor(1.5)):  # int (PNDM, DDIM) and float (Euler)
            sample = torch.randn(batch, 4, 8, 8, generator=generator)
            expected = unet(sample, t, encoder_hidden_states=embeddings).sample
            assert torch.equal(traced(sample, t, encoder_hidden_states=embeddings)[0], expected)
    assert len(traced._traces) == 2  # one trace per input signature


def test_traced_unet_runs_hooks_eagerly(miniature):
    """A forward hook anywhere in the UNet is Python a trace would skip: the UNet runs eagerly."""
    traced = TracedUNet(miniature.unet)
    calls = []
    hook = miniature.unet.conv_in.register_forward_hook(lambda *args: calls.append(1))
    sample, embeddings = torch.randn(2, 4, 8, 8), torch.randn(2, 16, 64)
    try:
        with torch.inference_mode():
            traced(sample, torch.tensor(1), encoder_hidden_states=embeddings)
            traced(sample, torch.tensor(2), encoder_hidden_states=embeddings)
    finally:
        hook.remove()
    assert calls == [1, 1] and not traced._traces


def test_traced_unet_keeps_the_most_recently_used_traces(miniature, monkeypatch):
    from sdgen.sampling import loop

    monkeypatch.setattr(loop, "MAX_TRACES", 2)
    traced = TracedUNet(miniature.unet)
    traced._trace = lambda inputs: lambda *args: inputs[0].shape[0]  # record, do not trace
    embeddings = torch.zeros(1, 16, miniature.unet.config.cross_attention_dim)
    t = torch.tensor(10)
    for rows in (1, 2, 1, 3):  # 1 is used again before 3 arrives: 2 is the oldest, dropped
        traced(torch.zeros(rows, 4, 8, 8), t, encoder_hidden_states=embeddings.expand(rows, -1, -1))
    assert [key[0][0][0] for key in traced._traces] == [1, 3]
