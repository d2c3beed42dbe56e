"""Prompts past 75 tokens read in chunks, as A1111 reads them (long_prompt="chunk"): the chunks,
their embeddings, the UNet calls of rows of several lengths, and the pictures."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import TOLERANCE, diffusers_pipeline, max_pixel_diff

from sdgen.conditioning.chunks import MAX_CHUNKS, layout, prompt_chunks
from sdgen.conditioning.prompts import encode_text
from sdgen.conditioning.request_texts import truncation_warnings
from sdgen.engine.batching import Batcher
from sdgen.errors import InvalidRequest
from sdgen.params import GenerationRequest
from sdgen.pipelines.generate import generate
from sdgen.sampling.embeddings import TextEmbeddings, predict_noise

CAT, DOG, COMMA = "cat", "dog", ","


def _words(tokenizer, chunks):
    return [tokenizer.convert_ids_to_tokens(chunk.ids) for chunk in chunks]


def _tokens(word: str, n: int) -> list[str]:
    return [f"{word}</w>"] * n


def test_a_short_prompt_is_one_chunk_laid_out_as_diffusers_does(sd1_model, sd2_model):
    for model in (sd1_model, sd2_model):  # SD 2 pads with "!", not with the end token
        tokenizer = model.tokenizer
        chunks = prompt_chunks(tokenizer, "a red circle, on grey", "off")
        assert len(chunks) == 1
        ids, weights = layout(tokenizer, chunks[0].ids, chunks[0].weights)
        assert ids == tokenizer("a red circle, on grey", padding="max_length").input_ids
        assert weights == [1.0] * 77


def test_75_token_chunks_and_the_comma_that_moves_a_phrase(sd1_model):
    tokenizer = sd1_model.tokenizer
    # 80 words: 75 then 5
    chunks = prompt_chunks(tokenizer, " ".join([CAT] * 80), "off")
    assert _words(tokenizer, chunks) == [_tokens(CAT, 75), _tokens(CAT, 5)]
    # a comma 5 tokens before the chunk's end: the phrase after it starts the next chunk
    text = " ".join([CAT] * 70) + ", " + " ".join([DOG] * 10)
    chunks = prompt_chunks(tokenizer, text, "off")
    assert _words(tokenizer, chunks) == [
        _tokens(CAT, 70) + [",</w>"],
        _tokens(DOG, 10),
    ]
    # a comma 25 tokens back is further than A1111's 20: the chunk is cut at 75
    text = " ".join([CAT] * 50) + ", " + " ".join([DOG] * 30)
    chunks = prompt_chunks(tokenizer, text, "off")
    assert _words(tokenizer, chunks) == [
        _tokens(CAT, 50) + [",</w>"] + _tokens(DOG, 24),
        _tokens(DOG, 6),
    ]
    # exactly 75 tokens: one chunk
    assert len(prompt_chunks(tokenizer, " ".join([CAT] * 75), "off")) == 1


def test_break_ends_a_chunk_and_weights_cross_chunks(sd1_model):
    tokenizer = sd1_model.tokenizer
    chunks = prompt_chunks(tokenizer, "a cat BREAK a (dog:1.5)", "original")
    assert _words(tokenizer, chunks) == [["a</w>", "cat</w>"], ["a</w>", "dog</w>"]]
    assert [chunk.weights for chunk in chunks] == [[1.0, 1.0], [1.0, 1.5]]
    # a leading BREAK gives an empty first chunk, as in A1111
    assert _words(tokenizer, prompt_chunks(tokenizer, "BREAK cat", "original")) == [[], ["cat</w>"]]
    # emphasis off: BREAK is a word, as with A1111's emphasis "None"
    assert len(prompt_chunks(tokenizer, "a cat BREAK a dog", "off")[0][0]) == 5
    # a weighted group that spans the boundary keeps its weight in both chunks
    chunks = prompt_chunks(tokenizer, " ".join([CAT] * 73) + " (dog dog dog dog:1.3)", "original")
    assert chunks[0][1][-2:] == [1.3, 1.3] and chunks[1][1] == [1.3, 1.3]


def test_break_outside_chunks_or_inside_brackets_is_refused():
    with pytest.raises(InvalidRequest, match="prompt.*BREAK only with long_prompt chunk"):
        GenerationRequest("a BREAK b", emphasis="original")
    with pytest.raises(InvalidRequest, match="negative_prompt.*BREAK outside brackets"):
        GenerationRequest(
            "x", negative_prompt="(a BREAK b)", emphasis="original", long_prompt="chunk"
        )
    GenerationRequest("a BREAK b", emphasis="original", long_prompt="chunk")  # accepted
    GenerationRequest("a BREAK b")  # emphasis off: a word
    with pytest.raises(InvalidRequest, match="long_prompt.*truncate, chunk"):
        GenerationRequest("x", long_prompt="split")


def test_a_long_prompt_is_its_chunks_encoded_apart_and_joined(sd1_model):
    tokenizer, encoder = sd1_model.tokenizer, sd1_model.text_encoder
    text = " ".join([CAT] * 70) + ", (" + " ".join([DOG] * 10) + ":1.4)"
    (joined,) = encode_text(tokenizer, encoder, [text], sd1_model.device, "original", "chunk")
    assert joined.shape == (154, encoder.config.hidden_size)
    expected = []
    for chunk in prompt_chunks(tokenizer, text, "original"):
        ids, weights = layout(tokenizer, chunk.ids, chunk.weights)
        hidden = encoder(torch.tensor([ids]))[0][0]  # (77, D), encoded alone
        scaled = hidden * torch.tensor(weights)[:, None]
        expected.append(scaled * (hidden.mean() / scaled.mean()))  # A1111's rescaling per chunk
    assert torch.allclose(joined, torch.cat(expected), atol=1e-5)
    # a prompt within 75 tokens: exactly the truncating reading's embedding
    short = ["a red circle", "a (red:1.2) circle"]
    for emphasis in ("off", "original"):
        chunked = encode_text(tokenizer, encoder, short, sd1_model.device, emphasis, "chunk")
        truncated = encode_text(tokenizer, encoder, short, sd1_model.device, emphasis)
        assert all(torch.equal(a, b) for a, b in zip(chunked, truncated, strict=True))


def test_rows_of_several_lengths_are_called_one_length_at_a_time(sd1_model):
    """The grouped call equals each row's UNet call alone (the UNet of the tiny model)."""
    unet = sd1_model.unet
    generator = torch.Generator().manual_seed(0)
    dim = sd1_model.text_encoder.config.hidden_size
    rows = [torch.randn(length, dim, generator=generator) for length in (77, 154, 77, 231)]
    sample = torch.randn(4, 4, 8, 8, generator=generator)
    timesteps = torch.tensor([10.0, 500.0, 999.0, 20.0])
    with torch.no_grad():
        grouped = predict_noise(unet, sample, timesteps, TextEmbeddings(tuple(rows)))
        alone = [
            unet(sample[i : i + 1], timesteps[i : i + 1], encoder_hidden_states=rows[i][None])[0]
            for i in range(4)
        ]
    assert len(TextEmbeddings(tuple(rows)).groups) == 3
    assert torch.allclose(grouped, torch.cat(alone), atol=1e-5)


