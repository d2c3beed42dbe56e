"""A1111's prompt editing [from:to:when] and alternation [a|b]: the schedules A1111's
prompt_parser makes, and pictures against diffusers' pipelines whose prompt embeddings are
swapped between steps (callback_on_step_end)."""

from __future__ import annotations

import pytest
import torch
from helpers import batched_pictures, diffusers_pipeline, max_pixel_diff

from sdgen.conditioning.schedules import prompt_schedule, text_at_step
from sdgen.params import GenerationRequest
from sdgen.pipelines.generate import generate

# A1111's prompt_parser documents its schedules with these (get_learned_conditioning_prompt
# _schedules over 10 steps, and the 100-step example of its module comment): the spec.
A1111_SCHEDULES = {
    "test": [(10, "test")],
    "a [b:3]": [(3, "a "), (10, "a b")],
    "a [b: 3]": [(3, "a "), (10, "a b")],
    "a [[[b]]:2]": [(2, "a "), (10, "a [[b]]")],
    "[(a:2):3]": [(3, ""), (10, "(a:2)")],
    "a [b : c : 1] d": [(1, "a b  d"), (10, "a  c  d")],
    "a[b:[c:d:2]:1]e": [(1, "abe"), (2, "ace"), (10, "ade")],
    "a [unbalanced": [(10, "a [unbalanced")],
    "a [b:.5] c": [(5, "a  c"), (10, "a b c")],
    "((a][:b:c [d:3]": [(3, "((a][:b:c "), (10, "((a][:b:c d")],
    "[a|(b:1.1)]": [(k, "a" if k % 2 else "(b:1.1)") for k in range(1, 11)],
    "[fe|]male": [(k, "female" if k % 2 else "male") for k in range(1, 11)],
    "[fe|||]male": [(k, "female" if k % 4 == 1 else "male") for k in range(1, 11)],
}
# A1111's "new" timelines (its default since 1.6): a number with a decimal point is a
# fraction, without one a step; below step 1 an edit has happened before the first step;
# whitespace may follow the number; a number that is not finite is text
A1111_TIMELINES = {
    "[a:b:1.0]": [(10, "a")],
    "[a:b:2.5]": [(10, "a")],
    "[a:b:0]": [(10, "b")],
    "[a:b:0.01]": [(10, "b")],
    "x [cat:dog:0.5 ] y": [(5, "x cat y"), (10, "x dog y")],
    "[a:b:1e400]": [(10, "[a:b:1e400]")],
}
# and over a hires fix's pass of 10 steps after 10 (A1111's doctests): 1.0-2.0 and steps past
# the first pass's fall in it
A1111_HIRES = {
    "a [b:.5] c": [(10, "a b c")],
    "a [b:1.5] c": [(5, "a  c"), (10, "a b c")],
    "a [b:15] c": [(5, "a  c"), (10, "a b c")],
}


@pytest.mark.parametrize(("prompt", "schedule"), {**A1111_SCHEDULES, **A1111_TIMELINES}.items())
def test_schedules_are_a1111s(prompt, schedule):
    assert prompt_schedule(prompt, 10) == schedule


@pytest.mark.parametrize(("prompt", "schedule"), A1111_HIRES.items())
def test_hires_schedules_are_a1111s(prompt, schedule):
    assert prompt_schedule(prompt, 10, first_pass_steps=10) == schedule


def test_deep_nesting_is_read_without_recursion_and_refused_by_the_emphasis_check():
    from sdgen.errors import InvalidRequest

    prompt = "[" * 5000 + "a:b:3" + "]" * 5000
    # no recursion error: the brackets past MAX_NESTING are text
    assert {end for end, _ in prompt_schedule(prompt, 10)} <= {3, 10}
    with pytest.raises(InvalidRequest, match="prompt.*nested brackets"):
        GenerationRequest(prompt, emphasis="original")


def test_each_text_a_schedule_reads_is_checked():
    """A weight past the limit, or a BREAK that a schedule places outside brackets, is seen in
    the text that reads it, as the encoder reads it."""
    from sdgen.errors import InvalidRequest

    with pytest.raises(InvalidRequest, match=r"prompt: .:1000\). is not allowed; a weight"):
        GenerationRequest("a (cat:[1:1000:5]) x", emphasis="original")
    request = GenerationRequest("[a BREAK b:c:3]", emphasis="original", long_prompt="chunk")
    assert request.prompt == "[a BREAK b:c:3]"


def test_an_edit_past_the_last_step_still_takes_its_brackets_out(tiny_sd1):
    """One stretch: the schedule's text is encoded ("a cat x"), not the brackets as emphasis."""
    from sdgen.conditioning.prompts import encode_scheduled
    from sdgen.models.loader import load_model

    model = load_model(tiny_sd1, device="cpu")
    args = (model.tokenizer, model.text_encoder)
    options = dict(guided=True, device="cpu", dtype=torch.float32, emphasis="original")
    edited = encode_scheduled(*args, [("a [cat:dog:20] x", "")], 10, **options)
    plain = encode_scheduled(*args, [("a cat x", "")], 10, **options)
    assert torch.equal(edited.rows[1], plain.rows[1])


