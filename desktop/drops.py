"""Pictures dropped or pasted onto a widget: one way for the init image, the ControlNet box and the reference strip."""

from __future__ import annotations

import tempfile
from pathlib import Path

from PySide6.QtCore import QMimeData
from PySide6.QtGui import QDragEnterEvent, QDropEvent

from desktop.gallery_model import png_bytes


def picture_file(mime: QMimeData) -> Path | None:
    """The picture a drop or a paste carries, as a file on this machine: the dropped file itself, or pasted pixels
    kept in a temporary PNG (the mask brush paints over a file); None if it carries none."""
    for url in mime.urls():
        if url.isLocalFile():
            return Path(url.toLocalFile())
    if mime.hasImage():
        with tempfile.NamedTemporaryFile(prefix="dreamhall-pasted-", suffix=".png", delete=False) as f:
            f.write(png_bytes(mime.imageData()))
        return Path(f.name)
    return None


class PictureDrops:
    """Mixed into a widget (before its Qt class): a dropped picture goes to its `use_picture`."""

    def use_picture(self, path: Path) -> None:
        raise NotImplementedError

    def use_mime(self, mime: QMimeData) -> bool:
        """A dropped or pasted file or picture is used; False if there is none."""
        path = picture_file(mime)
        if path is not None:
            self.use_picture(path)
        return path is not None

    def dragEnterEvent(self, event: QDragEnterEvent) -> None:
        if event.mimeData().hasUrls() or event.mimeData().hasImage():
            event.acceptProposedAction()

    def dropEvent(self, event: QDropEvent) -> None:
        if self.use_mime(event.mimeData()):
            event.acceptProposedAction()
