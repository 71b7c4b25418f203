"""Steering with images on the Generate tab: the ControlNet box (a picture, how to read it, the map the engine will
use) and the strip of reference pictures."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from PySide6.QtCore import Qt
from PySide6.QtGui import QGuiApplication, QIcon, QPixmap
from PySide6.QtWidgets import (
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QListWidgetItem,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from desktop.drops import PictureDrops
from desktop.engine_link import EngineLink
from desktop.gallery_model import thumbnail_strip
from engine.client.answers import ImageRecord
from engine.client.controls import CONTROL_TYPES, MAX_CONTROL_WEIGHT, MAX_STYLE_WEIGHT
from engine.client.schema import ControlUnit

MAP_SIZE = 96
IMAGE_FILES = "Images (*.png *.jpg *.jpeg *.webp)"


class ControlBox(PictureDrops, QGroupBox):
    """One control: its picture (choose, drop or paste one), its type, weight and span of the steps, and the
    preprocessed map, fetched from the engine's preview route whenever the picture or the type changes."""

    def __init__(self, link: EngineLink, parent: QWidget | None = None) -> None:
        super().__init__("ControlNet", parent)
        self.link = link
        self.ref: str | None = None  # the picture, as the engine names it (an upload or a gallery image)
        self.problem: str | None = None  # why the last map could not be made
        self.setAcceptDrops(True)
        self.picture = QLabel("none — drop a picture here")
        self.picture.setWordWrap(True)
        self.choose = QPushButton("Choose…")
        self.paste = QPushButton("Paste")
        self.clear = QPushButton("Clear")
        self.type = QComboBox()
        self.type.addItems(list(CONTROL_TYPES))
        self.type.setToolTip("none: the picture already is the map (a silhouette, depth or pose made elsewhere)")
        self.weight = QDoubleSpinBox(minimum=0.0, maximum=MAX_CONTROL_WEIGHT, value=1.0, singleStep=0.1)
        self.start = QDoubleSpinBox(minimum=0.0, maximum=1.0, value=0.0, singleStep=0.05)
        self.end = QDoubleSpinBox(minimum=0.0, maximum=1.0, value=1.0, singleStep=0.05)
        self.map = QLabel()
        self.map.setFixedSize(MAP_SIZE, MAP_SIZE)
        self.map.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.map.setToolTip("the map the ControlNet will steer with")

        buttons = QHBoxLayout()
        for w in (self.choose, self.paste, self.clear):
            buttons.addWidget(w)
        span = QHBoxLayout()
        for w in (self.start, QLabel("to"), self.end):
            span.addWidget(w)
        form = QFormLayout()
        form.addRow("Picture", self.picture)
        form.addRow("", buttons)
        form.addRow("Type", self.type)
        form.addRow("Weight", self.weight)
        form.addRow("Steps", span)
        row = QHBoxLayout(self)
        row.addLayout(form, 1)
        row.addWidget(self.map)

        self.choose.clicked.connect(self.choose_file)
        self.paste.clicked.connect(lambda: self.use_mime(QGuiApplication.clipboard().mimeData()))
        self.clear.clicked.connect(self.clear_picture)
        self.type.currentTextChanged.connect(lambda _: self.refresh_map())
        self._update()

    def argv(self) -> list[str]:
        """The control as `!dream` flags (none without a picture)."""
        if self.ref is None:
            return []
        return ["--control", self.ref, "--control_type", self.type.currentText(), "--control_weight",
                f"{self.weight.value():g}", "--control_start", f"{self.start.value():g}", "--control_end",
                f"{self.end.value():g}"]  # fmt: skip

    def set_ref(self, ref: str, name: str) -> None:
        self.ref, self.problem = ref, None
        self.picture.setText(name)
        self._update()
        self.refresh_map()

    def reuse(self, control: dict[str, Any]) -> None:
        """A control an image recorded (its parameters' `controls`), back in the box."""
        unit = ControlUnit.model_validate(control)
        self.type.blockSignals(True)
        self.type.setCurrentText(unit.type)
        self.type.blockSignals(False)
        self.weight.setValue(unit.weight)
        self.start.setValue(unit.start)
        self.end.setValue(unit.end)
        self.set_ref(unit.image, unit.image.replace("gallery:", "#"))

    def use_record(self, record: ImageRecord) -> None:
        self.set_ref(f"gallery:{record.id}", f"#{record.id}")

    def set_file(self, path: Path) -> None:
        try:
            data = path.read_bytes()
        except OSError as e:
            self._show_problem(f"cannot read {path.name}: {e.strerror}")
            return
        self.link.call(lambda c: c.upload(data),
                       lambda upload: self.set_ref(upload.ref, f"{path.name} ({upload.width}×{upload.height})"),
                       self._show_problem)  # fmt: skip

    def choose_file(self) -> None:
        name, _ = QFileDialog.getOpenFileName(self, "Control picture", "", IMAGE_FILES)
        if name:
            self.set_file(Path(name))

    def use_picture(self, path: Path) -> None:
        self.set_file(path)

    def clear_picture(self) -> None:
        self.ref, self.problem = None, None
        self.picture.setText("none — drop a picture here")
        self.map.clear()
        self._update()

    def refresh_map(self) -> None:
        """Ask the engine for the map of the picture as the chosen type reads it."""
        if self.ref is None:
            return
        unit = ControlUnit(image=self.ref, type=self.type.currentText())

        def show(png: bytes) -> None:
            if self.ref != unit.image or self.type.currentText() != unit.type:
                return  # the picture or type changed meanwhile: a newer map is on its way
            pixmap = QPixmap()
            pixmap.loadFromData(png)
            self.problem = None
            self.map.setPixmap(pixmap.scaled(MAP_SIZE, MAP_SIZE, Qt.AspectRatioMode.KeepAspectRatio))
            self.map.setToolTip("the map the ControlNet will steer with")

        self.link.call(lambda c: c.control_preview(unit), show, self._show_problem)

    def _show_problem(self, message: str) -> None:
        self.problem = message
        self.map.clear()
        self.map.setText("⚠")
        self.map.setToolTip(message)

    def _update(self) -> None:
        for w in (self.type, self.weight, self.start, self.end, self.clear):
            w.setEnabled(self.ref is not None)


