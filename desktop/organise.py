"""The gallery's organising widgets: a board filter for the listing, and for the shown image its rating, its boards
and its tags. Boards here are the engine owner's (the CLI's `dreamhall board` sees the same ones)."""

from __future__ import annotations

from typing import Any

from PySide6.QtCore import Signal
from PySide6.QtWidgets import QComboBox, QHBoxLayout, QLabel, QLineEdit, QMenu, QPushButton, QVBoxLayout, QWidget

from desktop.engine_link import EngineLink
from desktop.generate import requester
from engine.client.answers import BoardPublic, ImageRecord

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

    def show_record(self, record: ImageRecord | None) -> None:
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
