"""The gallery grid's model: sparse pages of image records and lazily loaded thumbnails.

Only the rows a view asks for are fetched (pages of `PAGE` records) and only
visible thumbnails are decoded, on pool threads, newest request first. So a
100k-image gallery costs one count query and a screenful of thumbnails.
"""

from __future__ import annotations

import contextlib
import threading
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Protocol

from PySide6.QtCore import (
    QAbstractListModel,
    QBuffer,
    QIODevice,
    QModelIndex,
    QObject,
    QPersistentModelIndex,
    QRect,
    QSize,
    Qt,
    Signal,
)
from PySide6.QtGui import QColor, QImage, QImageReader, QPainter, QPixmap
from PySide6.QtWidgets import QListWidget

from engine.client.answers import ImageRecord

PAGE = 200
THUMB = 128
RecordRole = Qt.ItemDataRole.UserRole + 1


def png_bytes(image: QImage) -> bytes:
    """A QImage as PNG file bytes (what the engine's upload and image-search endpoints take)."""
    buffer = QBuffer()
    buffer.open(QIODevice.OpenModeFlag.WriteOnly)
    image.save(buffer, "PNG")
    return bytes(buffer.data())


def thumbnail_strip(icon: int, height: int) -> QListWidget:
    """One row of thumbnails that scrolls sideways (a job's results, the reference pictures, while-you-wait)."""
    strip = QListWidget()
    strip.setViewMode(QListWidget.ViewMode.IconMode)
    strip.setIconSize(QSize(icon, icon))
    strip.setFixedHeight(height)
    strip.setFlow(QListWidget.Flow.LeftToRight)
    strip.setWrapping(False)
    return strip


class ImageSource(Protocol):
    """Where the grid's records come from (the engine's gallery listing, a search, a benchmark)."""

    def page(self, offset: int, limit: int) -> tuple[int, list[ImageRecord]]:
        """(total, records[offset:offset+limit]); called on a pool thread."""
        ...

    def image_bytes(self, record: ImageRecord) -> bytes | None:
        """The image file when it is not readable at `record.path` (engine on another machine)."""
        ...


class ThumbnailLoader(QObject):
    """Decodes thumbnails on pool threads, most recent request first; drops requests nobody waits for."""

    loaded = Signal(int, QImage)

    def __init__(self, source_of: Callable[[], ImageSource], size: int = THUMB, threads: int = 2) -> None:
        super().__init__()
        self.source_of = source_of
        self.size = size
        self.threads = threads
        # PySide creates its enum classes on first use, and two pool threads creating one at once crashed the process
        # (seen in QPainter.fillRect's overloads, badging two stacks at once): scale and badge one here, on this
        # thread, before any pool thread does.
        blank = QImage(size, size, QImage.Format.Format_ARGB32)
        stack_badge(blank.scaled(size, size, Qt.AspectRatioMode.KeepAspectRatio), 2)
        self.pool = ThreadPoolExecutor(threads, thread_name_prefix="thumbnails")
        self._stack: OrderedDict[int, ImageRecord] = OrderedDict()
        self._lock = threading.Lock()
        self._running = 0
        self.max_waiting = 256

    def request(self, record: ImageRecord) -> None:
        with self._lock:
            self._stack[record.id] = record
            self._stack.move_to_end(record.id)
            while len(self._stack) > self.max_waiting:  # scrolled past long ago
                self._stack.popitem(last=False)
            if self._running >= self.threads:
                return
            self._running += 1
        self.pool.submit(self._drain)

    def _next(self) -> ImageRecord | None:
        """The newest waiting request, or None (and this drain ends)."""
        with self._lock:
            if not self._stack:
                self._running -= 1
                return None
            return self._stack.popitem(last=True)[1]

    def _drain(self) -> None:
        while (record := self._next()) is not None:
            try:
                image = self.decode(record)
            except Exception:  # an unreadable file shows the placeholder
                image = QImage()
            with contextlib.suppress(RuntimeError):  # the window closed meanwhile
                self.loaded.emit(thumb_key(record), image)

    def close(self) -> None:
        with self._lock:
            self._stack.clear()
        self.pool.shutdown(wait=True, cancel_futures=True)

    def decode(self, record: ImageRecord) -> QImage:
        path = Path(record.path)
        if path.is_file():
            reader = QImageReader(str(path))
        else:
            data = self.source_of().image_bytes(record)
            image = QImage.fromData(data or b"")
            return stack_badge(
                image.scaled(self.size, self.size, Qt.AspectRatioMode.KeepAspectRatio), record.stack_size
            )
        size = reader.size()
        if size.isValid():
            reader.setScaledSize(size.scaled(self.size, self.size, Qt.AspectRatioMode.KeepAspectRatio))
        return stack_badge(reader.read(), record.stack_size)


def thumb_key(record: ImageRecord) -> int:
    """The thumbnail cache's key: a stack's badged thumbnail is kept apart from the plain one (negative id)."""
    return -record.id if record.stack_size and record.stack_size > 1 else record.id


def stack_badge(image: QImage, size: int | None) -> QImage:
    """A stacked thumbnail says how many images lie under it (×4 in its corner)."""
    if not size or size < 2 or image.isNull():
        return image
    image = image.convertToFormat(QImage.Format.Format_ARGB32)
    painter = QPainter(image)
    text = f"×{size}"
    box = QRect(image.width() - 8 * len(text) - 8, 2, 8 * len(text) + 6, 18)
    painter.fillRect(box, QColor(0, 0, 0, 170))
    painter.setPen(QColor(255, 255, 255))
    painter.drawText(box, Qt.AlignmentFlag.AlignCenter, text)
    painter.end()
    return image


