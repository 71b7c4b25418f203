"""Infinite zoom: a chain of outpaint jobs, each widening the last picture, played backwards as a zoom in.

    frame 0      txt2img
    frame k      frame k-1 shrunk by `factor` into the middle, the border outpainted back to full size

A client-side feature: it only submits ordinary outpaint requests, so every
frame lands in the gallery with its parent recorded.
"""

from __future__ import annotations

import io
from collections.abc import Callable

from PIL import Image

from engine.client.clients import EngineClient, EngineError
from engine.client.schema import DreamRequest, image_seed


def _border(size: int, factor: float) -> int:
    """Pixels outpainted on each side: a multiple of 8, so the frame keeps its size exactly."""
    return max(8, round(size * (1 - factor) / 2 / 8) * 8)


def zoom_out_frames(
    engine: EngineClient,
    request: DreamRequest,
    *,
    frames: int,
    factor: float,
    on_frame: Callable[[int, Image.Image], None] | None = None,
) -> list[Image.Image]:
    """`frames` pictures, each the previous one seen from further away (outermost last)."""
    job = engine.wait(engine.submit(request.model_copy(update={"n": 1})).id)
    if job.status != "done":
        raise EngineError(f"frame 0 {job.status}: {job.error or ''}".rstrip(": "))
    image = Image.open(io.BytesIO(engine.image_file(job.images[0].id))).convert("RGB")
    seed = job.images[0].seed
    out = [image]
    if on_frame:
        on_frame(0, image)
    for k in range(1, frames):
        w, h = image.size
        bx, by = _border(w, factor), _border(h, factor)
        inner = image.resize((w - 2 * bx, h - 2 * by), Image.Resampling.LANCZOS)
        buf = io.BytesIO()
        inner.save(buf, format="PNG")
        ref = engine.upload(buf.getvalue()).ref
        # Validated as a whole (not model_copy), so the outpaint sides become a model, not a dict.
        step = DreamRequest.model_validate(request.model_dump() | {
            "mode": "outpaint", "n": 1, "seed": image_seed(seed, k), "init_image": ref, "width": None, "height": None,
            "outpaint": {"left": bx, "right": bx, "top": by, "bottom": by}, "aspect_ratio": None,
        })  # fmt: skip
        job = engine.wait(engine.submit(step).id)
        if job.status != "done":
            raise EngineError(f"frame {k} {job.status}: {job.error or ''}".rstrip(": "))
        image = Image.open(io.BytesIO(engine.image_file(job.images[0].id))).convert("RGB")
        out.append(image)
        if on_frame:
            on_frame(k, image)
    return out


def zoom_in_animation(frames: list[Image.Image], *, factor: float, substeps: int = 6) -> list[Image.Image]:
    """Frames of a smooth zoom from the outermost picture to the first: between two pictures, ever smaller
    middle crops of the wider one, scaled to full size."""
    shown: list[Image.Image] = []
    for wide in reversed(frames[1:]):
        w, h = wide.size
        bx, by = _border(w, factor), _border(h, factor)
        for s in range(substeps):
            t = s / substeps
            box = (bx * t, by * t, w - bx * t, h - by * t)
            shown.append(wide.resize((w, h), Image.Resampling.LANCZOS, box=box))
    shown.append(frames[0])
    return shown


def save_animation(frames: list[Image.Image], path: str, *, fps: int = 12) -> None:
    """An animated GIF or WebP (by the file's extension), looping."""
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=int(1000 / fps), loop=0)
