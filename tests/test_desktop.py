"""The desktop app: a real Qt window (offscreen) driving a real engine subprocess on the built-in models."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import numpy as np
import pytest
from PIL import Image
from PySide6.QtCore import QMimeData, QObject, QPoint, QPointF, QSettings, Qt, QUrl, Signal
from PySide6.QtGui import QDropEvent, QFontDatabase, QImage
from PySide6.QtWidgets import QApplication

from desktop.gallery import ResultSource
from desktop.mask import MaskEditor
from desktop.window import MainWindow
from engine.client.answers import SearchResults
from engine.client.launch import stop_engine
from engine.client.schema import Requester
from engine.client.settings import Settings
from models import toyworld
from models.checker import judge
from models.toyworld import control_disc
from tests.conftest import ROOT, EngineProcess

pytestmark = pytest.mark.slow
WAIT = 150_000  # a safety net for a loaded machine; every wait is for a condition


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EngineProcess]:
    proc = EngineProcess(tmp_path_factory.mktemp("home"), None).start()
    yield proc
    proc.stop()


def open_window(qtbot, home: Path, tmp_path: Path, *, autostart: bool = False) -> MainWindow:
    window = MainWindow(Settings(home=home), autostart=autostart,
                        qsettings=QSettings(str(tmp_path / "desktop.ini"), QSettings.Format.IniFormat))  # fmt: skip
    qtbot.addWidget(window)
    window.show()
    window.connect_engine()
    return window


@pytest.fixture
def window(qtbot, engine: EngineProcess, tmp_path: Path) -> Iterator[MainWindow]:
    w = open_window(qtbot, engine.home, tmp_path)
    qtbot.waitUntil(lambda: w.link.health is not None, timeout=WAIT)
    yield w
    w.close()


def generate(qtbot, window: MainWindow, command: str, count: int) -> list[int]:
    panel = window.generate
    qtbot.waitUntil(lambda: panel.job_id is None and panel.generate_button.isEnabled(), timeout=WAIT)
    panel.results.clear()  # so the last job's results can never pass for this one's
    panel.prompt.setPlainText(command)
    qtbot.mouseClick(panel.generate_button, Qt.MouseButton.LeftButton)
    try:
        qtbot.waitUntil(lambda: panel.results.count() == count and panel.job_id is None, timeout=WAIT)
    except Exception as e:  # pytest-qt's TimeoutError
        raise AssertionError(f"no {count} results; the panel says {panel.state.text()!r}") from e
    return [panel.results.item(i).data(Qt.ItemDataRole.UserRole) for i in range(count)]


def distinct_colours(image: QImage) -> int:
    image = image.convertToFormat(QImage.Format.Format_RGB32)
    step = 3
    return len({image.pixel(x, y) for x in range(0, image.width(), step) for y in range(0, image.height(), step)})


def test_generate_then_find_by_text_and_by_dropping_an_image(qtbot, window: MainWindow) -> None:
    # A command pasted from Discord works in the prompt box: its flags win over the form.
    ids = generate(qtbot, window, '"a red circle on a blue background" -n 2 -S 3220803958 -s 12', 2)
    # The pasted -S wins over the form's "random": the engine used it, and the seed box shows it.
    assert window.generate.seed.text() == "3220803958"
    assert [window.link.client().image(i).seed for i in ids] == [3220803958, 3220803959]
    gallery = window.gallery
    window.show_view("gallery")
    qtbot.waitUntil(lambda: set(ids) <= set(gallery.model.row_of), timeout=WAIT)
    qtbot.waitUntil(lambda: set(ids) <= set(gallery.model.thumbs), timeout=WAIT)  # decoded off the UI thread
    gallery.search.setText("red circle")
    qtbot.keyClick(gallery.search, Qt.Key.Key_Return)
    qtbot.waitUntil(lambda: isinstance(gallery.model.source, ResultSource) and gallery.model.total > 0, timeout=WAIT)
    assert "red circle" in gallery.model.record(0).prompt
    # Drop the first image's file on the gallery: reverse search finds it first.
    first = gallery.model.record(0)
    mime = QMimeData()
    mime.setUrls([QUrl.fromLocalFile(first.path)])
    gallery.model.set_source(ResultSource(window.link, []))
    event = QDropEvent(QPointF(10, 10), Qt.DropAction.CopyAction, mime, Qt.MouseButton.LeftButton,
                       Qt.KeyboardModifier.NoModifier)  # fmt: skip
    gallery.dropEvent(event)
    qtbot.waitUntil(lambda: gallery.model.total > 0, timeout=WAIT)
    assert gallery.model.record(0).id == first.id


def test_details_variations_upscale_and_inpaint_with_the_brush(qtbot, window: MainWindow) -> None:
    (parent,) = generate(qtbot, window, '"a red circle on a blue background" -n 1 -S 5 -s 10', 1)
    gallery = window.gallery
    window.show_view("gallery")
    qtbot.waitUntil(lambda: parent in gallery.model.row_of, timeout=WAIT)
    gallery.view.setCurrentIndex(gallery.model.index(gallery.model.row_of[parent]))
    assert gallery.current.id == parent and f"#{parent}" in gallery.details.toPlainText()
    qtbot.mouseClick(gallery.actions["Variations"], Qt.MouseButton.LeftButton)
    assert window.tabs.currentWidget() is window.generate
    qtbot.waitUntil(lambda: window.generate.results.count() == 4 and window.generate.job_id is None, timeout=WAIT)
    child = window.link.client().image(window.generate.results.item(0).data(Qt.ItemDataRole.UserRole))
    assert child.parent_id == parent and child.relation == "variation"
    # Upscale of the parent.
    window.show_view("gallery")
    gallery.show_record(window.link.client().image(parent))
    qtbot.mouseClick(gallery.actions["Upscale ×2"], Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: window.generate.results.count() == 1 and window.generate.job_id is None, timeout=WAIT)
    big = window.link.client().image(window.generate.results.item(0).data(Qt.ItemDataRole.UserRole))
    assert (big.width, big.height) == (128, 128) and big.relation == "upscale"
    # Use as init image, paint the right half, generate: an inpaint that keeps the left half.
    gallery.show_record(window.link.client().image(parent))
    qtbot.mouseClick(gallery.actions["Use as init image"], Qt.MouseButton.LeftButton)
    editor = MaskEditor(window.generate.init_record.path, window)
    editor.canvas.brush = 40
    editor.paint_line(QPoint(48, 0), QPoint(48, 64))
    window.generate.use_mask(editor.mask_png())
    qtbot.waitUntil(lambda: window.generate.mask_ref is not None, timeout=WAIT)
    assert "inpaint" in window.generate.init_label.text()
    (made,) = generate(qtbot, window, "a green square on a yellow background -n 1 -s 10", 1)
    record = window.link.client().image(made)
    assert record.relation == "inpaint" and record.parent_id == parent
    before, after = QImage(window.link.client().image(parent).path), QImage(record.path)
    assert all(before.pixel(x, y) == after.pixel(x, y) for x in range(0, 24) for y in range(64))


def test_cancel_a_running_job(qtbot, window: MainWindow) -> None:
    panel = window.generate
    panel.prompt.setPlainText("a slow octagon -n 2 -s 150 -W 256 -H 256")
    qtbot.mouseClick(panel.generate_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: "Dreaming" in panel.state.text(), timeout=WAIT)
    qtbot.mouseClick(panel.cancel_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: panel.job_id is None, timeout=WAIT)
    assert "cancelled" in panel.state.text() and panel.generate_button.isEnabled()


def test_flag_errors_are_shown_not_raised(qtbot, window: MainWindow) -> None:
    window.generate.prompt.setPlainText("x -n 99")
    qtbot.mouseClick(window.generate.generate_button, Qt.MouseButton.LeftButton)
    assert "-n/--iterations (n): must be between 1 and 16" in window.generate.state.text()


def test_engine_down_is_a_clear_message_then_autostart_works(qtbot, tmp_path: Path) -> None:
    home = tmp_path / "home"
    window = open_window(qtbot, home, tmp_path, autostart=False)
    try:
        qtbot.waitUntil(lambda: "not answering" in window.engine_state.text(), timeout=WAIT)
        window.link.start(autostart=True)  # Engine ▸ Start engine
        qtbot.waitUntil(lambda: window.link.health is not None, timeout=WAIT)
        assert "ready" in window.engine_state.text()
        (made,) = generate(qtbot, window, '"a red circle on a blue background" -n 1 -S 3 -s 10', 1)
        assert judge(to_pil(QImage(window.link.client().image(made).path))).colour == "red"
    finally:
        window.close()
        stop_engine(Settings(home=home))


def to_pil(image: QImage):
    from PIL import Image

    image = image.convertToFormat(QImage.Format.Format_RGB888)
    return Image.frombytes("RGB", (image.width(), image.height()), bytes(image.constBits())[: image.sizeInBytes()])


def test_screenshots_of_both_views_are_not_blank(qtbot, window: MainWindow, tmp_path: Path) -> None:
    assert any("DejaVu" in family for family in QFontDatabase.families())
    generate(qtbot, window, '"a green triangle on a white background" -n 2 -s 10', 2)
    for view in ("generate", "gallery"):
        window.show_view(view)
        if view == "gallery":
            qtbot.waitUntil(lambda: len(window.gallery.model.thumbs) >= 2, timeout=WAIT)
        # Painted when the view has laid out its items: wait for that, not for a fixed time.
        qtbot.waitUntil(lambda: distinct_colours(window.grab().toImage()) > 40, timeout=WAIT)


def test_screenshot_flag_renders_and_exits(engine: EngineProcess, tmp_path: Path) -> None:
    out = tmp_path / "gallery.png"
    env = {**os.environ, "QT_QPA_PLATFORM": "offscreen", "XDG_CONFIG_HOME": str(tmp_path / "config")}
    done = subprocess.run(
        [sys.executable, "-m", "desktop", "--home", str(engine.home), "--no-autostart", "--screenshot", str(out),
         "--view", "gallery"],
        env=env, cwd=ROOT, capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    shot = QImage(str(out))
    assert (shot.width(), shot.height()) == (1200, 800) and distinct_colours(shot) > 40


@pytest.mark.skipif(sys.version_info >= (3, 12), reason="True is immortal from 3.12 (PEP 683): no count to leak")
def test_an_answer_on_its_way_while_the_window_closes_is_dropped(qtbot, tmp_path: Path) -> None:
    # CI caught it: a search answered as the window closed reached the gallery after its page
    # threads had stopped ("cannot schedule new futures after shutdown").
    window = open_window(qtbot, tmp_path / "home", tmp_path)
    page = SearchResults(results=[], offset=0, limit=200)
    answer = threading.Thread(target=window.link.deliver.emit, args=(window.gallery._show_results, page))
    answer.start()
    answer.join()  # queued for the UI thread, not yet run
    source = window.gallery.model.source
    window.close()
    QApplication.processEvents()  # delivers it now: dropped, and no exception in the event loop
    assert window.link.closed and window.gallery.model.source is source


def test_signal_emit_keeps_reference_counts() -> None:
    """PySide6 6.12.0's emit() returned True without a reference: on Python 3.11 the app aborted
    after enough signals (constraints.txt pins a good version)."""

    class Emitter(QObject):
        fired = Signal(int)

    emitter = Emitter()
    before = sys.getrefcount(True)
    for i in range(2000):
        emitter.fired.emit(i)
    assert abs(sys.getrefcount(True) - before) < 100


def test_an_init_image_dropped_on_the_generate_tab(qtbot, window: MainWindow, tmp_path: Path) -> None:
    from PIL import Image

    picture = tmp_path / "mine.png"
    Image.new("RGB", (64, 64), (200, 30, 30)).save(picture)
    panel = window.generate
    mime = QMimeData()
    mime.setUrls([QUrl.fromLocalFile(str(picture))])
    panel.dropEvent(QDropEvent(QPointF(10, 10), Qt.DropAction.CopyAction, mime, Qt.MouseButton.LeftButton,
                               Qt.KeyboardModifier.NoModifier))  # fmt: skip
    qtbot.waitUntil(lambda: (panel.init_ref or "").startswith("upload:"), timeout=WAIT)
    assert "mine.png" in panel.init_label.text() and panel.paint_mask.isEnabled()
    (made,) = generate(qtbot, window, "a blue circle on a white background -n 1 -s 10 -f 0.5", 1)
    record = window.link.client().image(made)
    assert record.mode == "img2img" and record.params["init_image"] == panel.init_ref
    panel.clear_init_image()


def test_details_are_for_a_person_and_similar_says_what_the_list_is(qtbot, window: MainWindow) -> None:
    (made,) = generate(qtbot, window, '"a red circle on a blue background" -n 1 -S 8 -s 10', 1)
    gallery = window.gallery
    gallery.show_record(window.link.client().image(made))
    text = gallery.details.toPlainText()
    for label in ("Seed", "8", "Size", "64 × 64", "Sampler", "Euler a", "Steps", "10", "CFG", "Model", "Made"):
        assert label in text, label
    assert "{" not in text and "upload:" not in text  # no raw parameter dump
    qtbot.mouseClick(gallery.actions["Similar"], Qt.MouseButton.LeftButton)
    assert gallery.search.text() == f"similar to #{made}"


def test_a_bare_linux_desktop_gets_one_line_naming_the_packages(monkeypatch, capsys) -> None:
    import desktop.app

    monkeypatch.setenv("QT_QPA_PLATFORM", "xcb")
    found = {"xcb-keysyms": "libxcb-keysyms.so.1"}
    assert desktop.app.missing_xcb_packages(find=found.get)[:2] == ["libxcb-icccm4", "libxcb-cursor0"]
    monkeypatch.setattr(desktop.app, "missing_xcb_packages", lambda: ["libxcb-icccm4", "libxcb-keysyms1"])
    assert desktop.app.main([]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "sudo apt install libxcb-icccm4 libxcb-keysyms1" in err


def test_reusing_an_imported_image_does_not_name_another_tools_model(qtbot, window: MainWindow) -> None:
    import io

    from PIL import Image, PngImagePlugin

    meta = PngImagePlugin.PngInfo()
    meta.add_text("parameters", "a red fox\nSteps: 20, Sampler: Euler a, CFG scale: 7, Seed: 5, Size: 64x64, "
                                "Model: v1-5-pruned-emaonly")  # fmt: skip
    buf = io.BytesIO()
    Image.new("RGB", (64, 64), (1, 2, 3)).save(buf, format="PNG", pnginfo=meta)
    imported = window.link.client().image(window.link.client().import_image(buf.getvalue(), filename="fox.png").id)
    assert imported.model == "v1-5-pruned-emaonly"
    window.generate.reuse(imported)
    assert window.generate.model.currentText() == "" and "another tool" in window.generate.state.text()
    assert window.generate.prompt.toPlainText() == "a red fox"


def test_the_model_box_lists_the_engines_shelf_and_its_choice_is_sent(qtbot, window: MainWindow) -> None:
    box = window.generate.model
    qtbot.waitUntil(lambda: box.findText("dreamhall-toy-sd") >= 0, timeout=WAIT)
    assert box.lineEdit().placeholderText() == "engine default (dreamhall-toy-sd)"
    window.generate.prompt.setPlainText("a red circle")
    assert window.generate.request().model is None  # nothing chosen: the engine's default
    box.setCurrentIndex(box.findText("dreamhall-toy-sd"))
    assert window.generate.request().model == "dreamhall-toy-sd"
    box.setCurrentText("no-such-model")  # typed: the engine answers with what it has
    qtbot.mouseClick(window.generate.generate_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: "unknown model 'no-such-model'" in window.generate.state.text(), timeout=WAIT)


def test_the_control_box_shows_the_map_and_steers_and_reuse_brings_it_back(
    qtbot, window: MainWindow, tmp_path: Path
) -> None:
    box = window.generate.control
    disc = tmp_path / "disc.png"
    control_disc(128).save(disc)
    mime = QMimeData()
    mime.setUrls([QUrl.fromLocalFile(str(disc))])
    box.dropEvent(QDropEvent(QPointF(5, 5), Qt.DropAction.CopyAction, mime, Qt.MouseButton.LeftButton,
                             Qt.KeyboardModifier.NoModifier))  # fmt: skip
    qtbot.waitUntil(lambda: box.map.pixmap() is not None and not box.map.pixmap().isNull(), timeout=WAIT)
    assert (box.ref or "").startswith("upload:") and "disc.png (128×128)" in box.picture.text()
    box.type.setCurrentText("openpose")
    qtbot.waitUntil(lambda: "annotators/body_pose_model.pth" in (box.problem or ""), timeout=WAIT)
    box.type.setCurrentText("none")
    qtbot.waitUntil(lambda: box.problem is None and not box.map.pixmap().isNull(), timeout=WAIT)
    ids = generate(qtbot, window, '"a red circle on a blue background" -n 2 -S 1', 2)
    record = window.link.client().image(ids[0])
    assert record.params["controls"][0]["image"] == box.ref
    box.clear_picture()
    window.generate.reuse(record)
    assert box.ref == record.params["controls"][0]["image"] and box.type.currentText() == "none"


def test_reference_pictures_dropped_on_the_strip_carry_their_colours(qtbot, window: MainWindow, tmp_path: Path) -> None:
    strip = window.generate.references
    green = tmp_path / "green.png"
    toyworld.render(toyworld.Scene("circle", "green", "gray"), np.random.default_rng(7)).save(green)
    mime = QMimeData()
    mime.setUrls([QUrl.fromLocalFile(str(green))])
    strip.dropEvent(QDropEvent(QPointF(5, 5), Qt.DropAction.CopyAction, mime, Qt.MouseButton.LeftButton,
                               Qt.KeyboardModifier.NoModifier))  # fmt: skip
    qtbot.waitUntil(lambda: strip.strip.count() == 1, timeout=WAIT)
    window.generate.control.clear_picture()
    ids = generate(qtbot, window, '"a circle" -n 4 -S 1', 4)
    client = window.link.client()
    verdicts = [judge(Image.open(client.image(i).path)) for i in ids]
    assert sum(v.colour == "green" and v.background == "gray" for v in verdicts) >= 3
    strip.clear_all()
    window.generate.reuse(client.image(ids[0]))
    assert strip.refs == [r["image"] for r in client.image(ids[0]).params["references"]]


def test_the_edit_menu_describe_and_the_extras_box(qtbot, window: MainWindow) -> None:
    (parent,) = generate(qtbot, window, '"a red circle on a blue background" -n 1 -S 6 -s 8', 1)
    gallery = window.gallery
    window.show_view("gallery")
    gallery.show_record(window.link.client().image(parent))
    labels = [a.text() for a in gallery.edits.actions()]
    assert labels[:4] == ["Vary (Subtle)", "Vary (Strong)", "Zoom Out 2×", "Zoom Out 1.5×"]
    assert "Vary (Region)…" in labels
    next(a for a in gallery.edits.actions() if a.text() == "Zoom Out 2×").trigger()
    qtbot.waitUntil(lambda: window.generate.results.count() == 1 and window.generate.job_id is None, timeout=WAIT)
    zoomed = window.link.client().image(window.generate.results.item(0).data(Qt.ItemDataRole.UserRole))
    assert zoomed.parent_id == parent and zoomed.relation == "outpaint" and (zoomed.width, zoomed.height) == (64, 64)
    # Describe: four prompts; picking the first puts it in the prompt box
    window.show_view("gallery")
    gallery.show_record(window.link.client().image(parent))
    qtbot.mouseClick(gallery.actions["Describe"], Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: len(gallery.described.actions()) == 4, timeout=WAIT)
    first = gallery.described.actions()[0]
    assert "circle" in first.text()
    gallery.described.hide()
    first.trigger()
    assert window.tabs.currentWidget() is window.generate and window.generate.prompt.toPlainText() == first.text()
    # the extras box speaks the grammar: hires, clip skip, tiling
    extras = window.generate.extras
    extras.hires.setValue(2)
    extras.clip_skip.setValue(2)
    extras.tiling.setChecked(True)
    request = window.generate.request()
    assert request.hires is not None and request.hires.scale == 2 and request.clip_skip == 2 and request.tiling
    extras.reuse({})
    assert window.generate.request().hires is None


def test_rate_tag_and_board_an_image_then_list_the_board(qtbot, window: MainWindow) -> None:
    (image_id,) = generate(qtbot, window, '"a yellow star on a gray background" -n 1 -S 61 -s 6', 1)
    gallery = window.gallery
    window.show_view("gallery")
    gallery.show_record(window.link.client().image(image_id))
    organiser = gallery.organiser
    organiser.rating.setCurrentIndex(4)
    organiser.rating.activated.emit(4)
    qtbot.waitUntil(lambda: window.link.client().image(image_id).rating == 4, timeout=WAIT)
    organiser.tag_edit.setText("desk, sunny")
    qtbot.keyClick(organiser.tag_edit, Qt.Key.Key_Return)
    qtbot.waitUntil(lambda: "#sunny" in organiser.tags.text() and "#desk" in organiser.tags.text(), timeout=WAIT)
    organiser.refresh_tags()  # the tag box completes from the gallery's most used tags
    qtbot.waitUntil(lambda: "sunny" in organiser.known_tags.stringList(), timeout=WAIT)
    assert "mode:txt2img" in organiser.known_tags.stringList()
    organiser.new_board.setText("Desk picks")
    qtbot.keyClick(organiser.new_board, Qt.Key.Key_Return)
    qtbot.waitUntil(lambda: gallery.board.findText("Desk picks") >= 0, timeout=WAIT)  # the filter lists it
    gallery.board.setCurrentText("Desk picks")
    qtbot.waitUntil(lambda: gallery.model.total == 1 and gallery.model.record(0).id == image_id, timeout=WAIT)
    # the same board from the CLI's side: the engine owner's boards are one set
    assert [b.name for b in window.link.client().boards(Requester(source="cli", user="someone"))] == ["Desk picks"]


def test_stacks_saved_searches_and_the_lineage_tree(qtbot, window: MainWindow) -> None:
    from engine.client.dream_args import parse

    ids = generate(qtbot, window, '"a purple moon on a black background" -n 3 -S 71 -s 4', 3)
    gallery = window.gallery
    window.show_view("gallery")
    gallery.stacks.setChecked(True)  # a job's three images fold into one stack

    def stack_row() -> int | None:
        records = [gallery.model.record(r) for r in range(gallery.model.rowCount())]
        return next((r for r, rec in enumerate(records) if rec is not None and rec.id in ids), None)

    qtbot.waitUntil(lambda: stack_row() is not None, timeout=WAIT)
    row = stack_row()
    assert row is not None
    top = gallery.model.record(row)
    assert top is not None and top.stack_size == 3
    assert sum(1 for r in range(gallery.model.rowCount()) if (rec := gallery.model.record(r)) and rec.id in ids) == 1
    gallery.view.doubleClicked.emit(gallery.model.index(row))  # open the stack: all three
    qtbot.waitUntil(lambda: gallery.model.total == 3, timeout=WAIT)
    assert sorted(gallery.model.record(r).id for r in range(3)) == sorted(ids)
    # a saved search in the sidebar, run again with a click
    gallery.search.setText("purple moon")
    gallery.saved.name.setText("Moons")
    qtbot.keyClick(gallery.saved.name, Qt.Key.Key_Return)
    qtbot.waitUntil(lambda: gallery.saved.list.count() == 1, timeout=WAIT)
    assert gallery.saved.list.item(0).text() == "@Moons"
    gallery.browse()
    gallery.saved.list.itemClicked.emit(gallery.saved.list.item(0))
    qtbot.waitUntil(lambda: gallery.search.text() == "@Moons" and gallery.model.total >= 3, timeout=WAIT)
    assert set(ids) <= {gallery.model.record(r).id for r in range(gallery.model.total)}
    # the lineage tree: an upscale of the first image sits under it; picking the first shows it
    client = window.link.client()
    child = client.wait(client.submit(parse(f"-I {ids[0]} -U 2 -s 4")).id).images[0].id
    gallery.show_record(client.image(child))
    qtbot.mouseClick(gallery.actions["Lineage"], Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: getattr(gallery, "lineage_dialog", None) is not None, timeout=WAIT)
    tree = gallery.lineage_dialog
    root = tree.tree.topLevelItem(0)
    assert root.text(0) == f"#{ids[0]}" and root.child(0).text(0) == f"#{child}" and root.child(0).text(1) == "upscale"
    tree.tree.itemActivated.emit(root, 0)
    qtbot.waitUntil(lambda: gallery.current is not None and gallery.current.id == ids[0], timeout=WAIT)


def test_the_lineage_tree_places_steered_images_under_the_picture_that_steered_them(qtbot) -> None:
    """Sources (a control, a reference) sit under the image as "control of it"; an image made with this one as its
    control sits under it, and what was made from that one under that one (by `via`, not by its init parent)."""
    from desktop.organise import LineageDialog
    from gallery.schemas import Lineage, LineageNode

    def node(i: int, depth: int, via: int, edge: str | None, parent: int | None = None) -> LineageNode:
        return LineageNode(id=i, parent_id=parent, relation=None if edge else "upscale", depth=depth, prompt=f"p{i}",
                           mode="txt2img", via=via, edge=edge)  # fmt: skip

    below = [node(11, 1, 10, "reference", parent=7), node(12, 2, 11, None, parent=11)]
    lineage = Lineage(image_id=10, ancestors=[], sources=[node(3, 1, 10, "control")], descendants=below)
    dialog = LineageDialog(lineage, "txt2img")
    qtbot.addWidget(dialog)
    this = dialog.tree.topLevelItem(0)
    assert this.text(0) == "#10" and [this.child(i).text(0) for i in range(this.childCount())] == ["#3", "#11"]
    assert this.child(0).text(1) == "control of it" and this.child(1).text(1) == "reference"
    assert this.child(1).child(0).text(0) == "#12" and this.child(1).child(0).text(1) == "upscale"


def test_a_waiting_job_shows_the_nearest_images_while_it_waits(qtbot, window: MainWindow) -> None:
    from engine.client.dream_args import parse
    from engine.client.waiting import nearest_query

    generate(qtbot, window, '"a teal circle on a white background" -n 1 -S 91 -s 4', 1)  # something to show
    client = window.link.client()
    slow = [client.submit(parse("a slow hexagon -n 2 -s 60 -W 256 -H 256", requester=Requester(source="api", user=u)))
            for u in ("filler-1", "filler-2")]  # one runs, one waits ahead of the next job  # fmt: skip
    panel = window.generate
    try:
        panel.prompt.setPlainText('"a teal circle on a gray background" -n 1 -S 92 -s 4')
        qtbot.mouseClick(panel.generate_button, Qt.MouseButton.LeftButton)
        qtbot.waitUntil(lambda: panel.waiting.count() > 0, timeout=WAIT)
        shown = [panel.waiting.item(i).data(Qt.ItemDataRole.UserRole) for i in range(panel.waiting.count())]
        assert panel.waiting.isVisibleTo(window)
        # the engine's nearest images for this request: CLIP text -> image, one per stack (the teal circle made
        # above among them, or closer ones)
        query = nearest_query(parse('"a teal circle on a gray background" -n 1 -S 92 -s 4',
                                    requester=panel.asked.requester))  # fmt: skip
        assert query is not None
        expected = [r.image.id for r in client.search(**query).results]
        assert shown == expected and shown
    finally:
        for job in slow:
            client.cancel(job.id)
    qtbot.waitUntil(lambda: panel.results.count() == 1 and panel.job_id is None, timeout=WAIT)
    assert panel.waiting.count() == 0 and not panel.waiting.isVisibleTo(window)  # gone once the job started
