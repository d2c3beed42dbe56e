"""Job events from worker threads to asyncio subscribers (server-sent events, A1111's wait).

Workers publish from their threads; each subscriber has an asyncio queue on its own event loop
and receives events through ``call_soon_threadsafe``. A slow subscriber loses progress events
(never the terminal one): its queue stays bounded.
"""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass, field

MAX_PENDING = 256  # progress events a subscriber may have unread before new ones are dropped


@dataclass(frozen=True)
class JobEvent:
    """``kind`` is "status" (queued -> running), "progress" (a step) or "end" (terminal)."""

    kind: str
    job_id: str
    data: dict = field(default_factory=dict)

    @property
    def terminal(self) -> bool:
        return self.kind == "end"


class Subscription:
    """Events of one job, for one consumer on the running event loop; close when done."""

    def __init__(self, hub: EventHub, job_id: str):
        self.hub, self.job_id = hub, job_id
        self.loop = asyncio.get_running_loop()
        self.queue: asyncio.Queue[JobEvent] = asyncio.Queue()

    def deliver(self, event: JobEvent) -> None:
        """Called from any thread."""

        def put() -> None:
            if event.terminal or self.queue.qsize() < MAX_PENDING:
                self.queue.put_nowait(event)

        try:
            self.loop.call_soon_threadsafe(put)
        except RuntimeError:  # the subscriber's loop has closed
            self.close()

    async def next(self, timeout: float | None = None) -> JobEvent | None:
        """The next event, or None after ``timeout`` seconds."""
        try:
            return await asyncio.wait_for(self.queue.get(), timeout)
        except asyncio.TimeoutError:
            return None

    def close(self) -> None:
        self.hub.unsubscribe(self)

    def __enter__(self) -> Subscription:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class EventHub:
    def __init__(self) -> None:
        self._subscribers: dict[str, set[Subscription]] = {}
        self._lock = threading.Lock()

    def subscribe(self, job_id: str) -> Subscription:
        """Call from a coroutine: events are delivered on its loop."""
        subscription = Subscription(self, job_id)
        with self._lock:
            self._subscribers.setdefault(job_id, set()).add(subscription)
        return subscription

    def unsubscribe(self, subscription: Subscription) -> None:
        with self._lock:
            subscribers = self._subscribers.get(subscription.job_id)
            if subscribers is not None:
                subscribers.discard(subscription)
                if not subscribers:
                    del self._subscribers[subscription.job_id]

    def publish(self, event: JobEvent) -> None:
        with self._lock:
            subscribers = list(self._subscribers.get(event.job_id, ()))
        for subscription in subscribers:
            subscription.deliver(event)
