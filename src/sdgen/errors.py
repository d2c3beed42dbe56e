"""Errors a user can cause and fix. The CLI prints their message on one line and exits 2."""

from __future__ import annotations


class SdgenError(Exception):
    """A problem with what the user asked for, explained in the message; never a bug."""


class InvalidRequest(SdgenError, ValueError):
    """A request field has a value outside what is allowed."""

    def __init__(self, field: str, value: object, allowed: str):
        self.field, self.value, self.allowed = field, value, allowed
        super().__init__(f"{field}: {value!r} is not allowed; {allowed}")


class ModelNotFound(SdgenError):
    """The model named by a path or hub id cannot be found or fetched."""


class PickleRefused(SdgenError):
    """A pickle checkpoint was found and the user has not allowed pickle loading."""


class GenerationCancelled(Exception):
    """Raised by a step callback to stop a generation at the next step boundary."""


class GenerationStopped(Exception):
    """Raised by a step callback to end a generation after this step and keep its pictures:
    the predicted clean latents of the step (what A1111 returns when interrupted)."""

    def __init__(self, steps: int, total: int, denoised):
        self.steps, self.total = steps, total  # steps done, of ``total``
        self.denoised = denoised  # (B, C, h, w) x0 predicted at the last step done
        super().__init__(steps, total, denoised)

    def __str__(self) -> str:
        return f"stopped after step {self.steps} of {self.total}"
