"""Nothing accepted and ignored, measured on the built-in models: how well `describe` reads pictures, what it costs,
what the hires fix costs over a plain txt2img, and how long styles and wildcards take to settle a request.

Describe   toy-world scenes drawn by the toy world's own renderer (every shape, colour and background), and images the
           toy model made for "a red circle on a blue background": the share whose first prompt names the shape with
           its colour and the background; milliseconds per picture (the vocabulary's text vectors are made once).
Hires fix  a 64 px txt2img at 20 steps, and the same with --hr 2 (20 more steps at 128 px, strength 0.7): seconds
           each, interleaved.
Prompting  settling a request with two styles and three wildcards for 16 images (styles.csv and wildcards/ read
           from disk each time, as the engine does): milliseconds per request.

    python bench/prompt_tools.py [--scenes 96] [--seeds 20] [--pairs 3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from engine.client.dream_args import parse  # noqa: E402
from engine.device import modes  # noqa: E402
from engine.device.device import Device  # noqa: E402
from engine.device.pipelines import PipelineCache  # noqa: E402
from engine.device.runner import Resolved  # noqa: E402
from engine.server.prompting import Prompting  # noqa: E402
from gallery.describe import VOCABULARY_DIR, Describer, read_vocabulary  # noqa: E402
from gallery.embeddings import OpenClipEmbedder  # noqa: E402
from models import toyworld  # noqa: E402

PROMPT = "a red circle on a blue background"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenes", type=int, default=96)
    parser.add_argument("--seeds", type=int, default=20)
    parser.add_argument("--pairs", type=int, default=3)
    args = parser.parse_args()

    describer = Describer(OpenClipEmbedder(), read_vocabulary(VOCABULARY_DIR / "toy"))
    rng = np.random.default_rng(0)
    scenes = toyworld.all_scenes()[: args.scenes]
    right, spent = 0, []
    for scene in scenes:
        picture = toyworld.render(scene, rng)
        started = time.perf_counter()
        first = describer.describe(picture).prompts[0]
        spent.append(time.perf_counter() - started)
        right += f"{scene.colour} {scene.shape}" in first and f"{scene.background} background" in first
    print(f"describe, toy-world scenes: {right}/{len(scenes)} first prompts name shape, colour and background; "
          f"{statistics.median(spent) * 1000:.1f} ms per picture (median)")  # fmt: skip

    model = PipelineCache(Device("cpu"), None).model(None)
    made = []
    for seed in range(args.seeds):
        request = parse(f'"{PROMPT}" -S {seed} -s 20')
        work = modes.plan(request, Resolved(), job_seed=seed, native_size=model.native_size)
        made += work.run(model, [0], lambda *a: False)
    named = sum("red circle" in describer.describe(im).prompts[0] and "blue background" in describer.describe(
        im).prompts[0] for im in made)  # fmt: skip
    print(f"describe, the toy model's '{PROMPT}' (seeds 0-{args.seeds - 1}): {named}/{len(made)} described so")

    plain_s, hires_s = [], []
    for pair in range(args.pairs):
        for command, out in ((f'"{PROMPT}" -S {pair} -s 20', plain_s), (f'"{PROMPT}" -S {pair} -s 20 --hr 2', hires_s)):
            request = parse(command)
            started = time.perf_counter()
            work = modes.plan(request, Resolved(), job_seed=pair, native_size=model.native_size)
            images = work.run(model, [0], lambda *a: False)
            if request.hires is not None:
                images = modes.hires(model, images, work, lambda i: lambda *a: False)
            out.append(time.perf_counter() - started)
    plain, hires = statistics.median(plain_s), statistics.median(hires_s)
    print(f"hires fix x2 (64 -> 128 px, 20 + 20 steps): {hires:.2f} s against {plain:.2f} s plain "
          f"({hires / plain:.1f}x)")  # fmt: skip

    with tempfile.TemporaryDirectory() as home:
        (Path(home) / "wildcards").mkdir()
        (Path(home) / "wildcards" / "colour.txt").write_text("\n".join(toyworld.SHAPE_COLOURS))
        (Path(home) / "wildcards" / "shape.txt").write_text("\n".join(toyworld.SHAPES))
        (Path(home) / "styles.csv").write_text('name,prompt,negative_prompt\nframed,"{prompt}, framed",blurry\n'
                                               "paper,on paper,\n")  # fmt: skip
        prompting = Prompting(Path(home))
        template = '"a __colour__ __shape__ on a {white|gray|black} background"'
        request = parse(f"{template} --style framed --style paper -n 16")
        spent = []
        for seed in range(50):
            started = time.perf_counter()
            prompting.settle(request, seed)
            spent.append(time.perf_counter() - started)
        print(f"styles + wildcards, 16 images: {statistics.median(spent) * 1000:.1f} ms per request (median)")


if __name__ == "__main__":
    main()
