"""A1111's emphasis syntax, (words:1.2): parsing, the weighted embedding, refusals, records."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sdgen.conditioning.chunks import layout, prompt_tokens
from sdgen.conditioning.emphasis import ROUND, SQUARE, weighted_runs
from sdgen.conditioning.prompts import encode_conditioning, encode_text
from sdgen.errors import InvalidRequest
from sdgen.media.metadata import ImageRecord, parse_parameters
from sdgen.params import GenerationRequest
from sdgen.pipelines.generate import generate


@pytest.mark.parametrize(
    ("text", "runs"),
    [
        ("a red circle", [("a red circle", 1.0)]),
        ("a (red) circle", [("a ", 1.0), ("red", ROUND), (" circle", 1.0)]),
        ("a [red] circle", [("a ", 1.0), ("red", SQUARE), (" circle", 1.0)]),
        ("a (red:1.5) circle", [("a ", 1.0), ("red", 1.5), (" circle", 1.0)]),
        ("((red))", [("red", ROUND * ROUND)]),
        ("(red (blue:0.5))", [("red ", ROUND), ("blue", 0.5 * ROUND)]),
        ("a (red", [("a ", 1.0), ("red", ROUND)]),  # open to the end
        (r"a \(red\) circle", [("a (red) circle", 1.0)]),  # escaped: text
        ("time: noon", [("time: noon", 1.0)]),  # a colon closing nothing is text
        ("a red) circle", [("a red) circle", 1.0)]),  # a bracket closing nothing too
        ("", [("", 1.0)]),
    ],
)
def test_runs_and_their_weights(text, runs):
    parsed = weighted_runs(text)
    assert [t for t, _ in parsed] == [t for t, _ in runs]
    assert [w for _, w in parsed] == pytest.approx([w for _, w in runs])


def test_the_weighted_embedding_is_a1111s(sd1_model):
    """Each token's hidden state times its weight, rescaled to the mean the prompt had; the
    tokens are those of the text without its brackets."""
    tokenizer, encoder = sd1_model.tokenizer, sd1_model.text_encoder
    plain = torch.stack(encode_text(tokenizer, encoder, ["a red circle"], sd1_model.device))
    tokens = prompt_tokens(tokenizer, "a (red:1.5) circle", "original")
    ids, weights = layout(tokenizer, tokens.ids, tokens.weights)
    assert ids == tokenizer("a red circle", padding="max_length").input_ids
    weights = torch.tensor([weights])
    assert weights[0].tolist().count(1.5) == 1  # the one token of "red"
    scaled = plain * weights.unsqueeze(-1)
    expected = scaled * (plain.mean() / scaled.mean())
    got = torch.stack(
        encode_text(tokenizer, encoder, ["a (red:1.5) circle"], sd1_model.device, "original")
    )
    assert torch.allclose(got, expected, atol=1e-6)
    assert torch.allclose(got.mean(), plain.mean(), atol=1e-7)
    no_norm = torch.stack(
        encode_text(tokenizer, encoder, ["a (red:1.5) circle"], sd1_model.device, "no_norm")
    )
    assert torch.allclose(no_norm, scaled, atol=1e-6)


def test_a_prompt_without_brackets_gives_the_plain_picture(sd1_model):
    request = GenerationRequest("a red circle", negative_prompt="blue", steps=3, seed=4)
    plain = generate(sd1_model, request).images[0]
    emphasized = generate(sd1_model, request.replace(emphasis="original")).images[0]
    assert np.array_equal(np.asarray(plain), np.asarray(emphasized))
    weighted = generate(
        sd1_model, request.replace(prompt="a (red:1.6) circle", emphasis="original")
    )
    assert not np.array_equal(np.asarray(plain), np.asarray(weighted.images[0]))


def test_negative_embeddings_are_cached_per_emphasis_mode(sd1_model):
    cache: dict = {}
    pairs = [("a circle", "(blue:1.8)")]
    args = (sd1_model.tokenizer, sd1_model.text_encoder, pairs)
    kwargs = {"guided": True, "device": sd1_model.device, "dtype": torch.float32}
    off = encode_conditioning(*args, **kwargs, negative_cache=cache)
    original = encode_conditioning(*args, **kwargs, negative_cache=cache, emphasis="original")
    assert not torch.equal(off.rows[0], original.rows[0]) and len(cache) == 2


@pytest.mark.parametrize("prompt", ["a [cat:dog:0.5] b", "[cat|dog]"])
def test_prompt_editing_and_alternation_are_accepted_in_every_text(prompt):
    """Read as schedules (tests/test_prompt_editing.py); with emphasis off, as text."""
    assert GenerationRequest(prompt, emphasis="original").prompt == prompt
    assert GenerationRequest("x", negative_prompt=prompt, emphasis="original")
    assert GenerationRequest(prompt).prompt == prompt
    with pytest.raises(InvalidRequest, match="emphasis.*off, original, no_norm, none"):
        GenerationRequest("x", emphasis="strong")


def test_the_mode_is_recorded_as_a1111_writes_it():
    def fields(emphasis):
        request = GenerationRequest("x", seed=1, width=64, height=64, emphasis=emphasis)
        record = ImageRecord(request, ("Euler", None), "m", "abc", "sdgen 0")
        return parse_parameters(record.parameters_text())

    assert fields("no_norm")["Emphasis"] == "No norm"
    assert fields("off")["Emphasis"] == "None"  # A1111's name for brackets read as text
    assert fields("none")["Emphasis"] == "None"
    assert "Emphasis" not in fields("original")  # A1111's default


def test_a1111s_none_reads_edits_and_parts_but_brackets_as_text(sd1_model):
    """A1111's None: prompt editing and AND read, emphasis brackets and BREAK left as text (so
    neither a weight past the bound nor a BREAK is refused)."""
    from sdgen.conditioning.prompts import encode_prompts

    args = (sd1_model.tokenizer, sd1_model.text_encoder)
    options = dict(guided=False, device="cpu", dtype=torch.float32)
    schedule = encode_prompts(
        *args, [("a [cat:dog:5] (red:1.5)", "")], 10, emphasis="none", **options
    )
    texts = ["a cat (red:1.5)", "a dog (red:1.5)"]
    plain = encode_conditioning(*args, [(t, "") for t in texts], **options)  # all text
    assert [end for end, _ in schedule.entries] == [5, 10]
    for (_, embeddings), row in zip(schedule.entries, plain.rows, strict=True):
        assert torch.equal(embeddings.rows[0], row)
    weighted = encode_conditioning(*args, [(texts[0], "")], emphasis="original", **options)
    assert not torch.equal(weighted.rows[0], plain.rows[0])
    composed = encode_prompts(*args, [("a cat AND a dog", "")], 10, emphasis="none", **options)
    assert composed.part_weights == ((1.0,), (1.0,))
    for prompt in ("a (cat:1000) BREAK x", "(" * 40 + "cat"):
        assert GenerationRequest(prompt, emphasis="none").prompt == prompt
    with pytest.raises(InvalidRequest, match="part weight"):
        GenerationRequest("a cat :1000", emphasis="none")


def test_parsing_is_linear_and_bounded():
    """Nesting past MAX_DEPTH, weights past MAX_WEIGHT or not finite are refused by name; the
    checks that remain are linear (they were quadratic: 1.5 s at 20,000 characters)."""
    import time

    from sdgen.conditioning.emphasis import MAX_DEPTH, check_syntax

    for deep in ("(a" * 10_000, "[a" * 10_000, "(]" * 10_000):
        with pytest.raises(InvalidRequest, match=f"prompt.*nested brackets.*at most {MAX_DEPTH}"):
            check_syntax("prompt", deep)
    for weight in ("(a:101)", "(a:1" + "9" * 400 + ")"):
        with pytest.raises(InvalidRequest, match="prompt.*a weight from -100 to 100"):
            check_syntax("prompt", weight)
    started = time.perf_counter()
    for text in ("[" + ":" * 40_000, "(a)" * 7_000, "a (b:1.2) [c] " * 3_000):
        check_syntax("prompt", text)
        weighted_runs(text)
    assert time.perf_counter() - started < 2.0


@pytest.mark.parametrize(
    "prompt", ["[(blue:1.2) sky]", r"a \[note: hi\] sign", "[cat:dog]", "BREAKFAST", "10:30"]
)
def test_ordinary_prompts_are_not_taken_for_unsupported_syntax(prompt):
    assert GenerationRequest(prompt, emphasis="original").prompt == prompt


def test_round_and_square_groups_close_apart_as_in_a1111():
    assert weighted_runs("(a [b) c]") == [("a ", ROUND), ("b", 1.0), (" c", SQUARE)]
