"""Seeds, batches, guidance and the step callback of the one denoising loop."""

from __future__ import annotations

import pytest
import torch
from helpers import max_pixel_diff

from sdgen.errors import GenerationCancelled
from sdgen.media.images import decode_latents
from sdgen.params import GenerationRequest
from sdgen.pipelines.txt2img import txt2img

REQUEST = GenerationRequest(prompt="a blue triangle", steps=4, seed=100, sampler="euler_a")


@pytest.mark.parametrize("sampler", ["euler_a", "dpmpp_2m"])  # with and without sampler noise
def test_a_batch_of_four_equals_four_single_runs(sd1_model, sampler):
    batch = txt2img(sd1_model, REQUEST.replace(num_images=4, sampler=sampler))
    assert batch.seeds == [100, 101, 102, 103]
    for i, image in enumerate(batch.images):
        alone = txt2img(sd1_model, REQUEST.replace(seed=100 + i, sampler=sampler)).images[0]
        assert max_pixel_diff(image, alone) <= 1, f"image {i}"


def test_prompt_lists_and_per_image_seeds(sd1_model):
    both = txt2img(sd1_model, REQUEST.replace(prompt=["a red circle", "a white square"]))
    second = txt2img(sd1_model, REQUEST.replace(prompt="a white square", seed=101))
    assert max_pixel_diff(both.images[1], second.images[0]) <= 1
    assert max_pixel_diff(both.images[0], both.images[1]) > 10


def test_same_seed_same_picture_other_seed_other_picture(sd1_model):
    first = txt2img(sd1_model, REQUEST).images[0]
    assert max_pixel_diff(first, txt2img(sd1_model, REQUEST).images[0]) == 0
    assert max_pixel_diff(first, txt2img(sd1_model, REQUEST.replace(seed=7)).images[0]) > 10


def _unet_batch_sizes(model, request) -> list[int]:
    sizes = []
    hook = model.unet.register_forward_hook(lambda m, args, out: sizes.append(args[0].shape[0]))
    try:
        txt2img(model, request)
    finally:
        hook.remove()
    return sizes


def test_guidance_is_one_batched_call_and_off_at_scale_one(sd1_model):
    request = REQUEST.replace(num_images=3, sampler="ddim")
    assert _unet_batch_sizes(sd1_model, request) == [6] * 4  # [uncond; text] together
    assert _unet_batch_sizes(sd1_model, request.replace(guidance_scale=1.0)) == [3] * 4


def test_pictures_decode_together_in_chunks_within_the_pixel_bound(sd1_model):
    latents = torch.randn(5, 4, 16, 16, generator=torch.Generator().manual_seed(3))
    calls = []
    decode = sd1_model.vae.decode

    def counting(z, *args, **kwargs):
        calls.append(z.shape[0])
        return decode(z, *args, **kwargs)

    sd1_model.vae.decode = counting
    try:
        together = decode_latents(sd1_model.vae, latents, max_latent_pixels=2 * 16 * 16 + 10)
        alone = decode_latents(sd1_model.vae, latents, max_latent_pixels=1)
    finally:
        del sd1_model.vae.decode  # the instance attribute: the class's method again
    assert calls == [2, 2, 1] + [1] * 5
    for i, (a, b) in enumerate(zip(together, alone, strict=True)):
        assert max_pixel_diff(a, b) <= 1, f"picture {i}"


def test_negative_prompt_changes_the_picture(sd1_model):
    plain = txt2img(sd1_model, REQUEST).images[0]
    negative = txt2img(sd1_model, REQUEST.replace(negative_prompt="red")).images[0]
    assert max_pixel_diff(plain, negative) > 3


def test_step_callback_reports_every_step_and_can_cancel(sd2_model):
    steps = []
    txt2img(sd2_model, REQUEST.replace(num_images=2, steps=5), callback=steps.append)
    assert [s.index for s in steps] == [0, 1, 2, 3, 4] and {s.total for s in steps} == {5}
    assert steps[0].latents.shape == steps[0].denoised.shape == (2, 4, 16, 16)
    timesteps = [s.timestep for s in steps]
    assert timesteps == sorted(timesteps, reverse=True)
    # The last prediction of the clean latents is close to where the sampler ends.
    assert torch.allclose(steps[-1].denoised, steps[-1].latents, atol=0.05)

    seen = []

    def cancel_at_two(step):
        seen.append(step.index)
        if step.index == 2:
            raise GenerationCancelled

    with pytest.raises(GenerationCancelled):
        txt2img(sd2_model, REQUEST.replace(steps=10), callback=cancel_at_two)
    assert seen == [0, 1, 2]


def test_model_facts_come_from_its_configs(sd1_model, sd2_model):
    assert sd1_model.vae_scale_factor == 2  # the tiny VAE has two blocks: never a fixed 8
    assert (sd1_model.native_size, sd1_model.family, sd1_model.prediction_type) == (
        32,
        "sd1",
        "epsilon",
    )
    assert (sd2_model.family, sd2_model.prediction_type) == ("sd2", "v_prediction")
    result = txt2img(sd1_model, REQUEST)
    assert result.images[0].size == (32, 32) and result.request.width == 32
    assert result.request.precision == "fp32"


