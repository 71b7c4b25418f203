"""Steering with images on the built-in model: does the toy ControlNet put the shape where the map says, does the toy
reference adapter carry a picture's colours, and what do they cost?

Effect  20 seeds, a control disc on the left third (a white silhouette on black, `--control_type none`),
        prompt "a red circle on a blue background": the share of images whose drawn shape's centre lies
        within 10 px of the control's (64 px images; the issue's goal: at least 90 %). The same for the
        control's outline through the canny preprocessor, and without any control (the baseline).
        References: a green circle on a gray background as the reference, prompt "a circle" (no colours):
        the share of images that show a green shape on gray (goal: at least 80 %), and without it.
Cost    a txt2img with one control (and with one reference) over one without (same seeds, interleaved; goal for
        the control: at most +40 %), and each preprocessor at 512 px (goal: at most 20 ms). With --annotators DIR
        (a folder with the files of lllyasviel/Annotators), each weight annotator there at 512 px too (load, then
        the median of 3 maps; on the GPU when there is one).

It runs the device's own path: the pipeline cache, the shelf's ControlNet, the server's preprocessors.

    python bench/image_guidance.py [--seeds 20] [--steps 20] [--pairs 5] [--annotators DIR]
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from engine.device.device import Device  # noqa: E402
from engine.device.modes import fit  # noqa: E402
from engine.device.pipelines import PipelineCache  # noqa: E402
from engine.device.pipelines.model import Control  # noqa: E402
from engine.device.shelf import encoder_of  # noqa: E402
from engine.server.control_maps import preprocess  # noqa: E402
from models import toyworld  # noqa: E402
from models.checker import judge, shape_centre  # noqa: E402

PROMPT = "a red circle on a blue background"
CENTRE = (11, 32)  # toyworld.control_disc's: the middle of the left third, half way down


def hits(images: list[Image.Image], within: float = 10.0) -> int:
    out = 0
    for image in images:
        centre = shape_centre(image)
        if centre is not None and np.hypot(centre[0] - CENTRE[0], centre[1] - CENTRE[1]) <= within:
            out += 1
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=20)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--pairs", type=int, default=5)
    parser.add_argument("--annotators", type=Path, help="a folder with annotator weights (depth, openpose, lineart)")
    args = parser.parse_args()
    cache = PipelineCache(Device("cpu"), None)
    model = cache.model(None)
    net = cache.controlnet(cache.shelf.controlnet_for(None, model.family))
    seeds = list(range(1, args.seeds + 1))
    common = dict(prompt=PROMPT, negative_prompt="", steps=args.steps, cfg_scale=7.5, sampler="k_euler_a")

    def run(control_map: Image.Image | None, batch: list[int]) -> list[Image.Image]:
        controls = [Control(net, fit(control_map, 64, 64))] if control_map is not None else []
        return model.txt2img(seeds=batch, width=64, height=64, controls=controls, **common)

    disc = toyworld.control_disc()
    outline = preprocess(toyworld.control_disc(), "canny")
    print(f"effect over {len(seeds)} seeds, {args.steps} steps, prompt {PROMPT!r}, control centre {CENTRE}:")
    for label, control_map in (("silhouette (none)", disc), ("outline (canny)", outline), ("no control", None)):
        made = run(control_map, seeds)
        print(
            f"  {label:18s} shape centre within 10 px: {hits(made)}/{len(made)} ({100 * hits(made) / len(made):.0f} %)"
        )

    adapter = cache.shelf.reference_adapter(model.family, model.text_width)
    reference = toyworld.render(toyworld.Scene("circle", "green", "gray"), np.random.default_rng(7))
    shape_only = {**common, "prompt": "a circle"}

    def referenced(batch: list[int], with_reference: bool = True) -> list[Image.Image]:
        if not with_reference:
            return model.txt2img(seeds=batch, width=64, height=64, **shape_only)
        with model.references(adapter, encoder_of(adapter), [reference], [1.0], 1.0):
            return model.txt2img(seeds=batch, width=64, height=64, **shape_only)

    print("reference: a green circle on gray, prompt 'a circle':")
    for label, with_reference in (("with the reference", True), ("without", False)):
        verdicts = [judge(im) for im in referenced(seeds, with_reference)]
        carried = sum(v.colour == "green" and v.background == "gray" for v in verdicts)
        circles = sum(v.shape == "circle" for v in verdicts)
        print(f"  {label:18s} green on gray: {carried}/{len(verdicts)} ({100 * carried / len(verdicts):.0f} %), "
              f"circles {circles}/{len(verdicts)}")  # fmt: skip

    batch = seeds[:4]
    jobs = {"plain": lambda: run(None, batch), "one control": lambda: run(disc, batch),
            "one reference": lambda: referenced(batch)}  # fmt: skip
    times: dict[str, list[float]] = {name: [] for name in jobs}
    for job in jobs.values():
        job()  # warm-up
    for _ in range(args.pairs):
        for name, job in jobs.items():
            started = time.perf_counter()
            job()
            times[name].append(time.perf_counter() - started)
    p = statistics.median(times["plain"])
    print(
        f"cost: txt2img n={len(batch)} {args.steps} steps {p * 1000:.0f} ms; median of {args.pairs} interleaved runs:"
    )
    for name in ("one control", "one reference"):
        c = statistics.median(times[name])
        print(f"  {name:14s} {c * 1000:.0f} ms (+{100 * (c / p - 1):.0f} %)")

    picture = Image.new("RGB", (512, 512), (240, 240, 240))
    ImageDraw.Draw(picture).ellipse([60, 140, 260, 340], fill=(225, 35, 35))
    ImageDraw.Draw(picture).rectangle([300, 100, 450, 250], fill=(45, 95, 245))
    for type_ in ("none", "canny", "softedge", "invert", "tile"):
        times = []
        for _ in range(20):
            started = time.perf_counter()
            preprocess(picture, type_)
            times.append(time.perf_counter() - started)
        print(f"preprocessor {type_:9s} at 512 px: {statistics.median(times) * 1000:.1f} ms (median of 20)")
    if args.annotators is None:
        print("weight annotators (depth, openpose, lineart): not timed; pass --annotators DIR")
        return
    from engine.client.controls import ANNOTATOR_FILES
    from engine.client.errors import InputError
    from engine.device.annotators import Annotators

    annotators = Annotators(args.annotators, Device().torch_device)
    for type_, file in ANNOTATOR_FILES.items():
        if not (args.annotators / file).is_file():
            print(f"annotator {type_:9s} {file} is not in {args.annotators}")
            continue
        started = time.perf_counter()
        times = []
        for _ in range(4):  # the first loads the weights
            with contextlib.suppress(InputError):  # openpose with no person: the network ran all the same
                annotators.annotate(picture, type_)
            times.append(time.perf_counter() - started)
            started = time.perf_counter()
        print(f"annotator {type_:9s} at 512 px: {statistics.median(times[1:]) * 1000:.0f} ms (median of 3; "
              f"the first with loading {times[0]:.1f} s)")  # fmt: skip


if __name__ == "__main__":
    main()
