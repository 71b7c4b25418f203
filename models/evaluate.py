"""Measure the built-in models on the toy world (shared by bench/offline_models.py and the tests).

Everything goes through the production loaders: the engine's LoadedModel and
the gallery's OpenClipEmbedder.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from models import toyworld
from models.checker import judge


@dataclass
class Fidelity:
    """Share of generated images whose checker verdict matches the prompt's scene."""

    score: float
    shape: float
    colour: float
    background: float
    images: int


def fidelity(pipe, scenes: list[toyworld.Scene], *, seeds: list[int], steps: int = 20,
             templates: tuple[int, ...] = (0,), batch: int = 16) -> Fidelity:  # fmt: skip
    """Generate each scene's caption(s) with each seed and judge the results by pixels."""
    jobs = [(scene, scene.caption(t)) for scene in scenes for t in templates]
    hits = shape = colour = background = total = 0
    for scene, prompt in jobs:
        for i in range(0, len(seeds), batch):
            chunk = seeds[i : i + batch]
            result = pipe.txt2img(prompt=prompt, negative_prompt="", seeds=chunk, width=64, height=64, steps=steps,
                          cfg_scale=7.5, sampler="k_euler_a")  # fmt: skip
            for image in result:
                v = judge(image)
                hits += v.matches(scene)
                shape += v.shape == scene.shape
                colour += v.colour == scene.colour
                background += v.background == scene.background
                total += 1
    return Fidelity(hits / total, shape / total, colour / total, background / total, total)


@dataclass
class ClipMetrics:
    t2i_recall_at_1: float
    t2i_recall_at_5: float
    i2i_same_class_at_1: float
    images: int


def clip_metrics(embedder, *, count: int = 400, seed: int = 12345) -> ClipMetrics:
    """Retrieval on fresh toy images (a seed never used in training), all scenes incl. held-out ones."""
    images, scenes, _ = toyworld.dataset(count, scenes=toyworld.all_scenes(), seed=seed)
    from PIL import Image

    vecs = embedder.embed_images([Image.fromarray(im) for im in images])
    labels = np.array([toyworld.all_scenes().index(s) for s in scenes])
    present = sorted(set(labels.tolist()))
    queries = embedder.embed_texts([toyworld.all_scenes()[k].caption(0) for k in present])
    ranked = np.argsort(-(queries @ vecs.T), axis=1)
    r1 = np.mean([labels[ranked[q, 0]] == k for q, k in enumerate(present)])
    r5 = np.mean([k in labels[ranked[q, :5]] for q, k in enumerate(present)])
    sims = vecs @ vecs.T
    np.fill_diagonal(sims, -np.inf)
    same = np.mean(labels[np.argmax(sims, axis=1)] == labels)
    return ClipMetrics(float(r1), float(r5), float(same), count)


def seconds_per_image(pipe, *, batch: int, steps: int = 20, repeats: int = 3) -> float:
    prompt = "a red circle on a blue background"
    pipe.txt2img(prompt=prompt, negative_prompt="", seeds=list(range(batch)), width=64, height=64, steps=steps,
         cfg_scale=7.5, sampler="k_euler_a")  # fmt: skip
    times = []
    for r in range(repeats):
        t = time.perf_counter()
        pipe.txt2img(prompt=prompt, negative_prompt="", seeds=list(range(r, r + batch)), width=64, height=64,
                     steps=steps, cfg_scale=7.5, sampler="k_euler_a")  # fmt: skip
        times.append((time.perf_counter() - t) / batch)
    return float(np.median(times))
