"""The desktop's handle on the engine: every call runs off the UI thread and answers by signal.

    link.call(lambda c: c.search("red circle"), done=show_results)
    link.follow(job_id, on_event=update_progress)

The UI thread never waits on the engine. Work runs on plain Python threads
(no Qt objects live there); results come back through one long-lived signal.
Each thread keeps its own `EngineClient`.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, cast

from PySide6.QtCore import QObject, Signal

from engine.client.answers import TERMINAL_EVENTS, Event, Health
from engine.client.clients import EngineClient, EngineError, EngineUnavailable
from engine.client.launch import connect
from engine.client.settings import Settings

log = logging.getLogger(__name__)


def readable(e: EngineError) -> str:
    if isinstance(e, EngineUnavailable):
        return f"The engine is not answering ({e}). Use Engine ▸ Start engine, or run `dreamhall engine`."
    return str(e)


class EngineLink(QObject):
    """Background calls to the engine, and its state for the status bar."""

    status = Signal(str)  # one line for the status bar
    ready = Signal(object)  # Health, once an engine answers
    failed = Signal(str)  # a call failed: one line for the user
    # (callback, value) from pool threads, run on the UI thread. One long-lived sender: a QObject
    # per call would be freed on whichever thread dropped it last, and Qt crashes on that.
    deliver = Signal(object, object)

    def __init__(self, settings: Settings, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.settings = settings
        self.pool = ThreadPoolExecutor(4, thread_name_prefix="engine-call")
        self._local = threading.local()
        self._clients: list[EngineClient] = []
        self.health: Health | None = None
        self.closed = False
        self.deliver.connect(self._run_callback)

    def _run_callback(self, callback: Callable[[Any], None], value: Any) -> None:
        # An answer queued for this thread just before the window closed arrives after close(): the
        # widgets it would update have stopped their own threads, so it is dropped.
        if not self.closed:
            callback(value)

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
        long: bool = False,
    ) -> None:
        """Run `fn(client)` off the UI thread; `done(result)` or `failed(message)` then run on the UI thread.

        `long`: a daemon thread of its own (event streams, engine start-up), so it never holds up others.
        """
        done = done or (lambda _: None)
        failed = failed or self.failed.emit

        def run() -> None:
            try:
                result = fn(self.client())
            except EngineError as e:
                self._deliver(failed, readable(e))
            except Exception as e:  # a bug must not kill the thread; the user sees one line
                log.exception("background call failed")
                self._deliver(failed, f"{type(e).__name__}: {e}")
            else:
                self._deliver(done, result)

        if long:
            threading.Thread(target=run, daemon=True, name="engine-stream").start()
        else:
            self.pool.submit(run)

    def _deliver(self, callback: Callable[[Any], None], value: Any) -> None:
        with contextlib.suppress(RuntimeError):  # the window is gone: nobody to tell
            self.deliver.emit(callback, value)

    def start(self, autostart: bool = True) -> None:
        """Find the engine, or start one in the background (saying so), then report `ready`."""
        self.status.emit("Connecting to the engine…")

        def find(_: EngineClient) -> Health:
            # What connect says (started one, still starting, loading a model) shows as it happens;
            # signals may be emitted from any thread.
            client = connect(self.settings, autostart=autostart, say=self.status.emit)
            try:
                return cast(Health, client.health())
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

        self.call(find, found, lost, long=True)

    def follow(self, job_id: str, on_event: Callable[[Event], None], on_end: Callable[[str], None]) -> None:
        """Stream a job's events to `on_event` (UI thread); `on_end(error or "")` after the last one."""

        def stream(client: EngineClient) -> str:
            for event in client.events(job_id):
                self._deliver(on_event, event)
                if event.type in TERMINAL_EVENTS:
                    break
            return ""

        self.call(stream, on_end, on_end, long=True)

    def close(self) -> None:
        """Stop everything: closing the clients ends any event stream still open."""
        self.closed = True
        for client in self._clients:
            client.close()
        self.pool.shutdown(wait=True, cancel_futures=True)
