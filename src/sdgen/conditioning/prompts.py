"""Tokenize and encode prompts, negative prompts taking the empty prompt's place.

As in diffusers' StableDiffusionPipeline: every prompt is padded or truncated to the tokenizer's
77 tokens, encoded by the CLIP text tower, and its last hidden state is the conditioning. With
``long_prompt="chunk"`` a longer prompt is read in 75-token chunks instead, as A1111 reads it
(``sdgen.conditioning.chunks``).
"""

from __future__ import annotations

import logging
import threading
from contextlib import contextmanager

import torch

from sdgen.conditioning.chunks import (
    Chunk,
    InversionLookup,
    layout,
    prompt_chunks,
    prompt_tokens,
    truncated,
)
from sdgen.conditioning.composition import prompt_parts
from sdgen.conditioning.emphasis import WEIGHING_MODES, emphasize
from sdgen.conditioning.schedules import prompt_schedule, text_at_step
from sdgen.models.tokenizing import tokenize
from sdgen.sampling.embeddings import EmbeddingSchedule, TextEmbeddings
from sdgen.sampling.guidance import PartWeights

log = logging.getLogger(__name__)


@torch.no_grad()
def encode_text(
    tokenizer,
    text_encoder,
    texts: list[str],
    device: torch.device,
    emphasis: str = "off",
    long_prompt: str = "truncate",
    inversions: InversionLookup | None = None,
    clip_skip: int = 1,
    together: bool = False,
) -> list[torch.Tensor]:
    """The text encoder's last hidden states for each of ``texts``: (77, D) each, or with
    ``long_prompt`` "chunk" 77 positions per 75-token chunk (``sdgen.conditioning.chunks``).
    With an ``emphasis`` mode, A1111's (words:1.2) syntax weighs them
    (``sdgen.conditioning.emphasis``); the textual inversions of ``inversions`` are read
    where the texts name them; ``clip_skip`` > 1 reads an earlier layer (``hidden_states``).
    ``together``: the texts are one prompt's schedule, encoded as A1111 encodes one batch:
    padded with empty chunks to the same number, each chunk's emphasis rescaled with one
    mean over all the texts."""
    if long_prompt == "chunk":
        chunks = [prompt_chunks(tokenizer, text, emphasis, inversions) for text in texts]
        groups = None
        if together:  # every text as many chunks as the longest, empty ones after
            count = max(len(text_chunks) for text_chunks in chunks)
            chunks = [c + [Chunk([], [], [])] * (count - len(c)) for c in chunks]
            groups = [index for c in chunks for index in range(len(c))]  # chunk k shares
        contents = [chunk for text_chunks in chunks for chunk in text_chunks]
        hidden = _encode_windows(
            tokenizer, text_encoder, contents, device, emphasis, clip_skip, groups
        )
        return [part.flatten(0, 1) for part in hidden.split([len(c) for c in chunks])]
    if emphasis in WEIGHING_MODES or inversions:
        size = tokenizer.model_max_length - 2
        contents = []
        for text in texts:
            tokens = prompt_tokens(tokenizer, text, emphasis, inversions)
            if len(tokens.ids) > size:
                log.warning(
                    "prompt of %d tokens is longer than %d; its end is ignored: %r...",
                    len(tokens.ids) + 2,
                    tokenizer.model_max_length,
                    text[:80],
                )
            contents.append(truncated(tokens, size))
        groups = [0] * len(contents) if together else None  # one window each: one mean
        windows = _encode_windows(
            tokenizer, text_encoder, contents, device, emphasis, clip_skip, groups
        )
        return list(windows)
    max_length = tokenizer.model_max_length
    tokens = tokenize(
        tokenizer,
        texts,
        padding="max_length",
        max_length=max_length,
        truncation=True,
        return_tensors="pt",
    )
    _warn_truncated(tokenizer, texts, max_length)
    mask = None
    if getattr(text_encoder.config, "use_attention_mask", False):
        mask = tokens.attention_mask.to(device)
    return list(hidden_states(text_encoder, tokens.input_ids.to(device), mask, clip_skip))


