"""A1111's emphasis syntax: ``(words)`` weighs words 1.1 times, ``[words]`` 1/1.1 times,
``(words:1.3)`` 1.3 times; brackets nest (their weights multiply) and ``\\(`` is a literal one.

As A1111 applies it (its "Original" emphasis mode): the prompt is cut into runs of one weight,
each run tokenized on its own, the tokens encoded together as usual, then each token's
embedding scaled by its weight and the whole rescaled to the mean it had before ("No norm"
leaves out the rescaling). A prompt without brackets gives exactly the plain embedding.

``BREAK`` ends a 75-token chunk where prompts are read in chunks (``long_prompt="chunk"``,
``sdgen.conditioning.chunks``) and is refused otherwise. Prompt editing ``[from:to:when]`` and
alternation ``[a|b]`` make a prompt into several texts, one per stretch of steps
(``sdgen.conditioning.schedules``), each read here, as is each part of a prompt cut at ``AND``
(``sdgen.conditioning.composition``); extra networks (``<lora:name:1>``) are cut
out of the prompt before (``sdgen.conditioning.networks``).
"""

from __future__ import annotations

import re

import torch

from sdgen.errors import InvalidRequest

ROUND, SQUARE = 1.1, 1 / 1.1  # the weights of (words) and [words]
# The emphasis modes that weigh words; "off" and "none" (A1111's None) read brackets as text
WEIGHING_MODES = ("original", "no_norm")

MAX_DEPTH = 32  # brackets open at once (1.1**32 = 21): deeper prompts are refused
MAX_WEIGHT = 100.0  # |weight| of a (words:w) group; larger ones overflow half precision

# One token of the syntax: an escaped character, a bracket, ":weight)" closing a weighted
# group, or a run of plain text (a ":" that closes nothing is text too).
_SYNTAX = re.compile(
    r"\\(.)|(\()|(\[)|:\s*([+-]?(?:\d+\.?\d*|\.\d+))\s*\)|(\))|(\])|([^\\()\[\]:]+|:)", re.S
)
# A1111's BREAK, the whitespace around it dropped; a chunk boundary with long_prompt chunk
_BREAK = re.compile(r"\s*\bBREAK\b\s*")
_WEIGHT = re.compile(r":\s*([+-]?(?:\d+\.?\d*|\.\d+))\s*\)")


def check_syntax(field: str, text: str, breaks: bool = False) -> None:
    """Refuse brackets nested deeper than MAX_DEPTH and weights past MAX_WEIGHT, naming
    ``field``; ``breaks``: BREAK ends a chunk (outside brackets only), else it is refused."""
    if not breaks and (found := re.search(r"\bBREAK\b", text)):
        raise InvalidRequest(
            field, found.group(0), "BREAK only with long_prompt chunk (75-token chunks)"
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
        elif breaks and match.group(7) and any(open_groups.values()):
            if found := _BREAK.search(match.group(7)):
                raise InvalidRequest(field, found.group(0).strip(), "BREAK outside brackets")
    if deepest > MAX_DEPTH:
        raise InvalidRequest(field, f"{deepest} nested brackets", f"at most {MAX_DEPTH}")


def weighted_runs(text: str, breaks: bool = False) -> list[tuple[str | None, float]]:
    """``text`` as runs of (plain text, weight), in order; neighbours of one weight merged.

    Round and square groups are counted apart, as A1111 does: ``)`` closes the last open
    ``(`` group and ``]`` the last ``[`` one, whatever lies between; groups left open weigh
    to the end (the round ones first). With ``breaks``, each BREAK is a run of its own with
    text None (``check_syntax`` has refused those inside brackets).
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
        elif plain is not None and breaks:
            parts = _BREAK.split(plain)
            for index, part in enumerate(parts):
                if index:
                    runs.append([None, 1.0])
                runs.append([part, 1.0])
        else:  # plain text, or a bracket or a weight that closes nothing
            runs.append([match.group(0) if plain is None else plain, 1.0])
    for start in groups["("]:
        _weigh(runs, start, ROUND)
    for start in groups["["]:
        _weigh(runs, start, SQUARE)
    merged: list[tuple[str | None, float]] = []
    for run_text, run_weight in runs:
        if merged and merged[-1][1] == run_weight and None not in (run_text, merged[-1][0]):
            merged[-1] = (merged[-1][0] + run_text, run_weight)
        else:
            merged.append((run_text, run_weight))
    return merged or [("", 1.0)]


def _weigh(runs: list[list], start: int, weight: float) -> None:
    """A group closing: its runs (from ``start`` to the last) weigh ``weight`` times more. Each
    run is in at most MAX_DEPTH groups (``check_syntax``), so a prompt parses in linear time."""
    for run in runs[start:]:
        run[1] *= weight


def _group_means(means: torch.Tensor, groups: torch.Tensor) -> torch.Tensor:
    """(N, 1, 1) row means -> each row's group's mean, (N, 1, 1)."""
    groups = groups.to(means.device)
    sums = torch.zeros(int(groups.max()) + 1, dtype=means.dtype, device=means.device)
    sums = sums.index_add(0, groups, means.flatten())
    counts = torch.bincount(groups).to(means.dtype)
    return (sums / counts)[groups].reshape(means.shape)


def emphasize(
    hidden: torch.Tensor, weights: torch.Tensor, mode: str, groups: torch.Tensor | None = None
) -> torch.Tensor:
    """(N, 77, D) hidden states with each token's scaled by its weight (N, 77); "original"
    then rescales each to the mean it had, as A1111 does: each on its own, or with ``groups``
    (N,) the rows of one group to their mean together (what A1111's mean over one batch of
    texts does). Computed in fp32 (a weighted fp16 state overflows sooner), returned in the
    hidden states' dtype."""
    if bool((weights == 1).all()):
        return hidden  # nothing to weigh: exactly the plain embedding
    states = hidden.float()
    original_mean = states.mean(dim=(1, 2), keepdim=True)  # (N, 1, 1)
    weighted = states * weights.float().unsqueeze(-1)
    if mode == "original":
        new_mean = weighted.mean(dim=(1, 2), keepdim=True)
        if groups is not None:  # rows of one size: a group's mean is its rows' means' mean
            original_mean, new_mean = (
                _group_means(original_mean, groups),
                _group_means(new_mean, groups),
            )
        scale = torch.where(new_mean == 0, torch.ones_like(new_mean), original_mean / new_mean)
        weighted = weighted * scale
    return weighted.to(hidden.dtype)
