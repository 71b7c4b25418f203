"""What the engine needs from a job queue, independent of storage."""

from __future__ import annotations

from abc import ABC, abstractmethod
from datetime import datetime

from pydantic import BaseModel

from engine.schema import DreamRequest, JobStatus


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


class JobRecord(BaseModel):
    """A job as the queue stores it."""

    id: str
    status: JobStatus
    request: DreamRequest
    seed: int
    queue_key: str
    priority: int
    error: str | None = None
    created_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None


class JobQueue(ABC):
    """A persistent queue that serves users round-robin."""

    @abstractmethod
    def put(self, request: DreamRequest, *, seed: int) -> tuple[JobRecord, int]:
        """Persist a new job; return it and its queue position (raises TooManyQueued)."""

    @abstractmethod
    def claim(self) -> JobRecord | None:
        """Mark the next job (fair order) running and return it; None when the queue is empty."""

    @abstractmethod
    def finish(self, job_id: str, status: JobStatus, error: str | None = None) -> None:
        """Record a running job's end: done, failed, cancelled, or queued again."""

    @abstractmethod
    def cancel(self, job_id: str) -> JobRecord:
        """Cancel a queued job at once; a running job is returned unchanged for the worker to stop."""

    @abstractmethod
    def get(self, job_id: str) -> JobRecord:
        """One job (raises JobNotFound)."""

    @abstractmethod
    def jobs(self, *statuses: JobStatus) -> list[JobRecord]:
        """Jobs in the given states, oldest first."""

    @abstractmethod
    def positions(self) -> dict[str, int]:
        """Queued job id -> position (0 runs next), in the order claim() will serve them."""

    @abstractmethod
    def requeue_interrupted(self) -> int:
        """At start-up: put jobs left running by a dead engine back in the queue; return how many."""
