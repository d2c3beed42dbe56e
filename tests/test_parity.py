"""sdgen's pictures equal diffusers' StableDiffusionPipeline's on the same weights and seeds."""

from __future__ import annotations

import diffusers
import pytest
import torch
from helpers import TOLERANCE, diffusers_pipeline, max_pixel_diff, mean_pixel_diff

from sdgen.params import GenerationRequest
from sdgen.pipelines.txt2img import txt2img
from sdgen.sampling.samplers import SAMPLERS

PROMPT, NEGATIVE = "a red circle on a blue background", "green"
SEED, STEPS, WIDTH, HEIGHT = 1234, 5, 48, 32  # non-square on purpose


def _diffusers_pipeline(folder):
    pipe = diffusers_pipeline(folder)
    pipe.model_scheduler_config = dict(pipe.scheduler.config)  # before any swap below
    return pipe


@pytest.fixture(scope="module")
def pipelines(tiny_sd1, tiny_sd2):
    return {"sd1": _diffusers_pipeline(tiny_sd1), "sd2": _diffusers_pipeline(tiny_sd2)}


def _reference(pipe, sampler_name: str, seed: int, **kwargs):
    """diffusers' picture: scheduler from the model's config, a CPU generator seeded ``seed``."""
    sampler = SAMPLERS[sampler_name]
    scheduler_class = getattr(diffusers, sampler.scheduler_class)
    config = pipe.model_scheduler_config
    if sampler.name == "dpmpp_2m_karras":
        pipe.scheduler = scheduler_class.from_config(config, use_karras_sigmas=True)
    else:
        pipe.scheduler = scheduler_class.from_config(config)
    generator = torch.Generator("cpu").manual_seed(seed)
    return pipe(generator=generator, output_type="pil", **kwargs).images[0]


@pytest.mark.parametrize("family", ["sd1", "sd2"])
@pytest.mark.parametrize("sampler", list(SAMPLERS))
def test_every_sampler_matches_diffusers(family, sampler, pipelines, sd1_model, sd2_model):
    model = {"sd1": sd1_model, "sd2": sd2_model}[family]
    pipe = pipelines[family]
    request = GenerationRequest(
        prompt=PROMPT,
        negative_prompt=NEGATIVE,
        num_images=2,
        steps=STEPS,
        guidance_scale=7.5,
        sampler=sampler,
        width=WIDTH,
        height=HEIGHT,
        seed=SEED,
    )
    result = txt2img(model, request)
    common = dict(
        prompt=PROMPT,
        negative_prompt=NEGATIVE,
        num_inference_steps=STEPS,
        guidance_scale=7.5,
        width=WIDTH,
        height=HEIGHT,
    )
    for i, image in enumerate(result.images):
        reference = _reference(pipe, sampler, SEED + i, **common)
        assert image.size == (WIDTH, HEIGHT)
        assert max_pixel_diff(image, reference) <= TOLERANCE, f"image {i}"


@pytest.mark.parametrize("eta", [0.5, 1.0])
def test_ddim_eta_matches_diffusers(eta, pipelines, sd1_model):
    """DDIM's fresh noise at every step comes from each picture's own generator, as diffusers
    draws it from the generator of a one-picture call; eta 0 would give another picture."""
    request = GenerationRequest(
        prompt=PROMPT, num_images=2, steps=STEPS, sampler="ddim", eta=eta,
        width=WIDTH, height=HEIGHT, seed=SEED,
    )  # fmt: skip
    result = txt2img(sd1_model, request)
    common = dict(prompt=PROMPT, num_inference_steps=STEPS, width=WIDTH, height=HEIGHT)
    for i, image in enumerate(result.images):
        reference = _reference(pipelines["sd1"], "ddim", SEED + i, eta=eta, **common)
        assert max_pixel_diff(image, reference) <= TOLERANCE, f"image {i}"
    deterministic = txt2img(sd1_model, request.replace(eta=0.0)).images[0]
    assert mean_pixel_diff(result.images[0], deterministic) > 1


def test_the_comparison_can_fail(pipelines, sd1_model):
    """Guard for the test above: another seed gives a clearly different picture."""
    request = GenerationRequest(prompt=PROMPT, steps=STEPS, width=WIDTH, height=HEIGHT, seed=SEED)
    image = txt2img(sd1_model, request.replace(sampler="euler")).images[0]
    other = _reference(
        pipelines["sd1"],
        "euler",
        SEED + 1,
        prompt=PROMPT,
        num_inference_steps=STEPS,
        width=WIDTH,
        height=HEIGHT,
    )
    assert max_pixel_diff(image, other) > 10 * TOLERANCE
    assert mean_pixel_diff(image, other) > 5


