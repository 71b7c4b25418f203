"""Shared fixtures: a tiny pipeline on disk and real engine processes on temporary sockets."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from engine.client.clients import EngineClient, EngineUnavailable

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random-weight SD pipeline folder (16x16 native) for plumbing tests."""
    from tests.tiny_pipeline import build

    return build(tmp_path_factory.mktemp("tiny"))


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now (for an engine's opt-in TCP listener)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class EngineProcess:
    """`dreamhall engine` as a real subprocess on a socket under `home`."""

    def __init__(self, home: Path, model: Path | None, **env: str) -> None:
        self.home = home
        self.model = model
        self.extra_env = env
        self.proc: subprocess.Popen | None = None

    @property
    def socket(self) -> Path:
        return self.home / "engine.sock"

    @property
    def env(self) -> dict[str, str]:
        env = {**os.environ, "DREAMHALL_HOME": str(self.home), "PYTHONUNBUFFERED": "1", **self.extra_env}
        if self.model is not None:
            # As a user installs a model: on the shelf (home/models/Stable-diffusion/), used by its name.
            shelf = self.home / "models" / "Stable-diffusion" / self.model.name
            if not shelf.exists():
                shelf.parent.mkdir(parents=True, exist_ok=True)
                shelf.symlink_to(self.model.resolve(), target_is_directory=self.model.is_dir())
            env["DREAMHALL_MODEL"] = self.model.stem if self.model.is_file() else self.model.name
        return env

    def start(self, timeout: float = 180.0, ready: bool = True) -> EngineProcess:
        """Start, and return once the socket answers (`ready`: once the backend and the default model have
        loaded too, so a test's first command finds the engine warm)."""
        self.home.mkdir(parents=True, exist_ok=True)
        self.log = open(self.home / "engine-test.log", "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "cli", "engine"], env=self.env, stdout=self.log, stderr=self.log, cwd=ROOT
        )
        deadline = time.monotonic() + timeout
        with EngineClient(self.socket) as client:
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"engine exited with {self.proc.returncode}:\n{self.read_log()}")
                try:
                    health = client.health()
                    if not ready or (health.status == "ok" and health.loading is None):
                        return self
                except EngineUnavailable:
                    pass
                time.sleep(0.2)
        raise TimeoutError(f"engine did not start:\n{self.read_log()}")

    def read_log(self, tail: int | None = 5000) -> str:
        text = (self.home / "engine-test.log").read_text(errors="replace")
        return text[-tail:] if tail else text

    def client(self) -> EngineClient:
        return EngineClient(self.socket)

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)
        self.log.close()

    def stop(self) -> int:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait(10)
        self.log.close()
        return code


def batch_calls(client: EngineClient) -> tuple[float, float]:
    """(pipeline calls, jobs in them) an engine has run so far, from its metrics (cross-user batching)."""
    text = client._http.get("/metrics").text
    found = dict(re.findall(r"^dreamhall_batch_jobs_(count|sum) (\S+)$", text, re.M))
    return float(found["count"]), float(found["sum"])


TOKEN = "s3cret-token"


def start_tcp_engine(home: Path) -> EngineProcess:
    """An engine on the built-in models that also listens on TCP with a token (as AUTOMATIC1111's API clients
    reach it); its port is `.port`."""
    port = free_port()
    proc = EngineProcess(home, None, DREAMHALL_TCP_PORT=str(port), DREAMHALL_TOKEN=TOKEN).start()
    proc.port = port  # type: ignore[attr-defined]
    return proc


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path) -> Iterator[EngineProcess]:
    """One engine shared by a test module, on the tiny pipeline."""
    proc = EngineProcess(tmp_path_factory.mktemp("home"), tiny_model).start()
    yield proc
    proc.stop()


@pytest.fixture
def client(engine: EngineProcess) -> Iterator[EngineClient]:
    with engine.client() as c:
        yield c
