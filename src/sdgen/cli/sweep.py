"""The ``sweep`` command."""

from __future__ import annotations
