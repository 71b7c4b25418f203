"""SqliteJobQueue: the queue as rows of the gallery database's `jobs` table."""

from __future__ import annotations

import threading
import uuid
from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import Engine, bindparam, func, select, text, update
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from engine.events import EventSink, NullSink
from engine.queue.base import TERMINAL, Affinity, JobNotFound, JobQueue, JobRecord, QueueError, TooManyQueued
from engine.schema import DreamRequest, Event, JobStatus
from gallery.models import JobRow

# Round-robin across users: serve the user whose most recent claim is oldest
# (never-served users, NULL, sort first), so one user's burst of jobs cannot
# starve anyone who arrives later. Priority overrides fairness; ties go to the
# oldest job. The correlated MAX is answered from ix_jobs_queue_key_claim_seq
# (a test checks the plan), so dequeue stays cheap with a long history.
_FAIR_ORDER = """
    ORDER BY j.priority DESC,
             (SELECT MAX(c.claim_seq) FROM jobs AS c WHERE c.queue_key = j.queue_key) ASC,
             j.seq ASC
    LIMIT 1
"""
FAIR_DEQUEUE_SQL = text(
    "SELECT j.id, j.priority, json_extract(j.request, '$.model') AS model FROM jobs AS j "
    "WHERE j.status = 'queued'" + _FAIR_ORDER
)
# The first job, in the same order, whose model the worker has loaded (no higher priority skipped).
FAIR_DEQUEUE_LOADED_SQL = text(
    "SELECT j.id FROM jobs AS j WHERE j.status = 'queued' AND j.priority >= :priority "
    "AND coalesce(json_extract(j.request, '$.model'), :default_model) IN :loaded" + _FAIR_ORDER
).bindparams(bindparam("loaded", expanding=True))

# Each user's queued jobs per priority level: what positions are computed from,
# one row per (user, priority) rather than one per job.
QUEUED_GROUPS_SQL = text(
    """
    SELECT queue_key, priority, count(*) AS count, min(seq) AS first_seq
    FROM jobs WHERE status = 'queued' GROUP BY queue_key, priority
    """
)

