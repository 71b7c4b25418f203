"""The SQLite job queue on a real database file: fairness, limits, resume, and the dequeue plan."""

from __future__ import annotations

import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import text

from engine.client.answers import Event
from engine.client.schema import DreamRequest, Requester
from engine.server.events import EventSink
from engine.server.queue import FAIR_DEQUEUE_SQL, Affinity, JobNotFound, SqliteJobQueue, TooManyQueued
from engine.server.queue.fair import fair_order
from gallery.db import open_gallery_db


def req(user: str, priority: int = 0) -> DreamRequest:
    return DreamRequest(prompt=f"job of {user}", priority=priority, requester=Requester(source="discord", user=user))


@pytest.fixture
def queue(tmp_path: Path) -> SqliteJobQueue:
    return SqliteJobQueue(open_gallery_db(tmp_path / "gallery.db"), max_queued_per_user=50)


def drain(queue: SqliteJobQueue) -> list[str]:
    served = []
    while (job := queue.claim()) is not None:
        served.append(job.request.requester.user or "")
        queue.complete(job.id)
    return served


def test_a_burst_cannot_starve_a_later_user(queue: SqliteJobQueue) -> None:
    a_jobs = [queue.put(req("A"), seed=i)[0] for i in range(10)]
    first = queue.claim()
    assert first is not None and first.id == a_jobs[0].id
    queue.put(req("B"), seed=0)
    queue.complete(first.id)
    assert drain(queue)[:3] == ["B", "A", "A"]  # B runs before A's second (and third) job


def test_round_robin_across_three_users(queue: SqliteJobQueue) -> None:
    for user in ["A"] * 4 + ["B"] * 2 + ["C"]:
        queue.put(req(user), seed=0)
    assert drain(queue) == ["A", "B", "C", "A", "B", "A", "A"]


def test_priority_comes_before_fairness(queue: SqliteJobQueue) -> None:
    queue.put(req("A"), seed=0)
    queue.put(req("B", priority=5), seed=0)
    assert drain(queue)[0] == "B"


def test_positions_predict_the_claim_order(queue: SqliteJobQueue) -> None:
    for user in ["A", "A", "A", "B", "C", "C", "B", "A"]:
        queue.put(req(user), seed=0)
    job = queue.claim()  # history matters: A was just served
    assert job is not None
    positions = queue.positions()
    predicted = sorted(positions, key=positions.get)
    actual = []
    while (j := queue.claim()) is not None:
        actual.append(j.id)
    assert actual == predicted


def test_put_reports_position(queue: SqliteJobQueue) -> None:
    assert queue.put(req("A"), seed=0)[1] == 0
    assert queue.put(req("A"), seed=0)[1] == 1
    assert queue.put(req("B"), seed=0)[1] == 1  # B jumps ahead of A's second job


def test_per_user_limit_is_a_clear_error(tmp_path: Path) -> None:
    q = SqliteJobQueue(open_gallery_db(tmp_path / "g.db"), max_queued_per_user=2)
    q.put(req("A"), seed=0)
    q.put(req("A"), seed=0)
    with pytest.raises(TooManyQueued, match=r"too many queued jobs.*limit 2"):
        q.put(req("A"), seed=0)
    q.put(req("B"), seed=0)  # other users are unaffected


def test_cancel_queued_and_unknown(queue: SqliteJobQueue) -> None:
    job, _ = queue.put(req("A"), seed=0)
    assert queue.cancel(job.id).status == "cancelled"
    assert queue.claim() is None
    with pytest.raises(JobNotFound):
        queue.cancel("nope")


def test_running_jobs_are_resumed_after_a_crash(tmp_path: Path) -> None:
    db = tmp_path / "gallery.db"
    q = SqliteJobQueue(open_gallery_db(db))
    job, _ = q.put(req("A"), seed=7)
    q.put(req("A"), seed=8)
    assert q.claim() is not None  # ...and then the engine dies
    q2 = SqliteJobQueue(open_gallery_db(db))
    assert q2.requeue_interrupted() == 1
    resumed = q2.claim()
    assert resumed is not None and resumed.id == job.id and resumed.seed == 7


