"""Workers as the engine front sees them, and the local one: a thread that owns the device.

Loop: claim -> Front.run (inputs -> Maker.make -> store -> index -> announce -> done).
`Front` is the front's half of every job, whoever makes its images (this thread,
or a Ray actor: engine.ray_workers). Nothing here touches the event loop directly:
everything reported goes through an `EventSink`, which the server implements with
`loop.call_soon_threadsafe`. Flags that the HTTP side sets (cancel, stop) are read
between steps.
"""

from __future__ import annotations

import functools
import logging
import os
import queue as queue_module
import socket
import threading
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np
from PIL import Image

from engine.device import Device
from engine.events import EventSink, NullSink
from engine.inputs import InputError, Inputs, Resolved
from engine.maker import Interrupted, Made, Maker, Stopwatch
from engine.pipelines import Cancelled, ModelLoadError, PipelineCache
from engine.queue import Affinity, JobQueue, JobRecord
from engine.records import image_info
from engine.schema import Event, Progress, WorkerInfo
from gallery.embeddings import Embedder
from gallery.schemas import ImagePublic
from gallery.store import ImageNotFound, ImageStore

if TYPE_CHECKING:  # LanceDB: not before Ray forks its processes (engine.ray_workers)
    from gallery.indexer import Indexer

log = logging.getLogger(__name__)
T = TypeVar("T")


class WorkerLost(Exception):
    """The worker running a job died (process killed, node lost): the job may run elsewhere."""


class JobFailed(Exception):
    """A job failed in another process; its message is already one sentence for the user."""


class Seat:
    """One worker as the front sees it: the job it runs, how far it is, what it loads and holds."""

    def __init__(self, worker_id: str, node: str, device: str, pid: int) -> None:
        self.id, self.node, self.device, self.pid = worker_id, node, device, pid
        self.job: str | None = None
        self.progress: tuple[int, int] = (0, 0)
        self.preview: str | None = None  # the running job's latest preview, as a data: URL
        self.loading: str | None = None
        self.loaded: list[str] = []
        self.affinity: Affinity | None = None  # what the queue may match to spare it a reload
        self.alive = True

    def start(self, job: JobRecord) -> None:
        self.job, self.progress, self.preview, self.loading = job.id, (0, job.request.steps), None, None

    def saw(self, event: Event) -> None:
        if event.type == "loading":
            self.loading = event.model
        elif event.type == "step":
            self.loading = None
            self.progress = (event.step or 0, event.total or 0)
            if event.preview is not None:
                self.preview = event.preview

    def end(self) -> None:
        self.job, self.progress, self.preview, self.loading = None, (0, 0), None, None

    def info(self) -> WorkerInfo:
        return WorkerInfo(id=self.id, node=self.node, pid=self.pid, device=self.device, job=self.job,
                          loading=self.loading, loaded=list(self.loaded), alive=self.alive)  # fmt: skip


class Seats:
    """The Runner's read side over a set of seats (what health, /v1/queue and A1111's progress ask)."""

    seats: list[Seat]

    def _seat_of(self, job_id: str) -> Seat | None:
        return next((seat for seat in self.seats if seat.job == job_id), None)

    def progress_of(self, job_id: str) -> Progress | None:
        seat = self._seat_of(job_id)
        return None if seat is None else Progress(step=seat.progress[0], total=seat.progress[1])

    def loading_for(self, job_id: str) -> str | None:
        seat = self._seat_of(job_id)
        return None if seat is None else seat.loading

    def preview_of(self, job_id: str) -> str | None:
        """The running job's latest step preview (a data: URL), if it asked for previews."""
        seat = self._seat_of(job_id)
        return None if seat is None else seat.preview

    def running(self) -> list[str]:
        return [seat.job for seat in self.seats if seat.job is not None]

    def workers(self) -> list[WorkerInfo]:
        return [seat.info() for seat in self.seats]


MakeFn = Callable[[JobRecord, Resolved, Callable[[Event], None]], Made]


