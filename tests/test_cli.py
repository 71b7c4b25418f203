"""The `dreamhall` command as a newcomer uses it: help, output, the gallery from the terminal (issue #12)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from engine.client.schema import DreamRequest, resolve_size
from tests.conftest import ROOT, EngineProcess

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path) -> Iterator[EngineProcess]:
    proc = EngineProcess(tmp_path_factory.mktemp("home"), tiny_model).start()
    yield proc
    proc.stop()


def dreamhall(engine: EngineProcess, *argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cli", "--home", str(engine.home), *argv, "--no-autostart"],
                          capture_output=True, text=True, cwd=ROOT, timeout=120)  # fmt: skip


def test_help_is_the_one_grammar_and_errors_speak_cli() -> None:
    for command in ("dream", "zoom"):
        out = subprocess.run([sys.executable, "-m", "cli", command, "--help"], capture_output=True, text=True,
                             cwd=ROOT, timeout=60)  # fmt: skip
        assert out.returncode == 0
        flags = ("-n N, --iterations N", "-S SEED", "--outpaint", "-U FACTOR", "--hr SCALE", "--style NAME", "prompt")
        for flag in (*flags, "(1–150)"):
            assert flag in out.stdout, (command, flag)
        assert f"dreamhall {command}" in out.stdout and "!dream" not in out.stdout
    bad = subprocess.run([sys.executable, "-m", "cli", "dream", "-n", "4"], capture_output=True, text=True,
                         cwd=ROOT, timeout=60)  # fmt: skip
    assert bad.returncode == 2 and 'dreamhall dream "a red circle' in bad.stderr and "!dream" not in bad.stderr
    version = subprocess.run([sys.executable, "-m", "cli", "--version"], capture_output=True, text=True, cwd=ROOT)
    assert re.fullmatch(r"dreamhall \d+\.\d+\.\d+\n", version.stdout)


def test_output_names_each_image_and_its_own_seeds(engine: EngineProcess) -> None:
    out = dreamhall(engine, "dream", "a red circle", "-n", "2", "-S", "40", "-s", "2", "-W", "64", "-H", "64")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.strip().splitlines()
    assert [re.match(r"#(\d+)  seed (\d+)  64x64  /", line) is not None for line in lines] == [True, True]
    assert "seed 40" in lines[0] and "seed 41" in lines[1] and out.stdout.count("seed 40") == 1
    first = int(lines[0].split()[0][1:])
    varied = dreamhall(engine, "dream", "a red circle", "-I", str(first), "-v", "0.3", "-n", "2", "-s", "2")
    assert varied.returncode == 0, varied.stderr
    seeds = re.findall(r"variation seed (\d+)", varied.stdout)
    assert len(seeds) == 2 and int(seeds[1]) == int(seeds[0]) + 1  # each variation says which noise it is


def test_dream_against_a_running_engine_loads_neither_pydantic_nor_httpx(engine: EngineProcess) -> None:
    # A `dreamhall dream` is a process per request: it speaks engine.client.wire (standard library) and lets the
    # engine validate, so it starts in tens of ms instead of ~300 (issue #17).
    code = (
        "import json, sys; from cli.main import main;"
        f"rc = main(['--home', {str(engine.home)!r}, 'dream', 'a red circle', '-n', '2', '-S', '9', '-s', '2',"
        "           '-W', '64', '-H', '64', '-g', '--json', '--no-autostart']);"
        "heavy = ('pydantic', 'httpx', 'engine.client.schema', 'engine.client.clients', 'engine.client.settings',"
        "         'tqdm');"
        "print(json.dumps({'rc': rc, 'loaded': [m for m in heavy if m in sys.modules]}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    made, verdict = (json.loads(line) for line in out.stdout.strip().splitlines())
    assert verdict == {"rc": 0, "loaded": []}, out.stderr
    assert [i["seed"] for i in made["images"]] == [9, 10] and Path(made["grid"]).is_file()
    assert all(Path(i["path"]).is_file() and (i["width"], i["height"]) == (64, 64) for i in made["images"])
    # Values the grammar leaves to the request model come back from the engine named by their flag.
    bad = dreamhall(engine, "dream", "a red circle", "-s", "900")
    assert bad.returncode == 2 and "-s/--steps (steps): must be between 1 and 150" in bad.stderr
    assert "Traceback" not in bad.stderr and "!dream" not in bad.stderr
    # A local file for -I is uploaded over the same path.
    varied = dreamhall(engine, "dream", "a red circle", "-I", made["images"][0]["path"], "-s", "2", "--json")
    assert varied.returncode == 0, varied.stderr and json.loads(varied.stdout)["images"][0]["width"] == 64


def test_the_gallery_from_the_terminal(engine: EngineProcess) -> None:
    made = dreamhall(engine, "dream", "a blue square", "-S", "77", "-s", "2", "-W", "64", "-H", "64")
    image_id = made.stdout.split()[0]
    listing = dreamhall(engine, "gallery", "list", "--limit", "3")
    assert listing.returncode == 0 and listing.stdout.startswith(image_id) and "newest first" in listing.stdout
    for target in (image_id[1:], "last"):
        shown = dreamhall(engine, "gallery", "show", target)
        assert shown.returncode == 0 and "seed      77" in shown.stdout and "a blue square" in shown.stdout
    assert "not an image id" in dreamhall(engine, "gallery", "show", "x1").stderr
    # An upscale needs no prompt: it keeps its image's.
    up = dreamhall(engine, "dream", "-I", image_id[1:], "-U", "2", "-s", "2")
    assert up.returncode == 0, up.stderr
    shown = dreamhall(engine, "gallery", "show", "last")
    assert "a blue square" in shown.stdout and f"upscale of {image_id}" in shown.stdout


def test_a_config_file_that_is_not_toml_is_one_sentence(tmp_path: Path) -> None:
    config = tmp_path / "config" / "dreamhall" / "config.toml"
    config.parent.mkdir(parents=True)
    config.write_text('home = "never closed\n')
    env = {k: v for k, v in os.environ.items() if k != "DREAMHALL_HOME"}
    env |= {"XDG_CONFIG_HOME": str(tmp_path / "config"), "XDG_DATA_HOME": str(tmp_path / "data")}
    for argv in (["dream", "red", "--no-autostart"], ["search", "red", "--no-autostart"], ["engine", "status"]):
        out = subprocess.run([sys.executable, "-m", "cli", *argv], capture_output=True, text=True, cwd=ROOT, env=env,
                             timeout=60)  # fmt: skip
        assert out.returncode == 2 and "Traceback" not in out.stderr, (argv, out.stderr)
        assert out.stderr.startswith(f"dreamhall: cannot read {config}:"), out.stderr


def test_no_silent_surprises() -> None:
    # --ar on a 64 px model keeps the ratio (the shorter side is 64) instead of a silent square.
    assert resolve_size(DreamRequest(prompt="x", aspect_ratio=(16, 9)), 64) == (112, 64)
    mixed = subprocess.run([sys.executable, "-m", "cli", "dream", "x", "-I", "1", "-v", "0.2", "-U", "2"],
                           capture_output=True, text=True, cwd=ROOT, timeout=60)  # fmt: skip
    assert mixed.returncode == 2 and "do not mix" in mixed.stderr


def test_engine_says_at_once_that_one_is_running(engine: EngineProcess) -> None:
    started = time.monotonic()
    second = subprocess.run([sys.executable, "-m", "cli", "engine"], env=engine.env, capture_output=True,
                            text=True, timeout=60, cwd=ROOT)  # fmt: skip
    assert second.returncode == 1 and "already listening" in second.stderr
    # Before: 12-38 s of torch and diffusers imports. Now the socket is asked first; 5 s covers a busy machine.
    assert time.monotonic() - started < 5


def test_the_progress_bar_counts_the_steps_that_run() -> None:
    from cli.dream import _Progress
    from engine.client.answers import Event

    progress = _Progress(quiet=False)
    # The bar reads events as they come off the wire: Event's fields, without the unset ones.
    progress(Event(type="started", job="j", step=0, total=20).model_dump(exclude_none=True))  # img2img at 0.75
    assert progress.bar is None
    for step in range(1, 16):  # 15 steps actually run
        progress(Event(type="step", job="j", step=step, total=15).model_dump(exclude_none=True))
    bar = progress.bar
    assert bar is not None and (bar.n, bar.total) == (15, 15)
    progress.close()


def test_a_first_job_on_a_model_says_it_is_loading(engine: EngineProcess, tmp_path: Path) -> None:
    from tests.tiny_pipeline import build

    other = build(tmp_path / "other")  # a second model: the engine must load it for this job
    with engine.client() as client:
        # A job ahead keeps the worker busy, so this one's stream is open before it starts.
        blocker = client.submit(DreamRequest(prompt="a blue square", steps=30, width=64, height=64))
        request = DreamRequest(prompt="a red circle", steps=2, width=64, height=64, model=str(other))
        accepted = client.submit(request)
        # Queued behind the blocker: next (it runs) or after it (it still waits).
        assert accepted.status == "queued" and accepted.position in {0, 1}
        assert client.job(blocker.id).status in {"queued", "running"}
        events = list(client.events(accepted.id))
    loading = [e for e in events if e.type == "loading"]
    assert len(loading) == 1 and loading[0].model == str(other) and events[-1].type == "done"
    assert [e.type for e in events].index("loading") < [e.type for e in events].index("step")


def test_names_no_file_system_takes_are_one_sentence(engine: EngineProcess) -> None:
    """A 300-character model name, -I or -M: one `dreamhall:` line quoting at most 60 characters of it, never
    a traceback (`OSError: File name too long`)."""
    long = "x" * 300
    for flag in ("-m", "-I", "-M"):
        out = dreamhall(engine, "dream", "a red circle", flag, long, "-s", "2", "-W", "64", "-H", "64")
        assert out.returncode != 0 and "Traceback" not in out.stderr, out.stderr
        lines = out.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("dreamhall: ") and "x" * 61 not in lines[0], out.stderr
