"""The SQLite job queue on a real database file: fairness, limits, resume, and the dequeue plan."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import text

from engine.queue import FAIR_DEQUEUE_SQL, JobNotFound, SqliteJobQueue, TooManyQueued
from engine.schema import DreamRequest, Requester
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
        queue.finish(job.id, "done")
    return served


def test_a_burst_cannot_starve_a_later_user(queue: SqliteJobQueue) -> None:
    a_jobs = [queue.put(req("A"), seed=i)[0] for i in range(10)]
    first = queue.claim()
    assert first is not None and first.id == a_jobs[0].id
    queue.put(req("B"), seed=0)
    queue.finish(first.id, "done")
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
