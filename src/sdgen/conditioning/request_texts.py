"""The texts a request's prompts are read as, and the checks on them before encoding.

A request's prompts and negative prompts (its hires pass's too) are read as texts: LoRA tags cut
out (``sdgen.conditioning.networks``) and, with an emphasis mode, each part of a prompt cut at
``AND`` (``sdgen.conditioning.composition``) and each text its schedule reads
(``sdgen.conditioning.schedules``). Each text is what the text encoder encodes, so each is
what the chunk limit and the truncation warnings count.
"""

from __future__ import annotations

from sdgen.conditioning.chunks import MAX_CHUNKS, InversionLookup, prompt_chunks, prompt_tokens
from sdgen.conditioning.composition import texts_of
from sdgen.conditioning.networks import without_loras
from sdgen.conditioning.schedules import scheduled_texts
from sdgen.errors import InvalidRequest
from sdgen.models.tokenizing import tokenize


def read_texts(request) -> list[tuple[str, str]]:
    """(field, text) of every text the text encoder reads for ``request`` (a
    ``GenerationRequest``), each once: LoRA tags cut out, and with an emphasis mode each part
    of a prompt (A1111's AND) and each text of its schedule, in every pass it may be read in
    (``scheduled_texts``)."""
    hires_steps = None if request.hires is None else (request.hires.steps or request.steps)
    texts = []
    for name, text in without_loras(request).named_texts():
        if request.emphasis == "off":
            texts.append((name, text))
            continue
        for part in texts_of(name, text, request.emphasis):  # a prompt's parts (AND)
            texts += [(name, t) for t in scheduled_texts(part, request.steps, hires_steps)]
    return list(dict.fromkeys(texts))


def check_prompt_lengths(tokenizer, request, inversions: InversionLookup | None = None) -> None:
    """Refuse a prompt or negative prompt of more than MAX_CHUNKS chunks when ``request``
    (a ``GenerationRequest``) reads prompts in chunks, naming the field."""
    if request.long_prompt != "chunk":
        return
    size = tokenizer.model_max_length - 2
    for name, text in read_texts(request):
        count = len(prompt_chunks(tokenizer, text, request.emphasis, inversions))
        if count > MAX_CHUNKS:
            raise InvalidRequest(
                name,
                f"{count} chunks of {size} tokens",
                f"at most {MAX_CHUNKS} chunks ({MAX_CHUNKS * size} tokens)",
            )


def truncation_warnings(tokenizer, request, inversions: InversionLookup | None = None) -> list[str]:
    """What the text encoder will not read of ``request``'s prompts (a ``GenerationRequest``):
    one warning per text past the tokenizer's limit, e.g. ``"prompt: 93 tokens, truncated to
    77"`` (``"prompt[1]: ..."`` when a field has several texts); none when prompts are read in
    chunks.

    Counts include the start and end tokens, as the limit does. Pure: pictures are unchanged.
    """
    if request.long_prompt == "chunk":
        return []
    max_length = tokenizer.model_max_length
    warnings = []
    for name, text in read_texts(request):
        if request.emphasis == "off" and not inversions:
            count = len(tokenize(tokenizer, text, verbose=False).input_ids)
        else:  # the brackets are not tokens; an embedding takes its vectors' positions
            count = len(prompt_tokens(tokenizer, text, request.emphasis, inversions).ids) + 2
        if count > max_length:
            warnings.append(f"{name}: {count} tokens, truncated to {max_length}")
    return list(dict.fromkeys(warnings))  # a schedule's texts of one length warn once
