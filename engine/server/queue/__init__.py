"""The job queue: a JobQueue interface and its SQLite implementation."""

from engine.server.queue.base import Affinity, JobNotFound, JobQueue, JobRecord, QueueError, TooManyQueued
from engine.server.queue.sqlite import FAIR_DEQUEUE_SQL, SqliteJobQueue

__all__ = [
    "FAIR_DEQUEUE_SQL",
    "Affinity",
    "JobNotFound",
    "JobQueue",
    "JobRecord",
    "QueueError",
    "SqliteJobQueue",
    "TooManyQueued",
]
