"""Judge a toy-world image by pixel analysis alone (no learning).

Used to score prompt fidelity of the built-in diffusion model: the checker
says which background colour, shape colour and shape an image shows.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image
from scipy import ndimage
from scipy.spatial import ConvexHull, QhullError

from models.toyworld import BACKGROUNDS, SHAPE_COLOURS, Scene

_BG = np.array(list(BACKGROUNDS.values()), dtype=np.float32)
_FG = np.array(list(SHAPE_COLOURS.values()), dtype=np.float32)


@dataclass(frozen=True)
class Verdict:
    """What the checker saw; `shape` is None when no shape stands out."""

    shape: str | None
    colour: str | None
    background: str

    def matches(self, scene: Scene) -> bool:
        return (self.shape, self.colour, self.background) == (scene.shape, scene.colour, scene.background)


def _nearest(rgb: np.ndarray, palette: np.ndarray, names: list[str]) -> str:
    return names[int(np.argmin(((palette - rgb) ** 2).sum(axis=1)))]


def _shape_of(mask: np.ndarray) -> str | None:
    labels, count = ndimage.label(mask)
    if count == 0:
        return None
    sizes = ndimage.sum(mask, labels, range(1, count + 1))
    blob = labels == (int(np.argmax(sizes)) + 1)
    area = int(blob.sum())
    if area < 30:
        return None
    ys, xs = np.nonzero(blob)
    fill = area / ((np.ptp(xs) + 1) * (np.ptp(ys) + 1))
    try:
        hull = ConvexHull(np.stack([xs, ys], axis=1))
        # Pixel centres under-count a blob's hull by about half its perimeter.
        solidity = area / (hull.volume + hull.area / 2 + 1)
    except QhullError:
        return None
    if solidity < 0.8:
        return "star"
    if fill > 0.88:
        return "square"
    if fill > 0.66:
        return "circle"
    return "triangle"


def shape_centre(image: Image.Image) -> tuple[float, float] | None:
    """(x, y) of the middle of the largest blob that stands out from the border's colour, or None."""
    rgb = np.asarray(image.convert("RGB"), dtype=np.float32)
    border = np.concatenate([rgb[0], rgb[-1], rgb[:, 0], rgb[:, -1]])
    mask = np.sqrt(((rgb - np.median(border, axis=0)) ** 2).sum(axis=2)) > 60
    labels, count = ndimage.label(mask)
    if count == 0:
        return None
    sizes = ndimage.sum(mask, labels, range(1, count + 1))
    ys, xs = np.nonzero(labels == int(np.argmax(sizes)) + 1)
    return float(xs.mean()), float(ys.mean())


def judge(image: Image.Image | np.ndarray) -> Verdict:
    """Classify background colour, shape colour and shape of a 64x64 toy image."""
    rgb = np.asarray(image.convert("RGB") if isinstance(image, Image.Image) else image, dtype=np.float32)
    border = np.concatenate([rgb[0], rgb[-1], rgb[:, 0], rgb[:, -1]])
    bg_rgb = np.median(border, axis=0)
    background = _nearest(bg_rgb, _BG, list(BACKGROUNDS))
    distance = np.sqrt(((rgb - bg_rgb) ** 2).sum(axis=2))
    mask = distance > 60
    # Erode so anti-aliased edges do not pull the colour towards the background.
    core = ndimage.binary_erosion(mask, iterations=1)
    if core.sum() < 10:
        return Verdict(shape=None, colour=None, background=background)
    colour = _nearest(np.median(rgb[core], axis=0), _FG, list(SHAPE_COLOURS))
    return Verdict(shape=_shape_of(mask), colour=colour, background=background)
