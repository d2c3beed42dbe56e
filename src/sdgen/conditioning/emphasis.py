"""A1111's emphasis syntax: ``(words)`` weighs words 1.1 times, ``[words]`` 1/1.1 times,
``(words:1.3)`` 1.3 times; brackets nest (their weights multiply) and ``\\(`` is a literal one.

As A1111 applies it (its "Original" emphasis mode): the prompt is cut into runs of one weight,
each run tokenized on its own, the tokens encoded together as usual, then each token's
embedding scaled by its weight and the whole rescaled to the mean it had before ("No norm"
leaves out the rescaling). A prompt without brackets gives exactly the plain embedding.

A1111's other prompt syntax is refused by name rather than read as text: ``BREAK`` (a new
75-token chunk), prompt editing ``[from:to:when]`` and alternation ``[a|b]`` (prompts that
change between steps) and extra networks such as ``<lora:name:1>``.
"""

from __future__ import annotations

import re

import torch

from sdgen.errors import InvalidRequest
from sdgen.models.tokenizing import tokenize

ROUND, SQUARE = 1.1, 1 / 1.1  # the weights of (words) and [words]

MAX_DEPTH = 32  # brackets open at once (1.1**32 = 21): deeper prompts are refused
MAX_WEIGHT = 100.0  # |weight| of a (words:w) group; larger ones overflow half precision

# One token of the syntax: an escaped character, a bracket, ":weight)" closing a weighted
# group, or a run of plain text (a ":" that closes nothing is text too).
_SYNTAX = re.compile(
    r"\\(.)|(\()|(\[)|:\s*([+-]?(?:\d+\.?\d*|\.\d+))\s*\)|(\))|(\])|([^\\()\[\]:]+|:)", re.S
)
# Each pattern linear in the text's length (no separator inside the first character class);
# an escaped bracket is text.
_UNSUPPORTED = {
    "BREAK (a new 75-token chunk)": re.compile(r"\bBREAK\b"),
    "prompt editing [from:to:when]": re.compile(
        r"(?<!\\)\[[^\[\]():]*(?::[^\[\]():]*)?:\s*[+-]?[\d.]+\s*\]"
    ),
    "alternation [a|b]": re.compile(r"(?<!\\)\[[^\[\]|]*\|[^\[\]]*\]"),
    "extra networks (<lora:...>)": re.compile(r"<\w+:[^>]*>"),
}
_WEIGHT = re.compile(r":\s*([+-]?(?:\d+\.?\d*|\.\d+))\s*\)")


def check_syntax(field: str, text: str) -> None:
    """Refuse the A1111 syntax sdgen does not read (see the module's note), brackets nested
    deeper than MAX_DEPTH and weights past MAX_WEIGHT, naming ``field``."""
    for what, pattern in _UNSUPPORTED.items():
        found = pattern.search(text)
        if found:
            raise InvalidRequest(
                field,
                found.group(0),
                f"A1111's emphasis (words:1.2), (words), [words]; {what} is not on sdgen",
            )
    for found in _WEIGHT.finditer(text):
        weight = float(found.group(1))
        if not abs(weight) <= MAX_WEIGHT:
            raise InvalidRequest(
                field, found.group(0), f"a weight from -{MAX_WEIGHT:g} to {MAX_WEIGHT:g}"
            )
    open_groups = {"(": 0, "[": 0}  # as weighted_runs counts them: a stray closer is text
    deepest = 0
    for match in _SYNTAX.finditer(text):
        _, round_open, square_open, weight, round_close, square_close, _ = match.groups()
        if round_open or square_open:
            open_groups[match.group(0)] += 1
            deepest = max(deepest, sum(open_groups.values()))
        elif (weight is not None or round_close) and open_groups["("]:
            open_groups["("] -= 1
        elif square_close and open_groups["["]:
            open_groups["["] -= 1
    if deepest > MAX_DEPTH:
        raise InvalidRequest(field, f"{deepest} nested brackets", f"at most {MAX_DEPTH}")