def hidden_states(text_encoder, ids: torch.Tensor, mask, clip_skip: int = 1) -> torch.Tensor:
    """(N, 77, D): the text encoder's last hidden state (after its final layer norm), or with
    ``clip_skip`` > 1 the output of its ``clip_skip``-th layer from the end through that norm,
    as diffusers' pipelines compute it (their ``clip_skip`` is one less) and A1111 does."""
    if clip_skip == 1:
        return text_encoder(ids, attention_mask=mask)[0]
    output = text_encoder(ids, attention_mask=mask, output_hidden_states=True)
    text_model = getattr(text_encoder, "text_model", text_encoder)  # transformers < 5 wraps it
    return text_model.final_layer_norm(output.hidden_states[-clip_skip])


def _encode_windows(
    tokenizer,
    text_encoder,
    contents: list[Chunk],
    device,
    emphasis: str,
    clip_skip: int = 1,
    groups: list[int] | None = None,
) -> torch.Tensor:
    """(N, 77, D) hidden states of N windows of at most 75 tokens, laid out as the text
    encoder reads them (``layout``), with their textual inversion vectors in place, each
    weighted as ``emphasis`` says (rescaled on its own: A1111's, chunk by chunk; or with the
    windows of the same ``groups`` entry, which A1111 encodes in one batch)."""
    windows = [layout(tokenizer, chunk.ids, chunk.weights) for chunk in contents]
    ids = torch.tensor([window[0] for window in windows], device=device)
    weights = torch.tensor([window[1] for window in windows], device=device)
    mask = None
    if getattr(text_encoder.config, "use_attention_mask", False):
        # start token, the tokens, end token: the padding after them is masked
        ends = torch.tensor([len(chunk.ids) + 1 for chunk in contents], device=device)
        mask = (torch.arange(ids.shape[1], device=device) <= ends[:, None]).long()
    fixes = [(row, 1 + at, v) for row, chunk in enumerate(contents) for at, v in chunk.fixes]
    with _input_embeddings_fixed(text_encoder, fixes):
        hidden = hidden_states(text_encoder, ids, mask, clip_skip)
    if emphasis not in WEIGHING_MODES:
        return hidden
    return emphasize(hidden, weights, emphasis, None if groups is None else torch.tensor(groups))


# torch numbers a module's hooks with a counter it increments without a lock: two threads
# adding hooks at once could get one number, and one hook would replace the other
_HOOKS_LOCK = threading.Lock()


@contextmanager
def _input_embeddings_fixed(text_encoder, fixes: list[tuple[int, int, torch.Tensor]]):
    """While inside, the text encoder's token embeddings called from this thread have
    ``fixes`` (row, position, (n, D) vectors) in place: textual inversion, as A1111's
    ``EmbeddingsWithFixes`` does. Other threads' calls are left alone."""
    if not fixes:
        yield
        return
    thread = threading.get_ident()

    def fix(module, inputs, output):  # (N, 77, D) token embeddings, before positions are added
        if threading.get_ident() != thread:
            return None
        output = output.clone()
        for row, at, vectors in fixes:
            output[row, at : at + len(vectors)] = vectors.to(output.device, output.dtype)
        return output

    with _HOOKS_LOCK:
        handle = text_encoder.get_input_embeddings().register_forward_hook(fix)
    try:
        yield
    finally:
        with _HOOKS_LOCK:
            handle.remove()


# Negative prompts' chunks kept per model: 32 one-chunk negative prompts ((77, 768) fp32 is
# 236 KB each), fewer longer ones.
NEGATIVE_CACHE_SIZE = 32


def encode_conditioning(
    tokenizer,
    text_encoder,
    image_prompts: list[tuple[str, str]],
    *,
    guided: bool,
    device: torch.device,
    dtype: torch.dtype,
    negative_cache: dict[tuple, torch.Tensor] | None = None,
    emphasis: str = "off",
    long_prompt: str = "truncate",
    inversions: InversionLookup | None = None,
    clip_skip: int = 1,
    text_weights: tuple = (),
) -> TextEmbeddings:
    """The UNet's conditioning for a batch of images, one (prompt, negative) pair per image.

    Returns 2B rows as [negative; prompt] when ``guided``, else B rows -- the order the loop's
    ``guide`` splits; each (77, D), or 77 positions per chunk with ``long_prompt`` "chunk". The
    distinct prompts are encoded in one call. Each distinct negative prompt is encoded in a
    call of its own, so that its embedding is the same whether it comes from
    ``negative_cache`` ((text, emphasis, long_prompt, clip_skip, text_weights) -> (L, D),
    filled here, the oldest dropped past ``NEGATIVE_CACHE_SIZE`` chunks) or not: the usual
    empty one is encoded once per model. ``inversions``: the model's textual inversions, the
    same for all its calls.
    ``text_weights``: what changed the text encoder's weights for this call (the LoRAs merged
    into it), part of the negative cache's key.
    """
    prompts = list(dict.fromkeys(p for p, _ in image_prompts))
    reading = (emphasis, long_prompt, inversions, clip_skip)
    encoded = encode_text(tokenizer, text_encoder, prompts, device, *reading)
    embedding = {p: e.to(dtype) for p, e in zip(prompts, encoded, strict=True)}
    rows = [embedding[p] for p, _ in image_prompts]
    if guided:
        cache = {} if negative_cache is None else negative_cache
        negatives = {
            text: _negative_embedding(
                tokenizer, text_encoder, (text, *reading), device, dtype, cache, text_weights
            )
            for text in dict.fromkeys(n for _, n in image_prompts)
        }
        rows = [negatives[n] for _, n in image_prompts] + rows
    return TextEmbeddings(tuple(rows))


