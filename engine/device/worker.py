"""The local backend: one thread owns the device and runs one pipeline call at a time (a job, or several
queued jobs that share a model, size and steps: cross-user batching).

    TorchThread        the one thread that touches torch: `call`ed work first, then the job loop
    Worker             claim -> front.run(jobs, seat, maker.run_batch) -> ... ; the Runner of one machine
    WorkerEmbedder     CLIP whose work always runs on that thread

It reaches the front only through the job runner's interface (engine.device.runner): the front
claims, stores, indexes and announces; this thread makes the images. Flags that the HTTP side sets
(cancel, stop) are read between steps.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import queue as queue_module
import socket
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TypeVar

import numpy as np
from PIL import Image

from engine.client.answers import WorkerInfo
from engine.device.annotators import Annotators
from engine.device.maker import Maker, failure_sentence
from engine.device.runner import JobFront, Seat, Seats
from engine.device.text_process import TextProcess
from gallery.embeddings import Embedder, OpenClipEmbedder

log = logging.getLogger(__name__)
T = TypeVar("T")

IDLE_WAIT_S = 1.0  # an idle worker looks at the queue at least this often
WORKER_NICE = 10  # a search's few milliseconds of CLIP take the cores from a denoising step


def _yield_to_searches() -> None:
    """Lower this thread's CPU priority (Linux: per thread; the OpenMP team it starts inherits it)."""
    if hasattr(os, "setpriority"):
        with contextlib.suppress(OSError):  # a platform that will not: the job shares the cores evenly
            me = threading.get_native_id()
            os.setpriority(os.PRIO_PROCESS, me, os.getpriority(os.PRIO_PROCESS, me) + WORKER_NICE)


class TorchThread:
    """The one thread that touches torch in this process.

    All generation work happens on this one thread: on a CPU, a second thread that touches torch starts
    a second OpenMP team, and the two made generation 1.75x slower on 2 cores (only a search's text embedding,
    milliseconds, runs beside it: WorkerEmbedder). Work `call`ed during
    a job runs between its steps (the maker calls `run_tasks` from its step callback).
    """

    def __init__(self, name: str = "dreamhall-worker") -> None:
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._tasks: queue_module.SimpleQueue[tuple[Callable[[], Any], Future]] = queue_module.SimpleQueue()
        self._body: Callable[[], bool] | None = None
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run `fn` on the thread and return its result (at once when called from the thread itself)."""
        if threading.current_thread() is self._thread or not self._thread.is_alive():
            return fn(*args, **kwargs)
        future: Future[T] = Future()
        self._tasks.put((functools.partial(fn, *args, **kwargs), future))
        self._wake.set()
        return future.result()

    def loop(self, body: Callable[[], bool]) -> None:
        """From now on the thread calls `body` whenever no `call` waits; `body` returns False when it had
        nothing to do, and the thread then sleeps until woken (at most IDLE_WAIT_S)."""
        self._body = body
        self._wake.set()

    def wake(self) -> None:
        self._wake.set()

    def stop(self, timeout: float) -> None:
        self._stopping.set()
        self._wake.set()
        self._thread.join(timeout)

    def run_tasks(self) -> None:
        """Run the `call`s waiting now (on the thread)."""
        while True:
            try:
                fn, future = self._tasks.get_nowait()
            except queue_module.Empty:
                return
            if future.set_running_or_notify_cancel():
                try:
                    future.set_result(fn())
                except BaseException as e:  # handed to the caller, who raises it
                    future.set_exception(e)

    def _loop(self) -> None:
        _yield_to_searches()
        while not self._stopping.is_set():
            self.run_tasks()
            body = self._body
            if body is not None and body():
                continue
            self._wake.wait(timeout=IDLE_WAIT_S)
            self._wake.clear()
        self.run_tasks()


class Worker(Seats):
    """The Runner of one machine: its TorchThread runs the maker's jobs, which it claims from the front."""

    def __init__(self, *, thread: TorchThread, maker: Maker, annotators: Annotators) -> None:
        self.thread = thread
        self.maker = maker
        self.annotators = annotators
        self.pipelines = maker.pipelines
        self.seat = Seat(maker.worker_id, node=socket.gethostname(), device=maker.device.describe(), pid=os.getpid())
        self.seats = [self.seat]
        self._front: JobFront | None = None
        self._preloaded = self._idled = False
        # The first job has run, or none waited: what the engine loads after it (CLIP, the search index) may load.
        self.settled = threading.Event()

    # --- called from other threads ----------------------------------------------------
    def serve(self, front: JobFront) -> None:
        """Start claiming jobs from `front` (the default model loads first)."""
        self._front = front
        self.thread.loop(self._next)

    def wake(self) -> None:
        """A job was queued."""
        self.thread.wake()

    def cancel(self, job_id: str) -> None:
        """Ask the running job to stop at its next step (a queued job's cancel is the queue's alone)."""
        if job_id in self.seat.jobs:
            self.maker.cancel(job_id)

    def finish(self, job_id: str) -> None:
        if job_id in self.seat.jobs:
            self.maker.finish(job_id)

    def workers(self) -> list[WorkerInfo]:
        info = self.seat.info()
        return [info.model_copy(update={"loading": self.pipelines.loading, "loaded": self.pipelines.loaded()})]

    def annotate(self, picture: Image.Image, type: str) -> Image.Image:
        """On the thread (between a job's steps, or inline from a job's inputs): torch has one owner."""
        return self.thread.call(self.annotators.annotate, picture, type)

    def stop(self, timeout: float = 30.0) -> None:
        """Stop after the current step; an interrupted job goes back to the queue."""
        self.maker.stop()
        self.thread.stop(timeout)
        self.settled.set()

    # --- on the thread ------------------------------------------------------------------
    def _next(self) -> bool:
        assert self._front is not None
        if not self._preloaded:
            self._preload()
            self._preloaded = True
        jobs = self._front.claim(self.pipelines.affinity(), self.maker.room)
        if not jobs:
            if not self._idled:  # the jobs waiting at start have run: the search index's check now
                self._idled = True
                self.settled.set()
                self._front.idle()
                return True
            return False
        self._front.run(jobs, self.seat, self.maker.run_batch)
        self.settled.set()
        return True

    def _preload(self) -> None:
        """Load the default model before the first job asks."""
        try:
            self.pipelines.model(None)
        except Exception as e:  # reported again, per job, when the model is used
            log.error("could not preload the default model: %s", failure_sentence(e))


