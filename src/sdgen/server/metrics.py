"""Prometheus metrics of one server: queue depth, job latency, steps per second, failures, and
how many jobs share each denoising step."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

LATENCY_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800)
BATCH_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32)


class Metrics:
    """The server's metrics, in a registry of its own (two apps in one process never mix)."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self, queue_depth: Callable[[], int], running: Callable[[], int]):
        self.registry = CollectorRegistry()
        Gauge(
            "sdgen_queue_depth", "Jobs waiting for a worker", registry=self.registry
        ).set_function(queue_depth)
        Gauge("sdgen_jobs_running", "Jobs running now", registry=self.registry).set_function(
            running
        )
        self.latency = Histogram(
            "sdgen_job_latency_seconds",
            "Seconds from submission to the end of a job, by final status",
            ["status"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.steps_per_second = Gauge(
            "sdgen_steps_per_second",
            "Denoising steps per second of the latest step reported, by device",
            ["device"],
            registry=self.registry,
        )
        self.batch_jobs = Histogram(
            "sdgen_batch_jobs",
            "Jobs sharing each denoising step's UNet call (batching across requests), by device",
            ["device"],
            buckets=BATCH_BUCKETS,
            registry=self.registry,
        )
        self.finished = Counter(
            "sdgen_jobs_finished", "Jobs ended, by status", ["status"], registry=self.registry
        )
        self.failures = Counter(
            "sdgen_job_failures", "Failed jobs, by error kind", ["kind"], registry=self.registry
        )
        self.submitted = Counter("sdgen_jobs_submitted", "Jobs accepted", registry=self.registry)
        self.refused = Counter(
            "sdgen_jobs_refused", "Jobs refused, by reason", ["reason"], registry=self.registry
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)
