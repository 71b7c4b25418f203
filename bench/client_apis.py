"""What the other tools' APIs cost over the native one, and what a Prometheus scrape costs, on a real engine.

openai      `client.images.generate(...)` through the official `openai` client over TCP, against the same job
            through EngineClient (submit + wait) over the socket, interleaved in pairs: the median of each and
            the OpenAI route's cost over the native API as a share of a built-in job (goal <= 5 %)
metrics     `GET /metrics` over TCP with 1,000 jobs queued (goal <= 20 ms), p50/p99

  python bench/client_apis.py [--pairs 11] [--steps 20] [--queued 1000]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402
import openai  # noqa: E402

from bench.engine_process import running_engine  # noqa: E402
from engine.client.schema import DreamRequest, Requester  # noqa: E402

TOKEN = "bench-token"
PROMPT = "a red circle on a blue background"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pairs", type=int, default=11)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--queued", type=int, default=1000)
    ap.add_argument("--scrapes", type=int, default=100)
    args = ap.parse_args()
    home = Path(tempfile.mkdtemp(prefix="dh-bench-"))
    port = 18000 + os.getpid() % 1000
    settings = {"DREAMHALL_TCP_PORT": str(port), "DREAMHALL_TOKEN": TOKEN,
                "DREAMHALL_MAX_QUEUED_PER_USER": str(args.queued + 10)}  # fmt: skip
    with running_engine(home, settings) as client:
        api = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/openai/v1", api_key=TOKEN, max_retries=0)
        request = DreamRequest(prompt=PROMPT, seed=7, steps=args.steps, fresh=True)

        def native() -> float:
            t = time.perf_counter()
            job = client.wait(client.submit(request).id)
            assert job.status == "done"
            return time.perf_counter() - t

        def via_openai() -> float:
            t = time.perf_counter()
            api.images.generate(prompt=PROMPT, extra_body={"seed": 7, "steps": args.steps, "fresh": True})
            return time.perf_counter() - t

        native(), via_openai()  # warm: the model, CLIP, the HTTP connections
        pairs = [(native(), via_openai()) for _ in range(args.pairs)]
        base = statistics.median(p[0] for p in pairs)
        extra = statistics.median(p[1] - p[0] for p in pairs)
        print(f"openai   native job p50 {base * 1000:.0f} ms, OpenAI route p50 "
                  f"{statistics.median(p[1] for p in pairs) * 1000:.0f} ms: {extra * 1000:+.1f} ms "
                  f"= {extra / base * 100:.1f} % of a built-in job ({args.steps} steps; goal <= 5 %)")  # fmt: skip

        who = Requester(source="api", user="bench")
        # the worker busy with one long job (in torch, as a GPU engine is), 1,000 more waiting behind it
        busy = client.submit(DreamRequest(prompt=PROMPT, steps=150, width=256, height=256, fresh=True)).id
        jobs = [busy] + [client.submit(DreamRequest(prompt=PROMPT, steps=1, requester=who, priority=k % 3)).id
                    for k in range(args.queued)]  # fmt: skip
        waiting = len(client.queue().queued)
        spent: dict[str, list[float]] = {"/metrics": [], "/v1/health": []}
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", headers={"Authorization": f"Bearer {TOKEN}"}) as h:
            for _ in range(args.scrapes):  # interleaved with the cheapest route, for the machine's own latency
                for route, times in spent.items():
                    t = time.perf_counter()
                    assert h.get(route).status_code == 200
                    times.append(time.perf_counter() - t)
        for route, times in spent.items():
            times.sort()
            print(f"metrics  GET {route} with {waiting} jobs queued, the worker busy: p50 "
                      f"{statistics.median(times) * 1000:.1f} ms, p99 {times[int(0.99 * (len(times) - 1))] * 1000:.1f} "
                      f"ms (goal for /metrics <= 20 ms)")  # fmt: skip
        for job_id in jobs:
            client.cancel(job_id)


if __name__ == "__main__":
    main()