@dataclass
class Front:
    """The front's half of every job, whoever makes its images: the gallery, the index and the events."""

    queue: JobQueue
    store: ImageStore
    inputs: Inputs
    events: EventSink
    indexer: Indexer | None = None

    def run(self, job: JobRecord, seat: Seat, make: MakeFn) -> None:
        """One claimed job: inputs -> make (here, or on a worker elsewhere) -> store -> index -> announce -> done.

        Raises WorkerLost (the job is still running; the caller decides where it goes)."""
        seat.start(job)
        watch = Stopwatch()

        def report(event: Event) -> None:
            seat.saw(event)
            self.events.publish(event)

        try:
            inputs = self.inputs.load(job.request)
            watch.lap("inputs")
            made = make(job, inputs, report)
            watch.lap("make")
            seat.loaded, seat.affinity = made.loaded, made.affinity
            if self.queue.get(job.id).status != "running":
                raise Cancelled()  # cancelled as it finished: store nothing
            images = self.store.add(made.items)
            watch.lap("store")
            self._index(images, made.vectors)
            watch.lap("index")
            for image in images:
                self.events.publish(Event(type="image", job=job.id, image=image_info(image, self.store)))
            self.queue.complete(job.id)
            watch.lap("done")
            _log_stages(job, watch, made.stages)
        except Cancelled:
            self.queue.cancel(job.id)  # already recorded when it was asked for; this covers the rest
        except Interrupted:
            self.queue.requeue(job.id)
            log.info("job %s interrupted by shutdown; it will run again", job.id)
        except WorkerLost:
            raise
        except Exception as e:  # one bad job must never take the engine down
            message = readable_error(e)
            log.exception("job %s failed: %s", job.id, message)
            self.queue.fail(job.id, message)
        finally:
            seat.end()

    def _index(self, images: list[ImagePublic], vectors: list[list[float]] | None) -> None:
        # Housekeeping after a job: a failure here costs search freshness, never the job;
        # the reconciler embeds whatever is missing on the next start.
        if self.indexer is None:
            return
        try:
            if vectors is None:
                self.indexer.index_images(images)
            else:
                self.indexer.add_vectors(images, vectors)
        except Exception:
            log.exception("could not index %d new image(s)", len(images))


def _log_stages(job: JobRecord, front: Stopwatch, maker: dict[str, float]) -> None:
    """One line per job, in ms: its wait in the queue, the maker's stages, and the front's (`make` split into
    the maker's own stages and `transfer`: events, and on Ray the trip to the worker and back)."""
    waited = (job.started_at - job.created_at).total_seconds() if job.started_at else 0.0
    stages = dict(front.spent)
    make = stages.pop("make", 0.0)
    stages = {"queued": waited, "inputs": stages.pop("inputs", 0.0), **maker,
              "transfer": max(0.0, make - sum(maker.values())), **stages}  # fmt: skip
    log.info("job %s stages (ms): %s", job.id, " ".join(f"{k}={v * 1000:.1f}" for k, v in stages.items()))


