"""The gallery's organising widgets: a board filter for the listing, and for the shown image its rating, its boards
and its tags. Boards here are the engine owner's (the CLI's `dreamhall board` sees the same ones)."""

from __future__ import annotations

from typing import Any

from PySide6.QtCore import QStringListModel, Qt, Signal
from PySide6.QtWidgets import (
    QComboBox,
    QCompleter,
    QDialog,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QListWidget,
    QListWidgetItem,
    QMenu,
    QPushButton,
    QTreeWidget,
    QTreeWidgetItem,
    QVBoxLayout,
    QWidget,
)

from desktop.engine_link import EngineLink
from desktop.generate import requester
from engine.client.answers import BoardPublic, ImageRecord, Lineage, SavedSearch

STARS = ["no rating", "★", "★★", "★★★", "★★★★", "★★★★★"]


class BoardFilter(QComboBox):
    """ "all boards", then the owner's boards: the listing shows one board's images."""

    def __init__(self, link: EngineLink) -> None:
        super().__init__()
        self.link = link
        self.boards: list[BoardPublic] = []
        self.addItem("all boards")
        link.ready.connect(lambda _: self.refresh())

    def refresh(self) -> None:
        def fill(boards: list[BoardPublic]) -> None:
            current = self.currentText()
            self.blockSignals(True)
            self.boards = boards
            self.clear()
            self.addItem("all boards")
            for b in boards:
                self.addItem(b.name)
            self.setCurrentText(current if current in {b.name for b in boards} else "all boards")
            self.blockSignals(False)

        self.link.call(lambda c: c.boards(requester()), fill, lambda _: None)

    def board_id(self) -> int | None:
        return next((b.id for b in self.boards if b.name == self.currentText()), None)


class ImageOrganiser(QWidget):
    """The shown image's rating (stars), an "Add to board" menu (or a new board), and its tags (Enter adds)."""

    changed = Signal(object)  # ImageRecord, as the engine has it now
    boards_changed = Signal()
    message = Signal(str)

    def __init__(self, link: EngineLink) -> None:
        super().__init__()
        self.link = link
        self.record: ImageRecord | None = None
        self.rating = QComboBox()
        self.rating.addItems(STARS)
        self.to_board = QPushButton("Add to board")
        self.board_menu = QMenu(self)
        self.to_board.setMenu(self.board_menu)
        self.new_board = QLineEdit(placeholderText="new board… (Enter)")
        self.tag_edit = QLineEdit(placeholderText="add tags… (Enter)")
        # autocomplete from the gallery's most used tags (as infinite-image-browsing does), refreshed on focus
        self.known_tags = QStringListModel(self)
        completer = QCompleter(self.known_tags, self)
        completer.setCaseSensitivity(Qt.CaseSensitivity.CaseInsensitive)
        self.tag_edit.setCompleter(completer)
        self.tags = QLabel(wordWrap=True)
        row = QHBoxLayout()
        for w in (self.rating, self.to_board, self.new_board):
            row.addWidget(w)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addLayout(row)
        layout.addWidget(self.tag_edit)
        layout.addWidget(self.tags)
        self.rating.activated.connect(self._rate)
        self.board_menu.aboutToShow.connect(self._fill_menu)
        self.new_board.returnPressed.connect(self._new_board)
        self.tag_edit.returnPressed.connect(self._tag)

    def refresh_tags(self) -> None:
        """The most used tags, for the tag box's completer."""
        self.link.call(lambda c: [t.tag for t in c.tags(limit=200)], self.known_tags.setStringList, lambda _: None)

    def show_record(self, record: ImageRecord | None) -> None:
        if record is not None and self.record is None:
            self.refresh_tags()
        self.record = record
        self.setEnabled(record is not None)
        self.rating.setCurrentIndex((record.rating or 0) if record else 0)
        self.tags.setText(" ".join(f"#{t}" for t in record.tags) if record else "")

    def _done(self, record: Any) -> None:
        self.show_record(record)
        self.changed.emit(record)

    def _rate(self, index: int) -> None:
        if self.record is not None:
            image_id = self.record.id
            self.link.call(lambda c: c.rate(image_id, index), self._done, self.message.emit)

    def _tag(self) -> None:
        words = self.tag_edit.text().replace(",", " ").split()
        if self.record is None or not words:
            return
        image_id = self.record.id
        self.tag_edit.clear()
        self.link.call(lambda c: (c.tag(image_id, words), c.image(image_id))[1], self._done, self.message.emit)

    def _fill_menu(self) -> None:
        self.board_menu.clear()

        def fill(boards: list[BoardPublic]) -> None:
            for b in boards:
                self.board_menu.addAction(f"{b.name} ({b.count})", lambda b=b: self.add_to(b.id))

        self.link.call(lambda c: c.boards(requester()), fill, self.message.emit)

    def add_to(self, board_id: int) -> None:
        if self.record is None:
            return
        image_id = self.record.id
        self.link.call(lambda c: c.board_add(board_id, [image_id], requester()), self._added, self.message.emit)

    def _new_board(self) -> None:
        name = self.new_board.text().strip()
        if not name or self.record is None:
            return
        image_id = self.record.id
        self.new_board.clear()

        def make(c: Any) -> BoardPublic:
            board = c.create_board(name, requester())
            return c.board_add(board.id, [image_id], requester())

        self.link.call(make, self._added, self.message.emit)

    def _added(self, board: BoardPublic) -> None:
        self.message.emit(f"{board.name}: {board.count} image(s)")
        self.boards_changed.emit()


