"""A sweep as data: one request varied along one or two axes, one picture per cell.

The first axis is the grid's columns (X), the second its rows (Y); one axis makes a single row.
Every cell is the base request with the axes' fields replaced, validated by the request itself,
so a sweep accepts exactly the values a single request would. Unless the seed is an axis, every
cell has the same seed, so a cell differs from its neighbours only in the swept setting.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial

from sdgen.errors import InvalidRequest
from sdgen.params import GenerationRequest

SWEEP_KEY = "sdgen-sweep"  # PNG text chunk of a sweep's grid: JSON of sweep_record()


def _number(value: float | int) -> str:
    """7.0 -> "7", 1.1 -> "1.1", 12345678901 -> "12345678901" (whole numbers never in e-form)."""
    return f"{value:g}" if isinstance(value, float) else str(value)


def _prefixed(prefix: str, value: float | int) -> str:
    return f"{prefix} {_number(value)}"


@dataclass(frozen=True)
class SweepAxis:
    """How one axis reads its values, which request field it sets, and how a value is labelled."""

    field: str  # the GenerationRequest field it sets
    parse: Callable[[str], object]  # one value from its text; ValueError when unparsable
    label: Callable[[object], str]  # a (validated) value's label on the grid
    allowed: str  # what the comma-separated text may hold, for error messages
    title: str = ""  # the axis' title on the grid, for labels that do not name the setting


SWEEP_AXES: dict[str, SweepAxis] = {
    "guidance": SweepAxis(
        "guidance_scale", float, partial(_prefixed, "CFG"), "comma-separated numbers, e.g. 1.1,3,7"
    ),
    "steps": SweepAxis(
        "steps", int, partial(_prefixed, "steps"), "comma-separated whole numbers, e.g. 10,25,50"
    ),
    "seed": SweepAxis(
        "seed", int, partial(_prefixed, "seed"), "comma-separated whole numbers, e.g. 0,1,2"
    ),
    "sampler": SweepAxis(
        "sampler", str, str, "comma-separated sampler names, e.g. euler_a,dpmpp_2m", "sampler"
    ),
    "strength": SweepAxis(
        "strength",
        float,
        partial(_prefixed, "strength"),
        "comma-separated numbers from 0 to 1, e.g. 0.3,0.6",
    ),
    # A1111's X/Y plot has it: the layer a model was trained with shows at a glance
    "clip_skip": SweepAxis(
        "clip_skip", int, partial(_prefixed, "clip skip"), "comma-separated whole numbers, e.g. 1,2"
    ),
}


def sweep_axis(name: str) -> SweepAxis:
    """The registry entry of axis ``name``, refused by name when there is none."""
    if name not in SWEEP_AXES:
        raise InvalidRequest("sweep", name, f"axes are {', '.join(SWEEP_AXES)}")
    return SWEEP_AXES[name]


def parse_axis(name: str, text: str) -> list:
    """The values of axis ``name`` from comma-separated ``text``: "1.1, 3,7" -> [1.1, 3.0, 7.0].

    Only their form is checked here (a number where a number is due); their range is checked by
    the request each value goes into (``sweep_requests``).
    """
    axis = sweep_axis(name)
    items = [item.strip() for item in text.split(",")]
    if not all(items):  # an empty text, or an empty item as in "1,,7"
        raise InvalidRequest(name, text, axis.allowed)
    try:
        return [axis.parse(item) for item in items]
    except ValueError as err:
        raise InvalidRequest(name, text, axis.allowed) from err


def sweep_requests(
    base: GenerationRequest, axes: Sequence[tuple[str, Sequence]]
) -> list[list[GenerationRequest]]:
    """The requests of a sweep's cells: ``cells[row][col]``, one picture each.

    Args:
        base: the settings every cell shares; one prompt and ``num_images=1``. A seed is drawn
            here if it has none, so that all cells share it (unless the seed is an axis).
        axes: (axis name, values) for one or two axes of ``SWEEP_AXES``: columns (X), then rows
            (Y). A ``strength`` axis needs ``base`` to have an init picture (img2img).
    Returns:
        One row per value of the second axis (a single row for one axis), one request per value
        of the first; every one validated as a request.
    """
    names = [name for name, _ in axes]
    if not 1 <= len(axes) <= 2 or len(set(names)) != len(names):
        raise InvalidRequest("sweep", names, "one or two different axes: columns, then rows")
    for name, values in axes:
        if not values:
            raise InvalidRequest(name, list(values), "at least one value")
        sweep_axis(name)
    _check_base(base, dict(axes))
    base = base.with_seed()
    columns = _changes(axes[0])
    rows = _changes(axes[1]) if len(axes) == 2 else [{}]
    return [[base.replace(**row, **column) for column in columns] for row in rows]


def _check_base(base: GenerationRequest, axes: dict[str, Sequence]) -> None:
    """Refuse a base request that is not one picture, or a strength axis without an init picture."""
    if base.num_images != 1:
        raise InvalidRequest("num_images", base.num_images, "1: a sweep makes one picture a cell")
    if len(base.prompts) != 1:
        raise InvalidRequest("prompt", list(base.prompts), "one prompt for a sweep")
    if "strength" in axes and base.init_image is None:
        raise InvalidRequest(
            "strength", list(axes["strength"]), "a strength axis needs an init picture (img2img)"
        )


def _changes(axis: tuple[str, Sequence]) -> list[dict[str, object]]:
    """The request changes of one axis: [{field: value}, ...]."""
    name, values = axis
    return [{SWEEP_AXES[name].field: value} for value in values]


def describe_axes(cells: list[list[GenerationRequest]], names: Sequence[str]) -> list[dict]:
    """Each axis as the cells have it: name, field, values (as validated) and labels.

    Values are read back from the cells' requests, so they are the resolved ones (a sampler
    given as "Euler a" is "euler_a"). The first axis runs along the first row, the second down
    the first column.
    """
    lines = [cells[0], [row[0] for row in cells]]
    described = []
    for name, line in zip(names, lines, strict=False):
        axis = sweep_axis(name)
        values = [getattr(request, axis.field) for request in line]
        described.append(
            {
                "name": name,
                "field": axis.field,
                "values": values,
                "labels": [axis.label(value) for value in values],
            }
        )
    return described


def sweep_record(axes: list[dict], cell_names: list[list[str]]) -> dict:
    """What a sweep's grid records in its ``SWEEP_KEY`` chunk: the axes and the cells' files.

    ``cell_names[row][col]`` are the cells' paths relative to the grid's folder.
    """
    return {"axes": axes, "cells": cell_names}
