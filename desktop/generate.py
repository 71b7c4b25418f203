"""The Generate tab: a compact parameter panel on the left, a large preview and the results on the right.

The prompt box also takes the `!dream` grammar: a command pasted from
Discord (`"a red circle" -n 4 -S 42`) overrides the fields it names. An init
image comes from the gallery, a file (Choose…), a drop or a paste.

Over 450 lines on purpose: one panel's widgets, their layout and the request they build are one job
(a form), read top to bottom as the window shows it; the mask brush and the engine calls live apart.
"""

from __future__ import annotations

import base64
import getpass
from pathlib import Path
from typing import Any

from PySide6.QtCore import QRegularExpression, QSettings, Qt, Signal
from PySide6.QtGui import (
    QGuiApplication,
    QKeySequence,
    QPixmap,
    QRegularExpressionValidator,
    QResizeEvent,
    QShortcut,
)
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QFrame,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QListWidget,
    QListWidgetItem,
    QPlainTextEdit,
    QProgressBar,
    QPushButton,
    QScrollArea,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from desktop.control import ControlBox, ReferenceStrip
from desktop.drops import PictureDrops
from desktop.engine_link import EngineLink
from desktop.extras import ExtrasBox
from desktop.gallery_model import thumbnail_strip
from desktop.mask import MaskEditor
from engine.client.answers import Event, ImageInfo, ImageRecord, ModelList
from engine.client.dream_args import DreamArgsError, parse_argv, split
from engine.client.samplers import SAMPLER_KEYS, SAMPLERS
from engine.client.schema import IMPORTED_SOURCES, DreamRequest, Requester, default_of
from engine.client.waiting import nearest_query, worth_showing

THUMB = 128
PANEL_WIDTH = 380  # the parameter panel; the preview takes the rest
IMAGE_FILES = "Images (*.png *.jpg *.jpeg *.webp)"


class Preview(QLabel):
    """The large picture: the latest result (or step preview), scaled to fit and keeping its aspect ratio."""

    def __init__(self) -> None:
        super().__init__(alignment=Qt.AlignmentFlag.AlignCenter)
        self.setMinimumSize(256, 256)
        self._pixmap = QPixmap()

    def show_pixmap(self, pixmap: QPixmap) -> None:
        self._pixmap = pixmap
        self._fit()

    def resizeEvent(self, event: QResizeEvent) -> None:
        super().resizeEvent(event)
        self._fit()

    def _fit(self) -> None:
        if not self._pixmap.isNull():
            # Small pictures (the toy model's 64 px) grow without blurring: nearest-neighbour.
            mode = Qt.TransformationMode.FastTransformation
            super().setPixmap(self._pixmap.scaled(self.size(), Qt.AspectRatioMode.KeepAspectRatio, mode))


def requester() -> Requester:
    return Requester(source="desktop", user=getpass.getuser())


