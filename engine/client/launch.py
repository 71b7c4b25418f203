"""Starting and stopping an engine process from a frontend: `connect` (start one if none answers) and `stop`.

Light like the client: no torch, no database.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from typing import cast

from engine.client.answers import Health
from engine.client.clients import EngineClient, EngineUnavailable
from engine.client.settings import Settings


def spawn_engine(settings: Settings) -> subprocess.Popen[bytes]:
    """Start an engine in the background (its own session, so it outlives this process)."""
    settings.log_dir.mkdir(parents=True, exist_ok=True)
    log = open(settings.log_dir / "engine.log", "ab")  # noqa: SIM115 - handed to the child
    env = {**os.environ, "DREAMHALL_HOME": str(settings.home)}
    return subprocess.Popen(
        [sys.executable, "-m", "engine.server"],
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=log,
        env=env,
        start_new_session=True,
    )


def connect(
    settings: Settings,
    *,
    autostart: bool = True,
    timeout: float = 120.0,
    say: Callable[[str], None] = print,
    model: str | None = None,
) -> EngineClient:
    """A client for the configured engine, once it is ready; start one in the background if none
    answers, and say what is happening while it starts. `model`: the model the caller's request will
    load, named in those messages (None: the engine's default)."""
    client = EngineClient(settings.socket_path)
    proc: subprocess.Popen[bytes] | None = None
    log_file = settings.log_dir / "engine.log"
    try:
        health: Health | None = cast(Health, client.health())
    except EngineUnavailable:
        if not autostart:
            client.close()
            raise
        proc = spawn_engine(settings)
        say(f"No engine was running; started one in the background (pid {proc.pid}, log {log_file}).")
        health = None
    deadline = time.monotonic() + timeout
    said_starting = False
    while True:
        if health is not None and health.status == "ok":
            _say_loading(health, say, model)
            return client
        if health is not None and not said_starting:
            say(f"The engine is starting: loading torch, model {model or health.loading} and the search index.")
            said_starting = True
        if proc is not None and proc.poll() is not None:
            client.close()
            raise EngineUnavailable(f"the engine exited at start (code {proc.returncode}); see {log_file}")
        if time.monotonic() > deadline:
            client.close()
            raise EngineUnavailable(f"the engine was not ready within {timeout:.0f}s; see {log_file}")
        time.sleep(0.2)
        try:
            health = cast(Health, client.health())
        except EngineUnavailable:
            if proc is None:  # it answered, then went away: it failed while starting
                client.close()
                raise
            health = None


def _alive(pid: int) -> bool:
    # An engine this process spawned (the desktop's "Start engine") stays a zombie until it is
    # reaped, and kill(pid, 0) still finds a zombie: reap it first.
    try:
        if os.waitpid(pid, os.WNOHANG)[0] == pid:
            return False
    except ChildProcessError:
        pass  # not our child: someone else reaps it
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _say_loading(health: Health, say: Callable[[str], None], model: str | None) -> None:
    if health.loading and (model is None or model == health.loading):
        say(f"The engine is loading model {health.loading}; jobs start once it is ready.")
    elif model is not None and model not in health.loaded:
        say(f"The engine loads model {model} for this request before it starts.")


class StopFailed(RuntimeError):
    """The engine did not stop in time."""


def stop_engine(settings: Settings, timeout: float = 30.0) -> str:
    """Stop the engine recorded in the pid file (SIGTERM, then wait); return what happened, in words."""
    try:
        pid = int(settings.pid_file.read_text())
    except (FileNotFoundError, ValueError):
        return "no engine running"
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        settings.pid_file.unlink(missing_ok=True)
        return "no engine running (removed a stale pid file)"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _alive(pid):
            return f"engine {pid} stopped"
        time.sleep(0.1)
    raise StopFailed(f"engine {pid} did not stop within {timeout:.0f}s")
