"""Tokenize and encode prompts, negative prompts taking the empty prompt's place.

As in diffusers' StableDiffusionPipeline: every prompt is padded or truncated to the tokenizer's
77 tokens, encoded by the CLIP text tower, and its last hidden state is the conditioning.
"""

from __future__ import annotations

import logging

import torch

log = logging.getLogger(__name__)


@torch.no_grad()
def encode_text(tokenizer, text_encoder, texts: list[str], device: torch.device) -> torch.Tensor:
    """(N, 77, D) last hidden states of the text encoder for ``texts``."""
    max_length = tokenizer.model_max_length
    tokens = tokenizer(
        texts, padding="max_length", max_length=max_length, truncation=True, return_tensors="pt"
    )
    _warn_truncated(tokenizer, texts, max_length)
    mask = None
    if getattr(text_encoder.config, "use_attention_mask", False):
        mask = tokens.attention_mask.to(device)
    return text_encoder(tokens.input_ids.to(device), attention_mask=mask)[0]


def encode_conditioning(
    tokenizer,
    text_encoder,
    image_prompts: list[tuple[str, str]],
    *,
    guided: bool,
    device: torch.device,
    dtype: torch.dtype,
) -> torch.Tensor:
    """The UNet's conditioning for a batch of images, one (prompt, negative) pair per image.

    Returns (2B, 77, D) as [negative; prompt] when ``guided``, else (B, 77, D) -- the order the
    loop's ``guide`` splits. Each distinct text is encoded once.
    """
    texts = [p for p, _ in image_prompts] + ([n for _, n in image_prompts] if guided else [])
    unique = list(dict.fromkeys(texts))
    encoded = encode_text(tokenizer, text_encoder, unique, device).to(dtype)
    row = {text: i for i, text in enumerate(unique)}
    prompt_rows = [row[p] for p, _ in image_prompts]
    if guided:
        prompt_rows = [row[n] for _, n in image_prompts] + prompt_rows
    return encoded[prompt_rows]


def _warn_truncated(tokenizer, texts: list[str], max_length: int) -> None:
    for text in texts:
        ids = tokenizer(text).input_ids
        if len(ids) > max_length:
            dropped = tokenizer.decode(ids[max_length - 1 : -1])
            log.warning(
                "prompt is longer than %d tokens; this part is ignored: %r", max_length, dropped
            )