def _negative_embedding(
    tokenizer,
    text_encoder,
    reading: tuple,
    device: torch.device,
    dtype,
    cache: dict,
    text_weights: tuple = (),
) -> torch.Tensor:
    """(L, D) embedding of one negative prompt, ``reading`` = (text, emphasis, long_prompt,
    inversions, clip_skip), from ``cache`` or encoded alone into it; cached under (text,
    emphasis, long_prompt, clip_skip, text_weights): a model's inversions never change."""
    text, emphasis, long_prompt, _, clip_skip = reading
    key = (text, emphasis, long_prompt, clip_skip, text_weights)
    if key not in cache:
        embedding = encode_text(tokenizer, text_encoder, [text], device, *reading[1:])[0]
        embedding = embedding.to(dtype)
        window = tokenizer.model_max_length
        kept = sum(len(e) // window for e in cache.values())
        while cache and kept + len(embedding) // window > NEGATIVE_CACHE_SIZE:
            kept -= len(cache.pop(next(iter(cache)))) // window
        cache[key] = embedding
    return cache[key]


def encode_scheduled(
    tokenizer,
    text_encoder,
    image_prompts: list[tuple[str, str]],
    steps: int,
    first_pass_steps: int | None = None,
    **options,
) -> TextEmbeddings | EmbeddingSchedule:
    """``encode_conditioning`` (same ``options``) of prompts that may change between steps:
    with an ``emphasis`` mode, A1111's prompt editing and alternation are read over ``steps``
    steps (after ``first_pass_steps`` for a hires pass: ``sdgen.conditioning.schedules``).

    As A1111 encodes a prompt's schedule, the texts of one prompt's schedule are encoded
    together: padded to the same number of chunks, their emphasis rescaled with one mean per
    chunk (``encode_text``'s ``together``). Each stretch of steps gets the rows of the texts
    it reads. Prompts that do not change give their ``TextEmbeddings`` (of the texts the
    schedule reads: an edit past the last step still takes its brackets out)."""
    if options.get("emphasis", "off") == "off":
        return encode_conditioning(tokenizer, text_encoder, image_prompts, **options)
    guided = options.get("guided", True)
    texts = dict.fromkeys(text for p, n in image_prompts for text in ((p, n) if guided else (p,)))
    schedules = {text: prompt_schedule(text, steps, first_pass_steps) for text in texts}
    ends = sorted({end for schedule in schedules.values() for end, _ in schedule})
    if len(ends) == 1:
        pairs = [
            (schedules[p][0][1], schedules[n][0][1] if guided else n) for p, n in image_prompts
        ]
        return encode_conditioning(tokenizer, text_encoder, pairs, **options)
    reading = (
        options.get("emphasis", "off"),
        options.get("long_prompt", "truncate"),
        options.get("inversions"),
        options.get("clip_skip", 1),
    )
    device, dtype = options["device"], options["dtype"]
    read: dict[str, dict[str, torch.Tensor]] = {}  # source text -> text read -> (L, D)
    for source, schedule in schedules.items():
        if len({text for _, text in schedule}) > 1:
            variants = list(dict.fromkeys(text for _, text in schedule))
            encoded = encode_text(
                tokenizer, text_encoder, variants, device, *reading, together=True
            )
            read[source] = {v: e.to(dtype) for v, e in zip(variants, encoded, strict=True)}
    # Every row as encode_conditioning makes it from each text's first reading (batched
    # prompts, cached negative prompts); the rows of the texts that change are replaced by
    # their schedule's at each stretch.
    first = [(schedules[p][0][1], schedules[n][0][1] if guided else n) for p, n in image_prompts]
    base = encode_conditioning(tokenizer, text_encoder, first, **options)
    offset = len(image_prompts) if guided else 0  # [negative; prompt] rows when guiding
    entries, joined = [], {}
    for end in ends:
        rows = list(base.rows)
        for index, (prompt, negative) in enumerate(image_prompts):
            if guided and negative in read:
                rows[index] = read[negative][text_at_step(schedules[negative], end)]
            if prompt in read:
                rows[offset + index] = read[prompt][text_at_step(schedules[prompt], end)]
        key = tuple(id(row) for row in rows)
        if key not in joined:  # stretches of the same rows share one object
            joined[key] = TextEmbeddings(tuple(rows))
        entries.append((end, joined[key]))
    return EmbeddingSchedule(tuple(entries))


def encode_prompts(
    tokenizer,
    text_encoder,
    image_prompts: list[tuple[str, str]],
    steps: int,
    first_pass_steps: int | None = None,
    **options,
) -> TextEmbeddings | EmbeddingSchedule:
    """``encode_scheduled`` (same arguments), with A1111's AND read in each prompt where an
    ``emphasis`` mode reads A1111's syntax (``sdgen.conditioning.composition``).

    A request with a composable prompt gets (K + 1)B rows, [negative; part 1; ...; part K]
    in image order, K its prompts' most parts (a prompt with fewer repeats its last part with
    weight 0), and the parts' weights (``part_weights``); the negative prompts are encoded at
    every guidance scale. As A1111 pads a step's conditionings to one length, repeating the
    last vector, an image's parts are padded to the longest of them (A1111 pads over the whole
    batch; here each image alone, so that its picture does not depend on the others)."""
    composable = options.get("emphasis", "off") != "off"
    read = {p: prompt_parts(p) if composable else None for p, _ in image_prompts}
    if all(parts is None for parts in read.values()):
        return encode_scheduled(
            tokenizer, text_encoder, image_prompts, steps, first_pass_steps, **options
        )
    parts = [read[p] or ((p, 1.0),) for p, _ in image_prompts]
    count, images = max(len(p) for p in parts), len(image_prompts)
    parts = [p + ((p[-1][0], 0.0),) * (count - len(p)) for p in parts]
    # K x B pairs, part-major: encode_scheduled's rows are [negative x KB; parts x KB]
    pairs = [(parts[i][k][0], image_prompts[i][1]) for k in range(count) for i in range(images)]
    options["guided"] = True
    encoded = encode_scheduled(tokenizer, text_encoder, pairs, steps, first_pass_steps, **options)
    keep = [*range(images), *range(count * images, 2 * count * images)]
    weights = tuple(tuple(parts[i][k][1] for i in range(images)) for k in range(count))
    return _composed(encoded, keep, images, weights, {})


def _composed(embeddings, keep: list[int], images: int, weights: PartWeights, made: dict):
    """``embeddings``' rows ``keep``, each image's parts padded to one length (its last vector
    repeated), with ``weights``; a schedule's stretches of the same rows stay one object."""
    if isinstance(embeddings, EmbeddingSchedule):
        entries = [
            (end, _composed(e, keep, images, weights, made)) for end, e in embeddings.entries
        ]
        return EmbeddingSchedule(tuple(entries), weights)
    if id(embeddings) in made:
        return made[id(embeddings)]
    rows = [embeddings.rows[j] for j in keep]  # [negative (B); part 1 (B); ...]
    for i in range(images):
        own = range(images + i, len(rows), images)
        length = max(len(rows[j]) for j in own)
        for j in own:
            if len(rows[j]) < length:  # (L, D) -> (length, D)
                rows[j] = torch.cat([rows[j], rows[j][-1:].expand(length - len(rows[j]), -1)])
    made[id(embeddings)] = TextEmbeddings(tuple(rows), weights)
    return made[id(embeddings)]


def _warn_truncated(tokenizer, texts: list[str], max_length: int) -> None:
    for text in texts:
        ids = tokenize(tokenizer, text).input_ids
        if len(ids) > max_length:
            dropped = tokenizer.decode(ids[max_length - 1 : -1])
            log.warning(
                "prompt is longer than %d tokens; this part is ignored: %r", max_length, dropped
            )
