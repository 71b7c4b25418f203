"""One tiling function for every picture made of pictures: a job's grid, and the bot's search results."""

from __future__ import annotations

import io

from PIL import Image


def tile(images: list[bytes], *, size: int | None = None, max_cols: int | None = None) -> bytes:
    """Encoded images tiled into one PNG, left to right, top to bottom.

    `size`: scale each to a square this big (else every cell is the first image's size).
    `max_cols`: at most this many per row (else a near-square grid, the dreambot's default reply).
    """
    pictures = [Image.open(io.BytesIO(data)).convert("RGB") for data in images]
    cols = 1
    while cols * cols < len(pictures):
        cols += 1
    if max_cols is not None:
        cols = min(max_cols, len(pictures))
    rows = (len(pictures) + cols - 1) // cols
    w, h = (size, size) if size is not None else pictures[0].size
    sheet = Image.new("RGB", (cols * w, rows * h), (0, 0, 0))
    for i, im in enumerate(pictures):
        sheet.paste(im if im.size == (w, h) else im.resize((w, h)), ((i % cols) * w, (i // cols) * h))
    buf = io.BytesIO()
    sheet.save(buf, format="PNG")
    return buf.getvalue()
