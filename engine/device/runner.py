"""The job runner's interface: what the engine's front and its workers say to each other.

The front (engine.server) owns the queue, the gallery and the events; a runner (the local worker
thread, engine.device.worker, or Ray actors, engine.device.ray_workers) owns the devices. This module
is the only part of the device side the front imports, so it imports neither torch nor the server:

    front.claim(affinity, room) -> [JobRecord]  the next fair job for a worker holding these models, and the
                                              queued jobs that may share its pipeline call (batch_key), in fair order
    front.run(jobs, seat, make)               inputs -> make(jobs, inputs, reports) -> store -> index -> done
    make(...) -> [Made | exception]           each job's images, records and vectors, or why it has none
                                              (Cancelled, JobFailed); raises Interrupted, WorkerLost for all
    front.idle()                              housekeeping once the jobs waiting at start have run
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from PIL import Image
from pydantic import BaseModel

from engine.client.answers import Event, Progress, WorkerInfo
from engine.client.schema import DreamRequest, JobStatus
from gallery.schemas import ImageCreate, ImagePublic, UtcDateTime
from gallery.stacks import digest


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


def batch_key(req: DreamRequest) -> str | None:
    """Jobs with the same key may share one pipeline call (cross-user batching); None: this job runs alone.

    Shared: the model, size, steps, sampler, guidance and what else the whole call uses; each image keeps its own
    prompt, negative and seed. Alone: anything with its own input pictures or passes (img2img, variations, hires,
    refiner, ControlNets, references), and A1111's jobs, whose interrupt keeps one call's images as far as they got.
    The worker still checks what the key cannot see (LoRA tags, prompt lengths) and runs a job alone when it differs.
    """
    if (req.mode != "txt2img" or req.hires is not None or req.refiner is not None or req.controls or req.references
            or req.seed_resize_from is not None or req.requester.source == "a1111"):  # fmt: skip
        return None
    shared = {"model": req.model, "width": req.width, "height": req.height, "aspect_ratio": req.aspect_ratio,
              "steps": req.steps, "cfg_scale": req.cfg_scale, "sampler": req.sampler, "clip_skip": req.clip_skip,
              "tiling": req.tiling, "eta": req.eta, "negative": bool(req.drawn_negative_prompt)}  # fmt: skip
    return digest(shared)


def images_per_call(req: DreamRequest, *, batch_max: int, batch_pixels: int | None, native_size: int | None) -> int:
    """How many images a pipeline call that starts with this job may make: `batch_max`, or fewer when its size
    (the model's native size when the request names none) would pass the pixel budget."""
    if batch_max <= 1 or batch_key(req) is None:
        return 1
    width, height = req.width or native_size, req.height or native_size
    if batch_pixels is None or width is None or height is None:
        return batch_max
    return max(1, min(batch_max, batch_pixels // (width * height)))


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


Report = Callable[[Event], None]
# One call for several jobs (one, without batching): each job's Made, or the exception that says why it has none
# (Cancelled, JobFailed); Interrupted and WorkerLost are raised, and concern every job of the call.
MakeFn = Callable[[Sequence[JobRecord], Sequence[Resolved], Sequence[Report]], list["Made | Exception"]]


class Seat:
    """One worker as the front sees it: the jobs it runs (several when they share a call), how far they are,
    what it loads and holds."""

    def __init__(self, worker_id: str, node: str, device: str, pid: int) -> None:
        self.id, self.node, self.device, self.pid = worker_id, node, device, pid
        self.jobs: list[str] = []
        self.progress: tuple[int, int] = (0, 0)
        self.previews: dict[str, str] = {}  # each running job's latest preview, as a data: URL
        self.loading: str | None = None
        self.loaded: list[str] = []
        self.affinity: Affinity | None = None  # what the queue may match to spare it a reload
        self.cache: dict[str, float | None] = {}  # its model cache after its last job (Made.cache)
        self.alive = True

    @property
    def job(self) -> str | None:
        """The first job of its call (the fair next job it claimed)."""
        return self.jobs[0] if self.jobs else None

    def start(self, jobs: Sequence[JobRecord]) -> None:
        self.jobs, self.previews, self.loading = [job.id for job in jobs], {}, None
        self.progress = (0, jobs[0].request.steps)

    def saw(self, event: Event) -> None:
        if event.type == "loading":
            self.loading = event.model
        elif event.type == "step":
            self.loading = None
            self.progress = (event.step or 0, event.total or 0)
            if event.preview is not None and event.job is not None:
                self.previews[event.job] = event.preview

    def end(self) -> None:
        self.jobs, self.progress, self.previews, self.loading = [], (0, 0), {}, None

    def info(self) -> WorkerInfo:
        return WorkerInfo(id=self.id, node=self.node, pid=self.pid, device=self.device, job=self.job,
                          jobs=list(self.jobs), loading=self.loading, loaded=list(self.loaded), alive=self.alive,
                          cache=dict(self.cache))  # fmt: skip


class Seats:
    """The Runner's read side over a set of seats (what health, /v1/queue and A1111's progress ask)."""

    seats: list[Seat]

    def _seat_of(self, job_id: str) -> Seat | None:
        return next((seat for seat in self.seats if job_id in seat.jobs), None)

    def progress_of(self, job_id: str) -> Progress | None:
        seat = self._seat_of(job_id)
        return None if seat is None else Progress(step=seat.progress[0], total=seat.progress[1])

    def loading_for(self, job_id: str) -> str | None:
        seat = self._seat_of(job_id)
        return None if seat is None else seat.loading

    def preview_of(self, job_id: str) -> str | None:
        """The running job's latest step preview (a data: URL), if it asked for previews."""
        seat = self._seat_of(job_id)
        return None if seat is None else seat.previews.get(job_id)

    def running(self) -> list[str]:
        return [job for seat in self.seats for job in seat.jobs]

    def workers(self) -> list[WorkerInfo]:
        return [seat.info() for seat in self.seats]


class JobFront(Protocol):
    """The front as a worker sees it (engine.server.front.Front)."""

    def claim(self, affinity: Affinity | None, room: Callable[[JobRecord], int] = lambda job: 1) -> list[JobRecord]:
        """The next job in fair order for a worker holding `affinity`'s models, then, in fair order, queued jobs that
        may share its call, while their images fit `room(first)`; [] when none is queued."""

    def run(self, jobs: Sequence[JobRecord], seat: Seat, make: MakeFn) -> None:
        """Claimed jobs that share a call, start to end (raises WorkerLost: the caller decides where they go)."""

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
        """The jobs running now (several on a worker whose call they share)."""

    def workers(self) -> list[WorkerInfo]:
        """Every worker: where it runs, what it runs and holds."""

    def annotate(self, picture: Image.Image, type: str) -> Image.Image:
        """A ControlNet annotator's map that needs weights (depth, openpose, lineart), made where the models run
        (engine.device.annotators); InputError when it cannot be."""