class Worker(Seats):
    """The local backend: one thread that owns the device and runs jobs one at a time."""

    def __init__(
        self,
        *,
        queue: JobQueue,
        store: ImageStore,
        inputs: Inputs,
        pipelines: PipelineCache,
        device: Device,
        events: EventSink | None = None,
        indexer: Indexer | None = None,
        max_batch_pixels: int | None = None,
        worker_id: str = "local",
    ) -> None:
        self.queue = queue
        self.pipelines = pipelines
        self.device = device
        self.front = Front(queue=queue, store=store, inputs=inputs, events=events or NullSink(), indexer=indexer)
        self.maker = Maker(
            pipelines=pipelines,
            device=device,
            worker_id=worker_id,
            max_batch_pixels=max_batch_pixels,
            between_steps=self._run_tasks,
        )  # a search's embedding waits one step at most
        self.seat = Seat(worker_id, node=socket.gethostname(), device=device.describe(), pid=os.getpid())
        self.seats = [self.seat]
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._serving = threading.Event()
        self._tasks: queue_module.SimpleQueue[tuple[Callable[[], Any], Future]] = queue_module.SimpleQueue()
        self._thread = threading.Thread(target=self._loop, name="dreamhall-worker", daemon=True)

    @property
    def indexer(self) -> Indexer | None:
        return self.front.indexer

    @indexer.setter
    def indexer(self, indexer: Indexer | None) -> None:
        self.front.indexer = indexer

    # --- called from other threads ----------------------------------------------------
    def start(self) -> None:
        """Start the thread; it runs `call`ed work at once, and jobs once `serve` is called."""
        self._thread.start()

    def serve(self, events: EventSink) -> None:
        self.front.events = events
        self._serving.set()
        self._wake.set()

    def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run `fn` on the worker thread and return its result.

        All torch work happens on this one thread: on a CPU, a second thread that
        touches torch starts a second OpenMP team, and the two made generation
        1.75x slower on 2 cores. Work asked for during a job runs between steps.
        """
        if threading.current_thread() is self._thread or not self._thread.is_alive():
            return fn(*args, **kwargs)
        future: Future = Future()
        self._tasks.put((functools.partial(fn, *args, **kwargs), future))
        self._wake.set()
        return future.result()

    def wake(self) -> None:
        """A job was queued."""
        self._wake.set()

    def cancel(self, job_id: str) -> None:
        """Ask the running job to stop at its next step (a queued job's cancel is the queue's alone)."""
        if self.seat.job == job_id:
            self.maker.cancel(job_id)

    def workers(self) -> list[WorkerInfo]:
        info = self.seat.info()
        return [info.model_copy(update={"loading": self.pipelines.loading, "loaded": self.pipelines.loaded()})]

    def stop(self, timeout: float = 30.0) -> None:
        """Stop after the current step; an interrupted job goes back to the queue."""
        self._stopping.set()
        self.maker.stop()
        self._wake.set()
        self._thread.join(timeout)

    # --- the worker thread -----------------------------------------------------------
    def _run_tasks(self) -> None:
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
        preloaded = reconciled = False
        while not self._stopping.is_set():
            self._run_tasks()
            if self._serving.is_set() and not preloaded:
                self._preload()
                preloaded = True
            job = self.queue.claim(self.pipelines.affinity()) if preloaded else None
            if job is None:
                if preloaded and not reconciled:
                    self._reconcile()
                    reconciled = True
                    continue
                self._wake.wait(timeout=1.0)
                self._wake.clear()
                continue
            try:
                self.front.run(job, self.seat, self.maker.make)
            finally:
                self.maker.forget(job.id)
        self._run_tasks()

    def _preload(self) -> None:
        """Load the default model before the first job asks."""
        try:
            self.pipelines.model(None)
        except Exception as e:  # reported again, per job, when the model is used
            log.error("could not preload the default model: %s", readable_error(e))

    def _reconcile(self) -> None:
        """Bring the search index up to date, once the jobs waiting at start have run (at a million
        images the check takes ~0.6 s here when nothing is amiss, and the first job need not wait)."""
        if self.front.indexer is not None:
            try:
                self.front.indexer.reconcile(quick=True)
            except Exception:  # search degrades, generation goes on
                log.exception("could not reconcile the search index")


class WorkerEmbedder(Embedder):
    """An embedder whose torch work always runs on the worker thread (see Worker.call)."""

    def __init__(self, inner: Embedder, worker: Worker) -> None:
        self.inner = inner
        self.worker = worker
        self.model_id = inner.model_id
        self.dim = inner.dim
        self.relevance_floor = inner.relevance_floor

    def embed_images(self, images: list[Image.Image]) -> np.ndarray:
        return self.worker.call(self.inner.embed_images, images)

    def embed_texts(self, texts: list[str]) -> np.ndarray:
        return self.worker.call(self.inner.embed_texts, texts)


def readable_error(e: BaseException) -> str:
    """One line for the user; the traceback stays in the engine's log."""
    if isinstance(e, (ModelLoadError, InputError, ImageNotFound, JobFailed)):
        return str(e)
    if Device.is_out_of_memory(e):
        return "out of memory even for a single image; try a smaller size or fewer steps"
    text = str(e).strip().splitlines()[0] if str(e).strip() else ""
    return f"{type(e).__name__}: {text}" if text else type(e).__name__
