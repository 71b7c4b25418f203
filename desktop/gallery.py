"""The Gallery tab: a virtualised thumbnail grid, filters, text and reverse-image search, and a details pane."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, cast

from PySide6.QtCore import QMimeData, QSize, Qt, QUrl, Signal
from PySide6.QtGui import (
    QDesktopServices,
    QDragEnterEvent,
    QDropEvent,
    QGuiApplication,
    QKeySequence,
    QPixmap,
    QShortcut,
)
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDialog,
    QGridLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QListView,
    QMenu,
    QMessageBox,
    QPushButton,
    QSplitter,
    QTextBrowser,
    QVBoxLayout,
    QWidget,
)

from desktop.engine_link import EngineLink
from desktop.gallery_model import THUMB, GalleryModel, RecordRole, png_bytes
from desktop.generate import requester
from desktop.mask import MaskEditor
from desktop.organise import BoardFilter, ImageOrganiser, LineageDialog, SavedSearches
from engine.client.answers import Description, ImageRecord, Lineage, SearchResults
from engine.client.clients import EngineClient
from engine.client.derived import VARIABLE_MODES, pan_of, region_of, upscale_of, variation_of, vary_of, zoom_out_of
from engine.client.schema import DEFAULT_VARIATION_AMOUNT, IMPORTED_SOURCES, DreamRequest

# Midjourney's edit loop, as the gallery's Edit menu offers it: label -> what _derive makes
EDIT_ACTIONS = (("Vary (Subtle)", "subtle"), ("Vary (Strong)", "strong"), ("Zoom Out 2×", "zoom2"),
                ("Zoom Out 1.5×", "zoom1.5"), ("Pan ⬅", "pan_left"), ("Pan ➡", "pan_right"), ("Pan ⬆", "pan_top"),
                ("Pan ⬇", "pan_bottom"))  # fmt: skip
SINCE = {"any time": None, "today": timedelta(days=1), "this week": timedelta(days=7), "this month": timedelta(days=31)}


class EngineSource:
    """The engine's gallery listing, newest first, with filters."""

    def __init__(self, link: EngineLink, filters: dict[str, Any]) -> None:
        self.link = link
        self.filters = filters

    def page(self, offset: int, limit: int) -> tuple[int, list[ImageRecord]]:
        page = self.link.client().images(limit=limit, offset=offset, **self.filters)
        return page.total, page.images

    def image_bytes(self, record: ImageRecord) -> bytes | None:
        return cast(bytes, self.link.client().image_file(record.id))


class ResultSource(EngineSource):
    """A finished search: a fixed list, best first."""

    def __init__(self, link: EngineLink, records: list[ImageRecord]) -> None:
        super().__init__(link, {})
        self.records = records

    def page(self, offset: int, limit: int) -> tuple[int, list[ImageRecord]]:
        return len(self.records), self.records[offset : offset + limit]


