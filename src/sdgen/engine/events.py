"""What the job engine reports: failure kinds, progress, the listener it tells, a full queue."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Protocol

import torch

from sdgen.errors import GenerationCancelled, InvalidRequest, SdgenError
from sdgen.models.loaded import LoadedModel
from sdgen.pipelines.stages import GenerationResult

log = logging.getLogger(__name__)

# Failure kinds, as the API reports them in ``error.kind``.
INVALID_REQUEST = "invalid_request"  # the request could not run as given (field named)
OUT_OF_MEMORY = "out_of_memory"  # the device ran out of memory; a smaller request may run
MODEL_LOAD = "model_load"  # the job's model could not be loaded on the worker's device
INTERNAL = "internal"  # anything else: a bug or an environment problem, logged with traceback
WORKER_DIED = "worker_died"  # the worker thread running the job died (a BaseException escaped)


@dataclass(frozen=True)
class Failure:
    """Why a job failed."""

    kind: str
    message: str
    field: str | None = None


def failure_of(error: Exception) -> Failure:
    """What an exception that ended a job means for its user."""
    if isinstance(error, torch.cuda.OutOfMemoryError):
        detail = (str(error).strip().splitlines() or ["no details"])[0]
        return Failure(OUT_OF_MEMORY, f"the device ran out of memory ({detail})")
    if isinstance(error, InvalidRequest):
        return Failure(INVALID_REQUEST, str(error), error.field)
    return Failure(INTERNAL, f"{type(error).__name__}: {error}")


@dataclass(frozen=True)
class Progress:
    """A running job after a step: ``step`` of ``total`` steps done (1-based)."""

    step: int
    total: int
    preview: bytes | None  # a small PNG of the predicted picture, or None (throttled)
    steps_per_second: float


class JobListener(Protocol):
    """What the engine tells about jobs; called from worker threads, in each job's order."""

    def job_started(self, job_id: str, device: str) -> None: ...

    def job_progressed(self, job_id: str, progress: Progress) -> None: ...

    def job_succeeded(self, job_id: str, result: GenerationResult, model: LoadedModel) -> None: ...

    def job_failed(self, job_id: str, failure: Failure) -> None: ...

    def job_cancelled(self, job_id: str) -> None: ...

    def job_returned(self, job_id: str) -> None:
        """The engine stopped while the job ran: it did not end and should run again."""

    def batch_stepped(self, device: str, jobs: int) -> None:
        """One denoising step ran on ``device`` for ``jobs`` jobs sharing its UNet call."""


class QueueFull(SdgenError):
    """The queue holds ``max_queue`` jobs; try again later."""

    def __init__(self, depth: int, retry_after: int):
        self.depth, self.retry_after = depth, retry_after
        super().__init__(f"the queue is full ({depth} jobs); retry in {retry_after} s")


class ModelUnavailable(SdgenError):
    """A request's model could not be loaded (missing, unfetchable or broken): the server is
    not at fault of the request, and a retry fails alike until the model is fixed."""

    def __init__(self, name: str, reason: str):
        self.name, self.reason = name, reason
        super().__init__(f"model: {name!r} could not be loaded ({reason})")


def report_end(
    listener: JobListener,
    job_id: str,
    *,
    model: LoadedModel,
    result: GenerationResult | None = None,
    error: BaseException | None = None,
    cancelled: bool = False,
) -> None:
    """Tell ``listener`` how a job ended: its result, or what ``error`` means for it. A
    ``GenerationCancelled`` is a cancel when the user ``cancelled``, else (the engine stopping)
    the job goes back to the queue."""
    if isinstance(error, GenerationCancelled):
        if cancelled:
            listener.job_cancelled(job_id)
        else:
            listener.job_returned(job_id)
    elif error is not None:
        failure = failure_of(error)
        if failure.kind == INTERNAL:
            log.error("job %s failed", job_id, exc_info=error)
        listener.job_failed(job_id, failure)
    else:
        try:
            listener.job_succeeded(job_id, result, model)
        except Exception as err:
            listener.job_failed(job_id, storing_failed(job_id, err))


def storing_failed(job_id: str, error: Exception) -> Failure:
    """A job whose pictures could not be stored, logged with the traceback."""
    log.exception("job %s: storing the result failed", job_id, exc_info=error)
    return Failure(INTERNAL, f"storing the pictures failed: {type(error).__name__}: {error}")
