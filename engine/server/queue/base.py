"""What the engine needs from a job queue, independent of storage.

A job's life, and the only ways it moves (each a named transition):

    queued --claim--> running --complete--> done
       |                 |----fail-------> failed
       |                 |----cancel-----> cancelled
       |                 '----requeue----> queued     (shutdown or a dead worker: it runs again)
       |----cancel-----> cancelled
       '----fail-------> failed                       (refused before it ran)

Terminal states (done, failed, cancelled) are never left. Every transition
announces itself to the queue's `EventSink`: the job's own event, and the new
positions of the jobs someone is watching.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable

from engine.client.schema import DreamRequest, JobStatus
from engine.client.states import TERMINAL as TERMINAL
from engine.device.runner import Affinity as Affinity
from engine.device.runner import JobRecord as JobRecord
from engine.server.events import EventSink


class QueueError(Exception):
    """Root of the queue's exceptions.

    QueueError
    ├── JobNotFound
    └── TooManyQueued
    """


class JobNotFound(QueueError):
    pass


class TooManyQueued(QueueError):
    pass


class JobQueue(ABC):
    """A persistent queue that serves users round-robin and announces its own state changes."""

    events: EventSink

    @abstractmethod
    def put(self, request: DreamRequest, *, seed: int) -> tuple[JobRecord, int]:
        """Persist a new job; return it and its queue position (raises TooManyQueued)."""

    @abstractmethod
    def put_found(self, request: DreamRequest, *, seed: int, image_ids: list[int]) -> JobRecord:
        """Persist a job answered at once from the gallery: done, pointing at these images, never queued."""

    @abstractmethod
    def claim(self, affinity: Affinity | None = None) -> JobRecord | None:
        """queued -> running for the next job in fair order; None when the queue is empty.

        With `affinity`, a job on a loaded model may go before the fair next job, which is passed
        over this way a bounded number of times (the queue's `model_affinity`)."""

    @abstractmethod
    def claim_batch(self, affinity: Affinity | None, room: Callable[[JobRecord], int]) -> list[JobRecord]:
        """`claim`, then queued -> running for the jobs next in fair order while they may share its pipeline call
        (the same batch key) and their images fit `room(first)`: no job is passed over, none is split. [] when
        the queue is empty."""

    @abstractmethod
    def complete(self, job_id: str) -> bool:
        """running -> done. False (and nothing changes) if the job is not running."""

    @abstractmethod
    def fail(self, job_id: str, error: str) -> bool:
        """queued or running -> failed, with one sentence for the user."""

    @abstractmethod
    def cancel(self, job_id: str) -> JobRecord:
        """queued or running -> cancelled, recorded at once (a running job's worker stops at its next step).

        Returns the job as it is now; a job already finished is returned unchanged. Raises JobNotFound."""

    @abstractmethod
    def requeue(self, job_id: str) -> bool:
        """running -> queued: it runs again later (the engine is stopping, or its worker died)."""

    @abstractmethod
    def get(self, job_id: str) -> JobRecord:
        """One job (raises JobNotFound)."""

    @abstractmethod
    def jobs(self, *statuses: JobStatus) -> list[JobRecord]:
        """Jobs in the given states, oldest first."""

    @abstractmethod
    def count(self, status: JobStatus) -> int:
        """How many jobs are in `status`."""

    @abstractmethod
    def depth_by_priority(self) -> dict[int, int]:
        """How many jobs wait at each priority."""

    @abstractmethod
    def positions(self) -> dict[str, int]:
        """Queued job id -> position (0 runs next), in the order claim() will serve them."""

    @abstractmethod
    def position(self, job_id: str) -> int | None:
        """One queued job's position without computing everyone's; None if it is not queued."""

    @abstractmethod
    def requeue_interrupted(self) -> int:
        """At start-up: put jobs left running by a dead engine back in the queue; return how many."""
