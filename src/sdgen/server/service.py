"""The server's job service: the store, the engine and the event stream held together.

Both APIs (native ``/v1`` and A1111's ``/sdapi/v1``) submit, read, cancel and wait for jobs
through it, so their jobs share one queue and one store. It is the engine's listener: what a
worker reports is committed to the store first, then published to subscribers.

A finished job's pictures are written (PNG encoding: 30-70 ms for a 512x512 picture on one
core of this project's CPU machine) by one writer thread, in the order jobs finish, so that a
GPU worker goes on with the next step of the jobs beside it instead of waiting: eight such
pictures written on the worker would stop a batch of 8 SD 1.5 pictures, 1.85 s on an H100, for
about a sixth of its time. The job says ``running`` until its pictures and status
are committed; a cancel in between leaves it to succeed; stopping the service writes what is
pending first.
"""

from __future__ import annotations

import base64
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from sdgen.engine.events import Failure, JobListener, Progress, QueueFull, storing_failed
from sdgen.engine.jobs import Engine
from sdgen.models.loaded import LoadedModel
from sdgen.params import GenerationRequest
from sdgen.pipelines.stages import GenerationResult

from .events import EventHub, JobEvent, Subscription
from .metrics import Metrics
from .store import JobRecord, JobStore, StoredImage, new_id

log = logging.getLogger(__name__)

EngineFactory = Callable[[JobListener], Engine]


@dataclass(frozen=True)
class LiveProgress:
    """A running job's latest step, kept in memory only (the store records status changes)."""

    step: int
    total: int
    preview: str | None  # base64 PNG of the latest preview picture
    device: str
    started: float


