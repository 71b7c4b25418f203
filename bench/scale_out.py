"""Throughput of Ray workers: the same jobs on 1 and on 2 workers, and the front's overhead per job.

    python bench/scale_out.py [--jobs 40] [--rounds 2] [--steps 30]

Real engine processes on real sockets, the built-in model, CPU workers with one torch thread
each (`backend = "ray"`, `worker_threads = 1`). Runs are interleaved (1, 2, 1, 2 ...) so a busy
machine hurts both alike. For each run: `--jobs` jobs from four users submitted at once, the
time until the last is done, and jobs per second; then the ratio of 2 workers to 1.

Then the front's overhead per job, one job at a time on an idle engine, for the `local`
backend and for one Ray worker: submit -> first step event, and last step -> its image event
(stored in the gallery, indexed, announced).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine.client.answers import Event
from engine.client.schema import DreamRequest, Requester
from tests.conftest import EngineProcess


def engine(home: Path, backend: str, workers: int) -> EngineProcess:
    env = {"DREAMHALL_BACKEND": backend, "DREAMHALL_LOG_LEVEL": "WARNING"}
    if backend == "ray":
        env |= {"DREAMHALL_WORKERS": str(workers), "DREAMHALL_WORKER_THREADS": "1"}
    return EngineProcess(home, None, **env).start(timeout=300)


def request(i: int, steps: int) -> DreamRequest:
    return DreamRequest(prompt="a red circle", seed=i, steps=steps, width=64, height=64,
                        requester=Requester(source="api", user=f"user{i % 4}"))  # fmt: skip


def throughput(proc: EngineProcess, jobs: int, steps: int) -> float:
    """Jobs per second for `jobs` jobs submitted at once."""
    with proc.client() as client:
        started = time.perf_counter()
        ids = [client.submit(request(i, steps)).id for i in range(jobs)]
        for job_id in ids:
            assert client.wait(job_id).status == "done"
        return jobs / (time.perf_counter() - started)


def overhead(proc: EngineProcess, jobs: int, steps: int) -> tuple[list[float], list[float]]:
    """Per job, one at a time: (submit -> first step, last step -> image event) in milliseconds."""
    to_first, to_image = [], []
    with proc.client() as client:
        for i in range(jobs):
            seen: dict[str, float] = {}

            def note(event: Event, seen: dict[str, float] = seen) -> None:
                now = time.perf_counter()
                if event.type == "step":
                    seen.setdefault("first", now)
                    seen["last"] = now
                elif event.type == "image":
                    seen.setdefault("image", now)

            t = time.perf_counter()
            accepted = client.submit(request(1000 + i, steps))
            client.wait(accepted.id, on_event=note)
            to_first.append((seen["first"] - t) * 1000)
            to_image.append((seen["image"] - seen["last"]) * 1000)
    return to_first, to_image


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--jobs", type=int, default=40)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--overhead-jobs", type=int, default=15)
    args = ap.parse_args()
    print(f"python {platform.python_version()}, {os.cpu_count()} CPUs; built-in model, 64x64, {args.steps} steps, "
          f"{args.jobs} jobs from 4 users per run, one torch thread per worker")  # fmt: skip
    rates: dict[int, list[float]] = {1: [], 2: []}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            for workers in (1, 2):
                proc = engine(Path(tmp) / f"ray{workers}-{r}", "ray", workers)
                try:
                    throughput(proc, 4, args.steps)  # warm: first calls, CLIP, the index table
                    rates[workers].append(throughput(proc, args.jobs, args.steps))
                finally:
                    proc.stop()
                print(f"round {r + 1}: {workers} worker(s): {rates[workers][-1]:.2f} jobs/s", flush=True)
        best = {w: max(v) for w, v in rates.items()}
        print(f"throughput: 1 worker {best[1]:.2f} jobs/s, 2 workers {best[2]:.2f} jobs/s: "
              f"{best[2] / best[1]:.2f}x (best of {args.rounds}; per round: "
              f"{', '.join(f'{b / a:.2f}x' for a, b in zip(rates[1], rates[2]))})")  # fmt: skip
        print("front overhead per job, one job at a time (p50 / p99 ms):")
        for backend in ("local", "ray"):
            proc = engine(Path(tmp) / f"overhead-{backend}", backend, 1)
            try:
                overhead(proc, 3, args.steps)  # warm
                first, image = overhead(proc, args.overhead_jobs, args.steps)
            finally:
                proc.stop()
            p = lambda v: f"{statistics.median(v):6.1f} / {sorted(v)[min(len(v) - 1, int(len(v) * 0.99))]:6.1f}"  # noqa: E731
            print(f"  {backend:5}: submit -> first step {p(first)}   last step -> image stored {p(image)}")


if __name__ == "__main__":
    main()
