"""ControlNet preprocessors: a picture -> the map a ControlNet reads (A1111's "modules").

The ones here need no download (OpenCV and numpy, milliseconds at 512 px): canny, soft edges,
invert, tile and `none`. Annotators that need weights (depth, openpose, lineart) run on the device
side (engine.device.annotators, through the runner's `annotate`) when their file is on the shelf;
otherwise one sentence names the file, and a user may bring such maps ready-made with `none`. The
device fits each map to the output size (engine.device.modes.fit: A1111's default "Crop and Resize").
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from engine.client.controls import ANNOTATOR_FILES, ANNOTATORS_PACKAGE
from engine.client.errors import InputError

CANNY_LOW, CANNY_HIGH = 100, 200  # A1111's defaults
TILE_DOWNSCALE = 4  # tile_resample at A1111's rate 1 blurs by resampling; a quarter keeps the layout

Annotate = Callable[[Image.Image, str], Image.Image]  # a weight annotator's map, made where the models run


def annotator_problem(type: str, folder: Path) -> str | None:
    """Why the weight annotator of `type` cannot run from the shelf's `folder`, or None (cheap: no torch)."""
    where = folder / ANNOTATOR_FILES[type]
    if not where.is_file():
        return (f"--control_type {type} needs the annotator weights annotators/{ANNOTATOR_FILES[type]}, which are "
                f"not on the shelf; put the file there, or make the {type} map elsewhere and send it with "
                "--control_type none")  # fmt: skip
    if importlib.util.find_spec("controlnet_aux") is None:
        return f"--control_type {type} runs the annotator {where.name}, which needs {ANNOTATORS_PACKAGE}"
    return None


def preprocess(
    image: Image.Image, type: str, *, threshold_a: float | None = None, threshold_b: float | None = None,
    annotators: Path | None = None, annotate: Annotate | None = None, check_only: bool = False,
) -> Image.Image:  # fmt: skip
    """The control map of `image` for a ControlNet of `type` (RGB, the image's size). A weight annotator's map
    comes from `annotate`; `check_only`: only whether it could run is checked (the picture comes back)."""
    rgb = np.asarray(image.convert("RGB"))
    if type == "none":
        out = rgb
    elif type == "canny":
        low = CANNY_LOW if threshold_a is None else threshold_a
        high = CANNY_HIGH if threshold_b is None else threshold_b
        out = _gray_to_rgb(cv2.Canny(rgb, low, high))
    elif type == "softedge":
        out = _gray_to_rgb(_soft_edges(rgb))
    elif type == "invert":
        out = 255 - rgb
    elif type == "tile":
        h, w = rgb.shape[:2]
        small = cv2.resize(
            rgb, (max(1, w // TILE_DOWNSCALE), max(1, h // TILE_DOWNSCALE)), interpolation=cv2.INTER_AREA
        )
        out = cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC)
    elif type in ANNOTATOR_FILES:
        problem = annotator_problem(type, annotators or Path("models") / "annotators")
        if problem is not None:
            raise InputError(problem)
        if check_only:
            out = rgb
        elif annotate is None:
            raise InputError(f"the {type} annotator runs only inside the engine (where the models run)")
        else:
            out = np.asarray(annotate(image.convert("RGB"), type).convert("RGB"))
    else:
        raise InputError(f"unknown control type {type!r}")
    if int(out.max()) == int(out.min()):
        raise InputError(f"the control map is empty (one flat colour after {type}): it would steer nothing"
                         + ("; try lower thresholds, or a picture with edges" if type == "canny" else ""))  # fmt: skip
    return Image.fromarray(np.ascontiguousarray(out), "RGB")


def _gray_to_rgb(gray: np.ndarray) -> np.ndarray:
    return np.repeat(gray[:, :, None], 3, axis=2)


def _soft_edges(rgb: np.ndarray) -> np.ndarray:
    """Smooth edge strength (Sobel on a blurred image, normalised): what HED/PiDiNet maps look like."""
    gray = cv2.GaussianBlur(cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY), (0, 0), 1.5).astype(np.float32)
    magnitude = cv2.magnitude(cv2.Sobel(gray, cv2.CV_32F, 1, 0), cv2.Sobel(gray, cv2.CV_32F, 0, 1))
    top = float(magnitude.max())
    return np.zeros_like(gray, dtype=np.uint8) if top == 0 else (magnitude * (255.0 / top)).astype(np.uint8)
