"""GPU workers as Ray actors behind the one engine front (setting `backend = "ray"`).

The front stays the one place of truth: the fair queue, job states, gallery writes and the
API. Each worker is a Ray actor (`MakerActor`) with its own pipeline cache and CLIP model on
its own device; it runs the same `Maker` as the local worker thread and streams a job back
as it goes: `loading` and `step` events (with previews), then the PNG bytes, records and CLIP
vectors, which the front stores (`Front.run`).

On the front, one dispatcher thread per worker claims the next fair job whenever its worker
is free, preferring jobs on models that worker holds. A worker that dies mid-job (killed,
node lost, out of memory) is restarted by Ray; its job goes back to the queue and runs on
whichever worker is free, at most `job_retries` times, then fails with a sentence. The
gallery write happens once, on the front, after a job's last step: a job is never stored twice.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import queue as queue_module
import socket
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
from PIL import Image

from engine.client.errors import InputError
from engine.client.settings import Settings
from engine.device.runner import (
    Affinity,
    Cancelled,
    Interrupted,
    JobFailed,
    JobFront,
    JobRecord,
    Made,
    Report,
    Resolved,
    Seat,
    Seats,
    WorkerLost,
    images_per_call,
)
from engine.device.shelf import default_model_name
from gallery.embeddings import Embedder

log = logging.getLogger(__name__)

WAIT_S = 1.0  # an idle dispatcher looks at the queue at least this often


class MakerActor:
    """One worker: a device, its pipeline cache, its CLIP model. Runs as a Ray actor process.

    Threaded (max_concurrency > 1), so `cancel`, `stop`, `info` and search embeddings are
    answered while `make` runs; the front sends one job at a time.
    """

    def __init__(self, settings: Settings, worker_id: str, threads: int | None) -> None:
        logging.basicConfig(level=settings.log_level, format=f"%(levelname)s {worker_id} %(name)s: %(message)s")
        os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(settings.home / "inductor"))
        import torch

        from engine.device.annotators import Annotators
        from engine.device.device import Device
        from engine.device.maker import build_maker
        from engine.device.shelf import Shelf
        from gallery.embeddings import OpenClipEmbedder

        if threads is not None:
            torch.set_num_threads(threads)
        self.worker_id = worker_id
        self.device = Device(settings.device)
        shelf = Shelf(settings.shelf_dir, hash_cache=settings.home / "model-hashes.json")
        self.clip = OpenClipEmbedder(settings.clip_model, settings.clip_pretrained,
                                     device=str(self.device.torch_device))  # fmt: skip
        self.maker = build_maker(settings, device=self.device, shelf=shelf, worker_id=worker_id, embedder=self.clip)
        self.pipelines = self.maker.pipelines
        self.annotators = Annotators(settings.shelf_dir / "annotators", self.device.torch_device)
        self._torch_lock = threading.Lock()  # one torch call at a time in this process (see Worker.call)
        # Every job's torch work on one long-lived thread: torch's intra-op pool belongs to the thread that
        # uses it, and a new thread per job rebuilt it each time (10-30 % slower with several torch threads).
        self._torch_thread = ThreadPoolExecutor(1, thread_name_prefix=f"torch-{worker_id}")

    def info(self) -> dict:
        return {"id": self.worker_id, "node": socket.gethostname(), "pid": os.getpid(),
                "device": self.device.describe(), "loaded": self.pipelines.loaded(),
                "affinity": self.pipelines.affinity(), "batch_pixels": self.maker.max_batch_pixels,
                "native": self.pipelines.native_sizes(),
                "clip": (self.clip.model_id, self.clip.dim,
                                                                self.clip.relevance_floor)}  # fmt: skip

    def warm(self) -> dict:
        """Load the default model before the first job asks (a failure is reported again per job)."""
        try:
            with self._torch_lock:
                self.pipelines.model(None)
        except Exception as e:
            log.error("%s could not preload the default model: %s", self.worker_id, e)
        return self.info()

    def make(self, jobs: list[JobRecord], inputs: list[Resolved]) -> Iterator[tuple[str, Any]]:
        """Stream ("event", Event)... then ("made", [each job's ("made", Made) | ("cancelled", None) |
        ("failed", sentence)]), ("failed", sentence) for all, or ("interrupted", None): the jobs of one call
        (cross-user batching), as the local worker runs them (Maker.run_batch)."""
        out: queue_module.SimpleQueue = queue_module.SimpleQueue()

        def work() -> None:
            try:
                with self._torch_lock:
                    report = [lambda event: out.put(("event", event))] * len(jobs)
                    outcomes = self.maker.run_batch(jobs, inputs, report)
                out.put(("made", [("made", o) if isinstance(o, Made) else ("cancelled", None)
                                  if isinstance(o, Cancelled) else ("failed", str(o)) for o in outcomes]))  # fmt: skip
            except Interrupted:
                out.put(("interrupted", None))
            except BaseException as e:  # never leave the stream waiting: every job of the call fails with it
                from engine.device.maker import failure_sentence

                log.exception("%s: jobs %s failed", self.worker_id, ", ".join(job.id for job in jobs))
                out.put(("failed", failure_sentence(e)))

        self._torch_thread.submit(work)
        while True:  # every yield is a Ray object: the maker already sends step events at most every 0.1 s
            kind, value = out.get()
            yield kind, value
            if kind != "event":
                return

    def cancel(self, job_id: str) -> None:
        self.maker.cancel(job_id)

    def finish(self, job_id: str) -> None:
        self.maker.finish(job_id)

    def stop(self) -> None:
        self.maker.stop()

    def embed_images(self, images: list[Image.Image]) -> np.ndarray:
        # on the torch thread, after the job it may follow: never two torch calls at once
        return self._torch_thread.submit(self._embed_images, images).result()

    def _embed_images(self, images: list[Image.Image]) -> np.ndarray:
        with self._torch_lock:
            return self.clip.embed_images(images)

    def embed_texts(self, texts: list[str]) -> np.ndarray:
        return self.clip.embed_texts(texts)  # tiny; it may run beside a job's steps

    def annotate(self, picture: Image.Image, type: str) -> Image.Image | str:
        """The map, or the sentence that says why there is none (an InputError stays the user's mistake)."""
        return self._torch_thread.submit(self._annotate, picture, type).result()

    def _annotate(self, picture: Image.Image, type: str) -> Image.Image | str:
        with self._torch_lock:
            try:
                return self.annotators.annotate(picture, type)
            except InputError as e:
                return str(e)


class RayWorkers(Seats):
    """The Ray backend as the engine sees it: the same Runner as the local worker thread."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._front: JobFront | None = None
        self.count = settings.workers
        self.seats: list[Seat] = []
        self.actors: list[Any] = []
        self._deaths: dict[str, int] = {}  # job id -> how many workers died running it
        self._wake = threading.Condition()
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []
        self._started_ray = False
        self._turn = itertools.count()
        self._clip: tuple[str, int, float] = ("", 0, 0.0)  # the workers' CLIP model: id, dim, relevance floor
        self._budgets: list[int | None] = []  # each worker's pixels per call (engine.device.runner.images_per_call)
        self._native: list[dict[str, int]] = []  # each worker's loaded models' native sizes, at start

    # --- start and stop -------------------------------------------------------------------
    def start(self, say: Callable[[str], None] = log.info) -> None:
        """Join (or start) the Ray cluster, start the workers and wait until each has loaded the default model."""
        # Ray's C++ failure-signal handler turns the engine's own clean SIGTERM stop into an abort at
        # exit (ray-project/ray#37288); the engine handles its signals itself. Read when ray is imported.
        os.environ.setdefault("RAY_DISABLE_FAILURE_SIGNAL_HANDLER", "1")
        import ray

        threads = self.settings.worker_threads
        if not ray.is_initialized():
            kwargs: dict[str, Any] = {"namespace": "dreamhall", "include_dashboard": False,
                                      "configure_logging": False}  # fmt: skip
            if self.settings.ray_address is None:  # a local instance: room for every CPU worker
                cpus = os.cpu_count() or 1
                threads = threads or max(1, cpus // self.count)
                kwargs["num_cpus"] = max(cpus, threads * self.count)
            ray.init(address=self.settings.ray_address, **kwargs)
            self._started_ray = True
        gpus = int(ray.cluster_resources().get("GPU", 0))
        if gpus and gpus < self.count:
            log.warning("%d workers asked for and the cluster has %d GPU(s): %d wait for a GPU",
                        self.count, gpus, self.count - gpus)  # fmt: skip
        options: dict[str, Any] = {"max_restarts": -1, "max_task_retries": 0, "max_concurrency": 4}
        if gpus:
            options |= {"num_gpus": 1, "num_cpus": 1}
        else:
            threads = threads or max(1, int(ray.cluster_resources().get("CPU", 1)) // self.count)
            options |= {"num_cpus": threads}
        actor_class = ray.remote(MakerActor).options(**options)
        ids = [f"ray-{i}" for i in range(self.count)]
        self.actors = [actor_class.remote(self.settings, worker_id, None if gpus else threads) for worker_id in ids]
        say(f"starting {self.count} Ray worker(s) ({'1 GPU' if gpus else f'{threads} CPU thread(s)'} each)")
        try:
            infos = ray.get([actor.warm.remote() for actor in self.actors])
        except Exception:
            self.stop()
            raise
        self._clip = infos[0]["clip"]
        self._budgets = [info["batch_pixels"] for info in infos]
        self._native = [info["native"] for info in infos]
        for info in infos:
            seat = Seat(info["id"], node=info["node"], device=info["device"], pid=info["pid"])
            seat.loaded, seat.affinity = info["loaded"], info["affinity"]
            self.seats.append(seat)
        log.info("Ray workers up: %s", ", ".join(f"{s.id} on {s.node} ({s.device})" for s in self.seats))

    def describe(self) -> str:
        devices = sorted({seat.device for seat in self.seats})
        return f"ray: {len(self.seats)} worker(s) on {len({s.node for s in self.seats})} node(s) ({', '.join(devices)})"

    def embedder(self) -> Embedder:
        """CLIP on the workers: search and the index repair embed there; the front loads no model."""
        model_id, dim, floor = self._clip
        return ActorEmbedder(self, model_id, dim, floor)

    def serve(self, front: JobFront) -> None:
        """Start one dispatcher per worker, claiming jobs from `front`."""
        self._front = front
        for i in range(len(self.seats)):
            thread = threading.Thread(target=self._dispatch, args=(i,), name=f"dreamhall-{self.seats[i].id}",
                                      daemon=True)  # fmt: skip
            thread.start()
            self._threads.append(thread)
        threading.Thread(target=front.idle, name="dreamhall-reconcile", daemon=True).start()

    def stop(self, timeout: float = 30.0) -> None:
        """Stop every worker after its current step (its job goes back to the queue), then leave Ray."""
        import ray

        self._stopping.set()
        self.wake()
        for actor in self.actors:
            with contextlib.suppress(Exception):  # a dead actor has nothing to stop
                actor.stop.remote()
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        if self._started_ray:
            ray.shutdown()

    # --- the Runner -----------------------------------------------------------------------
    def wake(self) -> None:
        with self._wake:
            self._wake.notify_all()

    def cancel(self, job_id: str) -> None:
        for seat, actor in zip(self.seats, self.actors):
            if job_id in seat.jobs:
                actor.cancel.remote(job_id)

    def finish(self, job_id: str) -> None:
        for seat, actor in zip(self.seats, self.actors):
            if job_id in seat.jobs:
                actor.finish.remote(job_id)

    # --- the dispatchers --------------------------------------------------------------------
    def _dispatch(self, i: int) -> None:
        front, seat, actor = self._front, self.seats[i], self.actors[i]
        assert front is not None
        default = default_model_name(self.settings.model)
        while not self._stopping.is_set():
            affinity = seat.affinity or Affinity(loaded=frozenset(), default_model=default)
            jobs = front.claim(affinity, lambda job: self._room(i, job)) if seat.alive else []
            if not jobs:
                with self._wake:
                    self._wake.wait(WAIT_S)
                if not seat.alive:
                    self._revive(seat, actor)
                continue
            try:
                front.run(jobs, seat, lambda jobs, inputs, reports: self._make(actor, jobs, inputs, reports))
            except WorkerLost as e:
                for job in jobs:
                    self._lost(job, seat, e)

    def _room(self, i: int, job: JobRecord) -> int:
        """Maker.room, from the front: the worker's pixel budget, and the model's native size when it holds it."""
        budget, native = self._budgets[i], self._native[i].get(job.request.model or default_model_name(
            self.settings.model))  # fmt: skip
        return images_per_call(job.request, batch_max=self.settings.batch_max, batch_pixels=budget, native_size=native)

    def _make(self, actor: Any, jobs: Sequence[JobRecord], inputs: Sequence[Resolved],
              reports: Sequence[Report]) -> list[Made | Exception]:  # fmt: skip
        import ray
        from ray.exceptions import RayActorError

        report_of = {job.id: report for job, report in zip(jobs, reports)}
        try:
            for ref in actor.make.options(num_returns="streaming").remote(list(jobs), list(inputs)):
                kind, value = ray.get(ref)
                if kind == "event":
                    report_of[value.job](value)
                elif kind == "made":
                    for job in jobs:
                        self._deaths.pop(job.id, None)
                    return [made if what == "made" else Cancelled() if what == "cancelled" else JobFailed(made)
                            for what, made in value]  # fmt: skip
                elif kind == "failed":
                    return [JobFailed(value) for _ in jobs]
                else:
                    raise Interrupted()
        except RayActorError as e:
            raise WorkerLost(str(e).splitlines()[0] if str(e) else type(e).__name__) from e
        raise WorkerLost("the worker ended the job without a result")

    def _lost(self, job: JobRecord, seat: Seat, e: WorkerLost) -> None:
        """The worker died mid-job: the job goes back to the queue (bounded), the worker is restarted by Ray."""
        front = self._front
        assert front is not None
        seat.alive = False
        deaths = self._deaths[job.id] = self._deaths.get(job.id, 0) + 1
        if self._stopping.is_set() or deaths <= self.settings.job_retries:
            front.requeue(job.id)
            log.warning("worker %s died running job %s (%s); the job goes back to the queue (attempt %d of %d)",
                        seat.id, job.id, e, deaths + 1, self.settings.job_retries + 1)  # fmt: skip
            self.wake()
        else:
            self._deaths.pop(job.id, None)
            front.fail(job.id, f"the worker running this job died {deaths} times (the last on {seat.id}: "
                                  "out of memory or killed?); it was not tried again")  # fmt: skip
            log.error("job %s failed: %d workers died running it", job.id, deaths)

    def _revive(self, seat: Seat, actor: Any) -> None:
        """Wait for Ray to restart a dead worker (it reloads its default model)."""
        import ray
        from ray.exceptions import RayActorError

        try:
            info = ray.get(actor.warm.remote(), timeout=60)
        except (RayActorError, ray.exceptions.GetTimeoutError) as e:
            log.warning("worker %s is not back yet: %s", seat.id, str(e).splitlines()[0] if str(e) else e)
            return
        seat.loaded, seat.affinity, seat.pid, seat.alive = info["loaded"], info["affinity"], info["pid"], True
        log.info("worker %s is back (pid %s)", seat.id, info["pid"])

    def next_actor(self) -> Any:
        """The workers in turns, skipping those Ray is restarting (all of them, if none is up)."""
        actors = [actor for seat, actor in zip(self.seats, self.actors) if seat.alive] or self.actors
        return actors[next(self._turn) % len(actors)]

    def annotate(self, picture: Image.Image, type: str) -> Image.Image:
        import ray

        out = ray.get(self.next_actor().annotate.remote(picture, type))
        if isinstance(out, str):
            raise InputError(out)
        return out


class ActorEmbedder(Embedder):
    """Embeds on the Ray workers' devices (in turns), with the CLIP model they all load."""

    def __init__(self, workers: RayWorkers, model_id: str, dim: int, relevance_floor: float) -> None:
        self.workers = workers
        self.model_id, self.dim, self.relevance_floor = model_id, dim, relevance_floor

    def embed_images(self, images: list[Image.Image]) -> np.ndarray:
        import ray

        return ray.get(self.workers.next_actor().embed_images.remote(images))

    def embed_texts(self, texts: list[str]) -> np.ndarray:
        import ray

        return ray.get(self.workers.next_actor().embed_texts.remote(texts))
