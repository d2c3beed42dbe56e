"""The job engine: one FIFO queue, one worker thread per device, progress, cancel, failures.

A job is a resolved ``GenerationRequest`` under an id. Workers take jobs in the order they were
submitted and run them on their own device's copy of the job's model. What happens to a job is
told to a ``JobListener`` (the server's job store and event stream), from the worker's thread.
The engine keeps nothing once a job has ended: persistence is the listener's business.

- Batching across requests: a worker denoises its jobs with a ``Batcher``, one shared UNet call
  per step. At every step boundary the jobs at the head of the queue join while they have the
  model and size of the batch and fit in ``max_batch`` pictures, and while no other worker is
  idle (an idle device takes them instead); each leaves when its pictures are done. Each job
  keeps its own scheduler and generators: its pictures are those it gets alone.

- Cancel: a queued job is taken out and never runs; a running job stops within one step, through
  ``GenerationCancelled`` raised by the step callback.
- Failures are per job: an exception in a job's set-up or callbacks fails that job only;
  ``torch.cuda.OutOfMemoryError`` fails it with kind ``out_of_memory`` and empties the CUDA
  cache, so the next job starts clean. When the shared UNet call of a batch runs out of memory,
  each job's step is retried alone and only a job that does not fit alone fails; any other
  failure of the shared call fails the jobs in it.
- Stop: running jobs are stopped within one step and handed back (``job_returned``), not
  cancelled, so a restarted server runs them again.
- A worker thread that dies (a ``BaseException`` such as ``SystemExit`` escapes a job) fails its
  jobs with kind ``worker_died`` -- not retried: the job may be what kills workers -- and is
  replaced by a fresh worker on its device, at most ``max_worker_restarts`` times per device
  slot; past that the slot stays down and ``workers_alive`` says so.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from sdgen.engine.batching import Batcher, Finished, StartFn
from sdgen.engine.events import (
    INTERNAL,
    MODEL_LOAD,
    WORKER_DIED,
    Failure,
    JobListener,
    ModelUnavailable,
    QueueFull,
    report_end,
)
from sdgen.engine.limits import Limits, preflight
from sdgen.engine.models import ModelPool
from sdgen.engine.previews import job_step_callback, prepare_previews
from sdgen.engine.warmup import warm_up
from sdgen.errors import GenerationCancelled, SdgenError
from sdgen.models.devices import empty_cuda_cache
from sdgen.models.loaded import LoadedModel
from sdgen.params import GenerationRequest
from sdgen.pipelines.stages import GenerationResult

log = logging.getLogger(__name__)


@dataclass
class _Job:
    id: str
    request: GenerationRequest
    cancelled: threading.Event = field(default_factory=threading.Event)
    finish: threading.Event = field(default_factory=threading.Event)  # end now, keep pictures


class Engine:
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
        self._queue: deque[_Job] = deque()
        self._running: dict[str, tuple[_Job, str, int]] = {}  # id -> job, device, worker slot
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
        try:
            model = self.models.any(name, self.devices[0])
        except SdgenError as err:  # the model's fault, not the request's: no traceback
            raise ModelUnavailable(name, str(err)) from err
        except Exception as err:
            log.exception("loading %s failed", name)
            raise ModelUnavailable(name, f"{type(err).__name__}: {err}") from err
        self._forget_load_errors()
        resolved = preflight(model, request.replace(model=name), self.limits)
        return resolved.replace(device="auto")  # the worker decides where it runs

    def warnings(self, request: GenerationRequest) -> list[str]:
        """What a checked request runs with but not as asked: prompts past the tokenizer's limit
        (the text encoder reads only its first tokens, as diffusers does)."""
        from sdgen.conditioning.prompts import truncation_warnings

        model = self.models.any(request.model, self.devices[0])
        texts = {
            name: [value] if isinstance(value, str) else list(value)
            for name, value in (
                ("prompt", request.prompt),
                ("negative_prompt", request.negative_prompt),
            )
        }
        return truncation_warnings(model.tokenizer, texts)

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
            self._queue.append(_Job(job_id, request))
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

    # -- workers -----------------------------------------------------------------------------

    def _work(self, index: int) -> None:
        device = self.devices[index]
        try:
            model = self.models.get(self.models.default, device)
            self._forget_load_errors()  # a replacement worker's load, say
            prepare_previews(model)
            if self.warmup and "compile" in model.fast_path:
                warm_up(model, device, self._start, self._stopping, self._free_memory)
        except SdgenError as err:  # a missing or unfetchable model: its message says it all
            log.error("worker on %s could not load %s: %s", device, self.models.default, err)
            self.load_errors[device] = str(err)
        except Exception as err:
            log.exception("worker on %s could not load %s", device, self.models.default)
            self.load_errors[device] = f"{type(err).__name__}: {err}"
        finally:  # also if this thread ends here: the server must not say "loading" forever
            with self._cond:
                self._loading -= 1
                self._cond.notify_all()
        while (job := self._next(index)) is not None:
            try:
                self._run_batch(index, job)
            except Exception as err:  # a bug in the worker must not take it down
                log.exception("job %s: unexpected error in the worker", job.id)
                self._fail_slot(index, Failure(INTERNAL, f"{type(err).__name__}: {err}"))
            except BaseException as err:  # noqa: BLE001 (this thread ends: fail, replace)
                log.error("worker on %s died: %r", device, err, exc_info=err)
                name = type(err).__name__
                message = f"the worker on {device} died while running this job ({name})"
                self._fail_slot(index, Failure(WORKER_DIED, message))
                self._replace_worker(index)  # after its jobs are let go: the new one takes more
                return

    def _forget_load_errors(self) -> None:
        """The default model loads now on the devices that hold it (its folder was fixed, its
        hub id cached): their load errors are over."""
        if self.load_errors:
            for name, device in self.models.loaded():
                if name == self.models.default:
                    self.load_errors.pop(device, None)

    def _replace_worker(self, index: int) -> None:
        """The worker of slot ``index`` is ending: free memory and start a replacement unless
        stopping or the slot's restarts are spent."""
        device = self.devices[index]
        self._free_memory()
        with self._cond:  # held while replacing, so ``stop`` joins the replacement too
            if self._stopping.is_set():
                return
            if self._slot_restarts[index] >= self.max_worker_restarts:
                restarts = self._slot_restarts[index]
                log.error("worker on %s is not replaced: %d restarts spent", device, restarts)
                return
            self._slot_restarts[index] += 1
            self.worker_restarts += 1
            self._loading += 1  # the replacement loads the default model (cached) first
            self._workers[index] = self._spawn(index)

    def _slot_jobs(self, index: int) -> list[str]:
        """Ids of the jobs the worker of slot ``index`` holds (call under the lock)."""
        return [job_id for job_id, (_, _, slot) in self._running.items() if slot == index]

    def _fail_slot(self, index: int, failure: Failure) -> None:
        """Fail every job the worker of slot ``index`` still holds (its batch did not end
        normally), and let them go."""
        with self._cond:
            jobs = [self._running.pop(job_id)[0] for job_id in self._slot_jobs(index)]
        for job in jobs:
            self._notify("job_failed", job.id, failure)

    def _next(self, index: int) -> _Job | None:
        """The oldest queued job, now held by the worker of slot ``index``; None when stopping."""
        with self._cond:
            self._idle += 1
            try:
                while not self._queue and not self._stopping.is_set():
                    self._cond.wait()
            finally:
                self._idle -= 1
            if self._stopping.is_set():
                return None
            job = self._queue.popleft()
            self._running[job.id] = (job, self.devices[index], index)
            return job

    def _joiners(self, index: int, batcher: Batcher, first: _Job, pictures: int) -> list[_Job]:
        """Queued jobs that join the batch of slot ``index`` now, held by it: from the head of
        the queue, in order, while they have the batch's model and size and fit in
        ``max_batch`` pictures (``pictures`` are in flight), and while no worker is idle."""
        taken = []
        with self._cond:
            while self._queue and not self._idle and not self._stopping.is_set():
                job = self._queue[0]
                pictures += job.request.total_images
                if (
                    pictures > self.max_batch
                    or job.request.model != first.request.model
                    or not batcher.compatible(job.request)
                ):
                    break
                self._queue.popleft()
                self._running[job.id] = (job, self.devices[index], index)
                taken.append(job)
        return taken

    def _run_batch(self, index: int, first: _Job) -> None:
        """Run ``first`` and the jobs that join it on the way, one shared UNet call per step."""
        device = self.devices[index]
        try:
            model = self.models.get(first.request.model, device)
        except Exception as err:
            log.exception("job %s: loading %s on %s failed", first.id, first.request.model, device)
            self._notify(
                "job_failed", first.id, Failure(MODEL_LOAD, f"{type(err).__name__}: {err}")
            )
            with self._cond:
                self._running.pop(first.id, None)
            return
        self._forget_load_errors()
        batcher = Batcher(model, start=self._start)
        members: dict[int, tuple[_Job, float]] = {}  # id(prepared) -> job, its start time
        self._join(batcher, members, first, model, device)
        while batcher.active:
            pictures = sum(job.request.total_images for job, _ in members.values())
            for job in self._joiners(index, batcher, first, pictures):
                self._join(batcher, members, job, model, device)
            if self.step_delay:
                time.sleep(self.step_delay)
            self._notify("batch_stepped", device, len(batcher.active))
            try:
                finished = batcher.step()
            except Exception as err:  # the shared UNet call failed: so did every job in it
                log.exception("a batch of %d jobs failed on %s", len(members), device)
                finished = [Finished(prepared, error=err) for prepared in batcher.active]
                batcher.active.clear()
            for done in finished:
                job, started = members.pop(id(done.prepared))
                self._end(job, model, started, done.result, done.error)

    def _join(self, batcher: Batcher, members: dict, job: _Job, model, device: str) -> None:
        """Start ``job`` in ``batcher``; a job whose set-up fails ends here."""
        started = time.monotonic()
        try:
            self.listener.job_started(job.id, device)
            if job.cancelled.is_set() or self._stopping.is_set():
                raise GenerationCancelled(job.id)
            callback = job_step_callback(
                model,
                self.listener,
                job.id,
                stop=lambda: job.cancelled.is_set() or self._stopping.is_set(),
                started=started,
                preview_interval=self.preview_interval,
                finish=job.finish.is_set,
            )
            prepared = batcher.add(job.request, callback)
        except Exception as err:  # noqa: BLE001 - reported as the job's end
            self._end(job, model, started, error=err)
            return
        members[id(prepared)] = (job, started)

    def _end(
        self,
        job: _Job,
        model: LoadedModel,
        started: float,
        result: GenerationResult | None = None,
        error: BaseException | None = None,
    ) -> None:
        """Tell the listener how ``job`` ended, free memory after an OOM, and let the job go.

        A listener that fails here is logged: the other jobs of the batch go on.
        """
        try:
            if isinstance(error, torch.cuda.OutOfMemoryError):
                self._free_memory()  # so that the next step or job starts clean
            elif error is None:
                self._durations.append(time.monotonic() - started)
            cancelled = job.cancelled.is_set()
            report_end(
                self.listener, job.id, model=model, result=result, error=error, cancelled=cancelled
            )
        except Exception:
            log.exception("job %s: telling how it ended failed", job.id)
        finally:
            with self._cond:
                self._running.pop(job.id, None)

    def _free_memory(self) -> None:
        (self._empty_cache or empty_cuda_cache)()  # looked up now: tests replace it

    def _notify(self, event: str, *args: object) -> None:
        try:
            getattr(self.listener, event)(*args)
        except Exception:
            log.exception("listener %s%r failed", event, args)
