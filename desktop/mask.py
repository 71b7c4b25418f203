"""A simple mask brush for inpainting: paint over the image what should be repainted."""

from __future__ import annotations

from PySide6.QtCore import QPoint, QPointF, Qt
from PySide6.QtGui import QColor, QImage, QMouseEvent, QPainter, QPaintEvent, QPen, QPixmap
from PySide6.QtWidgets import QDialog, QDialogButtonBox, QHBoxLayout, QLabel, QPushButton, QSlider, QVBoxLayout, QWidget

from desktop.gallery_model import png_bytes

VIEW = 384  # the canvas is shown at least this big; the mask keeps the image's own size


class MaskCanvas(QWidget):
    """The image with a red overlay where the mask is white."""

    def __init__(self, image: QPixmap, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.image = image
        self.scale = max(1.0, VIEW / max(image.width(), image.height()))
        self.setFixedSize(int(image.width() * self.scale), int(image.height() * self.scale))
        self.painted = QImage(image.size(), QImage.Format.Format_Grayscale8)
        self.painted.fill(0)
        self.brush = max(2, image.width() // 8)
        self._last: QPointF | None = None

    def stroke(self, a: QPointF, b: QPointF) -> None:
        """Paint white from `a` to `b` (canvas coordinates)."""
        painter = QPainter(self.painted)
        pen = QPen(QColor(255, 255, 255), self.brush, Qt.PenStyle.SolidLine, Qt.PenCapStyle.RoundCap)
        painter.setPen(pen)
        painter.drawLine(a / self.scale, b / self.scale)
        painter.end()
        self.update()

    def clear(self) -> None:
        self.painted.fill(0)
        self.update()

    def mousePressEvent(self, event: QMouseEvent) -> None:
        self._last = event.position()
        self.stroke(self._last, self._last)

    def mouseMoveEvent(self, event: QMouseEvent) -> None:
        if self._last is not None:
            self.stroke(self._last, event.position())
            self._last = event.position()

    def mouseReleaseEvent(self, event: QMouseEvent) -> None:
        self._last = None

    def paintEvent(self, event: QPaintEvent) -> None:
        painter = QPainter(self)
        painter.drawPixmap(self.rect(), self.image)
        overlay = QImage(self.painted.size(), QImage.Format.Format_ARGB32)
        overlay.fill(QColor(255, 0, 0))
        overlay.setAlphaChannel(self.painted)
        painter.setOpacity(0.5)
        painter.drawImage(self.rect(), overlay)
        painter.end()


class MaskEditor(QDialog):
    """Paint the mask; OK gives it (white = repaint) at the image's size."""

    def __init__(self, image_path: str, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setWindowTitle("Paint what to repaint")
        self.canvas = MaskCanvas(QPixmap(image_path), self)
        size = QSlider(Qt.Orientation.Horizontal, minimum=1, maximum=max(2, self.canvas.image.width() // 2))
        size.setValue(self.canvas.brush)
        size.valueChanged.connect(lambda v: setattr(self.canvas, "brush", v))
        clear = QPushButton("Clear")
        clear.clicked.connect(self.canvas.clear)
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Ok | QDialogButtonBox.StandardButton.Cancel)
        buttons.accepted.connect(self.accept)
        buttons.rejected.connect(self.reject)
        tools = QHBoxLayout()
        tools.addWidget(QLabel("Brush"))
        tools.addWidget(size, 1)
        tools.addWidget(clear)
        layout = QVBoxLayout(self)
        layout.addWidget(self.canvas, 0, Qt.AlignmentFlag.AlignCenter)
        layout.addLayout(tools)
        layout.addWidget(buttons)

    def paint_line(self, a: QPoint, b: QPoint) -> None:
        """A brush stroke in image pixels (for scripts and tests)."""
        s = self.canvas.scale
        self.canvas.stroke(QPointF(a) * s, QPointF(b) * s)

    def mask_png(self) -> bytes:
        return png_bytes(self.canvas.painted)
