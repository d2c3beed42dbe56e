"""The engine's worker threads: each takes jobs from the queue and denoises them on its device.

- Batching across requests: a worker denoises its jobs with a ``Batcher``, one shared UNet call
  per step. At every step boundary the jobs at the head of the queue join while they have the
  model and size of the batch and fit in ``max_batch`` pictures, and while no other worker is
  idle (an idle device takes them instead); each leaves when its pictures are done. Each job
  keeps its own scheduler and generators: its pictures are those it gets alone.
- Failures are per job: an exception in a job's set-up or callbacks fails that job only;
  ``torch.cuda.OutOfMemoryError`` fails it with kind ``out_of_memory`` and empties the CUDA
  cache, so the next job starts clean. When the shared UNet call of a batch runs out of memory,
  each job's step is retried alone and only a job that does not fit alone fails; any other
  failure of the shared call fails the jobs in it.
- A worker thread that dies (a ``BaseException`` such as ``SystemExit`` escapes a job) fails its
  jobs with kind ``worker_died`` -- not retried: the job may be what kills workers -- and is
  replaced by a fresh worker on its device, at most ``max_worker_restarts`` times per device
  slot; past that the slot stays down and ``workers_alive`` says so.
- A worker first loads the default model on its device (and warms it up where it compiles); a
  model that does not load is recorded in ``load_errors`` until it loads.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field

import torch

from sdgen.engine.batching import Batcher, Finished
from sdgen.engine.events import INTERNAL, MODEL_LOAD, WORKER_DIED, Failure, report_end
from sdgen.engine.previews import job_step_callback, prepare_previews
from sdgen.engine.warmup import warm_up
from sdgen.errors import GenerationCancelled, SdgenError
from sdgen.models.devices import empty_cuda_cache
from sdgen.models.loaded import LoadedModel
from sdgen.params import GenerationRequest
from sdgen.pipelines.stages import GenerationResult

log = logging.getLogger(__name__)


@dataclass
class EngineJob:
    """A job in the engine: queued, then held by a worker until it ends."""

    id: str
    request: GenerationRequest
    cancelled: threading.Event = field(default_factory=threading.Event)
    finish: threading.Event = field(default_factory=threading.Event)  # end now, keep pictures


class WorkerLoop:
    """The worker-thread side of ``sdgen.engine.jobs.Engine``, which sets up the state these
    methods share (queue, running jobs, condition, listener, settings) and starts the threads.
    """

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

    def _next(self, index: int) -> EngineJob | None:
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

    def _joiners(
        self, index: int, batcher: Batcher, first: EngineJob, pictures: int
    ) -> list[EngineJob]:
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

    def _run_batch(self, index: int, first: EngineJob) -> None:
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
        members: dict[int, tuple[EngineJob, float]] = {}  # id(prepared) -> job, its start time
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

    def _join(self, batcher: Batcher, members: dict, job: EngineJob, model, device: str) -> None:
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
                # stopping hands the job back, unless it was asked to end with its pictures
                stop=lambda: (
                    job.cancelled.is_set() or (self._stopping.is_set() and not job.finish.is_set())
                ),
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
        job: EngineJob,
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
