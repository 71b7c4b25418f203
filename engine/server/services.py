"""What the routes need, built by the composition root (engine.server.app) and passed in explicitly.

The light half (gallery rows, queue, jobs, shelf, events) is there from the first request; the
`Backend` (torch, the workers, CLIP, the vector index) arrives when `load` has built it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Annotated

from fastapi import Depends, Request

from engine.client.settings import Settings
from engine.device.runner import Runner
from engine.device.shelf import Shelf, default_model_name
from engine.server.errors import EngineStarting
from engine.server.events import EventHub
from engine.server.inputs import Inputs
from engine.server.jobs import JobService, LateRunner
from engine.server.metrics import Metrics
from engine.server.prompting import Prompting
from engine.server.queue import JobQueue
from gallery.boards import Organiser
from gallery.store import ImageStore

if TYPE_CHECKING:  # the backend's modules import torch and LanceDB: the API answers before they are loaded
    from engine.server.front import Front
    from gallery.describe import Describer
    from gallery.indexer import Indexer
    from gallery.search import GallerySearch
    from gallery.upkeep import Upkeep


@dataclass
class Backend:
    """The heavy half of the engine, built on a thread once the socket answers: torch, the workers,
    CLIP and the vector index."""

    device: str  # the device in words: one GPU, or the Ray pool
    workers: Runner  # the local worker thread, or Ray workers
    front: Front  # what the workers claim jobs from and hand their images to
    search: GallerySearch
    describer: Callable[[], Describer]  # built on first use: it embeds its whole vocabulary once
    indexer: Indexer
    upkeep: Upkeep


@dataclass
class Services:
    """The light half, and the backend once loaded."""

    settings: Settings
    jobs: JobService
    queue: JobQueue
    store: ImageStore
    inputs: Inputs
    shelf: Shelf
    hub: EventHub
    runner: LateRunner  # the job service's runner: jobs queue until the backend's workers attach
    prompting: Prompting
    organiser: Organiser
    metrics: Metrics = field(default_factory=Metrics)
    load: Callable[[Services], Backend] | None = None
    backend: Backend | None = None
    failed: str | None = None

    def ready(self) -> Backend:
        if self.backend is None:
            raise EngineStarting(self.failed or "the engine is starting (loading torch, the model and the search "
                                 "index); try again in a few seconds")  # fmt: skip
        return self.backend

    def serve(self, workers: Runner, front: Front) -> None:
        """The workers take jobs from now on (the local worker: before CLIP and the search index have loaded)."""
        if self.runner.attached:
            return
        self.runner.attach(workers)
        workers.serve(front)

    def attach(self, backend: Backend) -> None:
        """The backend is built: search answers, and jobs queued meanwhile start now if they have not."""
        self.backend = backend
        self.serve(backend.workers, backend.front)

    def default_model(self) -> str:
        return default_model_name(self.settings.model)

    @property
    def workers(self) -> Runner:
        return self.ready().workers

    @property
    def search(self) -> GallerySearch:
        return self.ready().search

    @property
    def describer(self) -> Describer:
        return self.ready().describer()

    @property
    def indexer(self) -> Indexer:
        return self.ready().indexer

    @property
    def upkeep(self) -> Upkeep:
        return self.ready().upkeep


def _services(request: Request) -> Services:
    return request.app.state.services  # Starlette's app.state is untyped


ServicesDep = Annotated[Services, Depends(_services)]
