"""The job engine batching across requests: who joins a running batch, when, and what each job
gets (its own pictures, cancel and failures), on the embedded model."""

from __future__ import annotations

import dataclasses
import threading
import time

import pytest
from helpers import max_pixel_diff
from test_server_support import (  # noqa: F401 (single_thread_torch: autouse)
    serial_picture,
    shared_loader,
    single_thread_torch,
    wait_until,
)

from sdgen.engine.jobs import Engine
from sdgen.engine.models import ModelPool
from sdgen.models.bundled import MINIATURE_MODEL
from sdgen.params import GenerationRequest
from sdgen.pipelines.generate import start


class Recorder:
    """A JobListener that keeps every job's end and the largest number running at once."""

    def __init__(self):
        self.lock = threading.Lock()
        self.running: set[str] = set()
        self.most_running = 0
        self.started: dict[str, float] = {}
        self.ended: dict[str, tuple[str, object]] = {}  # id -> (status, result or failure)
        self.ended_at: dict[str, float] = {}
        self.on_progress = lambda job_id, progress: None
        self.store_fails_for: set[str] = set()
        self.batch_sizes: list[int] = []

    def job_started(self, job_id, device):
        with self.lock:
            self.running.add(job_id)
            self.most_running = max(self.most_running, len(self.running))
            self.started[job_id] = time.monotonic()

    def job_progressed(self, job_id, progress):
        self.on_progress(job_id, progress)

    def _end(self, job_id, status, detail=None):
        with self.lock:
            self.running.discard(job_id)
            self.ended[job_id] = (status, detail)
            self.ended_at[job_id] = time.monotonic()
        if job_id in self.store_fails_for:  # recorded, then the "store" fails
            raise OSError("disk full")

    def job_succeeded(self, job_id, result, model):
        self._end(job_id, "succeeded", result)

    def job_failed(self, job_id, failure):
        self._end(job_id, "failed", failure)

    def job_cancelled(self, job_id):
        self._end(job_id, "cancelled")

    def job_returned(self, job_id):
        self._end(job_id, "returned")

    def batch_stepped(self, device, jobs):
        self.batch_sizes.append(jobs)


def _engine(recorder, gate: threading.Event, **options) -> Engine:
    """An engine whose first job waits at ``gate`` in its set-up, so the next ones queue."""
    first = threading.Event()

    def gated_start(model, request, callback):
        if not first.is_set():
            first.set()
            gate.wait(30)
        if request.prompt == "boom":
            raise RuntimeError("set-up failed")
        return start(model, request, callback)

    engine = Engine(
        ModelPool([MINIATURE_MODEL], shared_loader), recorder, start=gated_start, **options
    )
    engine.start(wait_ready=True)
    return engine


def _submit(engine, requests) -> list[tuple[str, GenerationRequest]]:
    jobs = []
    for i, request in enumerate(requests):
        checked = engine.check(request)
        engine.submit(f"job{i}", checked)
        jobs.append((f"job{i}", checked))
    return jobs


def test_queued_jobs_join_up_to_max_batch_and_keep_their_own_pictures():
    recorder, gate = Recorder(), threading.Event()
    engine = _engine(recorder, gate, max_batch=3)
    try:
        requests = [GenerationRequest(f"a red circle {i}", steps=6, seed=10 + i) for i in range(5)]
        requests[2] = requests[2].replace(sampler="euler_a", guidance_scale=1.0)
        requests.append(GenerationRequest("a blue square", steps=4, seed=3, width=32, height=32))
        requests.append(GenerationRequest("a green triangle", steps=4, seed=4))  # behind it
        jobs = _submit(engine, requests)
        wait_until(lambda: engine.queue_depth == len(jobs) - 1)
        gate.set()
        wait_until(lambda: len(recorder.ended) == len(jobs), timeout=120)
    finally:
        engine.stop()
    assert recorder.most_running == 3  # max_batch pictures, jobs of one picture each
    assert max(recorder.batch_sizes) == 3 and min(recorder.batch_sizes) == 1
    for job_id, request in jobs:
        status, result = recorder.ended[job_id]
        assert status == "succeeded", result
        assert max_pixel_diff(result.images[0], serial_picture(request)) <= 1, job_id
    # The 32x32 job waited, in order, for the 64x64 batch to empty; the job behind it waited
    # for it (first in, first served), then ran beside it.
    small, last = "job5", "job6"
    assert recorder.started[small] >= max(recorder.ended_at[f"job{i}"] for i in range(5))
    assert recorder.started[last] >= recorder.started[small]


