"""Tokenize and encode prompts, negative prompts taking the empty prompt's place.

As in diffusers' StableDiffusionPipeline: every prompt is padded or truncated to the tokenizer's
77 tokens, encoded by the CLIP text tower, and its last hidden state is the conditioning.
"""

from __future__ import annotations

import logging

import torch

from sdgen.conditioning.emphasis import emphasize, weighted_ids
from sdgen.models.tokenizing import tokenize

log = logging.getLogger(__name__)


@torch.no_grad()
def encode_text(
    tokenizer, text_encoder, texts: list[str], device: torch.device, emphasis: str = "off"
) -> torch.Tensor:
    """(N, 77, D) last hidden states of the text encoder for ``texts``; with an ``emphasis``
    mode, A1111's (words:1.2) syntax weighs them (``sdgen.conditioning.emphasis``)."""
    if emphasis != "off":
        return _encode_emphasized(tokenizer, text_encoder, texts, device, emphasis)
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
    return text_encoder(tokens.input_ids.to(device), attention_mask=mask)[0]


def _encode_emphasized(tokenizer, text_encoder, texts, device, emphasis) -> torch.Tensor:
    rows = [weighted_ids(tokenizer, text) for text in texts]
    for text, (_, _, count) in zip(texts, rows, strict=True):
        if count > tokenizer.model_max_length - 2:
            log.warning(
                "prompt of %d tokens is longer than %d; its end is ignored: %r...",
                count + 2,
                tokenizer.model_max_length,
                text[:80],
            )
    ids = torch.tensor([row[0] for row in rows], device=device)
    weights = torch.tensor([row[1] for row in rows], device=device)
    mask = None
    if getattr(text_encoder.config, "use_attention_mask", False):
        mask = (
            torch.arange(ids.shape[1], device=device)
            < torch.tensor([min(row[2] + 2, ids.shape[1]) for row in rows], device=device)[:, None]
        ).long()
    hidden = text_encoder(ids, attention_mask=mask)[0]
    return emphasize(hidden, weights, emphasis)


NEGATIVE_CACHE_SIZE = 32  # negative prompts kept per model; (77, 768) fp32 is 236 KB each


def encode_conditioning(
    tokenizer,
    text_encoder,
    image_prompts: list[tuple[str, str]],
    *,
    guided: bool,
    device: torch.device,
    dtype: torch.dtype,
    negative_cache: dict[tuple[str, str], torch.Tensor] | None = None,
    emphasis: str = "off",
) -> torch.Tensor:
    """The UNet's conditioning for a batch of images, one (prompt, negative) pair per image.

    Returns (2B, 77, D) as [negative; prompt] when ``guided``, else (B, 77, D) -- the order the
    loop's ``guide`` splits. The distinct prompts are encoded in one call. Each distinct negative
    prompt is encoded in a call of its own, so that its embedding is the same whether it comes
    from ``negative_cache`` ((text, emphasis) -> (77, D), filled here, the oldest of more than
    ``NEGATIVE_CACHE_SIZE`` dropped) or not: the usual empty one is encoded once per model.
    """
    prompts = list(dict.fromkeys(p for p, _ in image_prompts))
    encoded = encode_text(tokenizer, text_encoder, prompts, device, emphasis).to(dtype)
    embedding = dict(zip(prompts, encoded, strict=True))
    rows = [embedding[p] for p, _ in image_prompts]
    if guided:
        cache = {} if negative_cache is None else negative_cache
        negatives = {
            text: _negative_embedding(
                tokenizer, text_encoder, (text, emphasis), device, dtype, cache
            )
            for text in dict.fromkeys(n for _, n in image_prompts)
        }
        rows = [negatives[n] for _, n in image_prompts] + rows
    return torch.stack(rows)


def _negative_embedding(
    tokenizer, text_encoder, key: tuple[str, str], device: torch.device, dtype, cache: dict
) -> torch.Tensor:
    """(77, D) embedding of one negative prompt, ``key`` = (text, emphasis), from ``cache`` or
    encoded alone into it."""
    if key not in cache:
        while len(cache) >= NEGATIVE_CACHE_SIZE:
            del cache[next(iter(cache))]
        text, emphasis = key
        cache[key] = encode_text(tokenizer, text_encoder, [text], device, emphasis).to(dtype)[0]
    return cache[key]


def truncation_warnings(tokenizer, texts: dict[str, list[str]], emphasis: str = "off") -> list[str]:
    """What the text encoder will not read: one warning per text past the tokenizer's limit,
    e.g. ``"prompt: 93 tokens, truncated to 77"`` (``"prompt[1]: ..."`` when a field has several
    texts). ``texts`` maps a field to its texts, read with ``emphasis``.

    Counts include the start and end tokens, as the limit does. Pure: pictures are unchanged.
    """
    max_length = tokenizer.model_max_length
    warnings = []
    for field, values in texts.items():
        for index, text in enumerate(values):
            if emphasis == "off":
                count = len(tokenize(tokenizer, text, verbose=False).input_ids)
            else:  # the brackets are not tokens
                count = weighted_ids(tokenizer, text)[2] + 2
            if count > max_length:
                name = f"{field}[{index}]" if len(values) > 1 else field
                warnings.append(f"{name}: {count} tokens, truncated to {max_length}")
    return warnings


def _warn_truncated(tokenizer, texts: list[str], max_length: int) -> None:
    for text in texts:
        ids = tokenize(tokenizer, text).input_ids
        if len(ids) > max_length:
            dropped = tokenizer.decode(ids[max_length - 1 : -1])
            log.warning(
                "prompt is longer than %d tokens; this part is ignored: %r", max_length, dropped
            )
