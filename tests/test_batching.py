"""Batching across requests: each request's pictures and steps are those it gets alone."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import max_pixel_diff
from PIL import Image

from sdgen.engine.batching import Batcher
from sdgen.errors import GenerationCancelled, GenerationStopped
from sdgen.models.loader import load_model
from sdgen.params import GenerationRequest, InputPicture
from sdgen.pipelines.generate import generate
from sdgen.pipelines.txt2img import txt2img

STEPS = 4
# Different prompts, seeds, samplers (euler_a draws noise every step) and guidance (1.0: no
# unconditional half), so the shared UNet call mixes timesteps and row counts.
REQUESTS = [
    GenerationRequest(prompt=p, steps=STEPS, seed=s, sampler=k, guidance_scale=g, negative_prompt=n)
    for p, s, k, g, n in [
        ("a red circle", 1, "euler_a", 7.5, ""),
        ("a blue square", 2, "dpmpp_2m", 7.5, "green"),
        ("a white triangle", 3, "ddim", 1.0, ""),
        ("a yellow star", 4, "euler_a", 1.0, ""),
        ("a green field", 5, "dpmpp_2m", 3.0, ""),
        ("a black cat", 6, "ddim", 12.0, "blurry"),
        ("an orange sun", 7, "euler_a", 5.0, ""),
        ("a grey wall", 8, "dpmpp_2m", 1.0, ""),
    ]
]
JOINS = [0, 0, 0, 1, 1, 2, 3, 3]  # the step boundary at which each request joins


class Recorder:
    """A step callback that keeps (index, total, timestep) of every step."""

    def __init__(self):
        self.steps = []

    def __call__(self, step):
        self.steps.append((step.index, step.total, step.timestep))


def run_batched(model, requests, joins, callbacks=None):
    """Add each request at its step boundary and step until all are done; results in order."""
    batcher, tickets, finished, boundary = Batcher(model), {}, {}, 0
    callbacks = callbacks or [None] * len(requests)
    while len(finished) < len(requests):
        for i, join in enumerate(joins):
            if join == boundary:
                tickets[id(batcher.add(requests[i], callbacks[i]))] = i
        for done in batcher.step():
            finished[tickets[id(done.prepared)]] = done
        boundary += 1
    return [finished[i] for i in range(len(requests))]


def check_equal_to_alone(model, requests, joins) -> int:
    recorders = [Recorder() for _ in requests]
    batched = run_batched(model, requests, joins, recorders)
    worst = 0
    for i, (request, done) in enumerate(zip(requests, batched, strict=True)):
        alone_steps = Recorder()
        alone = generate(model, request, alone_steps)
        assert done.error is None, done.error
        assert done.result.request == alone.request
        worst = max(worst, max_pixel_diff(done.result.images[0], alone.images[0]))
        assert recorders[i].steps == alone_steps.steps, f"request {i}"
        resolved = alone.request  # strength filled in
        runs = (
            request.steps if request.mode == "txt2img" else int(request.steps * resolved.strength)
        )
        assert [index for index, _, _ in recorders[i].steps] == list(range(runs))
    print(f"max pixel difference batched vs alone: {worst}/255")
    return worst


def test_eight_joining_requests_equal_each_request_alone(sd1_model):
    assert check_equal_to_alone(sd1_model, REQUESTS, JOINS) <= 1


def test_on_the_embedded_model():
    model = load_model(device="cpu")
    requests = [r.replace(width=64, height=64) for r in REQUESTS]
    assert check_equal_to_alone(model, requests, JOINS) <= 1


def test_one_shared_unet_call_per_step(sd1_model):
    rows = []
    hook = sd1_model.unet.register_forward_hook(lambda m, a, out: rows.append(a[0].shape[0]))
    try:
        run_batched(sd1_model, REQUESTS[:4], [0, 0, 0, 1])
    finally:
        hook.remove()
    # requests 0-1 guide (2 rows each), 2-3 do not (1 row); request 3 joins one step late.
    assert rows == [5, 6, 6, 6, 1]


def test_every_unet_call_takes_one_float32_timestep_per_row(sd1_model):
    # One timestep form, alone or shared, so a compiled UNet compiles one kind of call.
    calls = []

    def record(module, args):
        calls.append((args[0].shape[0], tuple(args[1].shape), args[1].dtype))

    hook = sd1_model.unet.register_forward_pre_hook(record)
    try:
        generate(sd1_model, REQUESTS[1])  # alone, guided: 2 rows
        run_batched(sd1_model, REQUESTS[:3], [0, 0, 0])  # shared: 2 + 2 + 1 rows
    finally:
        hook.remove()
    assert calls == [(2, (2,), torch.float32)] * STEPS + [(5, (5,), torch.float32)] * STEPS


def test_a_cancelled_request_leaves_alone(sd1_model):
    def cancel_at_step_one(step):
        if step.index == 1:
            raise GenerationCancelled()

    requests = REQUESTS[:3]
    done = run_batched(sd1_model, requests, [0, 0, 0], [None, cancel_at_step_one, None])
    assert isinstance(done[1].error, GenerationCancelled) and done[1].result is None
    for i in (0, 2):
        alone = txt2img(sd1_model, requests[i]).images[0]
        assert max_pixel_diff(done[i].result.images[0], alone) <= 1


def test_a_stopped_request_leaves_with_the_pictures_predicted_at_its_step(sd1_model):
    """GenerationStopped (A1111's interrupt): the request ends after step 2 of 4 with the
    decoded x0 of that step, alone or batched; the others go on to their own pictures."""
    from sdgen.media.images import decode_latents
    from sdgen.pipelines.generate import start
    from sdgen.pipelines.stages import run_alone

    denoised = {}

    def stop_after_step_two(step):
        if step.index == 1:
            denoised["x0"] = step.denoised.clone()
            raise GenerationStopped(step.index + 1, step.total, step.denoised)

    requests = REQUESTS[:3]
    done = run_batched(sd1_model, requests, [0, 0, 0], [None, stop_after_step_two, None])
    stopped = done[1].result
    assert done[1].error is None and stopped.stopped_at == (2, STEPS)
    expected = decode_latents(sd1_model.vae, denoised["x0"])[0]
    assert max_pixel_diff(stopped.images[0], expected) == 0
    finished = txt2img(sd1_model, requests[1]).images[0]
    assert max_pixel_diff(stopped.images[0], finished) > 10  # not the finished picture
    for i in (0, 2):
        alone = txt2img(sd1_model, requests[i]).images[0]
        assert max_pixel_diff(done[i].result.images[0], alone) <= 1
    alone = run_alone(sd1_model, start(sd1_model, requests[1], stop_after_step_two))
    assert alone.stopped_at == (2, STEPS)
    assert max_pixel_diff(alone.images[0], stopped.images[0]) <= 1


def test_a_stopped_inpainting_keeps_the_init_picture_outside_the_mask(sd1_model):
    """4-channel inpainting blends the init picture back after every step: a stopped run's
    predicted picture is blended as after the last step, so the kept part is the init
    picture's, as in the finished run (the prediction alone repaints it too)."""
    from sdgen.media.images import decode_latents
    from sdgen.pipelines.generate import start
    from sdgen.pipelines.stages import run_alone

    size = sd1_model.native_size
    init, mask = _picture(size, 0), _picture(size, 0, "L")  # repaint the left half
    request = REQUESTS[0].replace(steps=6, init_image=init, mask=mask, strength=0.7)
    seen = {}

    def stop_at_step_two(step):
        if step.index == 1:
            seen["x0"] = step.denoised.clone()
            raise GenerationStopped(2, step.total, step.denoised)

    stopped = run_alone(sd1_model, start(sd1_model, request, stop_at_step_two)).images[0]
    finished = generate(sd1_model, request).images[0]
    unblended = decode_latents(sd1_model.vae, seen["x0"])[0]

    def kept_difference(picture) -> float:  # mean, over the right quarter (far from the edge)
        a, b = (np.asarray(p, dtype=np.float32)[:, 3 * size // 4 :] for p in (picture, finished))
        return float(np.abs(a - b).mean())

    assert kept_difference(stopped) < 2
    assert kept_difference(unblended) > 4 * max(kept_difference(stopped), 0.5)


def test_requests_of_another_size_are_not_compatible_but_run_apart(sd1_model):
    """The worker only joins requests of the batch's size (they share UNet calls); one of
    another size that is added anyway (a hires fix's second pass is one) is called apart and
    gets the pictures it gets alone."""
    batcher = Batcher(sd1_model)
    size = sd1_model.native_size
    first = REQUESTS[0].replace(width=size, height=size)
    batcher.add(first)
    other = REQUESTS[1].replace(width=2 * size, height=size)
    assert not batcher.compatible(other)
    batcher.add(other)
    done = batcher.run_until_done()
    for request, finished in zip((first, other), done, strict=True):
        assert finished.error is None
        alone = txt2img(sd1_model, request).images[0]
        assert finished.result.images[0].size == alone.size
        assert max_pixel_diff(finished.result.images[0], alone) <= 1


def _picture(size: int, seed: int, mode: str = "RGB") -> InputPicture:
    """A smooth test picture (or a half-white mask with mode "L")."""
    y, x = np.mgrid[0:size, 0:size] / size
    if mode == "L":
        return InputPicture.from_image(Image.fromarray(((x < 0.5) * 255).astype(np.uint8), "L"))
    rng = np.random.default_rng(seed)
    channels = [np.sin(6 * x * rng.uniform(0.5, 2) + 3 * y + rng.uniform(0, 6)) for _ in range(3)]
    return InputPicture.from_image(
        Image.fromarray(((np.stack(channels, -1) + 1) * 127.5).astype(np.uint8))
    )


def test_txt2img_img2img_and_inpainting_share_steps(sd1_model):
    """img2img (fewer timesteps, starting part-way) and 4-channel inpainting (blending after each
    step) in one batch with txt2img: each equals its own pipeline run alone."""
    size = sd1_model.native_size
    init, mask = _picture(size, 0), _picture(size, 0, "L")
    requests = [
        REQUESTS[0].replace(steps=6),
        REQUESTS[1].replace(steps=6, init_image=init, strength=0.5),  # 3 steps
        REQUESTS[2].replace(steps=6, init_image=init, mask=mask, strength=0.7),  # 4 steps
        REQUESTS[5].replace(steps=6, init_image=_picture(size, 1), strength=1.0),
        REQUESTS[4].replace(steps=5, init_image=init, mask=mask, strength=1.0),
    ]
    assert [r.mode for r in requests] == ["txt2img", "img2img", "inpaint", "img2img", "inpaint"]
    assert check_equal_to_alone(sd1_model, requests, [0, 0, 1, 2, 2]) <= 1


def test_inpainting_with_mask_processing_shares_steps(sd1_model):
    """Blur, only the masked area (its own output size), fill and overlay: each request's
    pictures are still those it gets alone."""
    size = sd1_model.native_size
    init, mask = _picture(size + 8, 0), _picture(size + 8, 0, "L")
    requests = [
        REQUESTS[0].replace(steps=4),
        REQUESTS[1].replace(
            steps=4, init_image=init, mask=mask, strength=0.75, mask_blur=2, padding_mask_crop=1
        ),
        REQUESTS[2].replace(
            steps=4,
            init_image=init,
            mask=mask,
            masked_content="fill",
            overlay=True,
            resize=True,
            strength=0.75,
        ),
    ]
    requests[2] = requests[2].replace(width=size, height=size)
    batched = run_batched(sd1_model, requests, [0, 0, 1])
    assert batched[1].result.images[0].size == (size + 8, size + 8)  # pasted back
    assert check_equal_to_alone(sd1_model, requests, [0, 0, 1]) <= 1


@pytest.fixture(scope="module")
def inpainting_model(inpaint_folder):
    return load_model(inpaint_folder)


def test_a_nine_channel_inpainting_model_batches_its_requests(inpainting_model):
    size = inpainting_model.native_size
    mask = _picture(size, 0, "L")
    requests = [
        REQUESTS[i].replace(steps=4, init_image=_picture(size, i), mask=mask, strength=strength)
        for i, strength in [(0, 1.0), (1, 0.75), (2, 1.0)]
    ]
    assert check_equal_to_alone(inpainting_model, requests, [0, 1, 1]) <= 1


def test_out_of_memory_in_the_shared_call_retries_each_request_alone(sd1_model):
    """A shared UNet call that runs out of memory is split: the requests that fit alone go on
    with their own pictures; one that does not fit even alone leaves with the error."""
    import torch

    requests = [REQUESTS[0], REQUESTS[1], REQUESTS[2].replace(num_images=3)]  # 2, 2 and 3 rows
    batcher = Batcher(sd1_model)
    real_unet = batcher.unet

    def small_memory_unet(sample, *args, **kwargs):
        if sample.shape[0] > 2:  # "memory" for 2 rows at a time
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 1 GiB")
        return real_unet(sample, *args, **kwargs)

    batcher.unet = small_memory_unet
    tickets = {id(batcher.add(request)): i for i, request in enumerate(requests)}
    done = {tickets[id(f.prepared)]: f for f in batcher.run_until_done()}
    assert isinstance(done[2].error, torch.cuda.OutOfMemoryError) and done[2].result is None
    for i in (0, 1):
        assert done[i].error is None
        alone = txt2img(sd1_model, requests[i]).images[0]
        assert max_pixel_diff(done[i].result.images[0], alone) <= 1


def test_a_request_whose_pictures_cannot_be_decoded_leaves_alone(sd1_model):
    batcher = Batcher(sd1_model)
    requests = [REQUESTS[0].replace(steps=2), REQUESTS[1], REQUESTS[2]]
    tickets = {id(batcher.add(request)): i for i, request in enumerate(requests)}
    broken = batcher.active[0]

    def failing_decode(model, stopped=None):
        raise RuntimeError("the VAE ran out of something")

    broken.result = failing_decode  # the first to finish, while the others still denoise
    done = {tickets[id(f.prepared)]: f for f in batcher.run_until_done()}
    assert isinstance(done[0].error, RuntimeError) and done[0].result is None
    for i in (1, 2):
        assert done[i].error is None
        alone = txt2img(sd1_model, requests[i]).images[0]
        assert max_pixel_diff(done[i].result.images[0], alone) <= 1