def _long_prompt(words: int = 90) -> str:
    colours = ["red", "blue", "green", "grey", "white", "black"]
    return ", ".join(f"{colours[i % 6]} circle" for i in range(words // 3))


def test_chunked_pictures_equal_diffusers_given_the_same_embeddings(tiny_sd1, sd1_model):
    """Prompt and negative prompt of two chunks each (so diffusers' pipeline, which needs
    embeddings of one length, can take them): the pictures are diffusers' on those embeddings;
    the truncating reading gives another picture."""
    prompt, negative = _long_prompt(), "a " + " ".join([DOG] * 80)
    request = GenerationRequest(
        prompt, negative_prompt=negative, steps=4, width=32, height=32, seed=7, long_prompt="chunk"
    )
    picture = generate(sd1_model, request).images[0]
    tokenizer, encoder = sd1_model.tokenizer, sd1_model.text_encoder
    embeds = encode_text(tokenizer, encoder, [prompt, negative], sd1_model.device, "off", "chunk")
    assert [e.shape[0] for e in embeds] == [154, 154]
    pipe = diffusers_pipeline(tiny_sd1)
    reference = pipe(
        prompt_embeds=embeds[0][None],
        negative_prompt_embeds=embeds[1][None],
        num_inference_steps=4,
        width=32,
        height=32,
        generator=torch.Generator().manual_seed(7),
    ).images[0]
    assert max_pixel_diff(picture, reference) <= TOLERANCE
    truncated = generate(sd1_model, request.replace(long_prompt="truncate")).images[0]
    assert max_pixel_diff(picture, truncated) > TOLERANCE


def test_a_long_prompt_batched_with_short_ones_gets_its_own_picture(sd1_model):
    """A request whose prompt (2 chunks) and negative prompt (1) differ in length, in one
    batch with a short request: each gets the pictures it gets alone."""
    long_request = GenerationRequest(
        _long_prompt(), steps=3, width=32, height=32, seed=3, long_prompt="chunk"
    )
    short_request = GenerationRequest("a red circle", steps=3, width=32, height=32, seed=5)
    alone = [generate(sd1_model, r).images[0] for r in (long_request, short_request)]
    batcher = Batcher(sd1_model)
    tickets = [batcher.add(r) for r in (long_request, short_request)]
    finished = {id(f.prepared): f.result for f in batcher.run_until_done()}
    for ticket, picture in zip(tickets, alone, strict=True):
        assert max_pixel_diff(finished[id(ticket)].images[0], picture) <= 1


def test_a_short_prompt_gives_the_same_picture_either_way(sd1_model):
    request = GenerationRequest("a red circle", negative_prompt="blue", steps=3, seed=4)
    truncated = generate(sd1_model, request).images[0]
    chunked = generate(sd1_model, request.replace(long_prompt="chunk")).images[0]
    assert np.array_equal(np.asarray(truncated), np.asarray(chunked))


def test_too_many_chunks_are_refused_and_chunks_are_not_truncated(sd1_model):
    tokenizer = sd1_model.tokenizer
    text = " ".join([CAT] * (75 * MAX_CHUNKS + 1))
    request = GenerationRequest("x", negative_prompt=text, steps=1, long_prompt="chunk")
    with pytest.raises(InvalidRequest, match=f"negative_prompt.*at most {MAX_CHUNKS} chunks"):
        generate(sd1_model, request)
    long_text = _long_prompt()
    assert truncation_warnings(tokenizer, GenerationRequest(long_text, long_prompt="chunk")) == []
    assert truncation_warnings(tokenizer, GenerationRequest(long_text)) == [
        f"prompt: {len(tokenizer(long_text).input_ids)} tokens, truncated to 77"
    ]


def test_the_negative_cache_counts_chunks(sd1_model, monkeypatch):
    """Long negative prompts take one place per chunk in the cache of negative embeddings."""
    from sdgen.conditioning import prompts

    monkeypatch.setattr(prompts, "NEGATIVE_CACHE_SIZE", 4)
    cache: dict = {}
    options = {"guided": True, "device": sd1_model.device, "dtype": torch.float32}
    options["long_prompt"] = "chunk"
    two_chunks = [" ".join([CAT] * 80), " ".join([DOG] * 80)]
    for negative in [two_chunks[0], "a", "b", two_chunks[1]]:
        prompts.encode_conditioning(
            sd1_model.tokenizer,
            sd1_model.text_encoder,
            [("x", negative)],
            negative_cache=cache,
            **options,
        )
    assert [key[0] for key in cache] == ["a", "b", two_chunks[1]]  # 1 + 1 + 2 chunks
    assert [len(e) for e in cache.values()] == [77, 77, 154]
