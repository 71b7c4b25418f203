"""How fast does a fresh engine answer, and how fast does it make its first image?

For each run, a new home and a new `dreamhall engine` process (built-in model):
  health        from the process start to the first answer of /v1/health (status "starting")
  job started   a request submitted as soon as the socket answers (it queues): until the worker
                starts it (torch, the model, CLIP and the vector index loaded)
  first image   ... until its image is written
  running       `dreamhall engine` again while this one runs: until it says so and exits
  import floor  a fresh process importing only torch, transformers' CLIP text model and diffusers' UNet (what
                any engine must load before its first step), interleaved with the runs; first image − floor is
                what the engine itself adds (goal <= 1.5 s)

    python bench/engine_start.py [--runs 3] [--steps 20]
"""

from __future__ import annotations

import argparse
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

from engine.client.clients import EngineClient, EngineUnavailable  # noqa: E402
from engine.client.schema import DreamRequest  # noqa: E402


def one_run(steps: int) -> dict[str, float]:
    home = Path(tempfile.mkdtemp(prefix="dh-start-"))
    env = {**os.environ, "DREAMHALL_HOME": str(home)}
    # As on a user's machine, Python keeps its bytecode cache: a shell with PYTHONDONTWRITEBYTECODE
    # would have every process recompile our modules (~20 ms for `dreamhall dream`, more for the engine).
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    log = open(home / "bench.log", "wb")  # noqa: SIM115 - closed below
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "cli", "engine"], env=env, stdout=log, stderr=log, cwd=ROOT)
    out: dict[str, float] = {}
    try:
        with EngineClient(home / "engine.sock", timeout=300) as client:
            while True:
                try:
                    client.health()
                    break
                except EngineUnavailable:
                    if proc.poll() is not None:
                        raise SystemExit(f"the engine exited; see {home / 'bench.log'}") from None
                    time.sleep(0.01)
            out["health"] = time.perf_counter() - t0
            request = DreamRequest(prompt="a red circle on a blue background", seed=1, steps=steps)
            accepted = client.submit(request)
            ready_seen = None
            for event in client.events(accepted.id):
                if ready_seen is None and event.type in {"started", "loading", "step"}:
                    ready_seen = time.perf_counter() - t0
                if event.type == "image":
                    out["first image"] = time.perf_counter() - t0
                if event.type in {"done", "failed", "cancelled"}:
                    break
            out["job started"] = ready_seen or float("nan")
            t1 = time.perf_counter()
            second = subprocess.run([sys.executable, "-m", "cli", "engine"], env=env, capture_output=True, cwd=ROOT)
            out["running"] = time.perf_counter() - t1
            assert second.returncode == 1, second.stderr
    finally:
        proc.terminate()
        proc.wait(60)
        log.close()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--steps", type=int, default=20)
    args = ap.parse_args()
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, load {os.getloadavg()[0]:.2f}")
    runs = [one_run(args.steps) | {"import floor": import_floor()} for _ in range(args.runs)]
    for run in runs:
        run["over floor"] = run["first image"] - run["import floor"]
    for key in ("health", "job started", "first image", "running", "import floor", "over floor"):
        values = [r[key] for r in runs]
        print(f"{key:12s} median {statistics.median(values):6.2f} s   ({', '.join(f'{v:.2f}' for v in values)})")


def import_floor() -> float:
    """Seconds for a fresh interpreter to import what any first step needs (and nothing of ours)."""
    code = "import torch; from transformers import CLIPTextModel; from diffusers import UNet2DConditionModel"
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)
    return time.perf_counter() - started


if __name__ == "__main__":
    main()
