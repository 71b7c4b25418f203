"""Model load and switch times through the engine's one loader (PipelineCache + shelf).

    python bench/model_load.py [--shelf DIR]

Without --shelf, it builds a temporary shelf of tiny random-weight SD 1.x and SDXL single
files (the test fixtures). Prints the seconds to load each checkpoint cold, and to switch
back and forth between two (one model is kept at a time: every switch is a load).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from engine.device import Device
from engine.pipelines import PipelineCache
from engine.shelf import Shelf


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
    args = parser.parse_args()
    device = Device(args.device)
    print(f"device {device.describe()}, torch {torch.__version__}")
    with tempfile.TemporaryDirectory() as tmp:
        root = args.shelf or tiny_shelf(Path(tmp) / "shelf")
        shelf = Shelf(root)
        cache = PipelineCache(device, None, shelf=shelf)
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


if __name__ == "__main__":
    main()
