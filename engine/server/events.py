"""Job events: where the queue and the worker report, and the hub that fans them out to streams.

The worker thread never touches the event loop directly: `EventHub` hands
every event over with `loop.call_soon_threadsafe` (ComfyUI's `send_sync`).
"""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from collections.abc import AsyncGenerator, Callable
from contextlib import suppress

from engine.client.answers import TERMINAL_EVENTS, Event


class EventSink(ABC):
    """Where job events go; implementations must be safe to call from any thread."""

    @abstractmethod
    def publish(self, event: Event) -> None:
        """Deliver one job event to whoever listens."""

    def watched(self) -> set[str]:
        """The job ids someone follows now: only their positions are worth computing."""
        return set()


class NullSink(EventSink):
    """Nobody listens (tests, tools, and the time before the server's loop runs)."""

    def publish(self, event: Event) -> None:
        pass


class EventHub(EventSink):
    """Fans job events out to stream subscribers. Lives on the event loop; other threads call in thread-safely."""

    def __init__(self) -> None:
        self.loop: asyncio.AbstractEventLoop | None = None  # until the server's loop runs, events go nowhere
        self._subscribers: dict[str, set[asyncio.Queue[Event]]] = {}

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        """The server's loop runs: deliver on it from now on."""
        self.loop = loop

    def publish(self, event: Event) -> None:
        if self.loop is not None:
            self.loop.call_soon_threadsafe(self._deliver, event)

    def watched(self) -> set[str]:
        return set(self._subscribers)  # a copy of the keys; a stale id only costs one position lookup

    async def follow(self, job_id: str, snapshot: Callable[[], list[Event]]) -> AsyncGenerator[Event, None]:
        """A job's events to its end: what it has said so far (`snapshot`, read after subscribing, so nothing
        falls in between), then each new one. Every stream of a job (SSE, A1111's blocking calls) is this."""
        q = self.subscribe(job_id)
        try:
            for event in await asyncio.to_thread(snapshot):
                yield event
                if event.type in TERMINAL_EVENTS:
                    return
            while True:
                event = await q.get()
                yield event
                if event.type in TERMINAL_EVENTS:
                    return
        finally:
            self.unsubscribe(job_id, q)

    def subscribe(self, job_id: str) -> asyncio.Queue[Event]:
        q: asyncio.Queue[Event] = asyncio.Queue(maxsize=512)
        self._subscribers.setdefault(job_id, set()).add(q)
        return q

    def unsubscribe(self, job_id: str, q: asyncio.Queue[Event]) -> None:
        subs = self._subscribers.get(job_id)
        if subs is not None:
            subs.discard(q)
            if not subs:
                del self._subscribers[job_id]

    def _deliver(self, event: Event) -> None:
        for q in list(self._subscribers.get(event.job, ())):
            with suppress(asyncio.QueueFull):  # a stalled client loses step events, not the engine
                q.put_nowait(event)