def weighted_runs(text: str) -> list[tuple[str, float]]:
    """``text`` as runs of (plain text, weight), in order; neighbours of one weight merged.

    Round and square groups are counted apart, as A1111 does: ``)`` closes the last open
    ``(`` group and ``]`` the last ``[`` one, whatever lies between; groups left open weigh
    to the end (the round ones first).
    """
    runs: list[list] = []  # [text, weight], weights multiplied in as groups close
    groups: dict[str, list[int]] = {"(": [], "[": []}  # index of each open group's first run
    for match in _SYNTAX.finditer(text):
        escaped, round_open, square_open, weight, round_close, square_close, plain = match.groups()
        if escaped is not None:
            runs.append([escaped, 1.0])
        elif round_open or square_open:
            groups[match.group(0)].append(len(runs))
        elif weight is not None and groups["("]:
            _weigh(runs, groups["("].pop(), float(weight))
        elif round_close and groups["("]:
            _weigh(runs, groups["("].pop(), ROUND)
        elif square_close and groups["["]:
            _weigh(runs, groups["["].pop(), SQUARE)
        else:  # plain text, or a bracket or a weight that closes nothing
            runs.append([match.group(0) if plain is None else plain, 1.0])
    for start in groups["("]:
        _weigh(runs, start, ROUND)
    for start in groups["["]:
        _weigh(runs, start, SQUARE)
    merged: list[tuple[str, float]] = []
    for run_text, run_weight in runs:
        if merged and merged[-1][1] == run_weight:
            merged[-1] = (merged[-1][0] + run_text, run_weight)
        else:
            merged.append((run_text, run_weight))
    return merged or [("", 1.0)]


def _weigh(runs: list[list], start: int, weight: float) -> None:
    """A group closing: its runs (from ``start`` to the last) weigh ``weight`` times more. Each
    run is in at most MAX_DEPTH groups (``check_syntax``), so a prompt parses in linear time."""
    for run in runs[start:]:
        run[1] *= weight


def weighted_ids(tokenizer, text: str) -> tuple[list[int], list[float], int]:
    """Token ids and weights of ``text`` as the text encoder reads it: start token, the runs'
    tokens (truncated to fit), end token, padding to the tokenizer's length. Also returns how
    many tokens the runs had (without start and end), for the truncation warning."""
    length = tokenizer.model_max_length
    ids, weights = [], []
    for run_text, weight in weighted_runs(text):
        run_ids = tokenize(tokenizer, run_text, add_special_tokens=False, verbose=False).input_ids
        ids += run_ids
        weights += [weight] * len(run_ids)
    count = len(ids)
    ids, weights = ids[: length - 2], weights[: length - 2]
    pad = length - 2 - len(ids)
    ids = [tokenizer.bos_token_id, *ids, tokenizer.eos_token_id] + [tokenizer.pad_token_id] * pad
    return ids, [1.0, *weights, 1.0] + [1.0] * pad, count


def emphasize(hidden: torch.Tensor, weights: torch.Tensor, mode: str) -> torch.Tensor:
    """(N, 77, D) hidden states with each token's scaled by its weight (N, 77); "original"
    then rescales each to the mean it had, as A1111 does. Computed in fp32 (a weighted fp16
    state overflows sooner), returned in the hidden states' dtype."""
    if bool((weights == 1).all()):
        return hidden  # nothing to weigh: exactly the plain embedding
    states = hidden.float()
    original_mean = states.mean(dim=(1, 2), keepdim=True)
    weighted = states * weights.float().unsqueeze(-1)
    if mode == "original":
        new_mean = weighted.mean(dim=(1, 2), keepdim=True)
        scale = torch.where(new_mean == 0, torch.ones_like(new_mean), original_mean / new_mean)
        weighted = weighted * scale
    return weighted.to(hidden.dtype)