def test_a1111s_long_example():
    prompt = (
        "fantasy landscape with a [mountain:lake:0.25] and [an oak:a christmas tree:0.75]"
        "[ in foreground::0.6][ in background:0.25] [shoddy:masterful:0.5]"
    )
    base = "fantasy landscape with a "
    assert prompt_schedule(prompt, 100) == [
        (25, base + "mountain and an oak in foreground shoddy"),
        (50, base + "lake and an oak in foreground in background shoddy"),
        (60, base + "lake and an oak in foreground in background masterful"),
        (75, base + "lake and an oak in background masterful"),
        (100, base + "lake and a christmas tree in background masterful"),
    ]
    # a step reads the first entry not ended before it (A1111's reconstruct_cond_batch)
    schedule = prompt_schedule("a [b:3]", 10)
    assert [text_at_step(schedule, s) for s in (0, 3, 4, 9)] == ["a ", "a ", "a b", "a b"]


REQUEST = GenerationRequest(
    "a red circle",
    negative_prompt="blue",
    steps=6,
    width=32,
    height=32,
    seed=5,
    sampler="euler",
    emphasis="original",
)


def _euler(config):
    """diffusers' scheduler as sdgen's "euler" sampler makes it from ``config``."""
    from sdgen.sampling.samplers import make_scheduler, resolve_sampler

    return make_scheduler(resolve_sampler("euler"), config)


def _swapped_latents(pipe, texts_at: list[str], negatives_at: list[str], **call):
    """diffusers' ``pipe`` (with ``call``'s arguments) given each step's prompt embeddings:
    [negative; prompt] as the pipeline holds them while guiding, swapped in for the next step
    by its step-end callback; its final latents."""

    def embeds(step: int) -> torch.Tensor:
        prompt, negative = pipe.encode_prompt(
            texts_at[step], "cpu", 1, True, negative_prompt=negatives_at[step]
        )
        return torch.cat([negative, prompt])

    def callback(_pipe, step, _timestep, tensors):
        if step + 1 < len(texts_at):
            tensors["prompt_embeds"] = embeds(step + 1)
        return tensors

    first_negative, first_prompt = embeds(0).chunk(2)  # [negative; prompt]
    return pipe(
        prompt_embeds=first_prompt,
        negative_prompt_embeds=first_negative,
        generator=torch.Generator().manual_seed(5),
        callback_on_step_end=callback,
        callback_on_step_end_tensor_inputs=["prompt_embeds"],
        output_type="latent",
        **call,
    ).images


def _final_latents(model, request) -> torch.Tensor:
    """sdgen's latents after the last step, (B, 4, h, w)."""
    final = {}
    generate(model, request, callback=lambda step: final.update(latents=step.latents))
    return final["latents"]


def _steps_texts(text: str, steps: int) -> list[str]:
    return [text_at_step(prompt_schedule(text, steps), s) for s in range(steps)]


@pytest.mark.parametrize(
    ("prompt", "negative"),
    [
        ("a [red circle:blue square:2]", "blue"),  # indices 0-2 the first, 3-5 the second
        ("a [red circle:blue square:0.5]", "blue"),  # the same, as a fraction of 6 steps
        ("a [red|green] circle", "[blue:grey:2]"),  # alternates; the negative is edited too
    ],
)
def test_latents_are_diffusers_with_the_embeddings_swapped_between_steps(
    tiny_sd1, prompt, negative
):
    """diffusers' pipeline given each step's prompt embeddings (swapped in its step-end
    callback, at A1111's steps): the same latents; a swap one step earlier or later: other
    latents. Compared as latents: on the tiny model a late swap moves pixels by 1-2 levels."""
    from sdgen.models.loader import load_model

    model = load_model(tiny_sd1, device="cpu")
    request = REQUEST.replace(prompt=prompt, negative_prompt=negative)
    latents = _final_latents(model, request)
    pipe = diffusers_pipeline(tiny_sd1)
    pipe.scheduler = _euler(pipe.scheduler.config)

    def reference(prompts, negatives):
        size = dict(width=32, height=32)
        return _swapped_latents(pipe, prompts, negatives, num_inference_steps=6, **size)

    prompts, negatives = _steps_texts(prompt, 6), _steps_texts(negative, 6)
    assert len(set(prompts)) == 2  # the reference does change its prompt
    assert float((latents - reference(prompts, negatives)).abs().max()) <= 1e-4
    for shifted in (prompts[1:] + prompts[-1:], prompts[:1] + prompts[:-1]):  # a step off
        assert float((latents - reference(shifted, negatives)).abs().max()) > 1e-2
    unchanged = request.replace(prompt=prompts[0], negative_prompt=negatives[0])
    assert float((latents - _final_latents(model, unchanged)).abs().max()) > 1e-2


