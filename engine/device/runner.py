"""The job runner's interface: what the engine's front and its workers say to each other.

The front (engine.server) owns the queue, the gallery and the events; a runner (the local worker
thread, engine.device.worker, or Ray actors, engine.device.ray_workers) owns the devices. This module
is the only part of the device side the front imports, so it imports neither torch nor the server:

    front.claim(affinity) -> JobRecord        the next fair job for a worker holding these models
    front.run(job, seat, make)                inputs -> make(job, inputs, report) -> store -> index -> done
    make(...) -> Made                         a job's images, records and vectors (or Cancelled, Interrupted,
                                              JobFailed, WorkerLost)
    front.idle()                              housekeeping once the jobs waiting at start have run
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from PIL import Image
from pydantic import BaseModel

from engine.client.answers import Event, Progress, WorkerInfo
from engine.client.schema import DreamRequest, JobStatus
from gallery.schemas import ImageCreate, ImagePublic, UtcDateTime


class Cancelled(Exception):
    """Raised from the step callback when a job's cancel flag is set; reported as 'cancelled'."""


class Interrupted(Exception):
    """The worker is stopping mid-job: the job goes back to the queue."""


class WorkerLost(Exception):
    """The worker running a job died (process killed, node lost): the job may run elsewhere."""


class JobFailed(Exception):
    """A job failed in another process; its message is already one sentence for the user."""


@dataclass(frozen=True)
class Affinity:
    """The models the claiming worker has in memory: a job on one of them costs no reload."""

    loaded: frozenset[str]
    default_model: str  # what a request without `model` uses

    def has(self, model: str | None) -> bool:
        return (model or self.default_model) in self.loaded


class JobRecord(BaseModel):
    """A job as the queue stores it and a worker receives it."""

    id: str
    status: JobStatus
    request: DreamRequest
    seed: int
    queue_key: str
    priority: int
    error: str | None = None
    found: list[int] | None = None  # answered from the gallery (find before draw): these images
    created_at: UtcDateTime
    started_at: UtcDateTime | None = None
    finished_at: UtcDateTime | None = None


@dataclass
class Resolved:
    """A request's input images, decoded. `init` keeps its alpha channel (transparent = repaint)."""

    init: Image.Image | None = None
    mask: Image.Image | None = None
    parent: ImagePublic | None = None
    controls: list[Image.Image] = field(default_factory=list)  # each control's map (preprocessed), in order
    references: list[Image.Image] = field(default_factory=list)  # the reference pictures (RGB), in order


class Stopwatch:
    """Where one job's time goes, stage by stage (seconds): logged once per job, read by
    bench/engine_overhead.py."""

    def __init__(self) -> None:
        self.spent: dict[str, float] = {}
        self._last = time.perf_counter()

    def lap(self, stage: str) -> None:
        now = time.perf_counter()
        self.spent[stage] = self.spent.get(stage, 0.0) + now - self._last
        self._last = now


@dataclass
class Made:
    """What one job made: its images as PNG bytes with their gallery records, and their CLIP vectors."""

    items: list[tuple[ImageCreate, bytes]]
    vectors: list[list[float]] | None = None  # None: no embedder here, the front embeds them
    loaded: list[str] = field(default_factory=list)  # the models this worker holds now, by name
    affinity: Affinity | None = None  # the same, as the queue matches requests against them
    stages: dict[str, float] = field(default_factory=dict)  # where the time went here (Stopwatch.spent)
    cache: dict[str, float | None] = field(default_factory=dict)  # its model cache now (PipelineCache.stats)


MakeFn = Callable[[JobRecord, Resolved, Callable[[Event], None]], Made]


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
        self.cache: dict[str, float | None] = {}  # its model cache after its last job (Made.cache)
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
                          loading=self.loading, loaded=list(self.loaded), alive=self.alive,
                          cache=dict(self.cache))  # fmt: skip


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


class JobFront(Protocol):
    """The front as a worker sees it (engine.server.front.Front)."""

    def claim(self, affinity: Affinity | None) -> JobRecord | None:
        """The next job in fair order for a worker holding `affinity`'s models; None when none is queued."""

    def run(self, job: JobRecord, seat: Seat, make: MakeFn) -> None:
        """One claimed job, start to end (raises WorkerLost: the caller decides where the job goes)."""

    def requeue(self, job_id: str) -> None:
        """A job whose worker died goes back to the queue."""

    def fail(self, job_id: str, error: str) -> None:
        """A job fails with one sentence for the user."""

    def idle(self) -> None:
        """Housekeeping once the jobs waiting at start have run (the search index's check)."""


class Runner(Protocol):
    """What the engine needs from whoever runs jobs: the local worker thread, or a pool of Ray workers."""

    def serve(self, front: JobFront) -> None:
        """Start claiming jobs from `front`."""

    def stop(self) -> None:
        """Stop; a job interrupted mid-way goes back to the queue."""

    def wake(self) -> None:
        """A job was queued."""

    def cancel(self, job_id: str) -> None:
        """Stop this running job at its next step."""

    def finish(self, job_id: str) -> None:
        """End this running job's sampling at its next step, keeping its images as far as they got."""

    def progress_of(self, job_id: str) -> Progress | None:
        """The running job's progress, or None if it is not running here."""

    def loading_for(self, job_id: str) -> str | None:
        """The model this running job waits for while it loads, or None."""

    def preview_of(self, job_id: str) -> str | None:
        """The running job's latest step preview (a data: URL), or None."""

    def running(self) -> list[str]:
        """The jobs running now, one per busy worker."""

    def workers(self) -> list[WorkerInfo]:
        """Every worker: where it runs, what it runs and holds."""
