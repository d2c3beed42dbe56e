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
"""

from __future__ import annotations

from sdgen.conditioning.emphasis import weighted_runs
from sdgen.models.tokenizing import tokenize

COMMA_BACKTRACK = 20  # A1111's default "comma_padding_backtrack" (its "word wrap length limit")
MAX_CHUNKS = 32  # 2,400 tokens of SD 1.x: more is refused (the UNet's cost grows with them)

Chunk = tuple[list[int], list[float]]  # one chunk's token ids and weights, at most 75 of each


def prompt_chunks(tokenizer, text: str, emphasis: str) -> list[Chunk]:
    """``text``'s tokens cut into chunks as A1111's ``tokenize_line`` cuts them (see the
    module's note), without start, end or padding (``layout`` adds them). ``emphasis`` "off"
    reads the whole text as words, BREAK too, as A1111's "None" mode does."""
    size = tokenizer.model_max_length - 2  # 75 for CLIP
    comma = _comma_id(tokenizer)
    runs = weighted_runs(text, breaks=True) if emphasis != "off" else [(text, 1.0)]
    chunks: list[Chunk] = []
    ids: list[int] = []
    weights: list[float] = []
    last_comma = -1  # position in ``ids`` of the chunk's last comma
    for run_text, weight in runs:
        if run_text is None:  # BREAK
            chunks.append((ids, weights))
            ids, weights, last_comma = [], [], -1
            continue
        tokens = tokenize(tokenizer, run_text, add_special_tokens=False, verbose=False).input_ids
        for token in tokens:
            if token == comma:
                last_comma = len(ids)
            elif len(ids) == size and last_comma != -1 and size - last_comma <= COMMA_BACKTRACK:
                cut = last_comma + 1  # the phrase after the comma moves to the next chunk
                chunks.append((ids[:cut], weights[:cut]))
                ids, weights, last_comma = ids[cut:], weights[cut:], -1
            if len(ids) == size:
                chunks.append((ids, weights))
                ids, weights, last_comma = [], [], -1
            ids.append(token)
            weights.append(weight)
    if ids or not chunks:
        chunks.append((ids, weights))
    return chunks


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


def weighted_tokens(tokenizer, text: str) -> tuple[list[int], list[float]]:
    """All of ``text``'s token ids and their emphasis weights, without start or end."""
    ids, weights = [], []
    for run_text, weight in weighted_runs(text):
        run_ids = tokenize(tokenizer, run_text, add_special_tokens=False, verbose=False).input_ids
        ids += run_ids
        weights += [weight] * len(run_ids)
    return ids, weights


def weighted_ids(tokenizer, text: str) -> tuple[list[int], list[float], int]:
    """The truncating reading of ``text`` with emphasis: its first 75 tokens and their weights
    as the text encoder reads them (``layout``), and how many tokens the text had (without
    start and end), for the truncation warning."""
    size = tokenizer.model_max_length - 2
    ids, weights = weighted_tokens(tokenizer, text)
    return (*layout(tokenizer, ids[:size], weights[:size]), len(ids))