class WorkerEmbedder(Embedder):
    """An embedder whose image work runs on the worker's thread (see TorchThread), and whose text work (a search's
    few words, ~10 ms of CLIP's text tower) on a thread of its own: a search never waits for a denoising step (a
    real SD step on a CPU takes seconds); the running job shares the cores with it for those milliseconds.

    `text_process` (on a CPU): that thread hands the words to a process of its own once it has started (see
    engine.device.text_process: two OpenMP teams in one process slow each other). Its torch thread count is left
    alone: OpenMP's is not reliably per thread (torch.set_num_threads here was seen to change the worker
    thread's), and the worker's must stay as it is."""

    def __init__(self, inner: Embedder, thread: TorchThread, *, text_process: bool = False) -> None:
        self.inner = inner
        self.thread = thread
        self.model_id = inner.model_id
        self.dim = inner.dim
        self.relevance_floor = inner.relevance_floor
        self._texts = ThreadPoolExecutor(1, thread_name_prefix="dreamhall-search-clip")
        self._process: TextProcess | None = None
        self._wants_process = text_process and isinstance(inner, OpenClipEmbedder)
        self._started: threading.Thread | None = None

    def embed_images(self, images: list[Image.Image]) -> np.ndarray:
        return self.thread.call(self.inner.embed_images, images)

    def embed_texts(self, texts: list[str]) -> np.ndarray:
        return self.embed_texts_soon(texts).result()

    def embed_texts_soon(self, texts: list[str]) -> Future[np.ndarray]:
        return self._texts.submit(self._embed_texts, texts)

    def _embed_texts(self, texts: list[str]) -> np.ndarray:
        """On the search thread: through the text process when it is up, else here (and start it, once)."""
        process = self._process
        if process is not None:
            try:
                return process.embed_texts(texts)
            except (OSError, EOFError) as e:  # it died: searches go on here
                log.warning("the search's CLIP process stopped (%s); searches embed in the engine from now on",
                            e or type(e).__name__)  # fmt: skip
                self._process = None
        elif self._wants_process and self._started is None:
            self._started = threading.Thread(target=self._start_process, name="dreamhall-search-clip-start",
                                             daemon=True)  # fmt: skip
            self._started.start()
        return self.inner.embed_texts(texts)

    def _start_process(self) -> None:
        assert isinstance(self.inner, OpenClipEmbedder)
        try:
            started = time.perf_counter()
            self._process = TextProcess(self.inner.text_tower())
        except Exception as e:  # searches embed in the engine, as before
            log.warning("could not start the search's CLIP process (%s); searches embed in the engine", e)
            return
        log.info("search texts are embedded in process %s (started in %.1f s)", self._process.pid,
                 time.perf_counter() - started)  # fmt: skip

    def close(self) -> None:
        if self._started is not None:
            self._started.join()
        if self._process is not None:
            self._process.close()
            self._process = None
