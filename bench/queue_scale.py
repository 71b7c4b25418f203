"""How the job queue's costs grow with its length: submit, claim, health, one job's position.

    python bench/queue_scale.py [--sizes 100 1000 2000] [--users 200] [--samples 50]
    python bench/queue_scale.py --engine 1000
    python bench/queue_scale.py --simulate 10000 --users 1000 --workers 50

`--simulate N`: a pool of `--workers` simulated workers (threads; no models) claiming and
finishing jobs from the real queue kept at N queued jobs from `--users` users, while a
submitter keeps it topped up and a real EventHub on its own event loop has `--watched`
queued jobs followed (a transition asks for their positions; the queue's announcer sends
them, coalesced, at most once a second). Prints claim, submit and complete latency p50/p99
in the steady state (after a 3 s warm-up), the cost and rate of the position announcements,
and the slowest claim of the start-up burst (every worker free at once: claims are serial,
so the last of 50 waits for the 49 before it), for N/4, N/2 and N queued.

A real SqliteJobQueue on a real database file (no models). For each size the
queue is filled round-robin from `--users` users, then each operation is timed
`--samples` times; the old quadratic position replay is timed alongside for
comparison. Prints p50/p99 in milliseconds.

`--engine N`: the same through a real engine process on its socket (built-in
model, its worker busy with 150-step jobs): N submissions from `--users`
users, with /v1/health and a queued job's GET timed as the queue grows.
"""

from __future__ import annotations

import argparse
import asyncio
import platform
import random
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import sqlalchemy

from engine.client.launch import connect, stop_engine
from engine.client.schema import DreamRequest, Requester
from engine.client.settings import Settings
from engine.server.events import EventHub
from engine.server.queue import SqliteJobQueue
from gallery.db import open_gallery_db
from tests.test_queue import quadratic_fair_order  # the replay the queue used before: what it cost