# Where a transition may start from; the guarded setter refuses anything else,
# so a terminal state is never left (a late worker cannot undo a cancel).
ALLOWED_FROM: dict[str, frozenset[str]] = {
    "running": frozenset({"queued"}),
    "done": frozenset({"running"}),
    "failed": frozenset({"queued", "running"}),
    "cancelled": frozenset({"queued", "running"}),
    "queued": frozenset({"running"}),
}


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

    def __init__(
        self, engine: Engine, *, max_queued_per_user: int = 20, model_affinity: int = 2, events: EventSink | None = None
    ) -> None:
        self.engine = engine
        self.max_queued_per_user = max_queued_per_user
        # How many times the fair next job may be passed over by a job on an already loaded model.
        self.model_affinity = model_affinity
        self._passed_over: dict[str, int] = {}
        self.events = events or NullSink()
        # Select-then-claim and count-then-insert must not interleave between
        # the HTTP threads and the worker thread.
        self._lock = threading.Lock()

    # --- transitions ----------------------------------------------------------------------
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
            position = self.position(record.id)
        assert position is not None
        self._announce_positions()
        return record, position

    def claim(self, affinity: Affinity | None = None) -> JobRecord | None:
        with self._lock, Session(self.engine) as s, s.begin():
            head = s.execute(FAIR_DEQUEUE_SQL).one_or_none()
            if head is None:
                return None
            job_id = head.id
            if affinity is not None and not affinity.has(head.model):
                job_id = self._spare_a_reload(s, head, affinity)
            next_seq = (s.scalar(select(func.max(JobRow.claim_seq))) or 0) + 1
            row = s.scalars(select(JobRow).where(JobRow.id == job_id)).one()
            row.status = "running"
            row.claim_seq = next_seq
            row.started_at = datetime.now(UTC)
            s.flush()
            record = _record(row)
        self.events.publish(Event(type="started", job=record.id, step=0, total=record.request.steps))
        self._announce_positions()
        return record

    def _spare_a_reload(self, s: Session, head, affinity: Affinity) -> str:
        """The fair next job needs a model that is not loaded: run a loaded model's job first,
        unless `head` was passed over `model_affinity` times already."""
        if self._passed_over.get(head.id, 0) >= self.model_affinity or not affinity.loaded:
            self._passed_over.pop(head.id, None)
            return head.id
        other = s.execute(
            FAIR_DEQUEUE_LOADED_SQL,
            {"priority": head.priority, "default_model": affinity.default_model, "loaded": sorted(affinity.loaded)},
        ).scalar()
        if other is None:
            self._passed_over.pop(head.id, None)
            return head.id
        self._passed_over[head.id] = self._passed_over.get(head.id, 0) + 1
        return other

    def complete(self, job_id: str) -> bool:
        return self._set_status(job_id, "done") is not None

    def fail(self, job_id: str, error: str) -> bool:
        return self._set_status(job_id, "failed", error=error) is not None

    def cancel(self, job_id: str) -> JobRecord:
        self._set_status(job_id, "cancelled")  # a finished job stays as it is; unknown: JobNotFound
        return self.get(job_id)

    def requeue(self, job_id: str) -> bool:
        return self._set_status(job_id, "queued") is not None

    def _set_status(self, job_id: str, status: JobStatus, *, error: str | None = None) -> JobStatus | None:
        """The one setter: move `job_id` to `status` if ALLOWED_FROM permits, then announce it.

        Returns the state it left, or None when nothing changed (raises JobNotFound for an unknown id)."""
        values: dict = {"status": status, "error": error}
        if status in TERMINAL:
            values["finished_at"] = datetime.now(UTC)
            self._passed_over.pop(job_id, None)
        with self._lock, Session(self.engine) as s, s.begin():
            before = s.scalar(select(JobRow.status).where(JobRow.id == job_id))
            if before is None:
                raise JobNotFound(f"no job {job_id}")
            if before not in ALLOWED_FROM[status]:
                return None
            s.execute(update(JobRow).where(JobRow.id == job_id).values(**values))
        if status in TERMINAL:
            self.events.publish(Event(type=status, job=job_id, error=error))  # type: ignore[arg-type]
        if before == "queued" or status == "queued":
            self._announce_positions()
        return before  # type: ignore[return-value]

    def _announce_positions(self) -> None:
        """Tell the watched queued jobs where they stand now (only theirs are computed)."""
        watched = self.events.watched()
        if not watched:
            return
        for job_id, position in self.positions_of(watched).items():
            self.events.publish(Event(type="queued", job=job_id, position=position))

    # --- reading --------------------------------------------------------------------------
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

    def count(self, status: JobStatus) -> int:
        with Session(self.engine) as s:
            return s.scalar(select(func.count()).select_from(JobRow).where(JobRow.status == status)) or 0

    def positions(self) -> dict[str, int]:
        with Session(self.engine) as s:
            queued = s.execute(
                select(JobRow.id, JobRow.queue_key, JobRow.priority, JobRow.seq)
                .where(JobRow.status == "queued")
                .order_by(JobRow.seq)
            ).all()
            last = self._last_claims(s, {q.queue_key for q in queued})
        return fair_order(queued, last)

    def position(self, job_id: str) -> int | None:
        return self.positions_of({job_id}).get(job_id)

    def positions_of(self, job_ids: Iterable[str]) -> dict[str, int]:
        """Positions of a few queued jobs, from per-user counts: O(users), not O(queued jobs)."""
        with Session(self.engine) as s:
            wanted = s.execute(
                select(JobRow.id, JobRow.queue_key, JobRow.priority, JobRow.seq).where(
                    JobRow.id.in_(list(job_ids)), JobRow.status == "queued"
                )
            ).all()
            if not wanted:
                return {}
            groups = [Group(*row) for row in s.execute(QUEUED_GROUPS_SQL)]
            last = self._last_claims(s, {g.key for g in groups})
            # A job's turn among its own user's jobs at its level.
            turn = {w.id: s.scalar(_turn_sql(w.queue_key, w.priority, w.seq)) for w in wanted}
        found: dict[str, int] = {}
        for priority, offset, ranked in fair_levels(groups, last):
            for w in wanted:
                if w.priority == priority:
                    found[w.id] = offset + round_robin_position(ranked, w.queue_key, turn[w.id] or 0)
        return found

    @staticmethod
    def _last_claims(s: Session, keys: set[str]) -> dict[str, int | None]:
        if not keys:
            return {}
        return dict(
            s.execute(  # type: ignore[arg-type]
                select(JobRow.queue_key, func.max(JobRow.claim_seq))
                .where(JobRow.queue_key.in_(keys))
                .group_by(JobRow.queue_key)
            ).all()
        )

    def requeue_interrupted(self) -> int:
        with Session(self.engine) as s, s.begin():
            result = s.execute(update(JobRow).where(JobRow.status == "running").values(status="queued"))
            return result.rowcount or 0