def test_a_job_cancelled_or_failing_in_a_batch_ends_alone():
    recorder, gate = Recorder(), threading.Event()
    engine = _engine(recorder, gate, max_batch=8)

    def cancel_job1_at_step_2(job_id, progress):
        if job_id == "job1" and progress.step == 2:
            assert engine.cancel("job1") == "running"

    recorder.on_progress = cancel_job1_at_step_2
    try:
        requests = [GenerationRequest(f"a red circle {i}", steps=5, seed=i) for i in range(4)]
        requests[2] = requests[2].replace(prompt="boom")
        jobs = _submit(engine, requests)
        wait_until(lambda: engine.queue_depth == len(jobs) - 1)
        gate.set()
        wait_until(lambda: len(recorder.ended) == len(jobs), timeout=120)
    finally:
        engine.stop()
    assert recorder.most_running >= 3  # they did share the batch
    assert recorder.ended["job1"] == ("cancelled", None)
    status, failure = recorder.ended["job2"]
    assert status == "failed" and failure.kind == "internal" and "set-up failed" in failure.message
    for job_id, request in (jobs[0], jobs[3]):
        status, result = recorder.ended[job_id]
        assert status == "succeeded"
        assert max_pixel_diff(result.images[0], serial_picture(request)) <= 1


def test_a_listener_failing_for_one_job_leaves_the_others_running():
    """The store fails for job0: storing its pictures, then storing that failure. It is
    logged; the jobs sharing its batch go on and succeed."""
    recorder, gate = Recorder(), threading.Event()
    recorder.store_fails_for = {"job0"}
    engine = _engine(recorder, gate, max_batch=8)
    try:
        requests = [GenerationRequest(f"a blue square {i}", steps=3 + i, seed=i) for i in range(3)]
        jobs = _submit(engine, requests)
        wait_until(lambda: engine.queue_depth == len(jobs) - 1)
        gate.set()
        wait_until(lambda: len(recorder.ended) == len(jobs), timeout=120)
        wait_until(lambda: not engine.running())
    finally:
        engine.stop()
    status, failure = recorder.ended["job0"]
    assert status == "failed"
    assert "storing the pictures failed: OSError: disk full" in failure.message
    assert [recorder.ended[f"job{i}"][0] for i in (1, 2)] == ["succeeded", "succeeded"]


def _warming_engine(fast_path: tuple[str, ...], **options):
    """An engine on the embedded model marked with ``fast_path`` (nothing really compiles: the
    CPU cannot afford it in every test run) whose set-ups are recorded and held at a gate."""
    model = dataclasses.replace(shared_loader(MINIATURE_MODEL, "cpu"), fast_path=fast_path)
    started, gate = [], threading.Event()

    def recording_start(model, request, callback):
        started.append((request.prompt, request.num_images, request.guidance_scale))
        gate.wait(30)
        return start(model, request, callback)

    engine = Engine(
        ModelPool([MINIATURE_MODEL], lambda name, device: model),
        Recorder(),
        start=recording_start,
        **options,
    )
    return engine, started, gate


def test_a_compiling_model_warms_up_before_the_engine_is_ready():
    engine, started, gate = _warming_engine(("channels_last", "compile"))
    engine.start()
    try:
        wait_until(lambda: started)
        assert not engine.ready  # the server's /health says "loading" meanwhile
        gate.set()
        assert engine.wait_ready(60)
        assert started == [("warm-up", 1, 7.5), ("warm-up", 2, 7.5), ("warm-up", 1, 1.0)]
    finally:
        engine.stop()


def test_stopping_the_engine_ends_its_warm_up():
    engine, started, gate = _warming_engine(("compile",))
    engine.start()
    wait_until(lambda: started)
    stopper = threading.Thread(target=engine.stop)
    stopper.start()
    wait_until(lambda: engine._stopping.is_set())
    gate.set()  # the first warm-up request runs: its first step sees the engine stopping
    stopper.join(10)
    assert not stopper.is_alive() and engine.workers_alive == 0
    assert started == [("warm-up", 1, 7.5)]


@pytest.mark.parametrize(
    "fast_path, options", [((), {}), (("channels_last", "compile"), {"warmup": False})]
)
def test_no_warm_up_without_compiling_or_when_turned_off(fast_path, options):
    engine, started, gate = _warming_engine(fast_path, **options)
    gate.set()
    engine.start(wait_ready=True)
    engine.stop()
    assert started == []


def test_a_job_asked_to_stop_as_the_engine_stops_ends_with_its_pictures():
    """Stop (keep the pictures) asked for just before the engine stops: the job ends with the
    pictures of its step, as asked, instead of going back to the queue to run in full."""
    recorder, gate = Recorder(), threading.Event()
    engine = _engine(recorder, gate)
    stopping = []

    def stop_at_step_2(job_id, progress):
        if progress.step == 2 and not stopping:
            assert engine.finish(job_id)
            stopping.append(threading.Thread(target=engine.stop))
            stopping[0].start()
            time.sleep(0.3)  # the engine is stopping before the next step's check

    recorder.on_progress = stop_at_step_2
    try:
        _submit(engine, [GenerationRequest("a red circle", steps=30, seed=1)])
        gate.set()
        wait_until(lambda: "job0" in recorder.ended, timeout=60)
    finally:
        engine.stop()
        stopping[0].join(30)
    status, result = recorder.ended["job0"]
    assert status == "succeeded", status
    assert result.stopped_at == (3, 30) and len(result.images) == 1  # at the next step
