"""The main window: Generate and Gallery tabs, the engine's state in the status bar, layout remembered."""

from __future__ import annotations

from PySide6.QtCore import QSettings
from PySide6.QtGui import QAction, QCloseEvent
from PySide6.QtWidgets import QLabel, QMainWindow, QTabWidget, QWidget

from desktop.engine_link import EngineLink
from desktop.gallery import GalleryPanel
from desktop.generate import GeneratePanel
from engine.client.schema import DreamRequest
from engine.client.settings import Settings


class MainWindow(QMainWindow):
    def __init__(self, settings: Settings, *, autostart: bool = True, qsettings: QSettings | None = None) -> None:
        super().__init__()
        self.setWindowTitle("Dreamhall")
        self.autostart = autostart
        self.qsettings = qsettings or QSettings("dreamhall", "desktop")
        self.link = EngineLink(settings, self)
        self.generate = GeneratePanel(self.link)
        self.gallery = GalleryPanel(self.link)
        self.tabs = QTabWidget()
        self.tabs.addTab(self.generate, "Generate")
        self.tabs.addTab(self.gallery, "Gallery")
        self.setCentralWidget(self.tabs)
        self.engine_state = QLabel("Engine: not connected")
        self.statusBar().addPermanentWidget(self.engine_state)

        menu = self.menuBar().addMenu("&Engine")
        start = QAction("Start engine", self, triggered=lambda: self.link.start(autostart=True))
        refresh = QAction("Refresh gallery", self, shortcut="F5", triggered=self.gallery.browse)
        menu.addActions([start, refresh])

        self.link.status.connect(self.engine_state.setText)
        self.link.ready.connect(lambda _: self.gallery.browse())
        self.link.failed.connect(self.say)
        for panel in (self.generate, self.gallery):
            panel.message.connect(self.say)
        self.generate.image_done.connect(lambda _: self.gallery.model.refresh() if self.tabs.currentIndex() else None)
        self.tabs.currentChanged.connect(lambda i: self.gallery.model.refresh() if i == 1 else None)
        self.gallery.reuse.connect(self._reuse)
        self.gallery.use_as_init.connect(self._use_as_init)
        self.gallery.dream.connect(self._dream)
        self.gallery.use_prompt.connect(self._use_prompt)

        self.resize(1200, 800)
        geometry = self.qsettings.value("window/geometry")
        if geometry is not None:
            self.restoreGeometry(geometry)
        splitter = self.qsettings.value("window/splitter")
        if splitter is not None:
            self.gallery.splitter.restoreState(splitter)
        self.generate.restore_state(self.qsettings)

    def connect_engine(self) -> None:
        self.link.start(autostart=self.autostart)

    def say(self, text: str) -> None:
        self.statusBar().showMessage(text, 15000)

    def show_view(self, name: str) -> None:
        self.tabs.setCurrentIndex({"generate": 0, "gallery": 1}[name])

    def _focus(self, panel: QWidget) -> None:
        self.tabs.setCurrentWidget(panel)

    def _reuse(self, record) -> None:
        self.generate.reuse(record)
        self._focus(self.generate)

    def _use_as_init(self, record) -> None:
        self.generate.set_init_image(record)
        self._focus(self.generate)

    def _use_prompt(self, prompt: str) -> None:
        self.generate.prompt.setPlainText(prompt)
        self._focus(self.generate)

    def _dream(self, request: DreamRequest) -> None:
        self._focus(self.generate)
        self.generate.submit(request)

    def closeEvent(self, event: QCloseEvent) -> None:
        self.qsettings.setValue("window/geometry", self.saveGeometry())
        self.qsettings.setValue("window/splitter", self.gallery.splitter.saveState())
        self.generate.save_state(self.qsettings)
        self.link.close()
        self.gallery.model.close()
        super().closeEvent(event)