class GeneratePanel(PictureDrops, QWidget):
    """Prompt, parameters, Generate/Cancel, progress with previews, and the results of the last job."""

    image_done = Signal(object)  # ImageInfo, as each image of a job finishes
    message = Signal(str)  # one line for the status bar

    def __init__(self, link: EngineLink, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.link = link
        link.ready.connect(lambda _: self.refresh_models())
        self.job_id: str | None = None  # the job this panel follows, until its event stream ends
        self.asked: DreamRequest | None = None  # its request, and whether it has started
        self.started = False
        self.told_end: str | None = None  # the last job whose end (done, failed, cancelled) was shown
        self.init_ref: str | None = None
        self.init_record: ImageRecord | None = None  # when the init image is a gallery image
        self.init_path: str | None = None  # its file on this machine (the mask brush paints over it)
        self.init_name = ""
        self.mask_ref: str | None = None
        self.found: str | None = None  # the running job was answered from the gallery: when its images were made
        self.setAcceptDrops(True)

        self.prompt = QPlainTextEdit(
            placeholderText='a red circle on a blue background   (or a !dream command: "…" -n 4 -S 42)'
        )
        self.prompt.setMaximumHeight(90)
        self.negative = QLineEdit(placeholderText="what to avoid (-N)")
        self.count = QSpinBox(minimum=1, maximum=16, value=4)
        # Seeds go to 2**32 - 1, past what a (signed 32-bit) QSpinBox holds; the parser checks the range.
        self.seed = QLineEdit(placeholderText="seed")
        self.seed.setValidator(QRegularExpressionValidator(QRegularExpression(r"\d{0,10}")))
        self.random_seed = QCheckBox("random", checked=True)
        self.copy_seed = QPushButton("Copy")
        max_side = link.settings.limits.max_side  # what the engine makes: its own check, read here
        self.width_box = QSpinBox(minimum=0, maximum=max_side, singleStep=64)
        self.height_box = QSpinBox(minimum=0, maximum=max_side, singleStep=64)
        for box in (self.width_box, self.height_box):
            box.setSpecialValueText("model default")
        self.steps = QSpinBox(minimum=1, maximum=150, value=default_of("steps"))
        self.cfg = QDoubleSpinBox(minimum=0.0, maximum=30.0, value=default_of("cfg_scale"), singleStep=0.5)
        self.sampler = QComboBox()
        self.sampler.addItems(list(SAMPLERS))
        self.sampler.setCurrentText(default_of("sampler"))
        # The engine's shelf fills it once the engine answers; a typed path works too (a local user's own file).
        self.model = QComboBox(editable=True, insertPolicy=QComboBox.InsertPolicy.NoInsert)
        self.model.lineEdit().setPlaceholderText("engine default")
        self.model.setToolTip("a model on the engine's shelf (dreamhall models), or a checkpoint file or folder")
        self.strength = QDoubleSpinBox(minimum=0.0, maximum=1.0, value=0.75, singleStep=0.05)
        self.init_label = QLabel("none")
        self.init_label.setWordWrap(True)
        self.choose_init = QPushButton("Choose…")
        self.choose_init.setToolTip("An init image from a file (or drop one here, or paste with Ctrl+V)")
        self.paint_mask = QPushButton("Paint mask…")
        self.clear_init = QPushButton("Clear")
        self.control = ControlBox(link)
        self.references = ReferenceStrip(link)
        self.extras = ExtrasBox(link)
        self.generate_button = QPushButton("Generate  (Ctrl+Enter)")
        self.cancel_button = QPushButton("Cancel", enabled=False)
        self.progress = QProgressBar()
        self.state = QLabel("Ready.")
        self.preview = Preview()
        self.results = thumbnail_strip(THUMB, THUMB + 40)
        self.results.setMovement(QListWidget.Movement.Static)
        self.results.currentItemChanged.connect(self._show_result)
        # while the job waits behind others: the nearest images already made (engine.client.waiting)
        self.waiting_label = QLabel("While you wait, from your gallery:")
        self.waiting = thumbnail_strip(THUMB // 2, THUMB // 2 + 30)
        self.waiting.currentItemChanged.connect(self._show_result)
        self._show_waiting([])

        seed_row = QHBoxLayout()
        for w in (self.seed, self.random_seed, self.copy_seed):
            seed_row.addWidget(w)
        size_row = QHBoxLayout()
        for w in (self.width_box, QLabel("×"), self.height_box):
            size_row.addWidget(w)
        init_row = QHBoxLayout()
        for w in (self.choose_init, self.paint_mask, self.clear_init):
            init_row.addWidget(w)
        form = QFormLayout()
        form.setFieldGrowthPolicy(QFormLayout.FieldGrowthPolicy.AllNonFixedFieldsGrow)
        form.addRow("Prompt", self.prompt)
        form.addRow("Negative", self.negative)
        form.addRow("Images", self.count)
        form.addRow("Seed", seed_row)
        form.addRow("Size", size_row)
        form.addRow("Steps", self.steps)
        form.addRow("CFG scale", self.cfg)
        form.addRow("Sampler", self.sampler)
        form.addRow("Model", self.model)
        form.addRow("Init image", self.init_label)
        form.addRow("", init_row)
        form.addRow("Strength", self.strength)
        buttons = QHBoxLayout()
        buttons.addWidget(self.generate_button)
        buttons.addWidget(self.cancel_button)
        panel = QWidget()
        panel.setFixedWidth(PANEL_WIDTH)
        left = QVBoxLayout(panel)
        left.setContentsMargins(0, 0, 0, 0)
        left.addLayout(form)
        left.addWidget(self.control)
        left.addWidget(self.references)
        left.addWidget(self.extras)
        left.addLayout(buttons)
        left.addWidget(self.progress)
        left.addWidget(self.state)
        left.addStretch(1)
        right = QVBoxLayout()
        right.addWidget(self.preview, 1)
        right.addWidget(self.results)
        right.addWidget(self.waiting_label)
        right.addWidget(self.waiting)
        layout = QHBoxLayout(self)
        # The form grew past a small window's height (ControlNet, references): it scrolls instead of growing the window.
        form_scroll = QScrollArea(widgetResizable=True)
        form_scroll.setFrameShape(QFrame.Shape.NoFrame)
        form_scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        form_scroll.setWidget(panel)
        form_scroll.setFixedWidth(PANEL_WIDTH + form_scroll.verticalScrollBar().sizeHint().width())
        layout.addWidget(form_scroll)
        layout.addLayout(right, 1)

        self.generate_button.clicked.connect(self.generate)
        self.cancel_button.clicked.connect(self.cancel)
        self.copy_seed.clicked.connect(lambda: QGuiApplication.clipboard().setText(self.seed.text()))
        self.random_seed.toggled.connect(lambda on: self.seed.setEnabled(not on))
        self.seed.setEnabled(False)
        self.clear_init.clicked.connect(self.clear_init_image)
        self.choose_init.clicked.connect(self.choose_init_file)
        QShortcut(QKeySequence.StandardKey.Paste, self, activated=self.paste_init)
        self.paint_mask.clicked.connect(self.open_mask_editor)
        for keys in ("Ctrl+Return", "Ctrl+Enter"):
            QShortcut(QKeySequence(keys), self, activated=self.generate)
        self._update_init_widgets()

    def refresh_models(self) -> None:
        """List the engine's checkpoints in the model box (keeping what is typed or chosen)."""

        def fill(listing: ModelList) -> None:
            current = self.model.currentText()
            self.model.clear()
            self.model.addItem("")  # the engine's default
            for entry in listing.checkpoints:
                if entry.problem is None:
                    self.model.addItem(entry.name)
                    tip = entry.family or entry.format
                    self.model.setItemData(self.model.count() - 1, tip, Qt.ItemDataRole.ToolTipRole)
            self.model.lineEdit().setPlaceholderText(f"engine default ({listing.default})")
            self.model.setCurrentText(current)

        self.link.call(lambda c: c.models(), fill, lambda message: self.show_state(f"No model list: {message}"))

    # --- building the request -----------------------------------------------------------
    def argv(self) -> list[str]:
        """The form as `!dream` flags, then the prompt box (whose own flags win)."""
        # --sref takes every word up to the next flag: it goes first, so the form's flags end its list.
        argv: list[str] = [*self.references.argv(), "-n", str(self.count.value()), "-s", str(self.steps.value()),
                           "-C", f"{self.cfg.value():g}", "-A", self.sampler.currentText()]  # fmt: skip
        if not self.random_seed.isChecked() and self.seed.text():
            argv += ["-S", self.seed.text()]
        if self.width_box.value():
            argv += ["-W", str(self.width_box.value())]
        if self.height_box.value():
            argv += ["-H", str(self.height_box.value())]
        if self.negative.text().strip():
            argv.append(f"--negative={self.negative.text().strip()}")
        if self.model.currentText().strip():
            argv += ["-m", self.model.currentText().strip()]
        if self.init_ref is not None:
            argv += ["-I", self.init_ref, "-f", f"{self.strength.value():g}"]
            if self.mask_ref is not None:
                argv += ["-M", self.mask_ref]
        argv += self.control.argv() + self.extras.argv()
        text = self.prompt.toPlainText().strip()
        try:
            return argv + split(text)
        except DreamArgsError:  # a plain prompt with a stray quote: all of it is prompt
            return [*argv, "--", text]

    def request(self) -> DreamRequest:
        return parse_argv(self.argv(), requester=requester())

    # --- actions ------------------------------------------------------------------------
    def generate(self) -> None:
        try:
            request = self.request()
        except DreamArgsError as e:
            self.show_state(f"⚠ {e}")
            return
        self.submit(request)

    def submit(self, request: DreamRequest) -> None:
        """Queue `request` (from the form, or a gallery action) and follow it here."""
        if self.job_id is not None:
            self.show_state("⚠ A job is still running here; cancel it or wait.")
            return
        request = request.model_copy(update={"preview": True})
        self.asked, self.started = request, False
        self._show_waiting([])
        self.results.clear()
        self.progress.setValue(0)
        self.generate_button.setEnabled(False)
        self.show_state("Sending…")
        self.link.call(lambda c: c.submit(request), self._accepted, self._failed)

    def _accepted(self, accepted: Any) -> None:
        self.job_id = accepted.id
        self.cancel_button.setEnabled(True)
        if self.random_seed.isChecked():
            self.seed.setText(str(accepted.seed))
        self.found = None
        if accepted.found is not None:
            self.found = f"found in the gallery, made {accepted.found.astimezone():%Y-%m-%d %H:%M} (--fresh draws anew)"
            self.show_state(self.found[0].upper() + self.found[1:] + ".")
        elif accepted.position == 0:
            self.show_state("Next up.")
        else:
            self.show_state(f"Queued: position {(accepted.position or 0) + 1}.")
        query = nearest_query(self.asked) if self.asked is not None and worth_showing(accepted) else None
        if query is not None:
            job_id = accepted.id
            self.link.call(lambda c: c.search(**query),
                           lambda found: self._show_waiting([r.image for r in found.results], job_id),
                           lambda _: None)  # fmt: skip
        self.link.follow(accepted.id, self._event, self._ended)

    def _show_waiting(self, images: list[ImageRecord], job_id: str | None = None) -> None:
        """The nearest images while this job waits; gone once it starts (or another one does)."""
        if job_id is not None and (job_id != self.job_id or self.started):
            return
        self.waiting.clear()
        for image in images:
            pixmap = QPixmap(image.path).scaled(THUMB // 2, THUMB // 2, Qt.AspectRatioMode.KeepAspectRatio)
            item = QListWidgetItem(pixmap, f"#{image.id}")
            item.setToolTip(image.prompt[:300])
            item.setData(Qt.ItemDataRole.UserRole, image.id)
            item.setData(Qt.ItemDataRole.UserRole + 1, image.path)
            self.waiting.addItem(item)
        self.waiting.setVisible(bool(images))
        self.waiting_label.setVisible(bool(images))

    def _failed(self, message: str) -> None:
        self.generate_button.setEnabled(True)
        self.show_state(f"⚠ {message}")

    def _event(self, event: Event) -> None:
        if event.type in {"started", "loading", "step"} and not self.started:
            self.started = True
            self._show_waiting([])
        if event.type == "queued" and event.position is not None:
            self.show_state("Next up." if event.position == 0 else f"Queued: position {event.position + 1}.")
        elif event.type == "loading":
            self.show_state(f"Loading model {event.model}…")
        elif event.type in {"started", "step"} and event.total:
            self.progress.setMaximum(event.total)
            self.progress.setValue(event.step or 0)
            self.show_state(f"Dreaming… step {event.step or 0}/{event.total}")
            if event.preview:
                pixmap = QPixmap()
                pixmap.loadFromData(base64.b64decode(event.preview.split(",", 1)[1]))
                self.preview.show_pixmap(pixmap)
        elif event.type == "image" and event.image is not None:
            self._add_result(event.image)
        elif event.type == "done":
            self.progress.setValue(self.progress.maximum())
            self.show_state(f"Done: {self.results.count()} image(s)" + (f", {self.found}." if self.found else "."))
        elif event.type in {"failed", "cancelled"}:
            self.show_state(f"⚠ The job {event.type}" + (f": {event.error}" if event.error else "."))
        if event.type in {"done", "failed", "cancelled"}:
            self.told_end = event.job

    def _ended(self, error: str) -> None:
        self.job_id = None
        self.generate_button.setEnabled(True)
        self.cancel_button.setEnabled(False)
        if error:
            self.show_state(f"⚠ {error}")

    def _add_result(self, image: ImageInfo) -> None:
        pixmap = QPixmap(image.path)
        item = QListWidgetItem(pixmap.scaled(THUMB, THUMB, Qt.AspectRatioMode.KeepAspectRatio), f"seed {image.seed}")
        item.setData(Qt.ItemDataRole.UserRole, image.id)
        item.setData(Qt.ItemDataRole.UserRole + 1, image.path)
        self.results.addItem(item)
        self.preview.show_pixmap(pixmap)
        self.image_done.emit(image)

    def _show_result(self, item: QListWidgetItem | None) -> None:
        if item is not None:
            self.preview.show_pixmap(QPixmap(item.data(Qt.ItemDataRole.UserRole + 1)))

    def cancel(self) -> None:
        if self.job_id is not None:
            job_id = self.job_id
            # The "cancelled" event may arrive before this answer (and its stream end after it): then
            # there is nothing left to say.
            self.link.call(lambda c: c.cancel(job_id),
                           lambda _: self.show_state("Cancelling…") if self.told_end != job_id else None)  # fmt: skip

    def show_state(self, text: str) -> None:
        self.state.setText(text)
        self.message.emit(text)

    # --- from the gallery ---------------------------------------------------------------
    def reuse(self, record: ImageRecord) -> None:
        """Fill the form with an image's parameters (seed locked)."""
        self.prompt.setPlainText(record.prompt)
        self.negative.setText(record.negative_prompt)
        if record.seed is not None:
            self.random_seed.setChecked(False)
            self.seed.setText(str(record.seed))
        self.count.setValue(1)
        self.width_box.setValue(record.width)
        self.height_box.setValue(record.height)
        self.steps.setValue(record.steps or default_of("steps"))
        self.cfg.setValue(record.cfg_scale if record.cfg_scale is not None else default_of("cfg_scale"))
        self.sampler.setCurrentText(SAMPLER_KEYS.get(record.sampler or "", default_of("sampler")))
        engine_model = self.link.health.model if self.link.health else None
        if record.source in IMPORTED_SOURCES and record.model not in (None, engine_model):
            # Another tool's model name: this engine does not have it, and a job naming it would fail later.
            self.model.setCurrentText("")
            self.show_state(
                f"Parameters copied; model {record.model!r} is another tool's, so the engine's own is used."
            )
        else:
            self.model.setCurrentText("" if record.model in (None, engine_model) else record.model)
        controls = record.params.get("controls") or []
        if controls:  # the first control comes back in the box (the box holds one)
            self.control.reuse(controls[0])
        else:
            self.control.clear_picture()
        self.references.reuse(record.params.get("references") or [], record.params.get("style_weight", 100))
        self.extras.reuse(record.params)

    def set_init_image(self, record: ImageRecord) -> None:
        self.init_ref, self.init_record, self.mask_ref = f"gallery:{record.id}", record, None
        self.init_path, self.init_name = record.path, f"#{record.id}"
        if not self.prompt.toPlainText().strip():
            self.prompt.setPlainText(record.prompt)
        self._update_init_widgets()

    def set_init_file(self, path: Path) -> None:
        """An init image from this machine: uploaded to the engine, then named by its reference."""
        try:
            data = path.read_bytes()
        except OSError as e:
            self.show_state(f"⚠ cannot read {path.name}: {e.strerror}")
            return

        def uploaded(upload: Any) -> None:
            self.init_ref, self.init_record, self.mask_ref = upload.ref, None, None
            self.init_path, self.init_name = str(path), f"{path.name} ({upload.width}×{upload.height})"
            self._update_init_widgets()

        self.show_state(f"Sending {path.name}…")
        self.link.call(lambda c: c.upload(data), uploaded, self._failed)

    def choose_init_file(self) -> None:
        name, _ = QFileDialog.getOpenFileName(self, "Init image", "", IMAGE_FILES)
        if name:
            self.set_init_file(Path(name))

    def use_picture(self, path: Path) -> None:
        """A dropped or pasted picture becomes the init image."""
        self.set_init_file(path)

    def paste_init(self) -> None:
        if not self.use_mime(QGuiApplication.clipboard().mimeData()):
            self.prompt.paste()  # no picture on the clipboard: an ordinary paste into the prompt

    def clear_init_image(self) -> None:
        self.init_ref = self.init_record = self.mask_ref = self.init_path = None
        self.init_name = ""
        self._update_init_widgets()

    def _update_init_widgets(self) -> None:
        if self.init_ref is None:
            self.init_label.setText("none (txt2img)")
        else:
            kind = "inpaint with mask over" if self.mask_ref else "img2img from"
            self.init_label.setText(f"{kind} {self.init_name}")
        for w in (self.strength, self.paint_mask, self.clear_init):
            w.setEnabled(self.init_ref is not None)

    def open_mask_editor(self) -> None:
        if self.init_path is None:
            return
        editor = MaskEditor(self.init_path, self)
        editor.accepted.connect(lambda: self.use_mask(editor.mask_png()))
        editor.open()

    def use_mask(self, png: bytes) -> None:
        """Upload a painted mask; the next Generate inpaints."""

        def uploaded(upload: Any) -> None:
            self.mask_ref = upload.ref
            self._update_init_widgets()

        self.link.call(lambda c: c.upload(png), uploaded, self._failed)

    # --- remembered between runs ----------------------------------------------------------
    def save_state(self, settings: QSettings) -> None:
        for key, value in (("prompt", self.prompt.toPlainText()), ("negative", self.negative.text()),
                           ("count", self.count.value()), ("steps", self.steps.value()), ("cfg", self.cfg.value()),
                           ("sampler", self.sampler.currentText()), ("model", self.model.currentText()),
                           ("width", self.width_box.value()), ("height", self.height_box.value())):  # fmt: skip
            settings.setValue(f"generate/{key}", value)

    def restore_state(self, settings: QSettings) -> None:
        self.prompt.setPlainText(str(settings.value("generate/prompt", "")))
        self.negative.setText(str(settings.value("generate/negative", "")))
        self.count.setValue(int(settings.value("generate/count", 4)))
        self.steps.setValue(int(settings.value("generate/steps", default_of("steps"))))
        self.cfg.setValue(float(settings.value("generate/cfg", default_of("cfg_scale"))))
        sampler = str(settings.value("generate/sampler", default_of("sampler")))
        self.sampler.setCurrentText(sampler if sampler in SAMPLERS else default_of("sampler"))
        self.model.setCurrentText(str(settings.value("generate/model", "")))
        self.width_box.setValue(int(settings.value("generate/width", 0)))
        self.height_box.setValue(int(settings.value("generate/height", 0)))
