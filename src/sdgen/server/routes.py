"""The native API's routes (``/v1``, ``/health``, ``/metrics``): thin, handlers in app.state."""

from __future__ import annotations

from fastapi import APIRouter, Query, Request
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse

from .protocol import ErrorResponse, JobCreate, JobInfo, JobList, ModelInfo, SamplerInfo
from .serving import InfoHandler, JobsHandler

router = APIRouter()
_ERRORS = {
    401: {"model": ErrorResponse},
    403: {"model": ErrorResponse},
    404: {"model": ErrorResponse},
    413: {"model": ErrorResponse},
    422: {"model": ErrorResponse},
    429: {"model": ErrorResponse},
}


def jobs(request: Request) -> JobsHandler:
    return request.app.state.jobs_handler


def info(request: Request) -> InfoHandler:
    return request.app.state.info_handler


@router.post("/v1/jobs", status_code=202, response_model=JobInfo, responses=_ERRORS, tags=["jobs"])
def create_job(body: JobCreate, request: Request) -> JobInfo:
    """Queue a txt2img, img2img or inpainting job; answered once the job is stored."""
    return jobs(request).create(body)


@router.get("/v1/jobs", response_model=JobList, responses=_ERRORS, tags=["jobs"])
def list_jobs(
    request: Request,
    status: str | None = None,
    limit: int = Query(50, ge=1, le=500),
    offset: int = Query(0, ge=0, le=2**62),  # SQLite's integers are 64-bit
) -> JobList:
    """Jobs, newest first, optionally only those with ``status``."""
    return jobs(request).list(status, limit, offset)


@router.get("/v1/jobs/{job_id}", response_model=JobInfo, responses=_ERRORS, tags=["jobs"])
def get_job(job_id: str, request: Request) -> JobInfo:
    return jobs(request).get(job_id)


@router.delete("/v1/jobs/{job_id}", response_model=JobInfo, responses=_ERRORS, tags=["jobs"])
def cancel_job(job_id: str, request: Request) -> JobInfo:
    """Cancel: a queued job never runs, a running one stops within one step."""
    return jobs(request).cancel(job_id)


@router.post(
    "/v1/jobs/{job_id}/stop",
    response_model=JobInfo,
    responses={**_ERRORS, 409: {"model": ErrorResponse}},
    tags=["jobs"],
)
def stop_job(job_id: str, request: Request) -> JobInfo:
    """Stop a running job at its next step and keep the pictures predicted there: it succeeds
    with them, their metadata saying ``Stopped at step: k/n``. 409 unless it is running."""
    return jobs(request).stop(job_id)


@router.get("/v1/jobs/{job_id}/events", responses=_ERRORS, tags=["jobs"])
def job_events(job_id: str, request: Request) -> StreamingResponse:
    """Server-sent events: ``status`` (the current state, first), ``progress`` (step, total,
    preview), then exactly one ``end``."""
    stream = jobs(request).events(job_id, request.is_disconnected)
    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    return StreamingResponse(stream, media_type="text/event-stream", headers=headers)


@router.get(
    "/v1/images/{image_id}",
    response_class=FileResponse,
    responses={**_ERRORS, 200: {"content": {"image/png": {}}}},
    tags=["images"],
)
def get_image(image_id: str, request: Request) -> FileResponse:
    """A generated picture (PNG with its ``parameters`` and ``sdgen`` metadata)."""
    return FileResponse(jobs(request).image_file(image_id), media_type="image/png")


@router.get("/v1/models", response_model=list[ModelInfo], tags=["info"])
def list_models(request: Request) -> list[ModelInfo]:
    return info(request).models()


@router.get("/v1/samplers", response_model=list[SamplerInfo], tags=["info"])
def list_samplers(request: Request) -> list[SamplerInfo]:
    return info(request).samplers()


@router.get("/health", tags=["info"])
def health(request: Request) -> JSONResponse:
    status, body = info(request).health()
    return JSONResponse(body, status_code=status)


@router.get("/metrics", tags=["info"])
def metrics(request: Request) -> Response:
    body, content_type = info(request).metrics()
    return Response(body, media_type=content_type)