class GalleryPanel(QWidget):
    """Browse and search everything the engine made; act on one image."""

    reuse = Signal(object)  # ImageRecord: fill the Generate form
    use_as_init = Signal(object)  # ImageRecord
    dream = Signal(object)  # DreamRequest: variations / upscale / the edit loop, run in the Generate tab
    use_prompt = Signal(str)  # a prompt Describe found
    message = Signal(str)

    def __init__(self, link: EngineLink, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.link = link
        self.current: ImageRecord | None = None
        self.setAcceptDrops(True)

        self.search = QLineEdit(placeholderText="Search prompts and pictures… (Enter)   or drop / paste an image")
        self.source = QComboBox()
        self.source.addItems(["all sources", "desktop", "discord", "cli", "api", "import"])
        self.since = QComboBox()
        self.since.addItems(list(SINCE))
        self.model_filter = QLineEdit(placeholderText="model")
        self.favourites = QCheckBox("favourites")
        self.stacks = QCheckBox("stacks")
        self.stacks.setToolTip("One picture per stack: a job's images, and images that differ only by seed or "
                               "variation (double-click a stack to open it)")  # fmt: skip
        self.board = BoardFilter(link)
        self.count = QLabel("")
        bar = QHBoxLayout()
        for w in (self.search, self.source, self.since, self.model_filter, self.favourites, self.stacks, self.count):
            bar.addWidget(w)
        bar.setStretch(0, 1)

        self.model = GalleryModel(self)
        self.view = QListView()
        self.view.setViewMode(QListView.ViewMode.IconMode)
        self.view.setUniformItemSizes(True)  # the view lays out 100k rows without asking each one
        self.view.setResizeMode(QListView.ResizeMode.Adjust)
        self.view.setMovement(QListView.Movement.Static)
        self.view.setIconSize(QSize(THUMB, THUMB))
        self.view.setGridSize(QSize(THUMB + 8, THUMB + 8))
        self.view.setModel(self.model)

        self.picture = QLabel(alignment=Qt.AlignmentFlag.AlignCenter)
        self.picture.setMinimumSize(256, 256)
        self.details = QTextBrowser()
        self.actions: dict[str, QPushButton] = {}
        grid = QGridLayout()
        names = ["Reuse parameters", "Copy seed", "Use as init image", "Variations", "Upscale ×2", "Similar",
                 "Edit", "Describe", "Favourite", "Lineage", "Delete", "Open file", "Show in folder"]  # fmt: skip
        for k, name in enumerate(names):
            button = self.actions[name] = QPushButton(name, enabled=False)
            grid.addWidget(button, k // 2, k % 2)
        side = QWidget()
        side_layout = QVBoxLayout(side)
        side_layout.addWidget(self.picture)
        side_layout.addWidget(self.details, 1)
        self.organiser = ImageOrganiser(link)
        side_layout.addWidget(self.organiser)
        side_layout.addLayout(grid)
        # the sidebar: boards, then saved searches
        self.saved = SavedSearches(link)
        sidebar = QWidget()
        sidebar_layout = QVBoxLayout(sidebar)
        sidebar_layout.addWidget(QLabel("Board"))
        sidebar_layout.addWidget(self.board)
        sidebar_layout.addWidget(self.saved, 1)
        self.splitter = QSplitter()
        self.splitter.addWidget(sidebar)
        self.splitter.addWidget(self.view)
        self.splitter.addWidget(side)
        self.splitter.setStretchFactor(0, 1)
        self.splitter.setStretchFactor(1, 4)
        self.splitter.setStretchFactor(2, 2)
        layout = QVBoxLayout(self)
        layout.addLayout(bar)
        layout.addWidget(self.splitter, 1)

        self.search.returnPressed.connect(self.run_search)
        for combo in (self.source, self.since):
            combo.currentIndexChanged.connect(self.browse)
        self.model_filter.editingFinished.connect(self.browse)
        self.favourites.toggled.connect(self.browse)
        self.stacks.toggled.connect(self.browse)
        self.view.doubleClicked.connect(lambda index: self.open_stack(index.data(RecordRole)))
        self.saved.name.returnPressed.connect(lambda: self.saved.save(self.search.text().strip(), self.filters()))
        self.saved.ran.connect(lambda results, name: self._show_results(results, name))
        self.saved.message.connect(self.message.emit)
        self.board.currentIndexChanged.connect(self.browse)
        self.organiser.changed.connect(self._updated)
        self.organiser.boards_changed.connect(self.board.refresh)
        self.organiser.message.connect(self.message.emit)
        self.view.selectionModel().currentChanged.connect(lambda index, _: self.show_record(index.data(RecordRole)))
        self.model.loaded.connect(lambda total: self.count.setText(f"{total} image(s)"))
        self.model.page_failed.connect(self.message.emit)
        QShortcut(QKeySequence.StandardKey.Paste, self, activated=self.paste)
        a = self.actions
        a["Reuse parameters"].clicked.connect(lambda: self.reuse.emit(self.current))
        a["Copy seed"].clicked.connect(lambda: QGuiApplication.clipboard().setText(str(self.current.seed)))
        a["Use as init image"].clicked.connect(lambda: self.use_as_init.emit(self.current))
        a["Variations"].clicked.connect(lambda: self._derive("variation"))
        a["Upscale ×2"].clicked.connect(lambda: self._derive("upscale"))
        a["Similar"].clicked.connect(self.similar)
        # Midjourney's edit loop, each a job of its own linked to this image
        self.edits = QMenu(self)
        for label, kind in EDIT_ACTIONS:
            self.edits.addAction(label, lambda kind=kind: self._derive(kind))
        self.edits.addAction("Vary (Region)…", self.vary_region)
        a["Edit"].setMenu(self.edits)
        self.described = QMenu(self)  # the prompts Describe found: picking one puts it in the prompt box
        a["Describe"].clicked.connect(self.describe)
        a["Favourite"].clicked.connect(self.toggle_favourite)
        a["Lineage"].clicked.connect(self.lineage)
        a["Delete"].clicked.connect(self.delete)
        a["Open file"].clicked.connect(lambda: QDesktopServices.openUrl(QUrl.fromLocalFile(self.current.path)))
        a["Show in folder"].clicked.connect(
            lambda: QDesktopServices.openUrl(QUrl.fromLocalFile(str(Path(self.current.path).parent)))
        )

    # --- listing and searching -------------------------------------------------------------
    def filters(self) -> dict[str, Any]:
        since = SINCE[self.since.currentText()]
        return {
            "source": None if self.source.currentIndex() == 0 else self.source.currentText(),
            "model": self.model_filter.text().strip() or None,
            "after": datetime.now(UTC) - since if since else None,
            "favourites": True if self.favourites.isChecked() else None,
            "board": self.board.board_id(),
            "stacks": True if self.stacks.isChecked() else None,
        }

    def browse(self) -> None:
        """Newest first, with the filters (the search box cleared)."""
        self.search.clear()
        self.model.set_source(EngineSource(self.link, self.filters()))

    def run_search(self) -> None:
        text = self.search.text().strip()
        if not text:
            self.browse()
            return
        filters = self.filters()
        self.message.emit(f"Searching for “{text}”…")
        self.link.call(lambda c: c.search(text, limit=200, **filters), self._show_results)

    def search_image(self, data: bytes) -> None:
        """Reverse search: the gallery's images most like this picture."""
        filters = self.filters()
        self.search.setText("")
        self.search.setPlaceholderText("images like the dropped picture")
        self.message.emit("Searching for similar images…")
        self.link.call(lambda c: c.search_image(data, limit=200, **filters), self._show_results)

    def similar(self) -> None:
        if self.current is not None:
            image_id, filters = self.current.id, self.filters()
            self.search.setText(f"similar to #{image_id}")  # what the list now is, not the last text searched
            self.link.call(lambda c: c.similar(image_id, limit=200, **filters), self._show_results)

    def _show_results(self, results: SearchResults, title: str | None = None) -> None:
        if title is not None:
            self.search.setText(title)  # what the list now is
        self.model.set_source(ResultSource(self.link, [r.image for r in results.results]))
        found = len(results.results)
        self.message.emit("No match." if not found else f"{found} match{'es' if found != 1 else ''}.")

    def open_stack(self, record: ImageRecord | None) -> None:
        """A stack's images, all of them (the search box says which stack is shown; Enter on it goes back)."""
        if record is None or not record.stack_size or record.stack_size < 2:
            return
        filters = {**self.filters(), "stacks": None, "stack": record.stack_key}
        self.search.clear()
        self.search.setPlaceholderText(f"the stack of #{record.id} ({record.stack_size} images)")
        self.model.set_source(EngineSource(self.link, filters))

    def lineage(self) -> None:
        """Where the image came from and what was made from it, as a tree; picking one shows it here."""
        record = self.current
        if record is None:
            return

        def show(lineage: Lineage) -> None:
            dialog = LineageDialog(lineage, record.relation, self)
            dialog.picked.connect(lambda image_id: self.link.call(lambda c: c.image(image_id), self.show_record))
            self.lineage_dialog = dialog
            dialog.show()

        self.link.call(lambda c: c.lineage(record.id), show, self.message.emit)

    # --- drop and paste -------------------------------------------------------------------
    def dragEnterEvent(self, event: QDragEnterEvent) -> None:
        if event.mimeData().hasUrls() or event.mimeData().hasImage():
            event.acceptProposedAction()

    def dropEvent(self, event: QDropEvent) -> None:
        self.take_image(event.mimeData())
        event.acceptProposedAction()

    def paste(self) -> None:
        self.take_image(QGuiApplication.clipboard().mimeData())

    def take_image(self, mime: QMimeData) -> None:
        for url in mime.urls() if mime.hasUrls() else []:
            if url.isLocalFile():
                try:
                    self.search_image(Path(url.toLocalFile()).read_bytes())
                except OSError as e:
                    self.message.emit(f"⚠ cannot read {url.toLocalFile()}: {e.strerror}")
                return
        if mime.hasImage():
            self.search_image(png_bytes(mime.imageData()))

    # --- one image ------------------------------------------------------------------------
    def show_record(self, record: ImageRecord | None) -> None:
        self.current = record
        for button in self.actions.values():
            button.setEnabled(record is not None)
            button.setToolTip("")
        self.organiser.show_record(record)
        if record is None:
            self.details.clear()
            self.picture.clear()
            return
        self.picture.setPixmap(QPixmap(record.path).scaled(256, 256, Qt.AspectRatioMode.KeepAspectRatio))
        self.details.setHtml(details_html(record))
        self.actions["Favourite"].setText("Unfavourite" if record.favourite else "Favourite")
        if record.source in IMPORTED_SOURCES:
            self.actions["Variations"].setEnabled(False)
            self.actions["Variations"].setToolTip("Imported: its seed does not remake it with this engine's model.")
        elif record.mode not in VARIABLE_MODES:
            self.actions["Variations"].setEnabled(False)
            self.actions["Variations"].setToolTip(f"Variations blend seed noise; this image is {record.mode}.")

    def _derive(self, kind: str) -> None:
        record = self.current
        if record is None:
            return
        request: DreamRequest
        who = requester()
        try:
            if kind == "variation":
                request = variation_of(record, amount=DEFAULT_VARIATION_AMOUNT, n=4, requester=who)
            elif kind in ("subtle", "strong"):
                request = vary_of(record, how=kind, n=4, requester=who)
            elif kind.startswith("zoom"):
                request = zoom_out_of(record, factor=float(kind.removeprefix("zoom")), requester=who)
            elif kind.startswith("pan_"):
                request = pan_of(record, side=kind.removeprefix("pan_"), requester=who)
            else:
                request = upscale_of(record, factor=2, requester=who)
        except ValueError as e:
            self.message.emit(str(e))
            return
        self.dream.emit(request)

    def vary_region(self) -> None:
        """Midjourney's Vary (Region): paint the part to repaint, then four takes on it."""
        record = self.current
        if record is None:
            return
        editor = MaskEditor(record.path, self)
        if editor.exec() != QDialog.DialogCode.Accepted:
            return
        mask = editor.mask_png()

        def send(client: EngineClient) -> DreamRequest:
            return region_of(record, mask=client.upload(mask).ref, prompt=None, n=4, requester=requester())

        self.link.call(send, self.dream.emit, self.message.emit)

    def describe(self) -> None:
        """Four prompts for the image (Midjourney's /describe); picking one puts it in the Generate tab."""
        record = self.current
        if record is None:
            return
        self.link.call(lambda c: c.describe(record.id), self._show_described, self.message.emit)

    def _show_described(self, described: Description) -> None:
        self.described.clear()
        for prompt in described.prompts:
            self.described.addAction(prompt, lambda prompt=prompt: self.use_prompt.emit(prompt))
        button = self.actions["Describe"]
        self.described.popup(button.mapToGlobal(button.rect().bottomLeft()))

    def toggle_favourite(self) -> None:
        record = self.current
        if record is not None:
            self.link.call(lambda c: c.set_favourite(record.id, not record.favourite), self._updated)

    def _updated(self, record: ImageRecord) -> None:
        self.model.replace(record)
        self.show_record(record)

    def delete(self, confirm: bool = True) -> None:
        record = self.current
        if record is None:
            return
        if (
            confirm
            and QMessageBox.question(self, "Delete", f"Delete image #{record.id}?") != QMessageBox.StandardButton.Yes
        ):
            return
        self.link.call(lambda c: c.delete_image(record.id), lambda _: self.model.refresh())


def details_html(record: ImageRecord) -> str:
    """An image's parameters for a person: labelled rows, plain text (selectable, so copyable)."""
    p = record.params
    rows: list[tuple[str, object]] = [
        ("Seed", record.seed), ("Size", f"{record.width} × {record.height}"), ("Model", record.model),
        ("Sampler", record.sampler), ("Steps", record.steps), ("CFG", record.cfg_scale),
    ]  # fmt: skip
    if p.get("strength") is not None:
        rows.append(("Strength", p["strength"]))
    if p.get("with_variations"):
        rows.append(("Variation of seed", ", ".join(f"{v['seed']} × {v['weight']:g}" for v in p["with_variations"])))
    if p.get("outpaint"):
        rows.append(("Outpainted", ", ".join(f"{side} {px} px" for side, px in p["outpaint"].items() if px)))
    if p.get("upscaler"):
        rows.append(("Upscaled with", p["upscaler"]))
    if record.parent_id:
        rows.append(("Made from", f"#{record.parent_id} ({record.relation})"))
    if record.stack_size and record.stack_size > 1:
        rows.append(("Stack", f"{record.stack_size} images (double-click to open)"))
    made = f"{record.created_at.astimezone():%Y-%m-%d %H:%M} · {record.source}" + (
        f" · imported from {Path(str(p['imported_from'])).name}" if p.get("imported_from") else ""
    )
    rows.append(("Made", made))
    table = "".join(
        f"<tr><td style='color:gray;padding-right:8px'>{name}</td><td>{_escape(str(value))}</td></tr>"
        for name, value in rows
        if value not in (None, "")
    )
    negative = f"<p><i>Negative:</i> {_escape(record.negative_prompt)}</p>" if record.negative_prompt else ""
    star = " ★" if record.favourite else ""
    return f"<p><b>#{record.id}</b>{star}</p><p>{_escape(record.prompt)}</p>{negative}<table>{table}</table>"


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
