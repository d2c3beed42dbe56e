"""Checks of single request fields, shared by the request types (``sdgen.params``,
``sdgen.hires``): each raises InvalidRequest naming the field and what it may hold.

Light on purpose: no torch here.
"""

from __future__ import annotations

import math

from sdgen.errors import InvalidRequest


def is_number(value: object) -> bool:
    """A finite int or float, not a bool (JSON's true is not 1)."""
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def is_whole(value: object) -> bool:
    """An int, not a bool."""
    return isinstance(value, int) and not isinstance(value, bool)


def check_text(field: str, value: object) -> None:
    """A string or a tuple of strings, in valid Unicode."""
    items = value if isinstance(value, tuple) else (value,)
    if not all(isinstance(item, str) for item in items):
        raise InvalidRequest(field, value, "a string or a list of strings")
    for item in items:
        try:
            item.encode("utf-8")
        except UnicodeEncodeError as err:  # a lone surrogate, e.g. "\ud83d" from JSON
            bad = item[err.start : err.end].encode("unicode_escape").decode()
            raise InvalidRequest(
                field, bad, "text in valid Unicode (an unpaired surrogate is not a character)"
            ) from None


def check_int(field: str, value: object, low: int, high: int) -> None:
    """A whole number from ``low`` to ``high``."""
    if not is_whole(value) or not low <= value <= high:
        raise InvalidRequest(field, value, f"a whole number from {low} to {high}")


def check_fraction(field: str, value: object, allowed: str) -> None:
    """A number from 0 to 1; ``allowed`` says what it means."""
    if not is_number(value) or not 0.0 <= value <= 1.0:
        raise InvalidRequest(field, value, allowed)


def check_guidance(value: object) -> None:
    """A finite guidance scale."""
    if not is_number(value):
        allowed = "a finite number (1 or less turns classifier-free guidance off)"
        raise InvalidRequest("guidance_scale", value, allowed)
