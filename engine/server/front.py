"""The front's half of every job, whoever makes its images (the local worker thread or a Ray actor).

    claim -> run: inputs -> make (on the worker) -> store -> index -> announce -> done

Everything reported goes through the queue's and the front's `EventSink`, which the server
implements with `loop.call_soon_threadsafe`; this module never touches the event loop.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from engine.client.answers import Event
from engine.client.errors import error_line
from engine.device.runner import (
    Affinity,
    Cancelled,
    Interrupted,
    JobFailed,
    JobRecord,
    Made,
    MakeFn,
    Resolved,
    Seat,
    Stopwatch,
    WorkerLost,
)
from engine.server.errors import is_user_error
from engine.server.events import EventSink
from engine.server.inputs import Inputs
from engine.server.queue import JobQueue
from engine.server.records import image_info
from engine.server.repeats import content_in, image_key
from gallery.schemas import ImageCreate, ImagePublic
from gallery.store import ImageStore

if TYPE_CHECKING:  # LanceDB: not before Ray forks its processes (engine.device.ray_workers)
    from engine.server.metrics import Metrics
    from gallery.indexer import Indexer

log = logging.getLogger(__name__)


@dataclass
class Front:
    """The gallery, the index and the events of every job: what a worker claims from and hands back to."""

    queue: JobQueue
    store: ImageStore
    inputs: Inputs
    events: EventSink
    indexer: Indexer | None = None
    metrics: Metrics | None = None
    _missed: bool = field(default=False, init=False)  # the worker idled before the index had loaded
    _indexing: threading.Lock = field(default_factory=threading.Lock, init=False)

    def claim(self, affinity: Affinity | None, room: Callable[[JobRecord], int] = lambda job: 1) -> list[JobRecord]:
        return self.queue.claim_batch(affinity, room)

    def requeue(self, job_id: str) -> None:
        self.queue.requeue(job_id)

    def fail(self, job_id: str, error: str) -> None:
        self.queue.fail(job_id, error)

    def _keyed(self, items: list[tuple[ImageCreate, bytes]]) -> list[tuple[ImageCreate, bytes]]:
        """Each record with its repeat key, so a request that repeats it can be answered from the gallery."""
        content_of = content_in(self.store)
        keyed = []
        for record, png in items:
            repeat_key = image_key(
                record.params,
                asked=record.asked_size,
                model=record.model,
                prompt=record.prompt,
                negative=record.negative_prompt,
                seed=record.seed,
                content_of=content_of,
            )
            keyed.append((record.model_copy(update={"repeat_key": repeat_key}), png))
        return keyed

    def run(self, jobs: Sequence[JobRecord], seat: Seat, make: MakeFn) -> None:
        """Claimed jobs that share one call (one job, without batching): inputs -> make (here, or on a worker
        elsewhere) -> for each job: store -> index -> announce -> done. Each job ends on its own: one that fails
        or is cancelled takes nothing from the others.

        Raises WorkerLost (its jobs are still running; the caller decides where they go)."""
        seat.start(jobs)
        watch = Stopwatch()
        ready: list[tuple[JobRecord, Resolved]] = []
        for job in jobs:
            try:
                ready.append((job, self.inputs.load(job.request)))
            except Exception as e:
                self._ended(job, e)
        watch.lap("inputs")

        def report(event: Event) -> None:
            seat.saw(event)
            self.events.publish(event)

        try:
            if ready:
                if self.metrics is not None:
                    self.metrics.batch_jobs.observe(len(ready))
                outcomes = make([job for job, _ in ready], [inputs for _, inputs in ready], [report] * len(ready))
                watch.lap("make")
                for (job, _), outcome in zip(ready, outcomes, strict=True):
                    self._settle(job, seat, outcome, watch)
        except Interrupted:
            for job, _ in ready:
                self.queue.requeue(job.id)
                log.info("job %s interrupted by shutdown; it will run again", job.id)
                self._count(job, "requeued")
        except WorkerLost:
            if self.metrics is not None:
                self.metrics.worker_failures.inc()
            raise
        except Exception as e:  # one bad call must never take the engine down
            for job, _ in ready:
                self._ended(job, e)
        finally:
            seat.end()

    def _settle(self, job: JobRecord, seat: Seat, outcome: Made | Exception, watch: Stopwatch) -> None:
        """One job of the call: its images stored, indexed and announced, or its end as the outcome says."""
        if isinstance(outcome, Exception):
            self._ended(job, outcome)
            return
        made = outcome
        try:
            seat.loaded, seat.affinity, seat.cache = made.loaded, made.affinity, made.cache
            if self.queue.get(job.id).status != "running":
                raise Cancelled()  # cancelled as it finished: store nothing
            mine = Stopwatch()
            images = self.store.add(self._keyed(made.items))
            mine.lap("store")
            self._index(images, made.vectors)
            mine.lap("index")
            for image in images:
                self.events.publish(Event(type="image", job=job.id, image=image_info(image, self.store)))
            mine.lap("done")
            stages = _stages(job, watch, mine, made.stages)
            # counted before the job reads done: a client that scrapes /metrics once it sees done finds it counted
            self._count(job, "done", stages, images=len(images))
            self.queue.complete(job.id)
            log.info("job %s stages (ms): %s", job.id, " ".join(f"{k}={v * 1000:.1f}" for k, v in stages.items()))
        except Exception as e:
            self._ended(job, e)

    def _ended(self, job: JobRecord, e: Exception) -> None:
        """A job that made no images: cancelled, or failed with one sentence for the user."""
        if isinstance(e, Cancelled):
            self.queue.cancel(job.id)  # already recorded when it was asked for; this covers the rest
            self._count(job, "cancelled")
            return
        self._count(job, "failed")
        if isinstance(e, JobFailed):  # the worker already logged it, with its traceback where it was a bug
            self.queue.fail(job.id, str(e))
        elif is_user_error(e):
            log.warning("job %s failed: %s", job.id, e)
            self.queue.fail(job.id, str(e))
        else:
            log.error("job %s failed on the front", job.id, exc_info=e)
            self.queue.fail(job.id, error_line(e))

    def _count(self, job: JobRecord, outcome: str, stages: dict[str, float] | None = None, images: int = 0) -> None:
        if self.metrics is None:
            return
        source = job.request.requester.source
        self.metrics.job_ended(source, outcome)
        if stages:
            self.metrics.stages(stages)
        if images:
            self.metrics.images.labels(source=source).inc(images)

    def attach_indexer(self, indexer: Indexer) -> None:
        """The search index has loaded (after the first job: its images were stored without vectors): the index's
        check runs now if the worker already idled, else when it does."""
        with self._indexing:
            self.indexer = indexer
            missed, self._missed = self._missed, False
        if missed:
            self.idle()

    def idle(self) -> None:
        """Bring the search index up to date, once the jobs waiting at start have run (at a million
        images the check takes ~0.6 s here when nothing is amiss, and the first job need not wait)."""
        with self._indexing:
            self._missed = self.indexer is None
            if self._missed:
                return
        started = time.monotonic()
        try:
            self.indexer.reconcile(quick=True)
        except Exception:  # search degrades, generation goes on
            log.exception("could not reconcile the search index")
        else:
            log.info("search index checked in %.1f s", time.monotonic() - started)
        threading.Thread(target=self._warm, name="dreamhall-index-warm", daemon=True).start()

    def _warm(self) -> None:
        assert self.indexer is not None
        started = time.monotonic()
        try:
            self.indexer.index.warm()
        except Exception:  # the first searches read it themselves
            log.exception("could not read the search index ahead")
        else:
            log.info("search index read ahead in %.1f s", time.monotonic() - started)

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


def _stages(job: JobRecord, front: Stopwatch, mine: Stopwatch, maker: dict[str, float]) -> dict[str, float]:
    """Where a job's time went, in seconds: its wait in the queue, the maker's stages, and the front's (`make`
    split into the maker's own stages and `transfer`: events, and on Ray the trip to the worker and back); the
    call's stages are shared by its jobs, `mine` is this job's own."""
    waited = (job.started_at - job.created_at).total_seconds() if job.started_at else 0.0
    stages = dict(front.spent) | mine.spent
    make = stages.pop("make", 0.0)
    stages = {"queued": waited, "inputs": stages.pop("inputs", 0.0), **maker,
              "transfer": max(0.0, make - sum(maker.values())), **stages}  # fmt: skip
    return stages