def timed(fn, samples: int) -> tuple[float, float]:
    costs = []
    for _ in range(samples):
        t = time.perf_counter()
        fn()
        costs.append((time.perf_counter() - t) * 1000)
    costs.sort()
    return statistics.median(costs), costs[min(len(costs) - 1, int(len(costs) * 0.99))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[100, 250, 500, 1000, 2000])
    ap.add_argument("--users", type=int, default=200)
    ap.add_argument("--samples", type=int, default=50)
    ap.add_argument("--engine", type=int, metavar="N", help="N submissions through a real engine instead")
    ap.add_argument("--simulate", type=int, metavar="N", help="simulated workers on a queue kept at N jobs")
    ap.add_argument("--workers", type=int, default=50)
    ap.add_argument("--watched", type=int, default=100, help="queued jobs with an event stream open")
    ap.add_argument("--seconds", type=float, default=15.0, help="how long the workers run at each size")
    args = ap.parse_args()
    if args.simulate:
        print(f"python {platform.python_version()}, sqlalchemy {sqlalchemy.__version__}, sqlite file in /tmp; "
              f"{args.users} users, {args.workers} simulated workers (jobs of 0.5-1.5 s), {args.watched} watched "
              f"jobs, {args.seconds:g} s per size")  # fmt: skip
        print(f"{'queued':>7} | {'claims':>6} | {'claim p50/p99':>14} | {'submit p50/p99':>15} | "
              f"{'complete p50/p99':>16} | {'announce p50/p99':>16} | {'announces/s':>11} | "
              f"{'transitions/s':>13} | {'burst max':>9}")  # fmt: skip
        for size in (args.simulate // 4, args.simulate // 2, args.simulate):
            print(simulate(size, users=args.users, workers=args.workers, watched=args.watched,
                           seconds=args.seconds))  # fmt: skip
        return
    if args.engine:
        through_engine(args.engine, users=args.users)
        return
    print(f"python {platform.python_version()}, sqlalchemy {sqlalchemy.__version__}, sqlite file in /tmp, "
          f"{args.users} users, {args.samples} samples per figure")  # fmt: skip
    print(f"{'queued':>7} | {'submit p50/p99':>15} | {'claim p50/p99':>14} | {'health p50':>10} | "
          f"{'job GET p50':>11} | {'all positions':>13} | {'old replay':>10}")  # fmt: skip
    for size in args.sizes:
        with tempfile.TemporaryDirectory() as tmp:
            print(measure(SqliteJobQueue(open_gallery_db(Path(tmp) / "gallery.db"), max_queued_per_user=10**6),
                          size, users=args.users, samples=args.samples))  # fmt: skip


def measure(queue: SqliteJobQueue, size: int, *, users: int, samples: int) -> str:
    """Fill `queue` to `size` jobs and time its operations; one table row."""
    request = [DreamRequest(prompt="x", requester=Requester(user=f"u{u}")) for u in range(users)]
    for i in range(size):
        queue.put(request[i % users], seed=i)
    last = queue.put(request[0], seed=0)[0]
    turn = [0]

    def submit() -> None:
        turn[0] += 1
        queue.put(request[turn[0] % users], seed=0)

    def claim() -> None:
        job = queue.claim()
        assert job is not None
        queue.requeue(job.id)  # keep the queue at its size

    def replay() -> None:
        with queue.engine.connect() as conn:
            sql = "SELECT id, queue_key, priority, seq FROM jobs WHERE status='queued' ORDER BY seq"
            quadratic_fair_order(conn.execute(sqlalchemy.text(sql)).all(), {})

    sub, cl = timed(submit, samples), timed(claim, samples)
    health = timed(lambda: queue.count("queued"), samples)
    get = timed(lambda: queue.position(last.id), samples)
    every = timed(queue.positions, max(3, samples // 10))
    old = timed(replay, 1)
    return (f"{size:>7} | {sub[0]:6.2f} / {sub[1]:6.2f} | {cl[0]:5.2f} / {cl[1]:6.2f} | {health[0]:10.2f} | "
            f"{get[0]:11.2f} | {every[0]:13.2f} | {old[0]:10.1f}")  # fmt: skip


WARM_UP_S = 3.0  # every worker claims at once at the start: that burst is reported apart, as "burst max"


class TimedQueue(SqliteJobQueue):
    """The real queue, with the cost of each position announcement (the watched jobs' positions) recorded."""

    announce_ms: list[float]

    def _announce_now(self) -> None:
        t = time.perf_counter()
        super()._announce_now()
        self.announce_ms.append((time.perf_counter() - t) * 1000)


def simulate(size: int, *, users: int, workers: int, watched: int, seconds: float) -> str:
    """`workers` threads claim and finish jobs (0.5-1.5 s each) while a submitter keeps `size` queued."""
    with tempfile.TemporaryDirectory() as tmp:
        queue = TimedQueue(open_gallery_db(Path(tmp) / "gallery.db"), max_queued_per_user=10**6)
        queue.announce_ms = []
        loop = asyncio.new_event_loop()
        threading.Thread(target=loop.run_forever, daemon=True).start()
        hub = EventHub(loop)
        request = [DreamRequest(prompt="x", requester=Requester(user=f"u{u}")) for u in range(users)]
        ids = [queue.put(request[i % users], seed=i)[0].id for i in range(size)]
        # Streams open on jobs spread through the queue, as a community's clients would be.
        for job_id in ids[:: max(1, size // watched)][:watched]:
            loop.call_soon_threadsafe(hub.subscribe, job_id)
        queue.events = hub
        queue.announce_ms.clear()
        claims: list[float] = []
        submits: list[float] = []
        completes: list[float] = []
        burst: list[float] = []  # the first claims: every worker free at once
        stop = threading.Event()
        rng = random.Random(0)
        steady = time.perf_counter() + WARM_UP_S

        def timed_call(fn, into: list[float]):
            t = time.perf_counter()
            result = fn()
            (into if t >= steady else burst if into is claims else []).append((time.perf_counter() - t) * 1000)
            return result

        def worker() -> None:
            while not stop.is_set():
                job = timed_call(queue.claim, claims)
                if job is None:
                    time.sleep(0.01)
                    continue
                if stop.wait(rng.uniform(0.5, 1.5)):  # the job's run, cut short when the simulation ends:
                    break  # those 50 completions at once are not the steady state
                timed_call(lambda job=job: queue.complete(job.id), completes)

        def submitter() -> None:
            turn = 0
            while not stop.is_set():
                if queue.count("queued") >= size:
                    time.sleep(0.005)
                    continue
                turn += 1
                timed_call(lambda turn=turn: queue.put(request[turn % users], seed=turn), submits)

        threads = [threading.Thread(target=worker) for _ in range(workers)] + [threading.Thread(target=submitter)]
        started = time.perf_counter()
        for thread in threads:
            thread.start()
        time.sleep(WARM_UP_S + seconds)
        stop.set()
        for thread in threads:
            thread.join()
        elapsed = time.perf_counter() - started - WARM_UP_S
        loop.call_soon_threadsafe(loop.stop)
        announces = len(queue.announce_ms)
        transitions = len(claims) + len(submits) + len(completes)

        def p(values: list[float]) -> str:
            values = sorted(values) or [0.0]
            return f"{statistics.median(values):5.2f} / {values[min(len(values) - 1, int(len(values) * 0.99))]:6.2f}"

        rates = f"{announces / elapsed:11.1f} | {transitions / elapsed:13.0f} | {max(burst, default=0):9.1f}"
        return (f"{size:>7} | {len(claims):>6} | {p(claims):>14} | {p(submits):>15} | {p(completes):>16} | "
                f"{p(queue.announce_ms):>16} | {rates}")  # fmt: skip


def through_engine(total: int, *, users: int) -> None:
    """Submit `total` jobs to a real engine; time submit, health and a queued job's GET per quarter."""
    with tempfile.TemporaryDirectory() as home:
        settings = Settings(home=Path(home))
        client = connect(settings, say=lambda _: None)  # starts one, as the CLI would
        try:
            print(f"engine on the built-in model, {users} users, {total} submissions of 150-step jobs")
            print(f"{'queued':>11} | {'submit p50/p99':>15} | {'health p50/p99':>15} | {'job GET p50':>11}")
            quarter = total // 4
            for q in range(4):
                submits, healths, gets = [], [], []
                for i in range(q * quarter, (q + 1) * quarter):
                    request = DreamRequest(prompt="a red circle", steps=150, requester=Requester(user=f"u{i % users}"))
                    t = time.perf_counter()
                    accepted = client.submit(request)
                    submits.append(time.perf_counter() - t)
                    if i % 10 == 0:
                        t = time.perf_counter()
                        client.health()
                        healths.append(time.perf_counter() - t)
                        t = time.perf_counter()
                        client.job(accepted.id)
                        gets.append(time.perf_counter() - t)
                queued = client.health().queued
                s, h, g = (sorted(x * 1000 for x in v) for v in (submits, healths, gets))
                p99 = lambda v: v[min(len(v) - 1, int(len(v) * 0.99))]  # noqa: E731
                print(f"{q * quarter:>4}–{queued:<5} | {statistics.median(s):6.2f} / {p99(s):6.2f} | "
                      f"{statistics.median(h):6.2f} / {p99(h):6.2f} | {statistics.median(g):11.2f}")  # fmt: skip
        finally:
            client.close()
            stop_engine(settings)


if __name__ == "__main__":
    main()
