"""The fair order in memory: round-robin across users within each priority level, as FAIR_DEQUEUE_SQL defines
it (engine.server.queue.sqlite); the tests hold the two to the same answers on generated queues."""

from __future__ import annotations

import bisect
import itertools
from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from engine.server.queue.base import Affinity


@dataclass(frozen=True)
class Queued:
    """One queued job as the fair order sees it."""

    id: str
    queue_key: str
    priority: int
    seq: int
    model: str | None
    batch_key: str | None = None  # engine.device.runner.batch_key: who may share its pipeline call
    images: int = 1


class FairIndex:
    """The queued jobs in memory, served in FAIR_DEQUEUE_SQL's order.

    The engine is the queue's one process, so it keeps the queued jobs here as well as in SQLite
    (the truth, loaded again on start): the next fair job costs O(users at the top priority), and
    a job's position O(users), instead of SQL over every queued row.
    """

    def __init__(self, queued: Iterable[Queued], last_claims: dict[str, int]) -> None:
        self.jobs: dict[str, Queued] = {}
        self.by_user: dict[tuple[int, str], list[Queued]] = {}  # (priority, user) -> their jobs, oldest first
        self.levels: dict[int, set[str]] = defaultdict(set)  # priority -> users with jobs there
        self.per_user: dict[str, int] = defaultdict(int)  # user -> queued jobs, every priority
        self.last = dict(last_claims)  # user -> their latest claim_seq
        self.claim_seq = max(self.last.values(), default=0)
        for job in queued:
            self.add(job)

    def add(self, job: Queued) -> None:
        jobs = self.by_user.setdefault((job.priority, job.queue_key), [])
        bisect.insort(jobs, job, key=lambda j: j.seq)
        self.levels[job.priority].add(job.queue_key)
        self.per_user[job.queue_key] += 1
        self.jobs[job.id] = job

    def remove(self, job_id: str) -> Queued | None:
        job = self.jobs.pop(job_id, None)
        if job is None:
            return None
        key = (job.priority, job.queue_key)
        self.by_user[key].remove(job)
        if not self.by_user[key]:
            del self.by_user[key]
            self.levels[job.priority].discard(job.queue_key)
            if not self.levels[job.priority]:
                del self.levels[job.priority]
        self.per_user[job.queue_key] -= 1
        if not self.per_user[job.queue_key]:
            del self.per_user[job.queue_key]
        return job

    def head(self) -> Queued | None:
        """The job FAIR_DEQUEUE_SQL would return."""
        if not self.levels:
            return None
        top = max(self.levels)
        user = min(self.levels[top], key=lambda u: (self.last.get(u, -1), self.by_user[(top, u)][0].seq))
        return self.by_user[(top, user)][0]

    def first_loaded(self, head: Queued, affinity: Affinity) -> Queued | None:
        """In the same order, the first job at head's priority whose model the worker holds."""
        best: tuple[int, int] | None = None
        found: Queued | None = None
        for user in self.levels[head.priority]:
            job = next((j for j in self.by_user[(head.priority, user)] if affinity.has(j.model)), None)
            if job is not None and (best is None or (self.last.get(user, -1), job.seq) < best):
                best, found = (self.last.get(user, -1), job.seq), job
        return found

    def claimed(self, job: Queued) -> int:
        """`job` leaves the queue: its user's turn moves to the back. Returns its claim_seq."""
        self.remove(job.id)
        self.claim_seq += 1
        self.last[job.queue_key] = self.claim_seq
        return self.claim_seq

    def groups(self) -> list[Group]:
        return [Group(user, priority, len(jobs), jobs[0].seq) for (priority, user), jobs in self.by_user.items()]

    def turn(self, job: Queued) -> int:
        """How many of the same user's queued jobs at the same level come before `job`."""
        return self.by_user[(job.priority, job.queue_key)].index(job)


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


def positions_in_level(ranked: list[Group], turns: dict[str, tuple[str, int]]) -> dict[str, int]:
    """Positions within a level (users in turn order) of jobs given as id -> (user, turn), where `turn` is
    how many of the user's jobs at this level come first: all earlier rounds, then the users ahead in
    this round. O(users x distinct turns), however many jobs are asked for."""
    counts = sorted(g.count for g in ranked)
    prefix = [0, *itertools.accumulate(counts)]
    where = {g.key: i for i, g in enumerate(ranked)}
    found: dict[str, int] = {}
    for turn in {t for _, t in turns.values()}:
        below = bisect.bisect_right(counts, turn)  # users with at most `turn` jobs give all of them
        earlier_rounds = prefix[below] + turn * (len(counts) - below)
        ahead_in_round = [0, *itertools.accumulate(g.count > turn for g in ranked)]
        for job_id, (user, t) in turns.items():
            if t == turn:
                found[job_id] = earlier_rounds + ahead_in_round[where[user]]
    return found


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