def test_img2img_counts_the_schedule_from_its_first_step_over_the_requests_steps(tiny_sd1):
    """As A1111's img2img: the schedule is over the request's steps (8), read from the first
    step that runs (strength 0.5: 4 steps, indices 0-3): [a:b:0.25] reads a at 0-2, b at 3."""
    from diffusers import StableDiffusionImg2ImgPipeline
    from PIL import Image

    from sdgen.models.loader import load_model
    from sdgen.params import InputPicture

    init = Image.new("RGB", (32, 32), (200, 40, 40))
    prompt = "[a red circle:a blue square:0.25]"
    request = REQUEST.replace(
        prompt=prompt, steps=8, strength=0.5, init_image=InputPicture.from_image(init)
    )
    latents = _final_latents(load_model(tiny_sd1, device="cpu"), request)
    pipe = StableDiffusionImg2ImgPipeline(**diffusers_pipeline(tiny_sd1).components)
    pipe.scheduler = _euler(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)

    def reference(texts):
        call = dict(image=init, strength=0.5, num_inference_steps=8)
        return _swapped_latents(pipe, texts, ["blue"] * 4, **call)

    texts = ["a red circle"] * 3 + ["a blue square"]
    assert float((latents - reference(texts)).abs().max()) <= 1e-4
    # counted over the 4 steps that run instead: the swap would come at index 1
    other = ["a red circle"] * 2 + ["a blue square"] * 2
    assert float((latents - reference(other)).abs().max()) > 1e-2


def test_a_scheduled_request_batched_with_a_plain_one_gets_its_picture_alone(tiny_sd1):
    from sdgen.models.loader import load_model

    model = load_model(tiny_sd1, device="cpu")
    requests = [
        REQUEST.replace(prompt="a [red|green] [circle:square:0.5]"),
        REQUEST,
        REQUEST.replace(prompt="[a red circle::3] on grey", seed=9),
    ]
    alone = [generate(model, r).images[0] for r in requests]
    batched = batched_pictures(model, requests)
    for picture, own in zip(batched, alone, strict=True):
        assert max_pixel_diff(picture, own) <= 1


def test_the_hires_pass_goes_on_along_the_prompts_timeline(tiny_sd1):
    """As A1111's new timelines: an edit at 1.5 (or at step 8 of 6 + 4) leaves the first pass
    alone and swaps half way through the hires pass."""
    from sdgen.models.loader import load_model
    from sdgen.pipelines.txt2img import start_txt2img
    from sdgen.sampling.embeddings import EmbeddingSchedule

    model = load_model(tiny_sd1, device="cpu")
    for edit in ("1.5", "8"):  # half way through the pass; step 8 of 6 + 4
        request = REQUEST.replace(
            prompt=f"a [red circle:blue square:{edit}]", hires={"scale": 2, "steps": 4}
        )
        prepared = start_txt2img(model, request)
        assert not isinstance(prepared.state.embeddings, EmbeddingSchedule)  # first: red
        prepared.state.position = len(prepared.state.run.timesteps)  # as if the pass ran
        prepared.start_next_pass()
        second = prepared.state.embeddings
        assert isinstance(second, EmbeddingSchedule) and [e for e, _ in second.entries] == [2, 4]
    assert generate(model, request).images[0].size == (64, 64)


def test_a_prompts_schedule_texts_share_one_emphasis_mean_and_chunk_count(tiny_sd1):
    """As A1111 encodes one prompt's schedule (one batch): each chunk's emphasis rescaled with
    the mean over all its texts, and the texts padded with empty chunks to one count."""
    from sdgen.conditioning.prompts import encode_scheduled, encode_text
    from sdgen.models.loader import load_model

    model = load_model(tiny_sd1, device="cpu")
    args = (model.tokenizer, model.text_encoder)
    texts = ["(red circle on grey:3)", "(a blue square:0.3) with stripes"]
    plain = ["red circle on grey", "a blue square with stripes"]
    raw = torch.stack(encode_text(*args, plain, "cpu"))
    weighted = torch.stack(encode_text(*args, texts, "cpu", emphasis="no_norm"))
    expected = weighted * (raw.mean() / weighted.mean())  # A1111's z * (mean / new mean)
    together = torch.stack(encode_text(*args, texts, "cpu", emphasis="original", together=True))
    assert torch.allclose(together, expected, atol=1e-4)  # measured 6e-5
    alone = torch.stack(encode_text(*args, texts, "cpu", emphasis="original"))
    assert float((alone - expected).abs().max()) > 0.1  # each rescaled alone: 0.44
    # the stretches of a schedule get those rows
    options = dict(guided=True, device="cpu", dtype=torch.float32, emphasis="original")
    edited = "[(red circle on grey:3):(a blue square:0.3) with stripes:2]"
    schedule = encode_scheduled(*args, [(edited, "")], 6, **options)
    assert [end for end, _ in schedule.entries] == [2, 6]
    for (_, embeddings), row in zip(schedule.entries, together, strict=True):
        assert torch.equal(embeddings.rows[1], row)
    # chunks: a text of one chunk beside one of two is padded to two
    words = " ".join(["cat"] * 80)
    chunked = encode_text(
        *args, ["a dog", words], "cpu", emphasis="original", long_prompt="chunk", together=True
    )
    window = model.tokenizer.model_max_length
    assert [len(e) for e in chunked] == [2 * window, 2 * window]
