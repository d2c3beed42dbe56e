"""The ``rank`` command."""

from __future__ import annotations