def test_dequeue_uses_the_indexes(queue: SqliteJobQueue) -> None:
    for user in "ABCDEFG":
        queue.put(req(user), seed=0)
    with queue.engine.connect() as conn:
        plan = [row[-1] for row in conn.execute(text("EXPLAIN QUERY PLAN " + FAIR_DEQUEUE_SQL.text))]
    joined = "\n".join(plan)
    assert "ix_jobs_status" in joined, joined
    assert "ix_jobs_queue_key_claim_seq" in joined, joined
    assert not any(line.startswith("SCAN c") for line in plan), joined


class Recorder(EventSink):
    """Every event the queue announces; it watches every queued job (and an id that is gone)."""

    def __init__(self, queue: SqliteJobQueue) -> None:
        self.queue = queue
        self.events: list[Event] = []

    def publish(self, event: Event) -> None:
        self.events.append(event)

    def watched(self) -> set[str]:
        return {j.id for j in self.queue.jobs("queued")} | {"gone"}

    def types(self, job_id: str) -> list[str]:
        return [e.type for e in self.events if e.job == job_id]


def test_transitions_announce_themselves(queue: SqliteJobQueue) -> None:
    queue.announce_every_s = 0  # positions at once, in the caller's thread
    queue.events = sink = Recorder(queue)
    a, _ = queue.put(req("A"), seed=0)
    b, _ = queue.put(req("B"), seed=0)
    assert queue.claim() is not None  # a runs; b moves up
    assert sink.types(a.id)[0] == "queued" and sink.types(a.id)[-1] == "started"
    assert [e.position for e in sink.events if e.job == b.id] == [1, 0]
    assert queue.complete(a.id)
    assert sink.types(a.id)[-1] == "done"
    assert queue.cancel(b.id).status == "cancelled" and sink.types(b.id)[-1] == "cancelled"


def test_positions_are_announced_coalesced_off_the_transition(queue: SqliteJobQueue) -> None:
    """By default a transition only asks for an announcement; a thread of the queue's sends the positions
    of that moment, at most every `announce_every_s`, so a burst of transitions costs one computation."""
    queue.announce_every_s = 0.05
    queue.events = sink = Recorder(queue)
    jobs = [queue.put(req(user), seed=0)[0] for user in "ABCDE"]
    for _ in range(3):
        queue.complete(queue.claim().id)  # type: ignore[union-attr]
    last = jobs[-1].id

    def settled() -> bool:
        return [e.position for e in sink.events if e.job == last][-1:] == [1]

    deadline = time.monotonic() + 30
    while not settled() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert settled(), [(e.job, e.position) for e in sink.events if e.type == "queued"]
    announced = [e for e in sink.events if e.job == last and e.type == "queued"]
    assert len(announced) < 1 + 5 + 3 * 2, "coalesced: fewer announcements than transitions"


def test_a_terminal_state_is_never_left(queue: SqliteJobQueue) -> None:
    job, _ = queue.put(req("A"), seed=0)
    assert queue.claim() is not None
    assert queue.cancel(job.id).status == "cancelled"  # a running job's cancel is recorded at once
    assert not queue.complete(job.id)  # the worker finishing late cannot undo it
    assert not queue.requeue(job.id)
    assert not queue.fail(job.id, "late")
    assert queue.get(job.id).status == "cancelled"
    with pytest.raises(JobNotFound):
        queue.complete("nope")


def test_a_cancelled_running_job_is_not_resumed_after_a_crash(tmp_path: Path) -> None:
    db = tmp_path / "gallery.db"
    q = SqliteJobQueue(open_gallery_db(db))
    job, _ = q.put(req("A"), seed=7)
    assert q.claim() is not None
    q.cancel(job.id)  # ...and the engine dies before the worker's next step
    q2 = SqliteJobQueue(open_gallery_db(db))
    assert q2.requeue_interrupted() == 0 and q2.claim() is None


def test_one_position_agrees_with_all_positions(queue: SqliteJobQueue) -> None:
    for user, priority in [("A", 0), ("A", 0), ("B", 3), ("C", 0), ("A", 3), ("B", 0), ("C", 0)]:
        queue.put(req(user, priority), seed=0)
    queue.complete(queue.claim().id)  # type: ignore[union-attr]
    positions = queue.positions()
    assert {i: queue.position(i) for i in positions} == positions