def _turn_sql(key: str, priority: int, seq: int):
    """How many of the same user's queued jobs at the same level come before job `seq`."""
    return (
        select(func.count())
        .select_from(JobRow)
        .where(JobRow.status == "queued", JobRow.queue_key == key, JobRow.priority == priority, JobRow.seq < seq)
    )


@dataclass(frozen=True)
class Group:
    """One user's queued jobs at one priority level."""

    key: str
    priority: int
    count: int
    first_seq: int


def fair_levels(groups: list[Group], last_claim: dict[str, int | None]) -> Iterator[tuple[int, int, list[Group]]]:
    """FAIR_DEQUEUE_SQL, replayed per priority level: (priority, jobs ahead of the level, its users in turn order).

    Within a level, users take turns in the order of their last claim (never served first, then by their
    oldest job), and keep that order every round. Serving a level moves its users' last claim forward:
    the one with more jobs there is served last; equal counts keep their turn order.
    """
    last: dict[str, tuple[int, int]] = {k: (0, -1 if v is None else v) for k, v in last_claim.items()}
    by_priority: dict[int, list[Group]] = defaultdict(list)
    for g in groups:
        by_priority[g.priority].append(g)
    offset, tick = 0, 0
    for priority in sorted(by_priority, reverse=True):
        ranked = sorted(by_priority[priority], key=lambda g: (last.get(g.key, (0, -1)), g.first_seq))
        yield priority, offset, ranked
        offset += sum(g.count for g in ranked)
        for _, _, g in sorted((g.count, turn, g) for turn, g in enumerate(ranked)):
            last[g.key] = (1, tick)
            tick += 1


def round_robin_position(ranked: list[Group], key: str, turn: int) -> int:
    """Position within a level of user `key`'s job number `turn` (0-based): all earlier rounds,
    then the users ahead of it in this round."""
    ahead = sum(min(g.count, turn) for g in ranked)
    for g in ranked:
        if g.key == key:
            return ahead
        if g.count > turn:
            ahead += 1
    raise KeyError(key)


def fair_order(queued: list, last_claim: dict[str, int | None]) -> dict[str, int]:
    """Every queued job's position; `queued` rows (id, queue_key, priority, seq) in seq order. O(n log n)."""
    jobs: dict[tuple[int, str], list[str]] = defaultdict(list)
    first: dict[tuple[int, str], int] = {}
    for q in queued:
        jobs[(q.priority, q.queue_key)].append(q.id)
        first.setdefault((q.priority, q.queue_key), q.seq)
    groups = [Group(key, priority, len(ids), first[(priority, key)]) for (priority, key), ids in jobs.items()]
    order: dict[str, int] = {}
    for priority, offset, ranked in fair_levels(groups, last_claim):
        position, rnd, remaining = offset, 0, ranked
        while remaining:
            for g in remaining:
                order[jobs[(priority, g.key)][rnd]] = position
                position += 1
            rnd += 1
            remaining = [g for g in remaining if g.count > rnd]
    return order