class ReferenceStrip(PictureDrops, QGroupBox):
    """Reference pictures (Midjourney's --sref): a strip of thumbnails to drop or add pictures to, and how strongly
    they steer (--sw)."""

    def __init__(self, link: EngineLink, parent: QWidget | None = None) -> None:
        super().__init__("Reference pictures", parent)
        self.link = link
        self.refs: list[str] = []  # as the engine names them, in order
        self.setAcceptDrops(True)
        self.strip = thumbnail_strip(48, 72)
        self.strip.setToolTip("drop pictures here: their look carries into the result")
        self.add = QPushButton("Add…")
        self.clear = QPushButton("Clear")
        self.weight = QSpinBox(minimum=0, maximum=MAX_STYLE_WEIGHT, value=100, singleStep=25)
        self.weight.setToolTip("how strongly they steer (--sw; 100: the adapter's full strength)")
        row = QHBoxLayout()
        for w in (self.add, self.clear, QLabel("--sw"), self.weight):
            row.addWidget(w)
        layout = QVBoxLayout(self)
        layout.addWidget(self.strip)
        layout.addLayout(row)
        self.add.clicked.connect(self.choose_files)
        self.clear.clicked.connect(self.clear_all)

    def argv(self) -> list[str]:
        return ["--sw", str(self.weight.value()), "--sref", *self.refs] if self.refs else []

    def add_ref(self, ref: str, name: str, data: bytes | None = None) -> None:
        self.refs.append(ref)
        pixmap = QPixmap()
        if data is not None:
            pixmap.loadFromData(data)
        self.strip.addItem(QListWidgetItem(QIcon(pixmap), name))

    def add_file(self, path: Path) -> None:
        try:
            data = path.read_bytes()
        except OSError as e:
            self.strip.setToolTip(f"cannot read {path.name}: {e.strerror}")
            return
        self.link.call(lambda c: c.upload(data), lambda upload: self.add_ref(upload.ref, path.name, data),
                       lambda message: self.strip.setToolTip(f"⚠ {path.name}: {message}"))  # fmt: skip

    def choose_files(self) -> None:
        names, _ = QFileDialog.getOpenFileNames(self, "Reference pictures", "", IMAGE_FILES)
        for name in names:
            self.add_file(Path(name))

    def reuse(self, references: list[dict[str, Any]], style_weight: int) -> None:
        self.clear_all()
        for reference in references:
            self.add_ref(str(reference["image"]), str(reference["image"]).replace("gallery:", "#"))
        self.weight.setValue(style_weight)

    def clear_all(self) -> None:
        self.refs.clear()
        self.strip.clear()

    def use_picture(self, path: Path) -> None:
        self.add_file(path)