class JobService:
    """Submit, read, cancel and follow jobs; the engine's ``JobListener``."""

    def __init__(self, store: JobStore, make_engine: EngineFactory, *, metadata: bool = True):
        self.store = store
        self.metadata = metadata  # write the parameters and sdgen chunks into output PNGs
        self.events = EventHub()
        self.engine = make_engine(self)
        self.metrics = Metrics(
            queue_depth=lambda: self.engine.queue_depth, running=lambda: len(self.engine.running())
        )
        self._live: dict[str, LiveProgress] = {}
        self._finishing: set[str] = set()  # succeeded, pictures not yet committed
        self._lock = threading.Lock()
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sdgen-store")

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        """Queue again what a previous run left (see ``JobStore.recover``), then start workers."""
        for record in self.store.recover():
            try:
                request = self.store.request_of(record)
            except Exception as err:  # an input file lost or changed since: fail, do not block
                self.store.mark_failed(record.id, "internal", f"cannot be re-queued: {err}", None)
                continue
            self.engine.submit(record.id, request, force=True)
        self.engine.start()

    def stop(self) -> None:
        """Stop the workers, then write the pictures of the jobs that finished meanwhile."""
        self.engine.stop()
        self._writer.shutdown(wait=True)

    # -- requests ----------------------------------------------------------------------------

    def submit(self, request: GenerationRequest, origin: str) -> JobRecord:
        """Check, store and queue a request; its record once committed.

        Raises InvalidRequest (naming the field) or QueueFull; nothing is stored then.
        """
        resolved = self.engine.check(request)
        warnings = self.engine.warnings(resolved)
        job_id = new_id()
        try:
            self.engine.submit(
                job_id,
                resolved,
                persist=lambda: self.store.add(job_id, resolved, origin, warnings),
            )
        except QueueFull:
            self.metrics.refused.labels("queue_full").inc()
            raise
        self.metrics.submitted.inc()
        return self.store.get(job_id)

    def get(self, job_id: str) -> JobRecord | None:
        return self.store.get(job_id)

    def cancel(self, job_id: str) -> JobRecord | None:
        """Cancel a job: a queued one never runs; a running one stops within one step.

        Returns the job as it is now (a running one still says "running" until it stops), or
        None for an unknown id. A job that has ended is left as it is.
        """
        record = self.store.get(job_id)
        if record is None or record.terminal:
            return record
        with self._lock:
            if job_id in self._finishing:  # done: its pictures are being written
                return record
        if self.engine.cancel(job_id) is None and self.store.mark_cancelled(job_id):
            self._ended(job_id)  # stored but not in the engine (not yet handed over)
        return self.store.get(job_id)

    def finish(self, job_id: str) -> bool:
        """End a running job at its next step, keeping the pictures predicted there (A1111's
        interrupt); it then succeeds with them. True too for a job whose pictures are being
        written (it has ended with them); False when the job is not running."""
        with self._lock:
            if job_id in self._finishing:
                return True
        return self.engine.finish(job_id)

    def live(self, job_id: str) -> LiveProgress | None:
        with self._lock:
            return self._live.get(job_id)

    def current(self, origin: str | None = None) -> tuple[str, LiveProgress] | None:
        """The running job (made through ``origin``'s API, if given) that started first, with
        its progress: A1111's single "current job" (A1111 runs its calls one after another, so
        the others running beside it here are the ones A1111 would have queued behind it)."""
        with self._lock:
            live = dict(self._live)
        if origin is not None:
            live = {
                job_id: progress
                for job_id, progress in live.items()
                if (record := self.store.get(job_id)) is not None and record.origin == origin
            }
        if not live:
            return None
        job_id = min(live, key=lambda key: live[key].started)
        return job_id, live[job_id]

    def queue_position(self, job_id: str) -> int | None:
        """1 for the next job to run; None when the job is not queued."""
        queued = self.engine.queued_ids()
        return queued.index(job_id) + 1 if job_id in queued else None

    def subscribe(self, job_id: str) -> Subscription:
        return self.events.subscribe(job_id)

    async def wait(self, job_id: str, poll: float = 5.0) -> JobRecord:
        """The job's record once it has ended (subscribing first, so no end is missed)."""
        with self.subscribe(job_id) as events:
            while True:
                record = self.store.get(job_id)
                if record is None or record.terminal:
                    return record
                event = await events.next(timeout=poll)
                while event is not None and not event.terminal:
                    event = await events.next(timeout=poll)

    # -- JobListener -------------------------------------------------------------------------

    def job_started(self, job_id: str, device: str) -> None:
        self.store.mark_running(job_id, device)
        with self._lock:
            self._live[job_id] = LiveProgress(0, 0, None, device, time.monotonic())
        self.events.publish(JobEvent("status", job_id, {"status": "running", "device": device}))

    def job_progressed(self, job_id: str, progress: Progress) -> None:
        preview = base64.b64encode(progress.preview).decode() if progress.preview else None
        with self._lock:
            live = self._live.get(job_id)
            if live is None:
                return
            self._live[job_id] = LiveProgress(
                progress.step, progress.total, preview or live.preview, live.device, live.started
            )
        self.metrics.steps_per_second.labels(live.device).set(progress.steps_per_second)
        data = {"step": progress.step, "total": progress.total, "preview": preview}
        self.events.publish(JobEvent("progress", job_id, data))

    def job_succeeded(self, job_id: str, result: GenerationResult, model: LoadedModel) -> None:
        from sdgen.api import image_record

        images = []
        for index, picture in enumerate(result.images):
            record = image_record(result, model, index)
            stored = StoredImage(
                id=new_id(),
                position=index,
                seed=result.seeds[index],
                width=picture.width,
                height=picture.height,
                parameters=record.parameters_text(),
            )
            images.append((stored, picture, record))
        with self._lock:
            self._finishing.add(job_id)
        try:
            self._writer.submit(self._commit_success, job_id, images)
        except RuntimeError:  # the service has stopped (a worker that outlived its stop)
            self._commit_success(job_id, images)

    def _commit_success(self, job_id: str, images: list) -> None:
        """On the writer thread: the pictures and the job's success, or its failure to store."""
        try:
            self.store.mark_succeeded(job_id, images, metadata=self.metadata)
        except Exception as err:
            failure = storing_failed(job_id, err)
            try:
                self.store.mark_failed(job_id, failure.kind, failure.message, None)
                self.metrics.failures.labels(failure.kind).inc()
            except Exception:
                log.exception("job %s: recording the failure failed too", job_id)
        finally:
            with self._lock:
                self._finishing.discard(job_id)
        self._ended(job_id)

    def job_failed(self, job_id: str, failure: Failure) -> None:
        self.store.mark_failed(job_id, failure.kind, failure.message, failure.field)
        self.metrics.failures.labels(failure.kind).inc()
        self._ended(job_id)

    def job_cancelled(self, job_id: str) -> None:
        self.store.mark_cancelled(job_id)
        self._ended(job_id)

    def job_returned(self, job_id: str) -> None:
        self.store.mark_queued(job_id)
        with self._lock:
            self._live.pop(job_id, None)

    def batch_stepped(self, device: str, jobs: int) -> None:
        self.metrics.batch_jobs.labels(device).observe(jobs)

    def _ended(self, job_id: str) -> None:
        with self._lock:
            self._live.pop(job_id, None)
        record = self.store.get(job_id)
        if record is not None:
            self.metrics.finished.labels(record.status).inc()
            ended = record.finished_at or time.time()
            self.metrics.latency.labels(record.status).observe(max(0.0, ended - record.created_at))
            status = record.status
        else:
            status = "unknown"
        self.events.publish(JobEvent("end", job_id, {"status": status}))
