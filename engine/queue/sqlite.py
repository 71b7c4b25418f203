"""SqliteJobQueue: the queue as rows of the gallery database's `jobs` table."""

from __future__ import annotations

import threading
import uuid
from datetime import UTC, datetime

from sqlalchemy import Engine, func, select, text, update
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from engine.queue.base import JobNotFound, JobQueue, JobRecord, QueueError, TooManyQueued
from engine.schema import DreamRequest, JobStatus
from gallery.models import JobRow

# Round-robin across users: serve the user whose most recent claim is oldest
# (never-served users, NULL, sort first), so one user's burst of jobs cannot
# starve anyone who arrives later. Priority overrides fairness; ties go to the
# oldest job. The correlated MAX is answered from ix_jobs_queue_key_claim_seq
# (a test checks the plan), so dequeue stays cheap with a long history.
FAIR_DEQUEUE_SQL = text(
    """
    SELECT j.id FROM jobs AS j
    WHERE j.status = 'queued'
    ORDER BY j.priority DESC,
             (SELECT MAX(c.claim_seq) FROM jobs AS c WHERE c.queue_key = j.queue_key) ASC,
             j.seq ASC
    LIMIT 1
    """
)


def _record(row: JobRow) -> JobRecord:
    return JobRecord(
        id=row.id,
        status=row.status,  # type: ignore[arg-type]
        request=DreamRequest.model_validate(row.request),
        seed=row.seed,
        queue_key=row.queue_key,
        priority=row.priority,
        error=row.error,
        created_at=row.created_at,
        started_at=row.started_at,
        finished_at=row.finished_at,
    )


class SqliteJobQueue(JobQueue):
    """JobQueue on SQLite. One process (the engine) owns it."""

    def __init__(self, engine: Engine, *, max_queued_per_user: int = 20) -> None:
        self.engine = engine
        self.max_queued_per_user = max_queued_per_user
        # Select-then-claim and count-then-insert must not interleave between
        # the HTTP thread and the worker thread.
        self._lock = threading.Lock()

    def put(self, request: DreamRequest, *, seed: int) -> tuple[JobRecord, int]:
        key = request.requester.queue_key
        with self._lock:
            try:
                with Session(self.engine) as s, s.begin():
                    queued = s.scalar(
                        select(func.count())
                        .select_from(JobRow)
                        .where(JobRow.queue_key == key, JobRow.status == "queued")
                    )
                    if queued >= self.max_queued_per_user:
                        raise TooManyQueued(
                            f"too many queued jobs: you already have {queued} waiting "
                            f"(limit {self.max_queued_per_user}); wait for some to finish or cancel one"
                        )
                    r = request.requester
                    row = JobRow(
                        id=uuid.uuid4().hex,
                        status="queued",
                        queue_key=key,
                        priority=request.priority,
                        request=request.model_dump(mode="json"),
                        seed=seed,
                        source=r.source,
                        user=r.user,
                        guild=r.guild,
                        channel=r.channel,
                        created_at=datetime.now(UTC),
                    )
                    s.add(row)
                    s.flush()
                    record = _record(row)
            except SQLAlchemyError as e:
                raise QueueError(f"could not queue the job: {e}") from e
            return record, self.positions()[record.id]

    def claim(self) -> JobRecord | None:
        with self._lock, Session(self.engine) as s, s.begin():
            job_id = s.execute(FAIR_DEQUEUE_SQL).scalar()
            if job_id is None:
                return None
            next_seq = (s.scalar(select(func.max(JobRow.claim_seq))) or 0) + 1
            row = s.scalars(select(JobRow).where(JobRow.id == job_id)).one()
            row.status = "running"
            row.claim_seq = next_seq
            row.started_at = datetime.now(UTC)
            s.flush()
            return _record(row)

    def finish(self, job_id: str, status: JobStatus, error: str | None = None) -> None:
        with Session(self.engine) as s, s.begin():
            values: dict = {"status": status, "error": error}
            if status != "queued":
                values["finished_at"] = datetime.now(UTC)
            s.execute(update(JobRow).where(JobRow.id == job_id).values(**values))

    def cancel(self, job_id: str) -> JobRecord:
        with self._lock, Session(self.engine) as s, s.begin():
            row = s.scalars(select(JobRow).where(JobRow.id == job_id)).one_or_none()
            if row is None:
                raise JobNotFound(f"no job {job_id}")
            if row.status == "queued":
                row.status = "cancelled"
                row.finished_at = datetime.now(UTC)
            return _record(row)

    def get(self, job_id: str) -> JobRecord:
        with Session(self.engine) as s:
            row = s.scalars(select(JobRow).where(JobRow.id == job_id)).one_or_none()
            if row is None:
                raise JobNotFound(f"no job {job_id}")
            return _record(row)

    def jobs(self, *statuses: JobStatus) -> list[JobRecord]:
        with Session(self.engine) as s:
            rows = s.scalars(select(JobRow).where(JobRow.status.in_(statuses)).order_by(JobRow.seq))
            return [_record(r) for r in rows]

    def positions(self) -> dict[str, int]:
        with Session(self.engine) as s:
            queued = s.execute(
                select(JobRow.id, JobRow.queue_key, JobRow.priority, JobRow.seq).where(JobRow.status == "queued")
            ).all()
            last = dict(
                s.execute(
                    select(JobRow.queue_key, func.max(JobRow.claim_seq))
                    .where(JobRow.queue_key.in_({q.queue_key for q in queued}))
                    .group_by(JobRow.queue_key)
                ).all()
            )
        return fair_order(queued, last)

    def requeue_interrupted(self) -> int:
        with Session(self.engine) as s, s.begin():
            result = s.execute(update(JobRow).where(JobRow.status == "running").values(status="queued"))
            return result.rowcount or 0


def fair_order(queued: list, last_claim: dict[str, int | None]) -> dict[str, int]:
    """Replay FAIR_DEQUEUE_SQL over `queued` rows to tell each job's position."""
    last = {k: (-1 if v is None else v) for k, v in last_claim.items()}
    pending = list(queued)
    order: dict[str, int] = {}
    tick = max(last.values(), default=0) + 1
    while pending:
        best = min(pending, key=lambda q: (-q.priority, last.get(q.queue_key, -1), q.seq))
        order[best.id] = len(order)
        last[best.queue_key] = tick
        tick += 1
        pending.remove(best)
    return order
