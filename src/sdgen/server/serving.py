"""The native API's handlers (``/v1``): what each route does, apart from HTTP plumbing.

The routers reach these through ``app.state`` (``jobs_handler``, ``info_handler``), so a test
can build them around a fake engine. Errors are raised as exceptions (``ApiError``,
``InvalidRequest``, ``QueueFull``) and turned into responses in one place, ``app.py``.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

from sdgen.sampling.samplers import SAMPLERS

from .config import ServerConfig
from .protocol import (
    JobCreate,
    JobInfo,
    JobList,
    ModelInfo,
    SamplerInfo,
    job_info,
)
from .service import JobService
from .store import STATUSES, JobRecord

KEEPALIVE_SECONDS = 15.0  # an SSE comment this often keeps proxies from closing a quiet stream


class ApiError(Exception):
    """An HTTP error with the API's error body: ``{"error": {kind, field, message}}``."""

    def __init__(
        self,
        status: int,
        kind: str,
        message: str,
        field: str | None = None,
        headers: dict[str, str] | None = None,
    ):
        super().__init__(message)
        self.status, self.kind, self.message, self.field = status, kind, message, field
        self.headers = headers or {}


def not_found(what: str, value: str) -> ApiError:
    return ApiError(404, "not_found", f"{what} {value!r} does not exist", what)


class JobsHandler:
    """Jobs: submit, read, list, cancel, stop, follow; and their pictures."""

    def __init__(self, service: JobService, config: ServerConfig):
        self.service, self.config = service, config

    def create(self, body: JobCreate) -> JobInfo:
        self.config.limits.check_counts(body.steps, body.num_images)
        request = body.to_request(max_pixels=self.config.max_input_pixels)
        return self.info(self.service.submit(request, origin="v1"))

    def get(self, job_id: str) -> JobInfo:
        return self.info(self._record(job_id))

    def list(self, status: str | None, limit: int, offset: int) -> JobList:
        if status is not None and status not in STATUSES:
            raise ApiError(
                422, "invalid_request", f"status: one of {', '.join(STATUSES)}", "status"
            )
        records, total = self.service.store.list_jobs(status=status, limit=limit, offset=offset)
        following = offset + len(records)
        return JobList(
            jobs=[self.info(record) for record in records],
            total=total,
            limit=limit,
            offset=offset,
            next_offset=following if following < total else None,
        )

    def cancel(self, job_id: str) -> JobInfo:
        record = self.service.cancel(job_id)
        if record is None:
            raise not_found("job", job_id)
        return self.info(record)

    def stop(self, job_id: str) -> JobInfo:
        """End a running job at its next step, keeping the pictures predicted there."""
        record = self.service.get(job_id)
        if record is None:
            raise not_found("job", job_id)
        if record.status != "running" or not self.service.finish(job_id):
            raise ApiError(
                409,
                "not_running",
                f"job {job_id!r} is {record.status}: only a running job stops with its pictures "
                "(DELETE cancels a queued one)",
                "job",
            )
        return self.info(record)

    def image_file(self, image_id: str) -> Path:
        """The PNG of a picture, found by id in the store (the id is never used as a path)."""
        path = self.service.store.image_file(image_id)
        if path is None:
            raise not_found("image", image_id)
        return path

    def info(self, record: JobRecord) -> JobInfo:
        """The job with its live progress (running) or queue position (queued)."""
        live = self.service.live(record.id) if record.status == "running" else None
        return job_info(
            record,
            step=live.step if live else 0,
            total=live.total if live else 0,
            preview=live.preview if live else None,
            queue_position=self.service.queue_position(record.id)
            if record.status == "queued"
            else None,
        )

    def _record(self, job_id: str) -> JobRecord:
        record = self.service.get(job_id)
        if record is None:
            raise not_found("job", job_id)
        return record

    def events(
        self, job_id: str, is_disconnected: Callable[[], Awaitable[bool]]
    ) -> AsyncIterator[str]:
        """Server-sent events of one job: its current state first, then progress, then exactly
        one ``end`` event. A client that reconnects gets the current state again."""
        self._record(job_id)  # 404 before the stream starts
        return self._stream(job_id, is_disconnected)

    async def _stream(
        self, job_id: str, is_disconnected: Callable[[], Awaitable[bool]]
    ) -> AsyncIterator[str]:
        # Subscribe before reading the state, so nothing between the two is missed.
        with self.service.subscribe(job_id) as events:
            record = self._record(job_id)
            if record.terminal:
                yield _sse("end", self.info(record).model_dump())
                return
            current = self.info(record)
            yield _sse("status", current.model_dump())
            last_step = current.progress.step
            while True:
                event = await events.next(timeout=KEEPALIVE_SECONDS)
                if event is None:
                    if await is_disconnected():
                        return
                    yield ": keep-alive\n\n"
                elif event.kind == "progress":
                    if event.data["step"] <= last_step:  # older than the state already sent
                        continue
                    last_step = event.data["step"]
                    fraction = event.data["step"] / event.data["total"]
                    yield _sse("progress", {"id": job_id, **event.data, "fraction": fraction})
                elif event.kind == "status":
                    yield _sse("status", self.info(self._record(job_id)).model_dump())
                else:  # "end": the one terminal event
                    yield _sse("end", self.info(self._record(job_id)).model_dump())
                    return


class InfoHandler:
    """What the server offers and how it is doing."""

    def __init__(self, service: JobService, config: ServerConfig):
        self.service, self.config = service, config

    def models(self) -> list[ModelInfo]:
        models = self.service.engine.models
        loaded = models.loaded()
        infos = []
        for name in models.names:
            devices = [device for loaded_name, device in loaded if loaded_name == name]
            embeddings, loras = [], []
            if devices:
                model = models.get(name, devices[0])
                embeddings = sorted(model.textual_inversions.by_name)
                loras = model.loras.names
            infos.append(
                ModelInfo(
                    name=name,
                    default=name == models.default,
                    loaded_on=devices,
                    embeddings=embeddings,
                    loras=loras,
                )
            )
        return infos

    def samplers(self) -> list[SamplerInfo]:
        return [
            SamplerInfo(
                name=s.name,
                a1111_name=s.display_name,
                schedule_type=s.schedule_type,
                scheduler_class=s.scheduler_class,
            )
            for s in SAMPLERS.values()
        ]

    def health(self) -> tuple[int, dict]:
        """(HTTP status, body): 200 when every worker is up and has its default model; 503 with
        ``model_errors`` when a worker could not load it."""
        engine = self.service.engine
        alive, workers = engine.workers_alive, len(engine.devices)
        load_errors = dict(engine.load_errors)
        if alive < workers or load_errors:
            status = "degraded"
        else:
            status = "ok" if engine.ready else "loading"
        body = {
            "status": status,
            "workers": {
                "alive": alive,
                "configured": workers,
                "restarted": engine.worker_restarts,  # dead workers replaced since start
            },
            "devices": list(engine.devices),
            "queue_depth": engine.queue_depth,
            "running": len(engine.running()),
        }
        if load_errors:  # device -> why the default model did not load there
            body["model_errors"] = load_errors
        return (200 if status == "ok" else 503), body

    def metrics(self) -> tuple[bytes, str]:
        return self.service.metrics.render(), self.service.metrics.content_type


def _sse(event: str, data: dict) -> str:
    return f"event: {event}\ndata: {json.dumps(data)}\n\n"
