"""SqliteJobQueue: the queue as rows of the gallery database's `jobs` table."""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import cast

from sqlalchemy import Engine, bindparam, func, insert, select, text, update
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from engine.client.answers import Event
from engine.client.errors import clip_text
from engine.client.schema import DreamRequest, JobStatus
from engine.device.runner import batch_key
from engine.server.events import EventSink, NullSink
from engine.server.queue.base import TERMINAL, Affinity, JobNotFound, JobQueue, JobRecord, QueueError, TooManyQueued
from engine.server.queue.fair import FairIndex, Queued, fair_levels, fair_order, positions_in_level
from gallery.models import JobRow

log = logging.getLogger(__name__)

# Round-robin across users: serve the user whose most recent claim is oldest
# (never-served users, NULL, sort first), so one user's burst of jobs cannot
# starve anyone who arrives later. Priority overrides fairness; ties go to the
# oldest job. This is the order's definition; the queue serves it from memory
# (FairIndex), and the tests hold the two to the same answers.
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

# A job's model without parsing its whole request (every transition reads it).
MODEL_OF_REQUEST = func.json_extract(JobRow.request, "$.model").label("model")
IMAGES_OF_REQUEST = func.json_extract(JobRow.request, "$.n").label("images")
QUEUED_SQL = text(
    "SELECT id, queue_key, priority, seq, json_extract(request, '$.model') AS model, batch_key, "
    "json_extract(request, '$.n') AS images FROM jobs WHERE status = 'queued'"
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

# The transitions' statements, built once: building one costs more than running it.
_INSERT = insert(JobRow).returning(JobRow.seq)
_CLAIM = (
    update(JobRow).where(JobRow.id == bindparam("job"))
    .values(status="running", claim_seq=bindparam("claim"), started_at=bindparam("at"))
    .returning(*JobRow.__table__.c)
)  # fmt: skip
_MOVE = {
    status: update(JobRow).where(JobRow.id == bindparam("job"), JobRow.status.in_(sorted(sources)))
    .values(status=status, error=bindparam("error"), finished_at=bindparam("at"))
    .returning(JobRow.queue_key, JobRow.priority, JobRow.seq, MODEL_OF_REQUEST, JobRow.batch_key, IMAGES_OF_REQUEST)
    for status, sources in ALLOWED_FROM.items()
}  # fmt: skip
_STATUS_OF = select(JobRow.status).where(JobRow.id == bindparam("job"))


def _queued(job_id: str, row) -> Queued:
    """A queued job as the fair index holds it, from a row of QUEUED_SQL or of a transition's RETURNING."""
    return Queued(job_id, row.queue_key, row.priority, row.seq, row.model, row.batch_key, row.images or 1)


def _record(row: JobRow) -> JobRecord:
    return JobRecord(
        id=row.id,
        status=row.status,
        request=DreamRequest.model_validate(row.request),
        seed=row.seed,
        queue_key=row.queue_key,
        priority=row.priority,
        error=row.error,
        found=row.found,
        created_at=row.created_at,
        started_at=row.started_at,
        finished_at=row.finished_at,
    )


class SqliteJobQueue(JobQueue):
    """JobQueue on SQLite. One process (the engine) owns it."""

    def __init__(
        self, engine: Engine, *, max_queued_per_user: int = 20, model_affinity: int = 2,
        events: EventSink | None = None, announce_every_s: float = 1.0,
    ) -> None:  # fmt: skip
        self.engine = engine
        self.max_queued_per_user = max_queued_per_user
        # How many times the fair next job may be passed over by a job on an already loaded model.
        self.model_affinity = model_affinity
        self._passed_over: dict[str, int] = {}
        self.events = events or NullSink()
        # Positions are announced at most this often (coalesced, on a thread of their own), so a
        # transition never waits for them; 0: at once, in the caller's thread.
        self.announce_every_s = announce_every_s
        self._announce_wanted = threading.Event()
        self._announcer: threading.Thread | None = None
        # Select-then-claim and count-then-insert must not interleave between
        # the HTTP threads and the worker threads; the index changes under it too.
        self._lock = threading.Lock()
        self._index = self._load()

    def _load(self) -> FairIndex:
        with Session(self.engine) as s:
            queued = [_queued(r.id, r) for r in s.execute(QUEUED_SQL)]
            last = s.execute(select(JobRow.queue_key, func.max(JobRow.claim_seq)).group_by(JobRow.queue_key)).all()
        return FairIndex(queued, {key: seq for key, seq in last if seq is not None})

    # --- transitions ----------------------------------------------------------------------
    def put(self, request: DreamRequest, *, seed: int) -> tuple[JobRecord, int]:
        key, r, batch = request.requester.queue_key, request.requester, batch_key(request)
        record = JobRecord(id=uuid.uuid4().hex, status="queued", request=request, seed=seed, queue_key=key,
                           priority=request.priority, created_at=datetime.now(UTC))  # fmt: skip
        values = {"id": record.id, "status": "queued", "queue_key": key, "priority": record.priority,
                  "request": request.model_dump(mode="json"), "seed": seed, "source": r.source, "user": r.user,
                  "guild": r.guild, "channel": r.channel, "created_at": record.created_at,
                  "batch_key": batch}  # fmt: skip
        with self._lock:
            queued = self._index.per_user.get(key, 0)
            if queued >= self.max_queued_per_user:
                raise TooManyQueued(
                    f"too many queued jobs: you already have {queued} waiting "
                    f"(limit {self.max_queued_per_user}); wait for some to finish or cancel one"
                )
            try:
                with self.engine.begin() as conn:
                    seq = conn.execute(_INSERT, values).scalar_one()
            except SQLAlchemyError as e:
                raise QueueError(f"could not queue the job: {e}") from e
            job = Queued(record.id, key, record.priority, seq, request.model, batch, request.n)
            self._index.add(job)
            position = self._position_at_top(job)
        if position is None:
            position = self.positions_of([job.id])[job.id]
        self._announce_positions()
        return record, position

    def put_found(self, request: DreamRequest, *, seed: int, image_ids: list[int]) -> JobRecord:
        r, now = request.requester, datetime.now(UTC)
        values = {"id": uuid.uuid4().hex, "status": "done", "queue_key": r.queue_key, "priority": request.priority,
                  "request": request.model_dump(mode="json"), "seed": seed, "source": r.source, "user": r.user,
                  "guild": r.guild, "channel": r.channel, "created_at": now, "started_at": now, "finished_at": now,
                  "found": image_ids}  # fmt: skip
        try:
            with self.engine.begin() as conn:
                conn.execute(_INSERT, values)
        except SQLAlchemyError as e:
            raise QueueError(f"could not record the job: {e}") from e
        return self.get(values["id"])

    def claim(self, affinity: Affinity | None = None) -> JobRecord | None:
        claimed = self.claim_batch(affinity, lambda job: 1)
        return claimed[0] if claimed else None

    def claim_batch(self, affinity: Affinity | None, room: Callable[[JobRecord], int]) -> list[JobRecord]:
        with self._lock:
            head = self._index.head()
            if head is None:
                return []
            job = head
            if affinity is not None and not affinity.has(head.model):
                job = self._spare_a_reload(head, affinity)
            with self.engine.begin() as conn:
                records = [self._claim_row(conn, job)]
                first = records[0]
                free = room(first) - first.request.n if job.batch_key is not None else 0
                # the jobs next in fair order join while they share the key and fit: none is passed over
                while free > 0 and (nxt := self._index.head()) is not None and nxt.batch_key == job.batch_key:
                    if nxt.images > free:
                        break  # a job is never split: it starts the next call
                    records.append(self._claim_row(conn, nxt))
                    free -= nxt.images
        for record in records:
            self.events.publish(Event(type="started", job=record.id, step=0, total=record.request.steps))
        self._announce_positions()
        return records

    def _claim_row(self, conn, job: Queued) -> JobRecord:
        """queued -> running for one job (under the lock): its user's turn moves to the back."""
        claim_seq = self._index.claimed(job)
        return _record(conn.execute(_CLAIM, {"job": job.id, "claim": claim_seq, "at": datetime.now(UTC)}).one())

    def _spare_a_reload(self, head: Queued, affinity: Affinity) -> Queued:
        """The fair next job needs a model that is not loaded: run a loaded model's job first,
        unless `head` was passed over `model_affinity` times already."""
        if self._passed_over.get(head.id, 0) >= self.model_affinity or not affinity.loaded:
            self._passed_over.pop(head.id, None)
            return head
        other = self._index.first_loaded(head, affinity)
        if other is None:
            self._passed_over.pop(head.id, None)
            return head
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
        values = {"job": job_id, "error": error, "at": datetime.now(UTC) if status in TERMINAL else None}
        if status in TERMINAL:
            self._passed_over.pop(job_id, None)
        with self._lock, self.engine.begin() as conn:
            row = conn.execute(_MOVE[status], values).one_or_none()
            if row is None:
                if conn.scalar(_STATUS_OF, {"job": job_id}) is None:
                    raise JobNotFound(f"no job {clip_text(job_id, 60)}")
                return None
            # The index holds exactly the queued jobs (kept in step under this lock), and a job may
            # only leave "queued" or "running": the index says which of the two it left.
            before = "queued" if self._index.remove(job_id) is not None else "running"
            if status == "queued":
                self._index.add(_queued(job_id, row))
        if status in TERMINAL:
            self.events.publish(Event(type=status, job=job_id, error=error))
        if before == "queued" or status == "queued":
            self._announce_positions()
        return cast(JobStatus, before)

    def _announce_positions(self) -> None:
        """Tell the watched queued jobs where they stand now (only theirs are computed)."""
        if not self.events.watched():
            return
        if self.announce_every_s <= 0:
            self._announce_now()
            return
        self._announce_wanted.set()
        if self._announcer is None:
            self._announcer = threading.Thread(target=self._announce_loop, name="dreamhall-positions", daemon=True)
            self._announcer.start()

    def _announce_loop(self) -> None:
        while True:
            self._announce_wanted.wait()
            self._announce_wanted.clear()
            try:
                self._announce_now()
            except Exception:  # positions are a courtesy; the jobs go on
                log.exception("could not announce queue positions")
            time.sleep(self.announce_every_s)

    def _announce_now(self) -> None:
        for job_id, position in self.positions_of(self.events.watched()).items():
            self.events.publish(Event(type="queued", job=job_id, position=position))

    # --- reading --------------------------------------------------------------------------
    def get(self, job_id: str) -> JobRecord:
        with Session(self.engine) as s:
            row = s.scalars(select(JobRow).where(JobRow.id == job_id)).one_or_none()
            if row is None:
                raise JobNotFound(f"no job {clip_text(job_id, 60)}")
            return _record(row)

    def jobs(self, *statuses: JobStatus) -> list[JobRecord]:
        with Session(self.engine) as s:
            rows = s.scalars(select(JobRow).where(JobRow.status.in_(statuses)).order_by(JobRow.seq))
            return [_record(r) for r in rows]

    def count(self, status: JobStatus) -> int:
        if status == "queued":  # asked by every health check: the index knows without SQL
            with self._lock:
                return len(self._index.jobs)
        with Session(self.engine) as s:
            return s.scalar(select(func.count()).select_from(JobRow).where(JobRow.status == status)) or 0

    def depth_by_priority(self) -> dict[int, int]:
        with self._lock:  # the in-memory fair index holds every queued job: no SQL
            depth: dict[int, int] = {}
            for job in self._index.jobs.values():
                depth[job.priority] = depth.get(job.priority, 0) + 1
            return depth

    def positions(self) -> dict[str, int]:
        with self._lock:
            queued = sorted(self._index.jobs.values(), key=lambda j: j.seq)
            last: dict[str, int | None] = {j.queue_key: self._index.last.get(j.queue_key) for j in queued}
        return fair_order(queued, last)

    def position(self, job_id: str) -> int | None:
        return self.positions_of({job_id}).get(job_id)

    def positions_of(self, job_ids: Iterable[str]) -> dict[str, int]:
        """Positions of a few queued jobs, from per-user counts: O(users), not O(queued jobs)."""
        with self._lock:  # a snapshot under the lock; the arithmetic outside it
            wanted = [(job, self._index.turn(job)) for i in job_ids if (job := self._index.jobs.get(i)) is not None]
            if not wanted:
                return {}
            groups = self._index.groups()
            last: dict[str, int | None] = {g.key: self._index.last.get(g.key) for g in groups}
        found: dict[str, int] = {}
        for priority, offset, ranked in fair_levels(groups, last):
            turns = {job.id: (job.queue_key, turn) for job, turn in wanted if job.priority == priority}
            if turns:
                found |= {job_id: offset + at for job_id, at in positions_in_level(ranked, turns).items()}
        return found

    def _position_at_top(self, job: Queued) -> int | None:
        """A job's position in one pass over its level's users, if that level is the highest (no sort:
        the common case of a new job, under the lock)."""
        index = self._index
        if job.priority != max(index.levels):
            return None
        turn = index.turn(job)
        mine = (index.last.get(job.queue_key, -1), index.by_user[(job.priority, job.queue_key)][0].seq)
        ahead = turn  # the user's own earlier jobs
        for user in index.levels[job.priority]:
            if user == job.queue_key:
                continue
            jobs = index.by_user[(job.priority, user)]
            ahead += min(len(jobs), turn)  # their jobs in earlier rounds
            if len(jobs) > turn and (index.last.get(user, -1), jobs[0].seq) < mine:
                ahead += 1  # and theirs in this round, when their turn comes first
        return ahead

    def requeue_interrupted(self) -> int:
        with Session(self.engine) as s, s.begin():
            result = s.execute(update(JobRow).where(JobRow.status == "running").values(status="queued"))
        with self._lock:
            self._index = self._load()
        return result.rowcount or 0
