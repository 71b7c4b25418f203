"""`dreamhall-desktop`: the Qt app.

dreamhall-desktop                       open the window (starting an engine if none answers)
dreamhall-desktop --screenshot out.png [--view gallery]
                                        render the window once loaded, save it, exit
"""

from __future__ import annotations

import argparse
import ctypes.util
import os
import sys
from collections.abc import Callable
from pathlib import Path

from PySide6.QtCore import QTimer
from PySide6.QtWidgets import QApplication

from desktop.window import MainWindow
from engine.client.settings import Settings

SCREENSHOT_TIMEOUT_MS = 120_000

# What Qt's xcb platform plugin loads besides Qt itself, by the Debian/Ubuntu package that has it. Without
# one, Qt says only "Could not load the Qt platform plugin xcb".
XCB_LIBRARIES = {
    "xcb-icccm": "libxcb-icccm4",
    "xcb-keysyms": "libxcb-keysyms1",
    "xcb-cursor": "libxcb-cursor0",
    "xcb-image": "libxcb-image0",
    "xcb-render-util": "libxcb-render-util0",
    "xkbcommon-x11": "libxkbcommon-x11-0",
}


def missing_xcb_packages(find: Callable[[str], str | None] = ctypes.util.find_library) -> list[str]:
    """The packages to install before Qt can open a window on X11 (empty when it can, or X11 is not used)."""
    platform = os.environ.get("QT_QPA_PLATFORM", "xcb" if sys.platform.startswith("linux") else "")
    if not platform.startswith("xcb") or (os.environ.get("WAYLAND_DISPLAY") and "QT_QPA_PLATFORM" not in os.environ):
        return []
    return [package for library, package in XCB_LIBRARIES.items() if find(library) is None]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dreamhall-desktop", description="Dreamhall on your desktop")
    parser.add_argument("--home", type=Path, help="data directory (default: $DREAMHALL_HOME or the user data dir)")
    parser.add_argument("--screenshot", type=Path, metavar="PATH", help="save a PNG of the window once loaded, exit")
    parser.add_argument("--view", choices=["generate", "gallery"], default="generate")
    parser.add_argument("--no-autostart", action="store_true", help="do not start an engine if none answers")
    return parser


def take_screenshot(window: MainWindow, path: Path, app: QApplication) -> None:
    """Save the window once the engine answered and the gallery's first page and thumbnails are in."""
    done = False

    def shoot() -> None:
        nonlocal done
        if done:
            return
        done = True
        path.parent.mkdir(parents=True, exist_ok=True)
        ok = window.grab().save(str(path), "PNG")
        print(f"{'saved' if ok else 'could not save'} {path}", file=sys.stderr)
        app.exit(0 if ok else 1)

    def loaded(total: int) -> None:
        if total and window.tabs.currentIndex() == 1:  # show one image's details too
            window.gallery.view.setCurrentIndex(window.gallery.model.index(0))
        QTimer.singleShot(1500, shoot)  # thumbnails decode in the background: give them a moment

    window.resize(1200, 800)  # the same picture whatever size the window was left at

    window.gallery.model.loaded.connect(loaded)
    window.link.failed.connect(lambda _: QTimer.singleShot(500, shoot))  # an engine error is worth a picture too
    QTimer.singleShot(SCREENSHOT_TIMEOUT_MS, shoot)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    missing = missing_xcb_packages()
    if missing:
        print(f"dreamhall-desktop: Qt needs X11 libraries this machine lacks; install them with: "
              f"sudo apt install {' '.join(missing)}", file=sys.stderr)  # fmt: skip
        return 2
    settings = Settings(home=args.home) if args.home else Settings()
    app = QApplication.instance() or QApplication(sys.argv[:1])
    app.setApplicationName("Dreamhall")
    window = MainWindow(settings, autostart=not args.no_autostart)
    window.show_view(args.view)
    window.show()
    if args.screenshot is not None:
        take_screenshot(window, args.screenshot, app)
    window.connect_engine()
    code = app.exec()
    window.close()
    return code


if __name__ == "__main__":
    raise SystemExit(main())
