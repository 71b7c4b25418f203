"""What does the engine cost on top of the bare diffusers call?

Same model, prompt, seed, steps and n, interleaved in pairs:
  bare       LoadedModel called in this process (the pipeline alone)
  cli        `dreamhall dream ...` as a subprocess against a warm engine (process start, socket,
             queue, worker, PNG + SQLite writes, event stream) — the figure the issue asks for
  client     the same round trip through EngineClient from this process (no interpreter start-up)

Then where the engine's own time goes per job (median ms over the measured jobs, from the
engine log's per-job "stages" line): its wait in the queue until a worker picked it up, input
images, model lookup, the steps, safety flags, PNG encode, CLIP embed, events (transfer), gallery
files + SQLite (store), the vector index write, and marking it done.

    python bench/engine_overhead.py [--model DIR] [--n 4] [--steps 20] [--pairs 7]
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

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from engine.client.clients import EngineClient, EngineUnavailable  # noqa: E402
from engine.client.dream_args import parse  # noqa: E402
from engine.client.schema import image_seed, resolve_size  # noqa: E402
from engine.device.device import Device  # noqa: E402
from engine.device.pipelines import load_model  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="diffusers folder (default: the built-in toy model)")
    ap.add_argument("--prompt", default="a red circle on a blue background")
    ap.add_argument("--n", type=int, default=4)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--seed", type=int, default=3220803958)
    ap.add_argument("--size", type=int, default=None, help="width and height (default: the model's)")
    ap.add_argument("--pairs", type=int, default=11)
    args = ap.parse_args()

    device = Device("auto")
    print(f"device {device.describe()}, torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"python {platform.python_version()}, {os.cpu_count()} CPUs")  # fmt: skip
    tti = load_model(args.model, device)
    name = tti.name
    size = ["-W", str(args.size), "-H", str(args.size)] if args.size else []
    command = [f'"{args.prompt}"', "-n", str(args.n), "-S", str(args.seed), "-s", str(args.steps), *size]
    request = parse(" ".join(command))
    width, height = resolve_size(request, tti.native_size)
    print(f"model {name}, n={args.n}, steps={args.steps}, {width}x{height}, sampler {request.sampler}, "
          f"{args.pairs} pairs")  # fmt: skip

    def bare() -> float:
        t = time.perf_counter()
        tti.txt2img(prompt=request.prompt, negative_prompt=request.negative_prompt,
            seeds=[image_seed(args.seed, i) for i in range(args.n)], width=width, height=height,
            steps=request.steps, cfg_scale=request.cfg_scale, sampler=request.sampler)  # fmt: skip
        return time.perf_counter() - t

    home = Path(tempfile.mkdtemp(prefix="dh-bench-"))
    env = {**os.environ, "DREAMHALL_HOME": str(home)}
    # As on a user's machine, Python keeps its bytecode cache: a shell with PYTHONDONTWRITEBYTECODE
    # would have every process recompile our modules (~20 ms for `dreamhall dream`, more for the engine).
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    if args.model:
        env["DREAMHALL_MODEL"] = args.model
    log = home / "bench-engine.log"
    with log.open("w") as log_file:
        engine = subprocess.Popen([sys.executable, "-m", "cli", "engine"], env=env, cwd=ROOT,
                                  stdout=subprocess.DEVNULL, stderr=log_file)  # fmt: skip
    # The installed command, as users run it (`python -m cli` where it is not installed).
    script = Path(sys.executable).with_name("dreamhall")
    dreamhall = [str(script)] if script.exists() else [sys.executable, "-m", "cli"]
    cli = [*dreamhall, "dream", *[c.strip('"') for c in command[:1]], *command[1:], "--json"]
    try:
        with EngineClient(home / "engine.sock") as client:
            while True:
                try:
                    client.health()
                    break
                except EngineUnavailable:
                    time.sleep(0.2)

            def via_cli() -> float:
                t = time.perf_counter()
                subprocess.run(cli, env=env, cwd=ROOT, check=True, capture_output=True)
                return time.perf_counter() - t

            def via_client() -> float:
                t = time.perf_counter()
                job = client.wait(client.submit(request).id)
                assert job.status == "done", job.error
                return time.perf_counter() - t

            bare(), via_cli(), via_client()  # warm-up: first calls pay one-off costs
            rows = []
            for _ in range(args.pairs):
                rows.append((bare(), via_cli(), via_client()))
    finally:
        engine.terminate()
        engine.wait(30)

    b = statistics.median(r[0] for r in rows)

    def spread(values: list[float]) -> str:
        q = statistics.quantiles(values, n=4)
        return f"{statistics.median(values):.3f} (quartiles {q[0]:.3f}–{q[2]:.3f})"

    # Per pair, so the machine's drift between pairs cancels; the ms over bare is the engine's and the
    # command's own cost, which does not scale with the model.
    print(f"bare pipeline call   median {b * 1000:8.1f} ms")
    for name, col in (("dreamhall dream CLI", 1), ("EngineClient", 2)):
        ratios = [r[col] / r[0] for r in rows]
        extra = statistics.median((r[col] - r[0]) * 1000 for r in rows)
        print(f"{name:<20} median {statistics.median(r[col] for r in rows) * 1000:8.1f} ms   "
              f"ratio {spread(ratios)}, +{extra:.0f} ms")  # fmt: skip
    print(f"median ratio (dreamhall dream / bare): {statistics.median(r[1] / r[0] for r in rows):.3f}")
    # The measured jobs' stages (the warm-up's two jobs left out).
    jobs = [dict((k, float(v)) for k, v in (kv.split("=") for kv in line.split("stages (ms): ")[1].split()))
            for line in log.read_text().splitlines() if "stages (ms): " in line][2:]  # fmt: skip
    if jobs:
        print(f"engine time per job, median of {len(jobs)} jobs (ms):")
        print("  " + "  ".join(f"{k} {statistics.median(j.get(k, 0.0) for j in jobs):.1f}" for k in jobs[0]))


if __name__ == "__main__":
    main()
