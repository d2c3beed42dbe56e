"""The job engine: one FIFO queue, one worker thread per device, progress, cancel, failures.

A job is a resolved ``GenerationRequest`` under an id. Workers take jobs in the order they were
submitted and run them on their own device's copy of the job's model (``sdgen.engine.workers``:
batching across requests, failures, dying workers). What happens to a job is told to a
``JobListener`` (the server's job store and event stream), from the worker's thread. The engine
keeps nothing once a job has ended: persistence is the listener's business.

- Cancel: a queued job is taken out and never runs; a running job stops within one step, through
  ``GenerationCancelled`` raised by the step callback. ``finish`` ends a running job at its next
  step with the pictures predicted there (``GenerationStopped``; A1111's interrupt).
- Stop: running jobs are stopped within one step and handed back (``job_returned``), not
  cancelled, so a restarted server runs them again; those ``finish`` was asked of end with
  their pictures, as asked.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable, Sequence

from sdgen.engine.batching import StartFn
from sdgen.engine.events import JobListener, ModelUnavailable, QueueFull
from sdgen.engine.limits import Limits, preflight
from sdgen.engine.models import ModelPool
from sdgen.engine.workers import EngineJob, WorkerLoop
from sdgen.errors import SdgenError
from sdgen.models.loaded import LoadedModel
from sdgen.params import GenerationRequest

log = logging.getLogger(__name__)


class Engine(WorkerLoop):
    """Runs submitted jobs in order on one worker thread per device.

    Args:
        models: the configured models; each worker loads the ones its jobs need, once.
        listener: told what happens to each job.
        devices: one worker per entry (repeats give several workers on one device).
        max_queue: queued jobs (not counting running ones) beyond which ``submit`` refuses.
        limits: bounds checked by ``check`` before a job is accepted.
        max_batch: pictures a worker denoises together, from several jobs (1: one job at a
            time); a job with more pictures runs alone.
        start: sets up a request to denoise, ``sdgen.pipelines.generate.start`` by default
            (tests inject failures through it).
        preview_interval: seconds between two preview pictures of a job (0: every step).
        step_delay: seconds to sleep after each step; only for tests that need a slow job.
        empty_cache: frees device memory after a failure or cancel (default:
            ``empty_cuda_cache``).
        max_worker_restarts: per device slot, how many dead workers are replaced.
    """

    def __init__(
        self,
        models: ModelPool,
        listener: JobListener,
        *,
        devices: Sequence[str] = ("cpu",),
        max_queue: int = 64,
        limits: Limits | None = None,
        max_batch: int = 8,
        start: StartFn | None = None,
        preview_interval: float = 0.5,
        step_delay: float = 0.0,
        empty_cache: Callable[[], None] | None = None,
        max_worker_restarts: int = 3,
        warmup: bool = True,
    ):
        if not devices:
            raise ValueError("an engine needs at least one device")
        self.models, self.listener = models, listener
        self.devices = tuple(devices)
        self.max_queue = max_queue
        self.limits = limits or Limits()
        if max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, not {max_batch}")
        self.max_batch = max_batch
        self._start = start
        self.preview_interval, self.step_delay = preview_interval, step_delay
        self._empty_cache = empty_cache
        self.max_worker_restarts = max_worker_restarts
        self.warmup = warmup  # compile before taking jobs, where the model compiles
        self.worker_restarts = 0  # dead workers replaced so far, all slots together
        self._slot_restarts = [0] * len(self.devices)
        self._queue: deque[EngineJob] = deque()
        # id -> job, the device and the worker slot that hold it
        self._running: dict[str, tuple[EngineJob, str, int]] = {}
        self._idle = 0  # workers waiting for a job
        self._cond = threading.Condition()
        self._stopping = threading.Event()
        self._workers: list[threading.Thread] = []
        self._loading = len(self.devices)  # workers still loading the default model
        self.load_errors: dict[str, str] = {}  # device -> why its default model did not load
        self._durations: deque[float] = deque(maxlen=20)  # recent job run times, for Retry-After

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self, wait_ready: bool = False) -> None:
        """Start the workers; each loads the default model on its device before taking jobs."""
        self._workers = [self._spawn(index) for index in range(len(self.devices))]
        if wait_ready:
            self.wait_ready()

    def wait_ready(self, timeout: float | None = None) -> bool:
        """Block until every worker has loaded the default model; False on timeout."""
        with self._cond:
            return self._cond.wait_for(lambda: self._loading == 0, timeout)

    @property
    def ready(self) -> bool:
        """Every worker has loaded the default model (or failed to, and said so in the log)."""
        with self._cond:
            return self._loading == 0

    def stop(self, timeout: float = 30.0) -> None:
        """Stop the workers: running jobs end within one step and are returned, not cancelled."""
        self._stopping.set()
        with self._cond:
            self._cond.notify_all()
        for worker in self._workers:
            worker.join(timeout)
        self._workers.clear()

    def _spawn(self, index: int) -> threading.Thread:
        """Start the worker of device slot ``index``."""
        device = self.devices[index]
        worker = threading.Thread(
            target=self._work, args=(index,), name=f"sdgen-worker-{index}-{device}"
        )
        worker.daemon = True  # a stuck generation must not keep the process alive at exit
        worker.start()
        return worker

    @property
    def workers_alive(self) -> int:
        return sum(worker.is_alive() for worker in self._workers)

    # -- jobs --------------------------------------------------------------------------------

    def check(self, request: GenerationRequest) -> GenerationRequest:
        """The request as it will run (model named, seed drawn, size resolved), or InvalidRequest.

        Checks the limits and the pipelines' own rules on the CPU, before the job is accepted.
        """
        name = self.models.resolve_name(request.model)
        self.limits.check(request)  # before any model is touched
        model = self.model(name)
        resolved = preflight(model, request.replace(model=name), self.limits)
        return resolved.replace(device="auto")  # the worker decides where it runs

    def model(self, name: str | None) -> LoadedModel:
        """The model ``name`` (None: the default) on any device, loaded if it is not yet; a
        model that cannot load is ModelUnavailable, naming it."""
        name = self.models.resolve_name(name)
        try:
            model = self.models.any(name, self.devices[0])
        except SdgenError as err:  # the model's fault, not the request's: no traceback
            raise ModelUnavailable(name, str(err)) from err
        except Exception as err:
            log.exception("loading %s failed", name)
            raise ModelUnavailable(name, f"{type(err).__name__}: {err}") from err
        self._forget_load_errors()
        return model

    def warnings(self, request: GenerationRequest) -> list[str]:
        """What a checked request runs with but not as asked: prompts past the tokenizer's limit
        (the text encoder reads only its first tokens, as diffusers does)."""
        from sdgen.conditioning.request_texts import truncation_warnings
        from sdgen.pipelines.stages import inversions_of

        model = self.models.any(request.model, self.devices[0])
        return truncation_warnings(model.tokenizer, request, inversions_of(model))

    def submit(
        self,
        job_id: str,
        request: GenerationRequest,
        *,
        persist: Callable[[], None] | None = None,
        force: bool = False,
    ) -> None:
        """Queue a checked request. ``persist`` runs first, under the queue's lock, so a job is
        stored before it can start and is never stored when the queue refuses it.

        Raises QueueFull when ``max_queue`` jobs wait (unless ``force``: jobs recovered at start).
        """
        with self._cond:
            if not force and len(self._queue) >= self.max_queue:
                raise QueueFull(len(self._queue), self._retry_after())
            if persist is not None:
                persist()
            self._queue.append(EngineJob(job_id, request))
            self._cond.notify_all()  # workers and wait_ready share the condition

    def cancel(self, job_id: str) -> str | None:
        """Cancel a job: "queued" (it will never run), "running" (it stops within one step), or
        None when the engine does not hold it (unknown or already ended)."""
        with self._cond:
            for job in self._queue:
                if job.id == job_id:
                    self._queue.remove(job)
                    break
            else:
                running = self._running.get(job_id)
                if running is None:
                    return None
                running[0].cancelled.set()
                return "running"
        self._notify("job_cancelled", job_id)
        return "queued"

    def finish(self, job_id: str) -> bool:
        """End a running job at its next step with the pictures predicted there (as A1111's
        interrupt does); False when the job is not running (a queued one is left queued)."""
        with self._cond:
            running = self._running.get(job_id)
            if running is None:
                return False
            running[0].finish.set()
            return True

    @property
    def queue_depth(self) -> int:
        """Jobs waiting for a worker."""
        with self._cond:
            return len(self._queue)

    def queued_ids(self) -> list[str]:
        with self._cond:
            return [job.id for job in self._queue]

    def running(self) -> dict[str, str]:
        """Running job id -> device."""
        with self._cond:
            return {job_id: device for job_id, (_, device, _) in self._running.items()}

    def _retry_after(self) -> int:
        """Seconds until a place in the queue is likely free: one job's time per worker."""
        if not self._durations:
            return 5
        mean = sum(self._durations) / len(self._durations)
        return max(1, min(600, round(mean * len(self._queue) / len(self.devices))))