def quadratic_fair_order(queued: list, last_claim: dict) -> dict[str, int]:
    """The original O(n^2) replay of FAIR_DEQUEUE_SQL: the oracle for the linear one."""
    last = {k: (-1 if v is None else v) for k, v in last_claim.items()}
    pending, order = list(queued), {}
    tick = max(last.values(), default=0) + 1
    while pending:
        best = min(pending, key=lambda q: (-q.priority, last.get(q.queue_key, -1), q.seq))
        order[best.id] = len(order)
        last[best.queue_key] = tick
        tick += 1
        pending.remove(best)
    return order


@settings(max_examples=300, deadline=None)
@given(
    jobs=st.lists(st.tuples(st.sampled_from("ABCDE"), st.sampled_from([0, 0, 0, 1, 5])), max_size=40),
    claims=st.dictionaries(st.sampled_from("ABCDE"), st.one_of(st.none(), st.integers(1, 50)), max_size=5),
)
def test_linear_fair_order_matches_the_quadratic_replay(jobs: list, claims: dict) -> None:
    # Claim sequence numbers are unique in the database; keep them so here.
    seen: set[int] = set()
    claims = {k: v for k, v in claims.items() if v is None or not (v in seen or seen.add(v))}
    rows = [SimpleNamespace(id=f"j{i}", queue_key=u, priority=p, seq=i) for i, (u, p) in enumerate(jobs)]
    assert fair_order(rows, claims) == quadratic_fair_order(rows, claims)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.sampled_from("ABCDE"), st.sampled_from([0, 0, 0, 2]), st.booleans()), max_size=40))
def test_positions_from_memory_predict_the_claims(tmp_path_factory, steps: list) -> None:
    """Submits (some followed by a claim) in any order: what put() answered for the last job, each job's own
    position and all positions agree, and the queue is then served in exactly that order."""
    queue = SqliteJobQueue(open_gallery_db(tmp_path_factory.mktemp("q") / "gallery.db"), max_queued_per_user=100)
    for user, priority, claim in steps:
        job, position = queue.put(req(user, priority), seed=0)
        assert position == queue.positions()[job.id]
        if claim:
            queue.claim()
    positions = queue.positions()
    assert {i: queue.position(i) for i in positions} == positions
    assert queue.positions_of(positions) == positions
    order = [job.id for job in iter(queue.claim, None)]
    assert order == sorted(positions, key=positions.__getitem__)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.sampled_from("ABCDE"), st.sampled_from([0, 0, 0, 2]), st.booleans()), max_size=40))
def test_every_claim_is_the_job_fair_dequeue_sql_names(tmp_path_factory, steps: list) -> None:
    """FAIR_DEQUEUE_SQL is the fair order's definition: the in-memory index claims exactly the job it names,
    at every step of any mix of submits and claims, until both say the queue is empty."""
    db = open_gallery_db(tmp_path_factory.mktemp("q") / "gallery.db")
    queue = SqliteJobQueue(db, max_queued_per_user=100)

    def named_by_sql() -> str | None:
        with db.connect() as conn:
            row = conn.execute(FAIR_DEQUEUE_SQL).first()
        return None if row is None else str(row.id)

    def claim_and_compare() -> None:
        expected, job = named_by_sql(), queue.claim()
        assert (job.id if job is not None else None) == expected

    for user, priority, claim in steps:
        queue.put(req(user, priority), seed=0)
        if claim:
            claim_and_compare()
    while named_by_sql() is not None:
        claim_and_compare()
    assert queue.claim() is None


