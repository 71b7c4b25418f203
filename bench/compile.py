"""What does the `compile` setting buy on this machine, and what does its warm-up cost?

The built-in model, one image at a time (batch 1, 20 steps, its native 64 px), eager and compiled
models side by side in one process, calls interleaved in pairs. Run twice against one fresh inductor
cache directory: the first run pays the cold warm-up, the second finds the cache (what every later
engine start pays).

    python bench/compile.py [--pairs 10] [--steps 20]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def child(pairs: int, steps: int) -> None:
    import torch

    from engine.client.schema import DreamRequest, Requester
    from engine.device import modes
    from engine.device.device import Device
    from engine.device.pipelines import PipelineCache
    from engine.device.runner import Resolved

    torch.set_num_threads(os.cpu_count() or 1)
    request = DreamRequest(prompt="a red circle on a blue background", steps=steps, requester=Requester(source="cli"))
    work = modes.plan(request, Resolved(), job_seed=1, native_size=64)
    eager = PipelineCache(Device("cpu"), None).model(None)
    compiled = PipelineCache(Device("cpu"), None, compile="on").model(None)

    def one(model) -> float:
        started = time.perf_counter()
        work.run(model, [0], on_step=lambda *_: None)
        return time.perf_counter() - started

    one(eager)  # the eager model's own first call (allocations, caches) is not part of the comparison
    warmup = one(compiled)
    times: dict[str, list[float]] = {"eager": [], "compiled": []}
    for _ in range(pairs):
        times["eager"].append(one(eager))
        times["compiled"].append(one(compiled))
    print(json.dumps({"warmup": warmup, **times}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pairs", type=int, default=10)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.pairs, args.steps)
        return
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, load {os.getloadavg()[0]:.2f}")
    cache = tempfile.mkdtemp(prefix="dh-inductor-")
    env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": cache}
    runs = []
    for label in ("cold cache", "warm cache"):
        out = subprocess.run([sys.executable, __file__, "--child", "--pairs", str(args.pairs), "--steps",
                              str(args.steps)], capture_output=True, text=True, env=env, check=True)  # fmt: skip
        run = json.loads(out.stdout.strip().splitlines()[-1])
        runs.append(run)
        print(f"warm-up ({label}): {run['warmup']:.1f} s")
    eager = statistics.median(t for r in runs for t in r["eager"])
    compiled = statistics.median(t for r in runs for t in r["compiled"])
    print(f"per image, batch 1, {args.steps} steps: eager {eager:.3f} s, compiled {compiled:.3f} s "
          f"({compiled / eager:.2f}x); break-even after {runs[1]['warmup'] / max(eager - compiled, 1e-9):.0f} "
          "images per engine start (warm cache)")  # fmt: skip


if __name__ == "__main__":
    main()
