"""The toy world: 64x64 images of one coloured shape on a plain background.

Deterministic (every sample is a function of its index and a seed), so the
training scripts, the tests and the benchmarks all see the same world. Pure
numpy + Pillow: the engine never imports this, only training, tests and bench.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

SIZE = 64
_SUPERSAMPLE = 4  # draw at 4x and downsample, for anti-aliased edges

SHAPES = ("circle", "square", "triangle", "star")

# Six hues 60 degrees apart on the colour wheel: neighbouring hues (blue vs
# purple, red vs orange) were the toy model's weak spot in the feasibility run.
SHAPE_COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (225, 35, 35),
    "yellow": (240, 215, 30),
    "green": (40, 185, 50),
    "cyan": (30, 210, 220),
    "blue": (45, 95, 245),
    "purple": (195, 45, 205),
}
BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "white": (240, 240, 240),
    "black": (18, 18, 18),
    "gray": (125, 125, 125),
    "blue": (25, 45, 150),
}
# Pairs with too little contrast to be a fair test (and same-colour pairs).
EXCLUDED_PAIRS = {("blue", "blue"), ("blue", "black"), ("yellow", "white"), ("purple", "blue")}

# Held out of training: generalisation is measured on these.
HELD_OUT = (
    ("circle", "green", "black"),
    ("square", "purple", "white"),
    ("triangle", "cyan", "gray"),
    ("star", "red", "blue"),
    ("circle", "yellow", "gray"),
    ("square", "blue", "white"),
)

TEMPLATES = (
    "a {colour} {shape} on a {background} background",
    "a {colour} {shape} against {background}",
    "{colour} {shape}, {background} background",
    "a picture of a {colour} {shape} on {background}",
    "{background} background with a {colour} {shape}",
)


@dataclass(frozen=True)
class Scene:
    """What an image shows; the caption is derived from it."""

    shape: str
    colour: str
    background: str

    def caption(self, template: int = 0) -> str:
        return TEMPLATES[template].format(colour=self.colour, shape=self.shape, background=self.background)


def all_scenes() -> list[Scene]:
    return [
        Scene(s, c, b)
        for s, c, b in itertools.product(SHAPES, SHAPE_COLOURS, BACKGROUNDS)
        if (c, b) not in EXCLUDED_PAIRS
    ]


def seen_scenes() -> list[Scene]:
    held = {Scene(*h) for h in HELD_OUT}
    return [s for s in all_scenes() if s not in held]


def held_out_scenes() -> list[Scene]:
    return [Scene(*h) for h in HELD_OUT]


def _polygon(shape: str, cx: float, cy: float, r: float) -> list[tuple[float, float]]:
    if shape == "square":
        h = r * 0.85
        return [(cx - h, cy - h), (cx + h, cy - h), (cx + h, cy + h), (cx - h, cy + h)]
    if shape == "triangle":
        angles = [-90, 30, 150]
        return [(cx + r * np.cos(np.radians(a)), cy + r * np.sin(np.radians(a))) for a in angles]
    if shape == "star":
        pts = []
        for k in range(10):
            rad = r if k % 2 == 0 else r * 0.45
            a = np.radians(-90 + 36 * k)
            pts.append((cx + rad * np.cos(a), cy + rad * np.sin(a)))
        return pts
    raise ValueError(f"unknown shape {shape!r}")


def render(scene: Scene, rng: np.random.Generator) -> Image.Image:
    """Draw `scene` at a random position and size (and a slight colour jitter)."""
    return render_with_mask(scene, rng)[0]


def render_with_mask(scene: Scene, rng: np.random.Generator) -> tuple[Image.Image, Image.Image]:
    """`render`, plus the shape's silhouette (white on black, "L"): a control map for that image."""
    s = SIZE * _SUPERSAMPLE
    r = rng.uniform(11, 21) * _SUPERSAMPLE
    cx = rng.uniform(r + 2, s - r - 2)
    cy = rng.uniform(r + 2, s - r - 2)
    jitter = rng.integers(-12, 13, size=6)
    bg = tuple(int(np.clip(v + j, 0, 255)) for v, j in zip(BACKGROUNDS[scene.background], jitter[:3]))
    fg = tuple(int(np.clip(v + j, 0, 255)) for v, j in zip(SHAPE_COLOURS[scene.colour], jitter[3:]))
    img = Image.new("RGB", (s, s), bg)
    mask = Image.new("L", (s, s), 0)
    for canvas, fill in ((img, fg), (mask, 255)):
        draw_shape(canvas, scene.shape, cx, cy, r, fill)
    return img.resize((SIZE, SIZE), Image.LANCZOS), mask.resize((SIZE, SIZE), Image.LANCZOS)


def draw_shape(canvas: Image.Image, shape: str, cx: float, cy: float, r: float, fill: object) -> None:
    draw = ImageDraw.Draw(canvas)
    if shape == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
    else:
        draw.polygon(_polygon(shape, cx, cy, r), fill=fill)


def sample(index: int, *, scenes: list[Scene], seed: int = 0) -> tuple[Image.Image, Scene, str]:
    """The `index`-th sample of a dataset over `scenes`: image, scene, caption."""
    rng = np.random.default_rng([seed, index])
    scene = scenes[int(rng.integers(len(scenes)))]
    caption = scene.caption(int(rng.integers(len(TEMPLATES))))
    return render(scene, rng), scene, caption


def dataset(count: int, *, scenes: list[Scene], seed: int = 0) -> tuple[np.ndarray, list[Scene], list[str]]:
    """`count` samples as a uint8 array (N, 64, 64, 3) with their scenes and captions."""
    images = np.empty((count, SIZE, SIZE, 3), dtype=np.uint8)
    out_scenes: list[Scene] = []
    captions: list[str] = []
    for i in range(count):
        img, scene, caption = sample(i, scenes=scenes, seed=seed)
        images[i] = np.asarray(img)
        out_scenes.append(scene)
        captions.append(caption)
    return images, out_scenes, captions


def control_disc(size: int = SIZE, centre: tuple[float, float] = (11, 32), radius: float = 10) -> Image.Image:
    """A ControlNet map: a white disc on black, centred at `centre` of a 64 px frame (default: the middle of
    the left third), drawn at `size` px."""
    image = Image.new("RGB", (size, size))
    x, y, r = (v * size / SIZE for v in (*centre, radius))
    ImageDraw.Draw(image).ellipse([x - r, y - r, x + r, y + r], fill=(255, 255, 255))
    return image