class GalleryModel(QAbstractListModel):
    """Rows = images of the current source, newest first; data arrives page by page."""

    page_arrived = Signal(int, int, int, object)
    page_failed = Signal(str)
    loaded = Signal(int)  # total rows, after the first page of a new source

    def __init__(self, parent: QObject | None = None, cache_size: int = 3000) -> None:
        super().__init__(parent)
        self.source: ImageSource | None = None
        self.total = 0
        self.pages: dict[int, list[ImageRecord]] = {}
        self.row_of: dict[int, int] = {}
        self.pool = ThreadPoolExecutor(2, thread_name_prefix="gallery-pages")
        self.generation = 0
        self._asked: set[int] = set()
        self.thumbs: OrderedDict[int, QPixmap] = OrderedDict()
        self.cache_size = cache_size
        self.loader = ThumbnailLoader(self._source)
        self.loader.loaded.connect(self._thumb_loaded)
        self.page_arrived.connect(self._page_arrived)
        self.placeholder = QPixmap(THUMB, THUMB)
        self.placeholder.fill(QColor(60, 60, 66))

    def _source(self) -> ImageSource:
        assert self.source is not None  # thumbnails are asked for rows of a page, which needs a source
        return self.source

    def set_source(self, source: ImageSource) -> None:
        """Show another listing (a filter changed, a search ran); the first page loads in the background."""
        self.generation += 1
        self.beginResetModel()
        self.source, self.total, self.pages, self.row_of, self._asked = source, 0, {}, {}, set()
        self.endResetModel()
        self._ask(0)

    def refresh(self) -> None:
        if self.source is not None:
            self.set_source(self.source)

    def _ask(self, page: int) -> None:
        if page in self._asked or self.source is None:
            return
        self._asked.add(page)
        self.pool.submit(self._fetch, self.source, self.generation, page)

    def _fetch(self, source: ImageSource, generation: int, page: int) -> None:
        try:
            total, records = source.page(page * PAGE, PAGE)
        except Exception as e:  # reported in the UI; the grid keeps what it has
            with contextlib.suppress(RuntimeError):
                self.page_failed.emit(str(e))
            return
        with contextlib.suppress(RuntimeError):  # the window closed while the page was on its way
            self.page_arrived.emit(generation, page, total, records)

    def _page_arrived(self, generation: int, page: int, total: int, records: list[ImageRecord]) -> None:
        if generation != self.generation:
            return  # an answer for a listing no longer shown
        self.pages[page] = records
        for k, record in enumerate(records):
            self.row_of[record.id] = page * PAGE + k
        if total != self.total:
            self.beginResetModel()
            self.total = total
            self.endResetModel()
        else:
            first = page * PAGE
            self.dataChanged.emit(self.index(first), self.index(first + len(records) - 1))
        if page == 0:
            self.loaded.emit(total)

    def _thumb_loaded(self, key: int, image: QImage) -> None:
        self.thumbs[key] = QPixmap.fromImage(image) if not image.isNull() else self.placeholder
        while len(self.thumbs) > self.cache_size:
            self.thumbs.popitem(last=False)
        row = self.row_of.get(abs(key))
        if row is not None:
            index = self.index(row)
            self.dataChanged.emit(index, index, [Qt.ItemDataRole.DecorationRole])

    def replace(self, record: ImageRecord) -> None:
        """An image changed (favourite): show the new record in place."""
        row = self.row_of.get(record.id)
        page = self.pages.get(row // PAGE) if row is not None else None
        if row is not None and page is not None:
            page[row % PAGE] = record
            self.dataChanged.emit(self.index(row), self.index(row))

    def close(self) -> None:
        """Wait for page fetches and thumbnail decodes still running (the window is closing)."""
        self.generation += 1
        self.loader.close()
        self.pool.shutdown(wait=True, cancel_futures=True)

    def record(self, row: int) -> ImageRecord | None:
        page = self.pages.get(row // PAGE)
        if page is None:
            self._ask(row // PAGE)
            return None
        k = row % PAGE
        return page[k] if k < len(page) else None

    # --- QAbstractListModel ------------------------------------------------------------
    def rowCount(self, parent: QModelIndex | QPersistentModelIndex = QModelIndex()) -> int:  # noqa: B008
        return 0 if parent.isValid() else self.total

    def data(self, index: QModelIndex | QPersistentModelIndex, role: int = Qt.ItemDataRole.DisplayRole) -> Any:
        if not index.isValid():
            return None
        record = self.record(index.row())
        if role == Qt.ItemDataRole.DecorationRole:
            if record is None:
                return self.placeholder
            key = thumb_key(record)
            thumb = self.thumbs.get(key)
            if thumb is None:
                self.loader.request(record)
                return self.placeholder
            self.thumbs.move_to_end(key)
            return thumb
        if record is None:
            return None
        if role == Qt.ItemDataRole.ToolTipRole:
            stack = f" · stack of {record.stack_size}" if record.stack_size and record.stack_size > 1 else ""
            return f"#{record.id} · seed {record.seed}{stack}\n{record.prompt[:300]}"
        if role == RecordRole:
            return record
        if role == Qt.ItemDataRole.SizeHintRole:
            return QSize(THUMB + 8, THUMB + 8)
        return None
