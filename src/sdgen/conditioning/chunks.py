"""Prompts longer than the text encoder's window, read as A1111 reads them: in chunks.

CLIP's text encoder reads 77 positions (SD 1.x): a start token, 75 tokens, an end token.
diffusers reads a prompt's first 75 tokens and drops the rest (``long_prompt="truncate"``,
sdgen's default). A1111 and ComfyUI read a longer prompt in chunks of 75 tokens instead
(``long_prompt="chunk"``): each chunk is encoded on its own, with its own start and end tokens
and padding, and the chunks' embeddings are put one after another, so a prompt of 76 to 150
tokens conditions the UNet with 154 positions. As in A1111:

- a chunk that would end inside a phrase ends after the last comma instead, when that comma is
  among its last ``COMMA_BACKTRACK`` tokens; the phrase starts the next chunk (A1111's
  "comma_padding_backtrack" setting, 20 by default);
- with emphasis on, ``BREAK`` ends a chunk where it stands (outside brackets: inside a group
  A1111 reads it as the word "BREAK" with a negative weight, so sdgen refuses it there);
- emphasis weights are applied and rescaled chunk by chunk (A1111 rescales each chunk);
- a prompt of at most 75 tokens is one chunk laid out as diffusers lays it out, so it gives
  exactly the truncating reading's embedding.

Textual inversion embeddings (``sdgen.models.textual_inversion``) are found here too, in either
reading, as A1111 finds them: where a prompt's tokens spell an embedding's name, its n vectors
take n positions (a "fix" of the text encoder's input), weighted as the words around them; in
chunks, an embedding that does not fit in what is left of a chunk starts the next one. (A1111
leaves an embedding behind when a comma moves its phrase to the next chunk, a bug; sdgen moves
it with the phrase.)
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import NamedTuple

import torch

from sdgen.conditioning.emphasis import WEIGHING_MODES, weighted_runs
from sdgen.models.textual_inversion import TextualInversion
from sdgen.models.tokenizing import tokenize

COMMA_BACKTRACK = 20  # A1111's default "comma_padding_backtrack" (its "word wrap length limit")
MAX_CHUNKS = 32  # 2,400 tokens of SD 1.x: more is refused (the UNet's cost grows with them)
PLACEHOLDER = 0  # the token id under an embedding's vectors (A1111's); replaced before use

# first token of an embedding's name -> (the name's token ids, the embedding), longest first
InversionLookup = dict[int, list[tuple[tuple[int, ...], TextualInversion]]]


class Chunk(NamedTuple):
    """Up to 75 tokens of a prompt: ids, emphasis weights, and the textual inversion vectors
    that replace the input embeddings at some positions."""

    ids: list[int]
    weights: list[float]
    fixes: list[tuple[int, torch.Tensor]]  # (position in ids, (n, D) vectors)


def inversion_lookup(tokenizer, inversions: dict[str, TextualInversion]) -> InversionLookup:
    """Where to look for ``inversions`` in tokens: by the first token of their names."""
    lookup: InversionLookup = {}
    for name, inversion in inversions.items():
        ids = tuple(tokenize(tokenizer, name, add_special_tokens=False, verbose=False).input_ids)
        if ids:
            lookup.setdefault(ids[0], []).append((ids, inversion))
    for candidates in lookup.values():
        candidates.sort(key=lambda candidate: -len(candidate[0]))
    return lookup


def prompt_chunks(
    tokenizer, text: str, emphasis: str, lookup: InversionLookup | None = None
) -> list[Chunk]:
    """``text``'s tokens cut into chunks as A1111's ``tokenize_line`` cuts them (see the
    module's note), without start, end or padding (``layout`` adds them). ``emphasis`` "off"
    and "none" read the whole text as words, BREAK too, as A1111's "None" mode does."""
    size = tokenizer.model_max_length - 2  # 75 for CLIP
    comma = _comma_id(tokenizer)
    chunks: list[Chunk] = []
    chunk = Chunk([], [], [])
    last_comma = -1  # position in the chunk of its last comma
    for unit in _units(tokenizer, text, emphasis, lookup, breaks=True):
        if unit is None:  # BREAK
            chunks.append(chunk)
            chunk, last_comma = Chunk([], [], []), -1
            continue
        token, weight, inversion = unit
        if token == comma:
            last_comma = len(chunk.ids)
        elif len(chunk.ids) == size and last_comma != -1 and size - last_comma <= COMMA_BACKTRACK:
            cut = last_comma + 1  # the phrase after the comma moves to the next chunk
            chunks.append(_part(chunk, 0, cut))
            chunk, last_comma = _part(chunk, cut, size), -1
        if len(chunk.ids) == size:
            chunks.append(chunk)
            chunk, last_comma = Chunk([], [], []), -1
        if inversion is None:
            chunk.ids.append(token)
            chunk.weights.append(weight)
            continue
        if len(chunk.ids) + len(inversion.vectors) > size:  # it does not fit: the next chunk
            chunks.append(chunk)
            chunk, last_comma = Chunk([], [], []), -1
        _add_inversion(chunk, inversion.vectors, weight)
    if chunk.ids or not chunks:
        chunks.append(chunk)
    return chunks


def prompt_tokens(
    tokenizer, text: str, emphasis: str, lookup: InversionLookup | None = None
) -> Chunk:
    """All of ``text``'s tokens, weights and embeddings' vectors in one run (no BREAK), for the
    truncating reading; ``emphasis`` "off" and "none" read the text as words."""
    tokens = Chunk([], [], [])
    for token, weight, inversion in _units(tokenizer, text, emphasis, lookup, breaks=False):
        if inversion is None:
            tokens.ids.append(token)
            tokens.weights.append(weight)
        else:
            _add_inversion(tokens, inversion.vectors, weight)
    return tokens


def named_inversions(
    tokenizer, text: str, emphasis: str, long_prompt: str, lookup: InversionLookup
) -> list[TextualInversion]:
    """The textual inversions whose vectors ``text`` places, in the order it first names them:
    read in chunks, all it names; truncated, those that start within the window."""
    found: dict[str, TextualInversion] = {}
    if not lookup:
        return []
    size = tokenizer.model_max_length - 2
    position = 0  # in the truncating reading's tokens
    for unit in _units(tokenizer, text, emphasis, lookup, breaks=long_prompt == "chunk"):
        if unit is None:
            continue
        inversion = unit[2]
        if inversion is not None and (long_prompt == "chunk" or position < size):
            found.setdefault(inversion.name, inversion)
        position += 1 if inversion is None else len(inversion.vectors)
    return list(found.values())


def truncated(tokens: Chunk, size: int) -> Chunk:
    """The first ``size`` positions of ``tokens``; an embedding cut at the end keeps the
    vectors that fit, as diffusers' truncation keeps an embedding's first tokens."""
    return Chunk(
        tokens.ids[:size],
        tokens.weights[:size],
        [(start, vectors[: size - start]) for start, vectors in tokens.fixes if start < size],
    )


def _units(tokenizer, text, emphasis, lookup, breaks) -> Iterator[tuple | None]:
    """(token, weight, None) for each token of ``text``, (first token, weight, embedding) for
    an embedding's name, None for a BREAK."""
    weighs = emphasis in WEIGHING_MODES
    runs = weighted_runs(text, breaks=breaks) if weighs else [(text, 1.0)]
    for run_text, weight in runs:
        if run_text is None:
            yield None
            continue
        tokens = tokenize(tokenizer, run_text, add_special_tokens=False, verbose=False).input_ids
        position = 0
        while position < len(tokens):
            found = _inversion_at(lookup, tokens, position) if lookup else None
            if found is None:
                yield tokens[position], weight, None
                position += 1
            else:
                yield tokens[position], weight, found[1]
                position += len(found[0])


def _inversion_at(lookup: InversionLookup, tokens: list[int], position: int):
    """The (name ids, embedding) whose name starts at ``position``, the longest; or None."""
    for ids, inversion in lookup.get(tokens[position], ()):
        if tuple(tokens[position : position + len(ids)]) == ids:
            return ids, inversion
    return None


def _add_inversion(chunk: Chunk, vectors: torch.Tensor, weight: float) -> None:
    chunk.fixes.append((len(chunk.ids), vectors))
    chunk.ids.extend([PLACEHOLDER] * len(vectors))
    chunk.weights.extend([weight] * len(vectors))


def _part(chunk: Chunk, start: int, end: int) -> Chunk:
    """Positions ``start`` to ``end`` of ``chunk``, its embeddings moved with them (an
    embedding lies wholly on one side of a comma)."""
    return Chunk(
        chunk.ids[start:end],
        chunk.weights[start:end],
        [(at - start, vectors) for at, vectors in chunk.fixes if start <= at < end],
    )


def _comma_id(tokenizer) -> int | None:
    """The id of CLIP's "," token, None if the vocabulary has none (``get_vocab`` would copy
    all 49,408 entries)."""
    comma = tokenizer.convert_tokens_to_ids(",</w>")
    return None if comma is None or comma == tokenizer.unk_token_id else comma


def layout(tokenizer, ids: list[int], weights: list[float]) -> tuple[list[int], list[float]]:
    """At most 75 tokens as the text encoder reads them: start token, the tokens, end token,
    padding to the tokenizer's length (what diffusers' tokenizer call gives); weights 1 for
    the added tokens."""
    pad = tokenizer.model_max_length - 2 - len(ids)
    return (
        [tokenizer.bos_token_id, *ids, tokenizer.eos_token_id] + [tokenizer.pad_token_id] * pad,
        [1.0, *weights, 1.0] + [1.0] * pad,
    )
