"""A real engine process for a benchmark: started in a home with extra settings, handed over once its health says
"ok" (torch, the model and the search index loaded), stopped afterwards."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from engine.client.clients import EngineClient, EngineUnavailable  # noqa: E402


@contextmanager
def running_engine(home: Path, settings: dict[str, str], *, timeout: float = 600,
                   client_timeout: float = 120) -> Iterator[EngineClient]:  # fmt: skip
    """`dreamhall engine` in `home` with these DREAMHALL_* settings; a client once it is ready."""
    env = {**os.environ, **settings, "DREAMHALL_HOME": str(home)}
    # As on a user's machine, Python keeps its bytecode cache (a shell with PYTHONDONTWRITEBYTECODE would have
    # every process recompile our modules).
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    with (home / "engine.log").open("w") as log:
        engine = subprocess.Popen([sys.executable, "-m", "cli", "engine"], env=env, cwd=ROOT,
                                  stdout=subprocess.DEVNULL, stderr=log)  # fmt: skip
    try:
        with EngineClient(home / "engine.sock", timeout=client_timeout) as client:
            deadline = time.monotonic() + timeout
            while True:
                try:
                    if client.health().status == "ok":
                        break
                except EngineUnavailable:
                    pass
                if engine.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"the engine did not start: see {home / 'engine.log'}")
                time.sleep(0.2)
            yield client
    finally:
        engine.terminate()
        engine.wait(60)
