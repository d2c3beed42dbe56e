"""The embedded miniature model: the default model, diffusers parity, speed, and the features of
the system shown on real (trained) weights with the shapes detector.

Sample sizes are small to keep the suite fast; the README's numbers come from the full
evaluation (``python -m sdgen.miniature.evaluate``).
"""

from __future__ import annotations

import statistics
import time

import diffusers
import pytest
import torch
from helpers import TOLERANCE, max_pixel_diff

from sdgen.miniature.detector import detect
from sdgen.miniature.evaluate import evaluate, generate_for
from sdgen.miniature.shapes import COLORS, all_full_prompts
from sdgen.models.bundled import BUNDLED_MODELS, MINIATURE_MODEL
from sdgen.params import GenerationRequest
from sdgen.pipelines.txt2img import txt2img

SAMPLE = all_full_prompts()[::4]  # 42 prompts, every colour, shape and background


@pytest.fixture(scope="module")
def miniature():
    from sdgen.models.loader import load_model

    return load_model(None, device="cpu")


@pytest.fixture(scope="module")
def ranker():
    from sdgen.ranking.clip import load_ranker

    return load_ranker()  # the embedded model's CLIP, the default


def test_default_model_is_the_embedded_one(miniature):
    assert miniature.name == MINIATURE_MODEL and miniature.native_size == 64
    result = txt2img(miniature, GenerationRequest("a red circle on a blue background", seed=3))
    assert result.request.model == MINIATURE_MODEL and result.request.sampler == "ddim"
    assert result.images[0].size == (64, 64)


def test_diffusers_gives_the_same_picture(miniature):
    pipe = diffusers.StableDiffusionPipeline.from_pretrained(
        BUNDLED_MODELS[MINIATURE_MODEL], safety_checker=None, requires_safety_checker=False
    )
    pipe.set_progress_bar_config(disable=True)
    prompt = "a yellow triangle on a purple background"
    ours = txt2img(miniature, GenerationRequest(prompt, seed=11, num_images=2)).images
    for i, image in enumerate(ours):
        theirs = pipe(prompt, generator=torch.Generator("cpu").manual_seed(11 + i)).images[0]
        assert max_pixel_diff(image, theirs) <= TOLERANCE


def test_one_picture_at_default_settings_is_fast(miniature):
    request = GenerationRequest("a green square on a white background", seed=0)
    # One thread: with other processes on the 2 cores, torch's two threads wait on each other at
    # every operator and a picture can take tens of seconds; one thread is steady.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        txt2img(miniature, request)  # warm-up (and the CPU's UNet trace)
        times = []
        for _ in range(5):
            started = time.perf_counter()
            txt2img(miniature, request)
            times.append(time.perf_counter() - started)
    finally:
        torch.set_num_threads(threads)
    # The target is 1 s on these 2-core machines (measured 0.37 s on one thread).
    assert statistics.median(times) < 1.0, times


def test_pictures_show_what_the_prompt_says(miniature):
    scores = evaluate(miniature, SAMPLE, seed=0)
    assert scores.accuracy["color"] >= 0.9
    assert scores.accuracy["background"] >= 0.9
    assert scores.accuracy["shape"] >= 0.8


def test_guidance_helps(miniature):
    """Unguided, the model misses some colours it is unsure of (orange, drawn red or yellow) and
    some shapes; at 7.5 it misses none. All 168 prompts in one batch, 20 steps to stay fast.
    Measured (seed 0): 95.8/92.9/98.2% unguided, 100/100/100% at 7.5 (50 steps: 95.8/94.6/98.2%
    against 100/100/100%).
    """
    prompts = all_full_prompts()
    guided = evaluate(miniature, prompts, seed=0, steps=20, guidance_scale=7.5)
    unguided = evaluate(miniature, prompts, seed=0, steps=20, guidance_scale=1.0)
    mean = lambda s: statistics.mean(s.accuracy.values())  # noqa: E731
    assert mean(guided) >= 0.99, guided.accuracy
    assert mean(unguided) <= mean(guided) - 0.03, (unguided.accuracy, guided.accuracy)


def test_negative_prompt_removes_a_colour(miniature):
    # At guidance 7.5 the colour a prompt leaves open collapses onto a few favourites (blue and
    # black here) and red never comes up to be removed; at 3 every colour still occurs.
    prompts = ["a circle on a white background"] * 64
    plain = generate_for(miniature, prompts, seed=0, guidance_scale=3.0)
    negative = generate_for(miniature, prompts, seed=0, guidance_scale=3.0, negative_prompt="red")
    red = lambda images: sum(detect(im).color == "red" for im in images)  # noqa: E731
    assert red(plain) >= 4  # red is one of the 7 colours the prompt leaves open
    assert red(negative) <= red(plain) / 4


def test_clip_ranks_the_prompts_colour_first(miniature, ranker):
    hits = 0
    for shape in ("circle", "square", "triangle"):
        prompts = [f"a {c} {shape} on a black background" for c in COLORS if c != "black"]
        images = generate_for(miniature, prompts, seed=5)
        for i, prompt in enumerate(prompts):
            best, _ = ranker.rank(prompt, images)[0]
            hits += best == i
    assert hits >= 0.85 * 21


def test_best_of_four_is_at_least_as_accurate(miniature, ranker):
    from sdgen.miniature.evaluate import score_pictures

    prompts = SAMPLE[::2]
    request = GenerationRequest(prompt=tuple(prompts), num_images=4, seed=50)
    images = txt2img(miniature, request).images  # 4 per prompt, each prompt's together
    firsts, bests = [], []
    for p, prompt in enumerate(prompts):
        four = images[4 * p : 4 * p + 4]
        firsts.append(four[0])
        bests.append(four[ranker.rank(prompt, four)[0][0]])
    single = score_pictures(prompts, firsts).accuracy
    best = score_pictures(prompts, bests).accuracy
    assert statistics.mean(best.values()) >= statistics.mean(single.values())
