"""The FastAPI app: the store, the engine and the handlers, built at start and kept in app.state.

    app = create_app(ServerConfig(data_dir=Path("data")))
    uvicorn.run(app, host="127.0.0.1", port=7860)

Errors become responses here, once: InvalidRequest and pydantic's validation errors -> 422
naming the field, QueueFull -> 429 with Retry-After, ModelUnavailable -> 503, ApiError -> its
status, the framework's own (404, 405, an unparsable body's 400) -> theirs.
Every error body is ``{"error": {"kind", "field", "message"}, "detail": message}``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException

from sdgen.engine.batching import StartFn
from sdgen.engine.events import JobListener, ModelUnavailable, QueueFull
from sdgen.engine.jobs import Engine
from sdgen.engine.models import Loader, ModelPool, load_configured
from sdgen.errors import InvalidRequest
from sdgen.ui import INDEX_HTML, STATIC_DIR

from .a1111.routes import router as a1111_router
from .a1111.serving import A1111Handler
from .config import ServerConfig
from .protocol import NESTED_FIELDS
from .routes import router
from .security import RequestGuard
from .service import JobService
from .serving import ApiError, InfoHandler, JobsHandler
from .store import JobStore

log = logging.getLogger(__name__)


def create_app(
    config: ServerConfig,
    *,
    load: Loader | None = None,
    start: StartFn | None = None,
    make_engine: Callable[[JobListener], Engine] | None = None,
    store: JobStore | None = None,
) -> FastAPI:
    """The server's app; its store, engine and handlers start with the app's lifespan.

    Args:
        config: the server's settings.
        load: loads a configured model on a device (tests share one loaded model through it).
        start: sets up a request to denoise (tests inject failures through it).
        make_engine: builds the engine around the service (tests swap in a fake engine).
        store: the job store, already open (default: opened at start in ``config.data_dir``);
            the app closes it when it stops.
    """

    def default_engine(listener: JobListener) -> Engine:
        def load_model(name: str, device: str):
            return load_configured(
                name,
                device,
                config.precision,
                config.fast_path,
                config.embeddings,
                config.lora_dir,
            )

        return Engine(
            ModelPool(config.models, load or load_model),
            listener,
            devices=config.devices,
            max_queue=config.max_queue,
            limits=config.limits,
            max_batch=config.max_batch,
            start=start,
            preview_interval=config.preview_interval,
            step_delay=config.step_delay,
            warmup=config.warmup,
        )

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        jobs = store or JobStore(config.data_dir)
        service = JobService(jobs, make_engine or default_engine, metadata=config.metadata)
        app.state.service = service
        app.state.jobs_handler = JobsHandler(service, config)
        app.state.info_handler = InfoHandler(service, config)
        app.state.a1111_handler = A1111Handler(service, config)
        service.start()
        try:
            yield
        finally:
            service.stop()
            jobs.close()

    app = FastAPI(
        title="sdgen",
        summary="Stable Diffusion jobs: a native API (/v1) and AUTOMATIC1111's (/sdapi/v1)",
        lifespan=lifespan,
    )
    app.include_router(router)
    app.include_router(a1111_router)
    # The web page (sdgen.ui): index.html at /, its CSS and JS modules at /static/.
    app.add_api_route("/", lambda: FileResponse(INDEX_HTML), include_in_schema=False)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    app.add_exception_handler(InvalidRequest, _invalid_request)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(QueueFull, _queue_full)
    app.add_exception_handler(ModelUnavailable, _model_unavailable)
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(HTTPException, _http_error)
    app.add_middleware(RequestGuard, config=config)
    return app


def error_response(
    status: int, kind: str, message: str, field: str | None, headers: dict | None = None
) -> JSONResponse:
    body = {"error": {"kind": kind, "field": field, "message": message}, "detail": message}
    return JSONResponse(body, status_code=status, headers=headers)


async def _invalid_request(request: Request, err: InvalidRequest) -> JSONResponse:
    return error_response(422, "invalid_request", str(err), err.field)


async def _validation_error(request: Request, err: RequestValidationError) -> JSONResponse:
    """pydantic's first error, as ours: the field is the top-level name in its location."""
    first = err.errors()[0]
    location = [str(part) for part in first.get("loc", ()) if part not in ("body", "query")]
    field = "body" if first.get("type") == "json_invalid" or not location else location[0]
    if field in NESTED_FIELDS and len(location) > 1:  # e.g. "hires.scale"
        field = ".".join(location[:2])
    message = f"{field}: {first.get('msg', 'invalid')}"
    return error_response(422, "invalid_request", message, field)


async def _queue_full(request: Request, err: QueueFull) -> JSONResponse:
    headers = {"Retry-After": str(err.retry_after)}
    return error_response(429, "queue_full", str(err), None, headers)


async def _model_unavailable(request: Request, err: ModelUnavailable) -> JSONResponse:
    return error_response(503, "model_unavailable", str(err), "model")


# The framework's own errors, in the same body as sdgen's: an unknown path or method, and a body
# the JSON parser gave up on (nested thousands deep: RecursionError, which FastAPI makes a 400).
_HTTP_KINDS = {
    400: ("invalid_request", "body"),
    404: ("not_found", None),
    405: ("method_not_allowed", None),
}


async def _http_error(request: Request, err: HTTPException) -> JSONResponse:
    kind, field = _HTTP_KINDS.get(err.status_code, ("http_error", None))
    message = f"{field}: {err.detail}" if field else str(err.detail)
    return error_response(err.status_code, kind, message, field, getattr(err, "headers", None))


async def _api_error(request: Request, err: ApiError) -> JSONResponse:
    return error_response(err.status, err.kind, err.message, err.field, err.headers)
