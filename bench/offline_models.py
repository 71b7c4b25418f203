"""How good and how fast are the built-in offline models?

Prints prompt fidelity (seen and held-out scenes, judged by the pixel checker),
the tiny CLIP's retrieval figures, sizes on disk and seconds per image.

    python bench/offline_models.py [--json] [--seeds 2] [--steps 20]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from engine.device.device import Device  # noqa: E402
from engine.device.pipelines import builtin_model_dir, load_model  # noqa: E402
from gallery.embeddings import OpenClipEmbedder, builtin_clip_dir  # noqa: E402
from models import evaluate, toyworld  # noqa: E402


def size_mb(folder: Path) -> float:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file()) / 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--seeds", type=int, default=2, help="seeds per prompt")
    ap.add_argument("--steps", type=int, default=20)
    args = ap.parse_args()
    say = (lambda *a: print(*a, file=sys.stderr)) if args.json else print
    device = Device("auto")
    say(f"device {device.describe()}, torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"python {platform.python_version()}, {os.cpu_count()} CPUs")  # fmt: skip
    tti = load_model(None, device)
    seeds = list(range(1000, 1000 + args.seeds))
    seen = evaluate.fidelity(tti, toyworld.seen_scenes(), seeds=seeds, steps=args.steps, templates=(0, 2))
    say(f"fidelity, seen scenes:     {seen.score:.3f} over {seen.images} images "
        f"(shape {seen.shape:.3f}, colour {seen.colour:.3f}, background {seen.background:.3f})")  # fmt: skip
    held = evaluate.fidelity(tti, toyworld.held_out_scenes(), seeds=list(range(2000, 2000 + 4 * args.seeds)),
                             steps=args.steps, templates=(0, 1, 2, 3, 4))  # fmt: skip
    say(f"fidelity, held-out scenes: {held.score:.3f} over {held.images} images "
        f"(shape {held.shape:.3f}, colour {held.colour:.3f}, background {held.background:.3f})")  # fmt: skip
    clip = evaluate.clip_metrics(OpenClipEmbedder(device=str(device.torch_device)))
    say(f"CLIP on {clip.images} fresh toy images: text->image recall@1 {clip.t2i_recall_at_1:.3f}, "
        f"recall@5 {clip.t2i_recall_at_5:.3f}; image->image same-class@1 {clip.i2i_same_class_at_1:.3f}")  # fmt: skip
    sd_mb, clip_mb = size_mb(builtin_model_dir()), size_mb(builtin_clip_dir())
    say(f"size on disk: diffusion pipeline {sd_mb:.1f} MB, CLIP {clip_mb:.1f} MB, total {sd_mb + clip_mb:.1f} MB")
    spi1 = evaluate.seconds_per_image(tti, batch=1, steps=args.steps)
    spi8 = evaluate.seconds_per_image(tti, batch=8, steps=args.steps)
    say(f"seconds per image at {args.steps} steps: batch 1 {spi1:.3f} s, batch 8 {spi8:.3f} s")
    if args.json:
        print(json.dumps({
            "fidelity": seen.score, "fidelity_heldout": held.score,
            "fidelity_detail": {"seen": vars(seen), "heldout": vars(held)},
            "t2i_recall_at_1": clip.t2i_recall_at_1, "t2i_recall_at_5": clip.t2i_recall_at_5,
            "i2i_same_class_at_1": clip.i2i_same_class_at_1,
            "seconds_per_image": {"batch_1": spi1, "batch_8": spi8},
            "size_mb": {"pipeline": sd_mb, "clip": clip_mb, "total": sd_mb + clip_mb},
            "device": device.describe(), "steps": args.steps,
        }))  # fmt: skip


if __name__ == "__main__":
    main()
