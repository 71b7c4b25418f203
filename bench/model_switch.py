"""Switching between two real-size SD 1.5 checkpoints on this machine: does the model cache make room *before* it
loads the newcomer?

Builds two real-size SD 1.5 single files (the shipped configs, random weights, fp16 on disk, the original layout:
~2 GB each, as users have them), then in fresh processes, through the engine's one loader (PipelineCache + shelf):

  one load      model A loaded alone: the process's peak RSS, and its RSS once loaded (what a model costs resident)
  switches      A, B, A, B with the default budget (a quarter of RAM on a CPU: one fp32 SD 1.5 fits, two do not):
                peak RSS over the three switches, each switch's seconds, the cache's evictions and its peak of
                weights held at once

The goal: the switches' peak RSS <= the one load's peak + one model's resident size (what holding the old model
while loading the new one would cost is a whole second model on top).

    python bench/model_switch.py [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CONFIGS = ROOT / "engine" / "device" / "configs" / "sd1"


def rss() -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS:"))


def peak() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def build(path: Path, seed: int) -> None:
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from tests.ldm_layout import save_single_file

    torch.manual_seed(seed)
    unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(CONFIGS / "unet")).half()
    vae = AutoencoderKL.from_config(AutoencoderKL.load_config(CONFIGS / "vae")).half()
    text = CLIPTextModel(CLIPTextConfig.from_pretrained(CONFIGS / "text_encoder")).half()
    save_single_file(SimpleNamespace(unet=unet, vae=vae, text_encoder=text), path)


def child(shelf: Path, names: list[str]) -> None:
    from engine.device.device import Device
    from engine.device.pipelines import PipelineCache
    from engine.device.shelf import Shelf

    cache = PipelineCache(Device("cpu"), None, shelf=Shelf(shelf), safety_check=False)
    seconds = []
    for name in names:
        started = time.perf_counter()
        cache.model(name)
        seconds.append(round(time.perf_counter() - started, 1))
    print(json.dumps({"peak": peak(), "rss": rss(), "seconds": seconds, "evictions": cache.evictions,
                      "held_peak": cache.peak_bytes, "budget": cache.budget_bytes,
                      "loaded": cache.loaded()}))  # fmt: skip


def run(shelf: Path, names: list[str]) -> dict:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    out = subprocess.run([sys.executable, __file__, "--child", str(shelf), *names], env=env, cwd=ROOT,
                         capture_output=True, text=True, check=True)  # fmt: skip
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--keep", type=Path, help="build the shelf here (and reuse it next time)")
    ap.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(Path(args.child[0]), args.child[1:])
        return
    shelf = args.keep or Path(tempfile.mkdtemp(prefix="dh-switch-"))
    folder = shelf / "Stable-diffusion"
    folder.mkdir(parents=True, exist_ok=True)
    for name, seed in (("sd15-a", 1), ("sd15-b", 2)):
        if not (folder / f"{name}.safetensors").exists():
            started = time.perf_counter()
            build(folder / f"{name}.safetensors", seed)
            size = (folder / f"{name}.safetensors").stat().st_size
            print(f"built {name}.safetensors ({size / 1e9:.2f} GB fp16) in {time.perf_counter() - started:.0f} s")
    gb = 1e9
    one = run(shelf, ["sd15-a"])
    print(f"one load      peak RSS {one['peak'] / gb:.2f} GB, resident once loaded {one['rss'] / gb:.2f} GB "
          f"({one['seconds'][0]} s)")  # fmt: skip
    switches = run(shelf, ["sd15-a", "sd15-b", "sd15-a", "sd15-b"])
    goal = one["peak"] + one["rss"]
    print(f"switches      peak RSS {switches['peak'] / gb:.2f} GB over A→B→A→B (loads {switches['seconds']} s), "
          f"{switches['evictions']} evictions, at most {switches['held_peak'] / gb:.2f} GB of weights held at once "
          f"(budget {switches['budget'] / gb:.2f} GB); goal <= one load's peak + one model resident = "
          f"{goal / gb:.2f} GB: {'met' if switches['peak'] <= goal else 'NOT met'}")  # fmt: skip


if __name__ == "__main__":
    main()
