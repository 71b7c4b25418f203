"""The desktop's handle on the engine: every call runs off the UI thread and answers by signal.

    link.call(lambda c: c.search("red circle"), done=show_results)
    link.follow(job_id, on_event=update_progress)

The UI thread never waits on the engine. Each pool thread keeps its own
`EngineClient` (httpx clients are not shared across threads here).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from PySide6.QtCore import QObject, QRunnable, QThreadPool, Signal

from engine.client import EngineClient, EngineError, EngineUnavailable, connect
from engine.schema import TERMINAL_EVENTS, Event, Health
from engine.settings import Settings

log = logging.getLogger(__name__)


class _Signals(QObject):
    done = Signal(object)
    failed = Signal(str)


class _Task(QRunnable):
    def __init__(self, fn: Callable[[], Any], signals: _Signals) -> None:
        super().__init__()
        self.fn = fn
        self.signals = signals

    def run(self) -> None:
        try:
            result = self.fn()
        except EngineError as e:
            self.signals.failed.emit(readable(e))
        except Exception as e:  # a bug must not kill the pool thread; the user sees one line
            log.exception("background call failed")
            self.signals.failed.emit(f"{type(e).__name__}: {e}")
        else:
            self.signals.done.emit(result)


def readable(e: EngineError) -> str:
    if isinstance(e, EngineUnavailable):
        return f"The engine is not answering ({e}). Use Engine ▸ Start engine, or run `dreamhall engine`."
    return str(e)


class EngineLink(QObject):
    """Background calls to the engine, and its state for the status bar."""

    status = Signal(str)  # one line for the status bar
    ready = Signal(object)  # Health, once an engine answers
    failed = Signal(str)  # a call failed: one line for the user

    def __init__(self, settings: Settings, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.settings = settings
        self.pool = QThreadPool(self)
        self.pool.setMaxThreadCount(4)
        self.streams = QThreadPool(self)  # long-lived event streams, apart from quick calls
        self.streams.setMaxThreadCount(8)
        self._local = threading.local()
        self._clients: list[EngineClient] = []
        self._pending: set[_Signals] = set()
        self.health: Health | None = None

    def client(self) -> EngineClient:
        """This thread's client."""
        client = getattr(self._local, "client", None)
        if client is None:
            client = self._local.client = EngineClient(self.settings.socket_path)
            self._clients.append(client)
        return client

    def call(
        self,
        fn: Callable[[EngineClient], Any],
        done: Callable[[Any], None] | None = None,
        failed: Callable[[str], None] | None = None,
        *,
        pool: QThreadPool | None = None,
    ) -> None:
        """Run `fn(client)` on a pool thread; `done(result)` or `failed(message)` run on the UI thread."""
        signals = _Signals()  # created here, so its signals are delivered on the UI thread
        self._pending.add(signals)

        def finish() -> None:
            self._pending.discard(signals)

        if done is not None:
            signals.done.connect(done)
        signals.failed.connect(failed or self.failed.emit)
        signals.done.connect(finish)
        signals.failed.connect(finish)
        (pool or self.pool).start(_Task(lambda: fn(self.client()), signals))

    def start(self, autostart: bool = True) -> None:
        """Find the engine, or start one in the background (saying so), then report `ready`."""
        self.status.emit("Connecting to the engine…")

        def find(_: EngineClient) -> Health:
            said: list[str] = []
            client = connect(self.settings, autostart=autostart, say=said.append)
            if said:
                self.status.emit(said[0])  # signals may be emitted from any thread
            try:
                return client.health()
            finally:
                client.close()

        def found(health: Health) -> None:
            self.health = health
            self.status.emit(f"Engine {health.version} ready: {health.device}, model {health.model}")
            self.ready.emit(health)

        def lost(message: str) -> None:
            self.health = None
            self.status.emit(message)
            self.failed.emit(message)

        self.call(find, found, lost, pool=self.streams)

    def follow(self, job_id: str, on_event: Callable[[Event], None], on_end: Callable[[str], None]) -> None:
        """Stream a job's events to `on_event` (UI thread); `on_end(error or "")` after the last one."""
        events = _Signals()
        events.done.connect(on_event)

        def stream(client: EngineClient) -> str:
            for event in client.events(job_id):
                events.done.emit(event)
                if event.type in TERMINAL_EVENTS:
                    break
            return ""

        self._pending.add(events)

        def end(error: str) -> None:
            self._pending.discard(events)
            on_end(error)

        self.call(stream, end, end, pool=self.streams)

    def close(self) -> None:
        """Stop everything: closing the clients ends any event stream still open."""
        self.streams.clear()
        for client in self._clients:
            client.close()
        self.pool.waitForDone(3000)
        self.streams.waitForDone(3000)