class SavedSearches(QWidget):
    """The sidebar's saved searches ("smart boards"): click one to run it now; "Save search" keeps the search box's
    text with the listing's filters under a name. The owner's, as the CLI's `search @NAME`."""

    ran = Signal(object, str)  # SearchResults, the saved search's name
    message = Signal(str)

    def __init__(self, link: EngineLink) -> None:
        super().__init__()
        self.link = link
        self.list = QListWidget()
        self.name = QLineEdit(placeholderText="save the search as… (Enter)")
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(QLabel("Saved searches"))
        layout.addWidget(self.list, 1)
        layout.addWidget(self.name)
        self.list.itemClicked.connect(self.run)
        link.ready.connect(lambda _: self.refresh())

    def refresh(self) -> None:
        def fill(searches: list[SavedSearch]) -> None:
            self.list.clear()
            for saved in searches:
                item = QListWidgetItem(f"@{saved.name}")
                item.setToolTip(saved.query)
                item.setData(Qt.ItemDataRole.UserRole, saved.id)
                self.list.addItem(item)

        self.link.call(lambda c: c.saved_searches(requester()), fill, lambda _: None)

    def save(self, query: str, filters: dict[str, Any]) -> None:
        name = self.name.text().strip()
        if not name or not query:
            self.message.emit("Type a search first, then a name to save it under.")
            return
        self.name.clear()
        kept = {k: v for k, v in filters.items() if k in ("source", "model", "favourites", "board") and v}

        def saved(search: SavedSearch) -> None:
            self.message.emit(f"Saved as @{search.name}.")
            self.refresh()

        self.link.call(lambda c: c.save_search(name, query, requester(), **kept), saved, self.message.emit)

    def run(self, item: QListWidgetItem) -> None:
        search_id, name = item.data(Qt.ItemDataRole.UserRole), item.text()
        self.link.call(lambda c: c.run_search(search_id, requester(), limit=200), lambda r: self.ran.emit(r, name),
                       self.message.emit)  # fmt: skip


class LineageDialog(QDialog):
    """Where an image came from and everything made from it, as a tree (each child under its parent); picking a
    row shows that image in the gallery."""

    picked = Signal(int)

    def __init__(self, lineage: Lineage, relation: str | None = None, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setWindowTitle(f"Lineage of #{lineage.image_id}")
        self.tree = QTreeWidget()
        self.tree.setHeaderLabels(["Image", "How", "Prompt"])
        self.items: dict[int, QTreeWidgetItem] = {}
        holder: QTreeWidget | QTreeWidgetItem = self.tree
        for node in reversed(lineage.ancestors):  # the first image at the top
            holder = self._add(holder, node.id, node.relation, node.prompt)
        this = self._add(holder, lineage.image_id, relation, "(this image)")
        this.setSelected(True)
        for node in lineage.sources:  # the gallery pictures that steered it, under it as "control of", ...
            self._add(this, node.id, f"{node.edge} of it", node.prompt)
        for node in lineage.descendants:  # by depth: the image it was made from is always placed before it
            self._add(self.items.get(node.via or 0, this), node.id, node.edge or node.relation, node.prompt)
        self.tree.expandAll()
        layout = QVBoxLayout(self)
        layout.addWidget(self.tree)
        self.tree.itemActivated.connect(lambda item, _: self.picked.emit(item.data(0, Qt.ItemDataRole.UserRole)))
        self.resize(560, 360)

    def _add(self, holder: QTreeWidget | QTreeWidgetItem, image_id: int, relation: str | None,
             prompt: str) -> QTreeWidgetItem:  # fmt: skip
        item = QTreeWidgetItem(holder, [f"#{image_id}", relation or "", prompt[:80]])
        item.setData(0, Qt.ItemDataRole.UserRole, image_id)
        self.items[image_id] = item
        return item
