"""The job queue: a JobQueue interface and its SQLite implementation."""

from engine.queue.base import Affinity, JobNotFound, JobQueue, JobRecord, QueueError, TooManyQueued
from engine.queue.sqlite import FAIR_DEQUEUE_SQL, SqliteJobQueue

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