def test_submit_claim_health_and_position_stay_flat_as_the_queue_grows(tmp_path: Path) -> None:
    """2,000 queued jobs from 200 users: each operation costs about what it did at 200 (quadratic would be 100x)."""
    import time

    def median_ms(fn, samples: int = 15) -> float:
        costs = []
        for _ in range(samples):
            t = time.perf_counter()
            fn()
            costs.append(time.perf_counter() - t)
        return sorted(costs)[samples // 2] * 1000

    def costs(size: int) -> dict[str, float]:
        q = SqliteJobQueue(open_gallery_db(tmp_path / f"q{size}.db"), max_queued_per_user=10**6)
        users = [req(f"u{u}") for u in range(200)]
        for i in range(size):
            q.put(users[i % 200], seed=i)
        probe = q.put(users[0], seed=0)[0]

        def claim() -> None:
            job = q.claim()
            assert job is not None
            q.requeue(job.id)

        return {
            "submit": median_ms(lambda: q.put(users[7], seed=0)),
            "claim": median_ms(claim),
            "health": median_ms(lambda: q.count("queued")),
            "job GET": median_ms(lambda: q.position(probe.id)),
        }

    small, large = costs(200), costs(2000)
    for op in small:
        # 10x the jobs: linear work may cost up to ~10x; leave room for a busy machine, far below 100x.
        assert large[op] < max(30 * small[op], 5.0), (op, small[op], large[op])


def drain_with_one_model_slot(queue: SqliteJobQueue) -> tuple[list[str], int, int]:
    """Serve the queue like a worker that keeps one model loaded: (users in order, reloads, most places
    a job ran after its round-robin turn)."""
    loaded: str | None = None
    served, reloads, waited = [], 0, {}
    queued = {j.id: i for i, j in enumerate(queue.jobs("queued"))}
    while (job := queue.claim(Affinity(frozenset({loaded} if loaded else ()), "toy"))) is not None:
        if job.request.model != loaded:
            loaded, reloads = job.request.model, reloads + 1
        served.append(job.request.requester.user or "")
        waited[job.id] = len(served) - 1
        queue.complete(job.id)
    # Jobs are submitted in turns (A, B, A, B, ...), so a job's submit index is its round-robin turn.
    return served, reloads, max(waited[j] - i for j, i in queued.items())


def two_users_on_two_models(queue: SqliteJobQueue) -> None:
    for i in range(6):  # they take turns submitting, as two people in a channel do
        queue.put(req("A").model_copy(update={"model": "model-a"}), seed=i)
        queue.put(req("B").model_copy(update={"model": "model-b"}), seed=i)


def test_strict_round_robin_reloads_for_every_job(tmp_path: Path) -> None:
    queue = SqliteJobQueue(open_gallery_db(tmp_path / "gallery.db"), model_affinity=0)
    two_users_on_two_models(queue)
    served, reloads, _ = drain_with_one_model_slot(queue)
    assert served == ["A", "B"] * 6 and reloads == 12


def test_model_affinity_spares_reloads_and_bounds_the_wait(tmp_path: Path) -> None:
    queue = SqliteJobQueue(open_gallery_db(tmp_path / "gallery.db"), model_affinity=2)
    two_users_on_two_models(queue)
    served, reloads, most_passed = drain_with_one_model_slot(queue)
    # A runs, B's first job is passed over twice by A's (model-a is loaded), then B gets three in a row.
    assert served == ["A", "A", "A", "B", "B", "B"] * 2
    assert reloads == 4
    assert most_passed <= 2  # no job ran more than two places after its round-robin turn


def test_model_affinity_never_jumps_a_higher_priority(tmp_path: Path) -> None:
    queue = SqliteJobQueue(open_gallery_db(tmp_path / "gallery.db"), model_affinity=5)
    queue.put(req("A").model_copy(update={"model": "model-a"}), seed=0)
    urgent = queue.put(req("B", priority=1).model_copy(update={"model": "model-b"}), seed=0)[0]
    job = queue.claim(Affinity(frozenset({"model-a"}), "toy"))
    assert job is not None and job.id == urgent.id


def test_a_request_without_model_means_the_default(tmp_path: Path) -> None:
    queue = SqliteJobQueue(open_gallery_db(tmp_path / "gallery.db"), model_affinity=1)
    queue.put(req("A").model_copy(update={"model": "model-a"}), seed=0)
    default = queue.put(req("B"), seed=0)[0]
    job = queue.claim(Affinity(frozenset({"toy"}), "toy"))
    assert job is not None and job.id == default.id
