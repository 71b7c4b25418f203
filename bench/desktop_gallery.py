"""Desktop gallery: time to first paint and scroll frame time for a 100k-image gallery.

    QT_QPA_PLATFORM=offscreen python bench/desktop_gallery.py [--images 100000] [--frames 300]

The real gallery panel (model, view, thumbnail loader) is fed by a synthetic
source: 100k records pointing at a few hundred real PNG files on disk, so
thumbnails are really decoded off the UI thread. Goal: first paint <= 1 s,
scrolling >= 50 fps.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from PySide6.QtGui import QColor, QImage, QPainter
from PySide6.QtWidgets import QApplication

from desktop.engine_link import EngineLink
from desktop.gallery import GalleryPanel
from engine.client.answers import ImageRecord
from engine.client.settings import Settings


class SyntheticSource:
    """`count` records, newest first, cycling over `files` real PNGs."""

    def __init__(self, count: int, files: list[Path]) -> None:
        self.count = count
        self.files = files
        self.now = datetime.now(UTC)

    def page(self, offset: int, limit: int) -> tuple[int, list[ImageRecord]]:
        rows = range(offset, min(offset + limit, self.count))
        return self.count, [self.record(r) for r in rows]

    def record(self, r: int) -> ImageRecord:
        path = str(self.files[r % len(self.files)])
        return ImageRecord(id=self.count - r, path=path, sha256="0" * 64, width=512, height=512, seed=r,
                           prompt=f"synthetic image {r}", created_at=self.now)  # fmt: skip

    def image_bytes(self, record: ImageRecord) -> bytes | None:
        return Path(record.path).read_bytes()


def make_files(folder: Path, n: int) -> list[Path]:
    """n distinct 512x512 PNGs (as large as SD 1.x makes), so decoding costs what it will."""
    files = []
    for i in range(n):
        image = QImage(512, 512, QImage.Format.Format_RGB32)
        image.fill(QColor.fromHsv((i * 37) % 360, 160, 200))
        painter = QPainter(image)
        painter.fillRect(64 + i % 200, 64, 200, 200, QColor.fromHsv((i * 91) % 360, 255, 255))
        painter.end()
        path = folder / f"{i}.png"
        image.save(str(path))
        files.append(path)
    return files


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=100_000)
    parser.add_argument("--files", type=int, default=300)
    parser.add_argument("--frames", type=int, default=300)
    args = parser.parse_args()
    app = QApplication.instance() or QApplication([])
    tmp = Path(tempfile.mkdtemp())
    files = make_files(tmp, args.files)
    panel = GalleryPanel(EngineLink(Settings(home=tmp / "home")))
    panel.resize(1200, 800)
    panel.show()
    app.processEvents()
    view, model = panel.view, panel.model

    start = time.perf_counter()
    model.set_source(SyntheticSource(args.images, files))
    while model.total == 0:  # the first page arrives from its thread
        app.processEvents()
    view.viewport().repaint()  # the first frame with rows in it, painted now
    first_paint = time.perf_counter() - start
    # The first screen complete: every visible thumbnail decoded and painted.
    rows_visible = (view.viewport().width() // view.gridSize().width()) * (
        view.viewport().height() // view.gridSize().height() + 1
    )
    while len(model.thumbs) < min(rows_visible, args.images):
        app.processEvents()
    view.viewport().repaint()
    first_screen = time.perf_counter() - start

    bar = view.verticalScrollBar()
    step = view.gridSize().height() // 2  # half a row per frame: a fast, smooth flick
    frames = []
    for _ in range(args.frames):
        t = time.perf_counter()
        bar.setValue(bar.value() + step)
        app.processEvents()
        view.viewport().repaint()
        frames.append(time.perf_counter() - t)
    median = statistics.median(frames)
    p95 = sorted(frames)[int(len(frames) * 0.95)]
    print(f"gallery of {args.images} images, {args.files} distinct 512x512 PNGs, window 1200x800, "
          f"{rows_visible} thumbnails on screen")  # fmt: skip
    print(f"first paint: {first_paint * 1000:.0f} ms  (goal <= 1000 ms)")
    print(f"first screen of thumbnails complete: {first_screen * 1000:.0f} ms")
    print(f"scrolling: median frame {median * 1000:.1f} ms = {1 / median:.0f} fps, p95 frame {p95 * 1000:.1f} ms "
          f"= {1 / p95:.0f} fps  (goal >= 50 fps); {len(model.pages)} pages of 200 fetched, "
          f"{len(model.thumbs)} thumbnails cached")  # fmt: skip
    panel.link.close()
    model.close()


if __name__ == "__main__":
    main()