def test_model_default_sampler_and_guidance_one(pipelines, sd2_model):
    """No sampler given = the model's own scheduler; guidance 1 skips the unconditional pass."""
    request = GenerationRequest(prompt=PROMPT, steps=STEPS, guidance_scale=1.0, seed=SEED)
    result = txt2img(sd2_model, request)
    assert result.request.sampler == "pndm"
    reference = _reference(
        pipelines["sd2"],
        "pndm",
        SEED,
        prompt=PROMPT,
        num_inference_steps=STEPS,
        guidance_scale=1.0,
    )
    assert max_pixel_diff(result.images[0], reference) <= TOLERANCE


def test_sdgen_generate_writes_diffusers_pictures(tmp_path, capsys, pipelines, tiny_sd1):
    """The same check through the command line: the PNGs on disk equal diffusers' pictures."""
    from PIL import Image

    from sdgen.cli import main

    args = ["generate", PROMPT, "--negative-prompt", NEGATIVE, "--model", str(tiny_sd1)]
    args += ["--seed", str(SEED), "--num-images", "2", "--steps", str(STEPS)]
    args += ["--sampler", "DPM++ 2M Karras", "--width", str(WIDTH), "--height", str(HEIGHT)]
    assert main([*args, "--out", str(tmp_path)]) == 0
    paths = capsys.readouterr().out.split()
    common = dict(prompt=PROMPT, negative_prompt=NEGATIVE, num_inference_steps=STEPS)
    for i, path in enumerate(paths):
        reference = _reference(
            pipelines["sd1"], "dpmpp_2m_karras", SEED + i, width=WIDTH, height=HEIGHT, **common
        )
        with Image.open(path) as image:
            assert max_pixel_diff(image.convert("RGB"), reference) <= TOLERANCE


@pytest.mark.parametrize("family", ["sd1", "sd2"])
@pytest.mark.parametrize("reading", [{}, {"long_prompt": "chunk", "emphasis": "original"}])
def test_clip_skip_matches_diffusers_with_one_less(
    family, reading, pipelines, sd1_model, sd2_model
):
    """A1111's clip skip 2 is diffusers' clip_skip=1: the penultimate layer through the final
    layer norm; the same through sdgen's chunked and emphasis readings (a prompt without
    brackets, within 75 tokens); and a negative prompt cached at clip skip 1 is not reused.

    As A1111, sdgen reads the negative prompt at the same layer. diffusers 0.42's
    StableDiffusionPipeline applies clip_skip to the prompt only (its SDXL pipelines were fixed
    for this, diffusers PR #13973), so the reference is diffusers' ``encode_prompt`` with
    clip_skip=1 for the prompt and for the negative prompt, passed in as embeddings."""
    from types import SimpleNamespace

    model = {"sd1": sd1_model, "sd2": sd2_model}[family]
    pipe = pipelines[family]
    encoder = pipe.text_encoder
    if not hasattr(encoder, "text_model"):
        # diffusers 0.42's clip_skip branch reads text_encoder.text_model.final_layer_norm,
        # which transformers 5.6+ flattened away (diffusers issue #14124); the guard of
        # diffusers PR #14043, as a plain attribute (not a submodule)
        encoder.__dict__["text_model"] = SimpleNamespace(final_layer_norm=encoder.final_layer_norm)
    base = GenerationRequest(
        PROMPT, negative_prompt=NEGATIVE, steps=STEPS, sampler="euler", seed=SEED, **reading
    )
    common = dict(
        prompt=PROMPT, negative_prompt=NEGATIVE, num_inference_steps=STEPS, width=64, height=64
    )
    last = txt2img(model, base.replace(width=64, height=64)).images[0]  # caches NEGATIVE
    skipped = txt2img(model, base.replace(width=64, height=64, clip_skip=2)).images[0]
    embeds = {
        name: pipe.encode_prompt(text, "cpu", 1, False, clip_skip=1)[0]
        for name, text in (("prompt_embeds", PROMPT), ("negative_prompt_embeds", NEGATIVE))
    }
    size = dict(num_inference_steps=STEPS, width=64, height=64)
    reference = _reference(pipe, "euler", SEED, **embeds, **size)
    assert max_pixel_diff(skipped, reference) <= TOLERANCE
    assert max_pixel_diff(last, reference) > 10  # clip skip changes the picture
    assert max_pixel_diff(last, _reference(pipe, "euler", SEED, **common)) <= TOLERANCE


def test_clip_skip_past_the_text_encoders_layers_is_refused(sd1_model):
    from sdgen.errors import InvalidRequest

    layers = sd1_model.text_encoder.config.num_hidden_layers
    with pytest.raises(InvalidRequest, match=f"1 to {layers}: this model's text encoder"):
        txt2img(sd1_model, GenerationRequest(PROMPT, steps=1, clip_skip=layers + 1))
    with pytest.raises(InvalidRequest, match="from 1 to 12"):
        GenerationRequest(PROMPT, clip_skip=0)
