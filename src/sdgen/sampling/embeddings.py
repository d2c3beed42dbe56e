"""The text embeddings of a UNet call's rows, which may differ in length, and the call itself.

A prompt read in 75-token chunks (``long_prompt="chunk"``, as A1111 reads every prompt) has 77
embedding positions per chunk, so the rows of one UNet call can differ in length: a long prompt
next to the usual short negative prompt, or requests batched together. Cross-attention cannot
take rows of several lengths in one call without padding the shorter ones, and padding changes
their pictures (the padded positions take part in the softmax). So the UNet is called once per
length, each call with the rows of that length, and the predictions are put back in row order:
what A1111 does when a prompt and its negative prompt differ in chunks. Rows of one length, the
usual case, make one call, as before.
"""

from __future__ import annotations

from bisect import bisect_left
from dataclasses import dataclass
from functools import cached_property

import torch

from sdgen.sampling.guidance import PartWeights


@dataclass(frozen=True, eq=False)
class LengthGroup:
    """The rows of one embedding length: where they are, and their embeddings stacked."""

    rows: torch.Tensor | None  # (n,) row positions on the embeddings' device; None: every row
    states: torch.Tensor  # (n, L, D)


@dataclass(frozen=True, eq=False)
class TextEmbeddings:
    """One (L, D) embedding per UNet row, L = 77 per chunk for SD 1.x: [negative; prompt]
    rows when guiding."""

    rows: tuple[torch.Tensor, ...]
    # A1111's AND: rows [negative; part 1; ...; part K], B each, and the parts' weights
    # (``sdgen.sampling.guidance.compose``); None for [negative; prompt] or [prompt] rows
    part_weights: PartWeights | None = None

    @classmethod
    def stacked(cls, states: torch.Tensor) -> TextEmbeddings:
        """Rows of one length, (N, L, D), kept as the one tensor they are."""
        embeddings = cls(tuple(states.unbind(0)))
        embeddings.__dict__["groups"] = (LengthGroup(None, states),)
        return embeddings

    @classmethod
    def cat(cls, parts: list[TextEmbeddings]) -> TextEmbeddings:
        """The rows of ``parts`` one after another (requests batched together)."""
        lengths = {group.states.shape[1:] for part in parts for group in part.groups}
        if len(lengths) == 1:  # the usual case: one tensor, one UNet call
            return cls.stacked(torch.cat([part.groups[0].states for part in parts]))
        return cls(tuple(row for part in parts for row in part.rows))

    def __len__(self) -> int:
        return len(self.rows)

    def at(self, step: int) -> TextEmbeddings:
        """The embeddings of step index ``step``: these, at every step (``EmbeddingSchedule``
        changes them)."""
        return self

    @cached_property
    def groups(self) -> tuple[LengthGroup, ...]:
        """The rows grouped by length, in the order each length first appears."""
        positions: dict[tuple[int, ...], list[int]] = {}
        for index, row in enumerate(self.rows):
            positions.setdefault(tuple(row.shape), []).append(index)
        if len(positions) == 1:
            return (LengthGroup(None, torch.stack(self.rows)),)
        device = self.rows[0].device
        return tuple(
            LengthGroup(
                torch.tensor(indices, device=device), torch.stack([self.rows[i] for i in indices])
            )
            for indices in positions.values()
        )


@dataclass(frozen=True, eq=False)
class EmbeddingSchedule:
    """Text embeddings that change between steps (A1111's prompt editing and alternation,
    ``sdgen.conditioning.schedules``): (last step index, embeddings) entries, ascending."""

    entries: tuple[tuple[int, TextEmbeddings], ...]
    part_weights: PartWeights | None = None  # as TextEmbeddings': the same at every step

    def at(self, step: int) -> TextEmbeddings:
        """The embeddings of step index ``step`` (from 0): the first entry not ended before it."""
        index = bisect_left(self.entries, step, key=lambda entry: entry[0])
        return self.entries[min(index, len(self.entries) - 1)][1]


def predict_noise(
    unet, sample: torch.Tensor, timesteps: torch.Tensor, embeddings: TextEmbeddings
) -> torch.Tensor:
    """The UNet's prediction for ``sample`` (N, C', h, w) at ``timesteps`` (N,): one call per
    embedding length (see the module's note), (N, C, h, w) in row order.

    ``unet`` is called as ``unet(x, t, encoder_hidden_states=..., return_dict=False)[0]``: a
    diffusers ``UNet2DConditionModel``, or a ``TracedUNet`` / ``GraphedUNet`` around one.
    """
    groups = embeddings.groups
    if len(groups) == 1:
        states = groups[0].states
        return unet(sample, timesteps, encoder_hidden_states=states, return_dict=False)[0]
    prediction = None
    for group in groups:
        part = unet(
            sample[group.rows],
            timesteps[group.rows],
            encoder_hidden_states=group.states,
            return_dict=False,
        )[0]
        if prediction is None:
            prediction = part.new_empty((sample.shape[0], *part.shape[1:]))
        prediction[group.rows] = part
    return prediction
