"""Model load and switch times through the engine's one loader (PipelineCache + shelf).

    python bench/model_load.py [--shelf DIR]

Without --shelf, it builds a temporary shelf of tiny random-weight SD 1.x and SDXL single
files (the test fixtures). Prints the seconds to load each checkpoint cold, and to switch
back and forth between two with room for one model.

Then two users on two models: 6 jobs each, submitted in turns, served by the real queue and
the real model cache (each job a real txt2img), with room for one model (strict round-robin,
then the queue's model affinity) and for two: reloads, and each user's wait from submit to start.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from engine.client.schema import DreamRequest, Requester
from engine.device.device import Device
from engine.device.pipelines import PipelineCache
from engine.device.shelf import Shelf
from engine.server.queue import SqliteJobQueue
from gallery.db import open_gallery_db


def tiny_shelf(root: Path) -> Path:
    from tests.ldm_layout import save_config_folder, save_single_file
    from tests.tiny_pipeline import family_pipeline

    (root / "Stable-diffusion").mkdir(parents=True)
    for family in ("sd1", "sdxl"):
        pipe = family_pipeline(root / "_build", family)
        save_single_file(pipe, root / "Stable-diffusion" / f"tiny-{family}.safetensors")
        save_config_folder(pipe, root / "configs" / family)
    return root


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shelf", type=Path)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--switches", type=int, default=6)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--size", type=int, default=64)
    args = parser.parse_args()
    device = Device(args.device)
    print(f"device {device.describe()}, torch {torch.__version__}")
    with tempfile.TemporaryDirectory() as tmp:
        root = args.shelf or tiny_shelf(Path(tmp) / "shelf")
        shelf = Shelf(root)
        cache = PipelineCache(device, None, shelf=shelf, budget_bytes=1)
        names = [item.name for item in shelf.items("checkpoint")]
        for name in names:
            cache.unload()
            started = time.perf_counter()
            model = cache.model(name)
            print(f"load {name:30s} {model.family:20s} {time.perf_counter() - started:7.2f} s")
        a, b = names[-2:]
        started = time.perf_counter()
        for i in range(args.switches):
            cache.model(a if i % 2 else b)
        print(f"switch {a} <-> {b}: {(time.perf_counter() - started) / args.switches:.2f} s per switch "
              f"({args.switches} switches, one model kept)")  # fmt: skip
        sizes = {name: cache.model(name).nbytes for name in (a, b)}
        print(f"\ntwo users, 6 jobs each (A on {a}, B on {b}), {args.steps} steps at {args.size} px:")
        for label, budget, affinity in [
            ("room for one model, strict round-robin", max(sizes.values()), 0),
            ("room for one model, model_affinity=2", max(sizes.values()), 2),
            ("room for both (model_cache_gb)", sum(sizes.values()), 2),
        ]:
            two_users(Path(tmp) / f"{affinity}-{budget}.db", PipelineCache(device, None, shelf=shelf,
                      budget_bytes=budget), affinity, (a, b), args, label)  # fmt: skip


def two_users(db: Path, cache: PipelineCache, affinity: int, models: tuple[str, str], args, label: str) -> None:
    queue = SqliteJobQueue(open_gallery_db(db), model_affinity=affinity)
    for i in range(6):
        for user, model in zip("AB", models):
            request = DreamRequest(prompt="a red circle", model=model, steps=args.steps, width=args.size,
                                   height=args.size, requester=Requester(source="cli", user=user))  # fmt: skip
            queue.put(request, seed=i)
    waits: dict[str, list[float]] = {"A": [], "B": []}
    started = time.perf_counter()
    while (job := queue.claim(cache.affinity())) is not None:
        req = job.request
        waits[req.requester.user or ""].append(time.perf_counter() - started)
        model = cache.model(req.model)
        model.txt2img(prompt=req.prompt, negative_prompt="", steps=req.steps, cfg_scale=7.5, sampler=req.sampler,
                      seeds=[job.seed], width=req.width, height=req.height)  # fmt: skip
        queue.complete(job.id)
    total = time.perf_counter() - started
    print(
        f"  {label:40s} reloads {cache.loads:2d}  total {total:6.2f} s  "
        + "  ".join(f"{u}: wait mean {statistics.mean(w):5.2f} s max {max(w):5.2f} s" for u, w in waits.items())
    )


if __name__ == "__main__":
    main()
