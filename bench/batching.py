"""Cross-user batching on the built-in model: images/s with and without it, and what it costs anyone's wait.

Two engines in one run, one with `batch_max` 8 and one with 1 (every job alone), taking turns (round 1 batched,
round 1 alone, round 2 batched, ...), so a busy machine weighs on both alike:

  many users    20 users send one image each at once (same model, size, steps; their own prompts and seeds):
                images/s with and without batching; fairness: how much later each user's job finished with batching
                than without, against one batch's time (the longest call of the batched round)
  two models    2 users x 10 jobs, each user on another model (the built-in and a copy of it under another name):
                the users' jobs alternate in fair order, so none may share a call while both wait: the order the jobs
                started in stays as it was (only a user's last jobs, once nobody else waits, may share one)

Goals (issue #32): images/s with batching >= 1.8x without; no user's job later by more than one batch's time;
two models: the same order and calls.

    python bench/batching.py [--users 20] [--steps 20] [--rounds 2] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
import tempfile
from contextlib import ExitStack
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.engine_process import running_engine  # noqa: E402
from engine.client.clients import EngineClient  # noqa: E402
from engine.client.schema import DreamRequest, Requester  # noqa: E402
from engine.device.shelf import BUILTIN_MODEL_NAME, builtin_model_dir  # noqa: E402

WORDS = ["red", "green", "blue", "yellow", "purple", "white"]
SHAPES = ["circle", "square", "triangle", "star"]


def calls_so_far(client: EngineClient) -> float:
    text = client._http.get("/metrics").text
    return float(re.search(r"^dreamhall_batch_jobs_count (\S+)$", text, re.M).group(1))  # type: ignore[union-attr]


def burst(client: EngineClient, requests: list[DreamRequest]) -> dict:
    """Submit every request at once, wait for all: the round's seconds, each job's finish (seconds after the first
    was queued) and start order, its longest call, and how many calls it took."""
    calls = calls_so_far(client)
    ids = [client.submit(r).id for r in requests]
    jobs = [client.wait(job_id) for job_id in ids]
    assert all(job.status == "done" for job in jobs), [job.error for job in jobs]
    t0 = min(job.created_at for job in jobs)
    finished = [(job.finished_at - t0).total_seconds() for job in jobs]
    by_start = sorted(jobs, key=lambda job: job.started_at)
    # a call's time: its jobs start together and finish together (one call per distinct start)
    spans: dict[object, float] = {}
    for job in jobs:
        spans[job.started_at] = max(spans.get(job.started_at, 0.0), (job.finished_at - job.started_at).total_seconds())
    images = sum(len(job.images) for job in jobs)
    return {"seconds": max(finished), "images": images, "finished": finished,
            "calls": calls_so_far(client) - calls, "started": [job.request.requester.user for job in by_start],
            "longest_call": max(spans.values())}  # fmt: skip


def many_users(users: int, steps: int, round_no: int) -> list[DreamRequest]:
    return [DreamRequest(prompt=f"a {WORDS[i % 6]} {SHAPES[(i + round_no) % 4]}", seed=1000 * round_no + i, n=1,
                         steps=steps, requester=Requester(source="discord", user=f"user{i}", guild="bench"))
            for i in range(users)]  # fmt: skip


def two_models(steps: int, round_no: int) -> list[DreamRequest]:
    jobs = []
    for k in range(10):
        for user, model in (("ann", BUILTIN_MODEL_NAME), ("bob", "toy-sd-copy")):
            jobs.append(DreamRequest(prompt=f"a {WORDS[k % 6]} circle", seed=100 * round_no + k, steps=steps,
                                     model=model, requester=Requester(source="discord", user=user)))  # fmt: skip
    return jobs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=20)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp, ExitStack() as stack:
        engines: dict[str, EngineClient] = {}
        for name, batch_max in (("batched", "8"), ("alone", "1")):
            home = Path(tmp) / name
            shelf = home / "models" / "Stable-diffusion"
            shelf.mkdir(parents=True)
            (shelf / "toy-sd-copy").symlink_to(builtin_model_dir(), target_is_directory=True)
            engines[name] = stack.enter_context(running_engine(home, {"DREAMHALL_BATCH_MAX": batch_max}))
            engines[name].wait(engines[name].submit(DreamRequest(prompt="warm up", steps=2)).id)

        results: dict[str, dict[str, list[dict]]] = {"many": {"batched": [], "alone": []},
                                                      "two": {"batched": [], "alone": []}}  # fmt: skip
        for r in range(args.rounds):
            for name, client in engines.items():
                results["many"][name].append(burst(client, many_users(args.users, args.steps, r)))
                print(f"round {r + 1} {name:7s}: {args.users} users x 1 image in "
                      f"{results['many'][name][-1]['seconds']:.2f} s, {results['many'][name][-1]['calls']:.0f} calls",
                      flush=True)  # fmt: skip
            for name, client in engines.items():
                results["two"][name].append(burst(client, two_models(args.steps, r)))

    many = results["many"]
    rate = {name: statistics.median(x["images"] / x["seconds"] for x in many[name]) for name in many}
    speedup = rate["batched"] / rate["alone"]
    later = max(b - a for rb, ra in zip(many["batched"], many["alone"]) for b, a in zip(rb["finished"], ra["finished"]))
    batch_time = max(x["longest_call"] for x in many["batched"])
    two = results["two"]
    same_order = all(b["started"] == a["started"] for b, a in zip(two["batched"], two["alone"]))
    calls = {name: [int(x["calls"]) for x in two[name]] for name in two}
    two_s = {name: statistics.median(x["seconds"] for x in two[name]) for name in two}

    print(f"\nmany users ({args.users} x 1 image, built-in model, {args.steps} steps, median of {args.rounds} rounds)")
    print(f"  images/s   batched {rate['batched']:.2f}   alone {rate['alone']:.2f}   x{speedup:.2f}  (goal >= 1.8)")
    print(f"  fairness   latest finish vs alone {later:+.2f} s; one batch's time {batch_time:.2f} s "
          f"({'met' if later <= batch_time else 'NOT met'})")  # fmt: skip
    print("two models (2 users x 10 jobs, another model each)")
    print(
        f"  same start order {same_order}; calls per round batched {calls['batched']} vs alone {calls['alone']}; "
        f"{two_s['batched']:.2f} s batched vs {two_s['alone']:.2f} s alone"
    )
    if args.json:
        args.json.write_text(json.dumps({"images_per_s": rate, "speedup": speedup, "latest_vs_alone_s": later,
                                         "batch_s": batch_time, "two_models_same_order": same_order,
                                         "two_models_calls": calls, "two_models_s": two_s,
                                         "rounds": results}, indent=2))  # fmt: skip


if __name__ == "__main__":
    main()