@pytest.mark.parametrize(("precision", "mean_limit"), [("fp16", 1.0), ("bf16", 3.0)])
def test_half_precisions_run_and_stay_close_to_fp32(tiny_sd1, sd1_model, precision, mean_limit):
    from helpers import mean_pixel_diff

    from sdgen.models.loader import load_model

    half = load_model(tiny_sd1, device="cpu", precision=precision)
    result = txt2img(half, REQUEST)
    assert result.request.precision == precision
    assert half.unet.dtype == half.vae.dtype == half.text_encoder.dtype != torch.float32
    reference = txt2img(sd1_model, REQUEST).images[0]
    assert mean_pixel_diff(result.images[0], reference) < mean_limit


def test_import_sdgen_stays_light():
    import subprocess
    import sys

    heavy = "{'torch', 'diffusers', 'transformers'}"
    code = f"import sys, sdgen; print(sorted({heavy} & set(sys.modules)))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.stdout.strip() == "[]", done.stdout + done.stderr


@pytest.mark.parametrize("sampler", ["ddim", "euler", "euler_a", "lms", "dpmpp_2m_karras"])
@pytest.mark.parametrize("family", ["sd1", "sd2"])
def test_denoised_preview_equals_the_schedulers_own_x0(sampler, family, sd1_model, sd2_model):
    """The callback's predicted x0 matches what the scheduler itself predicts, where it says."""
    from sdgen.pipelines import stages as pipeline

    model = {"sd1": sd1_model, "sd2": sd2_model}[family]
    theirs, ours = [], []
    original = pipeline.make_scheduler

    def recording_scheduler(*args, **kwargs):
        scheduler = original(*args, **kwargs)
        step = scheduler.step

        def recorded_step(*a, **k):
            out = step(*a, **k)
            x0 = getattr(out, "pred_original_sample", None)
            if x0 is None:  # DPM-Solver keeps its x0 as the last model output it converted
                x0 = scheduler.model_outputs[-1]
            theirs.append(x0.clone())
            return out

        scheduler.step = recorded_step
        return scheduler

    pipeline.make_scheduler = recording_scheduler
    try:
        txt2img(model, REQUEST.replace(sampler=sampler, steps=4), callback=lambda s: ours.append(s))
    finally:
        pipeline.make_scheduler = original
    assert len(theirs) == len(ours) == 4
    for step, x0 in zip(ours, theirs, strict=True):
        assert torch.allclose(step.denoised, x0, atol=1e-4), step.index


def test_a_step_callback_that_only_counts_computes_no_x0(sd1_model, monkeypatch):
    """A progress bar reads index and total: the predicted x0 is made only when asked for."""
    from sdgen.sampling import loop

    made, real = [], loop.predict_x0
    monkeypatch.setattr(loop, "predict_x0", lambda *a: made.append(1) or real(*a))
    counted = []
    txt2img(sd1_model, REQUEST, lambda step: counted.append((step.index, step.timestep)))
    assert [i for i, _ in counted] == [0, 1, 2, 3] and made == []
    assert all(isinstance(t, float) for _, t in counted)
    previews = []
    txt2img(sd1_model, REQUEST, lambda step: previews.append(step.denoised.shape))
    assert len(made) == 4 and previews == [(1, 4, 16, 16)] * 4  # 32x32 pictures


def test_tokenizing_from_two_threads_keeps_each_calls_padding():
    """A server tokenizes in its worker (padded prompts) and in request threads (token counts,
    unpadded) at once; the fast tokenizer's settings are shared, so sdgen serialises calls."""
    import threading

    from sdgen.conditioning.request_texts import truncation_warnings
    from sdgen.models.loader import load_model
    from sdgen.models.tokenizing import tokenize

    tokenizer = load_model(device="cpu").tokenizer
    length, wrong, done = tokenizer.model_max_length, [], threading.Event()

    def padded():
        try:
            for _ in range(1500):
                ids = tokenize(
                    tokenizer,
                    ["a red circle", ""],
                    padding="max_length",
                    max_length=length,
                    truncation=True,
                    return_tensors="pt",
                ).input_ids
                if ids.shape != (2, length):
                    wrong.append(tuple(ids.shape))
        except ValueError as err:  # rows of different lengths cannot make a tensor
            wrong.append(str(err).splitlines()[0])
        finally:
            done.set()

    def counting():  # unpadded, as when counting tokens; a batch keeps the race window open
        while not done.is_set():
            tokenize(tokenizer, ["a blue square on a red background"] * 8, verbose=False)
            truncation_warnings(tokenizer, GenerationRequest("a blue square"))

    threads = [threading.Thread(target=padded), threading.Thread(target=counting)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert wrong == []
