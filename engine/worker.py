"""The worker: one thread that owns the device and runs jobs one at a time.

Loop: claim -> run -> store -> finish -> housekeeping. It never touches the
event loop directly: everything it reports goes through an `EventSink`,
which the server implements with `loop.call_soon_threadsafe`. Flags that
the HTTP side sets (cancel, stop) are read between steps.
"""

from __future__ import annotations

import base64
import functools
import io
import logging
import queue as queue_module
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, TypeVar

import numpy as np
from PIL import Image

from engine import modes
from engine.device import Device
from engine.events import EventSink, NullSink
from engine.inputs import InputError, Inputs
from engine.pipelines import Cancelled, LoadedModel, ModelLoadError, PipelineCache, StepCallback
from engine.queue import JobQueue, JobRecord
from engine.records import image_info
from engine.schema import Event, Progress
from gallery.embeddings import Embedder
from gallery.files import encode_png
from gallery.indexer import Indexer
from gallery.schemas import ImagePublic
from gallery.store import ImageNotFound, ImageStore

log = logging.getLogger(__name__)
T = TypeVar("T")

PREVIEW_INTERVAL_S = 0.5


class _Interrupted(Exception):
    """The engine is shutting down mid-job: the job goes back to the queue."""


class Worker:
    """Runs queued jobs on the device, one pipeline call at a time."""

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
    ) -> None:
        self.queue = queue
        self.indexer = indexer
        self.store = store
        self.inputs = inputs
        self.pipelines = pipelines
        self.events = events or NullSink()
        self.device = device
        self.max_batch_pixels = max_batch_pixels
        self.current: str | None = None
        self.progress: tuple[int, int] = (0, 0)
        self._preview: tuple[str, str] | None = None  # (job, its latest preview as a data: URL)
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._cancel: set[str] = set()
        self._serving = threading.Event()
        self._tasks: queue_module.SimpleQueue[tuple[Callable[[], Any], Future]] = queue_module.SimpleQueue()
        self._thread = threading.Thread(target=self._loop, name="dreamhall-worker", daemon=True)

    # --- called from other threads ----------------------------------------------------
    def start(self) -> None:
        """Start the thread; it runs `call`ed work at once, and jobs once `serve` is called."""
        self._thread.start()

    def serve(self, events: EventSink) -> None:
        self.events = events
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

    def loading_for(self, job_id: str) -> str | None:
        return self.pipelines.loading if self.current == job_id else None

    def progress_of(self, job_id: str) -> Progress | None:
        if self.current != job_id:
            return None
        step, total = self.progress
        return Progress(step=step, total=total)

    def preview_of(self, job_id: str) -> str | None:
        """The running job's latest step preview (a data: URL), if it asked for previews."""
        latest = self._preview
        return latest[1] if latest is not None and latest[0] == job_id else None

    def cancel(self, job_id: str) -> None:
        """Ask the running job to stop at its next step."""
        self._cancel.add(job_id)

    def stop(self, timeout: float = 30.0) -> None:
        """Stop after the current step; an interrupted job goes back to the queue."""
        self._stopping.set()
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
        preloaded = False
        while not self._stopping.is_set():
            self._run_tasks()
            if self._serving.is_set() and not preloaded:
                self._preload()
                preloaded = True
            job = self.queue.claim(self.pipelines.affinity()) if preloaded else None
            if job is None:
                # Nothing runs: cancels asked for jobs that never ran here (queued ones) are moot.
                self._cancel.clear()
                self._wake.wait(timeout=1.0)
                self._wake.clear()
                continue
            self._run(job)
        self._run_tasks()

    def _preload(self) -> None:
        """Load the default model before the first job asks; bring the search index up to date."""
        try:
            self.pipelines.model(None)
        except Exception as e:  # reported again, per job, when the model is used
            log.error("could not preload the default model: %s", readable_error(e))
        if self.indexer is not None:
            try:
                self.indexer.reconcile()
            except Exception:  # search degrades, generation goes on
                log.exception("could not reconcile the search index")

    def _index(self, images: list[ImagePublic]) -> None:
        # Housekeeping after a job: a failure here costs search freshness, never the job;
        # the reconciler embeds whatever is missing on the next start.
        if self.indexer is None:
            return
        try:
            self.indexer.index_images(images)
        except Exception:
            log.exception("could not index %d new image(s)", len(images))

    def _run(self, job: JobRecord) -> None:
        """One job from claim to its end; the queue announces each transition."""
        self.current, self.progress = job.id, (0, job.request.steps)
        try:
            images = self._generate(job)
            self._index(images)
            for image in images:
                self.events.publish(Event(type="image", job=job.id, image=image_info(image, self.store)))
            self.queue.complete(job.id)
        except Cancelled:
            self.queue.cancel(job.id)  # already recorded when it was asked for; this covers the rest
        except _Interrupted:
            self.queue.requeue(job.id)
            log.info("job %s interrupted by shutdown; it will resume on the next start", job.id)
        except Exception as e:  # one bad job must never take the engine down
            message = readable_error(e)
            log.exception("job %s failed: %s", job.id, message)
            self.queue.fail(job.id, message)
        finally:
            self._cancel.discard(job.id)
            self.current, self.progress = None, (0, 0)

    def _generate(self, job: JobRecord) -> list[ImagePublic]:
        """model -> inputs -> plan -> batches -> safety flags -> records -> store."""
        req = job.request
        # 1. the model (say so when it must be loaded: that can take minutes), and 2. the input images
        if not self.pipelines.is_loaded(req.model):
            self.events.publish(Event(type="loading", job=job.id, model=req.model or self.pipelines.default_name()))
        model = self.pipelines.model(req.model)  # pipelines.loading says what, meanwhile
        inputs = self.inputs.load(req)
        # 3. the plan: size, seeds, and which single call makes its images
        work = modes.plan(req, inputs, job_seed=job.seed, native_size=model.native_size,
                          upscaler=self.pipelines.upscaler)  # fmt: skip
        # 4. batches that fit, with the job's LoRAs and embeddings (unloaded after it)
        shelf = self.pipelines.shelf
        loras, embeddings = shelf.addons_of(req.prompt, req.negative_prompt)
        started = time.perf_counter()
        with model.addons(loras, embeddings):
            images = modes.run_batched(
                len(work.seeds),
                lambda indices, chunk, chunks: work.run(model, indices, self._step_reporter(job, model, chunk, chunks)),
                max_batch=self._max_batch(work),
                is_out_of_memory=self._out_of_memory,
                on_retry=lambda batch: log.warning("job %s: out of memory, retrying in batches of %d", job.id, batch),
            )
        made_with = ({"model_hash": model.hash} if model.hash else {}) | shelf.made_with(loras, embeddings)
        if req.refiner is not None:  # 4b. a second model finishes each image
            if not self.pipelines.is_loaded(req.refiner):
                self.events.publish(Event(type="loading", job=job.id, model=req.refiner))
            refiner = self.pipelines.model(req.refiner)
            images = modes.refine(refiner, images, work, req.refiner_switch,
                                  lambda i: self._step_reporter(job, refiner, i, len(images)))  # fmt: skip
            made_with["refiner"] = refiner.name  # its shelf name, never a path
        log.info("job %s: %s, %d image(s) %dx%d, %d steps in %.2f s", job.id, req.mode, req.n, work.width,
                 work.height, req.steps, time.perf_counter() - started)  # fmt: skip
        if job.id in self._cancel:
            raise Cancelled()  # asked for during the last step: store nothing
        # 5. safety flags, 6. gallery records, 7. the store
        flags = model.safety_flags(images)
        records = work.records(req, images, job_id=job.id, model=model.name, made_with=made_with,
                               parent=inputs.parent, nsfw=flags)  # fmt: skip
        return self.store.add([(record, encode_png(img, record)) for record, img in zip(records, images)])

    def _max_batch(self, work: modes.Plan) -> int | None:
        """How many images of this size fit one batch under the pixel budget (None: no budget)."""
        if self.max_batch_pixels is None:
            return None
        return max(1, self.max_batch_pixels // (work.width * work.height))

    def _out_of_memory(self, e: BaseException) -> bool:
        if not Device.is_out_of_memory(e):
            return False
        self.device.free_memory()
        return True

    def _step_reporter(self, job: JobRecord, model: LoadedModel, chunk_no: int, chunks: int) -> StepCallback:
        last_preview = [0.0]

        def on_step(step: int, total: int, latents) -> None:
            self._run_tasks()  # a search's embedding waits one step at most
            if job.id in self._cancel:
                raise Cancelled()
            if self._stopping.is_set():
                raise _Interrupted()
            done, all_steps = chunk_no * total + step, chunks * total
            self.progress = (done, all_steps)
            preview = None
            now = time.monotonic()
            if job.request.preview and now - last_preview[0] >= PREVIEW_INTERVAL_S and step < total:
                last_preview[0] = now
                picture = model.preview(latents)
                preview = _data_url(picture) if picture is not None else None
                if preview is not None:
                    self._preview = (job.id, preview)
            self.events.publish(Event(type="step", job=job.id, step=done, total=all_steps, preview=preview))

        return on_step


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


def _data_url(img) -> str:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def readable_error(e: BaseException) -> str:
    """One line for the user; the traceback stays in the engine's log."""
    if isinstance(e, (ModelLoadError, InputError, ImageNotFound)):
        return str(e)
    if Device.is_out_of_memory(e):
        return "out of memory even for a single image; try a smaller size or fewer steps"
    text = str(e).strip().splitlines()[0] if str(e).strip() else ""
    return f"{type(e).__name__}: {text}" if text else type(e).__name__
