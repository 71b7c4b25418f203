"""The engine's HTTP API over its Unix socket with the standard library alone: `dreamhall dream`'s path.

A `dreamhall dream` is a new process per request; importing httpx and pydantic (engine.client)
costs it ~250 ms on a small CPU, more than the engine spends on a job. This speaks the same
routes with `http.client` and `json`: bodies go out as the grammar's fields and come back as
plain dicts, and the engine's pydantic models validate them on its side. Everything else
(the bot, the desktop, the other commands) uses engine.client.

    wire = Wire(socket_path)
    job = wire.call("POST", "/v1/dreams", {"prompt": "a red circle", "n": 4})
    for event in wire.events(job["id"]): ...
"""

from __future__ import annotations

import http.client
import json
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from engine.client.errors import EngineError, EngineUnavailable, rejected
from engine.client.states import TERMINAL

_LOST = (OSError, http.client.HTTPException)  # no socket, refused, reset, or a half answer


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: Path, timeout: float | None) -> None:
        super().__init__("engine", timeout=timeout)
        self.path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(str(self.path))


class Wire:
    """Calls to one engine socket. A connection per call: connecting to a Unix socket costs microseconds,
    and a kept-alive one may have been closed by the server while a job ran (uvicorn keeps them 5 s)."""

    def __init__(self, socket_path: Path, timeout: float = 30.0) -> None:
        self.socket_path = socket_path
        self.timeout = timeout

    def call(self, method: str, path: str, body: dict[str, Any] | bytes | None = None) -> Any:
        """The answer's JSON (or bytes, for images); RequestRejected with the engine's sentence on 4xx/5xx."""
        headers = {}
        if isinstance(body, dict):
            body = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        elif body is not None:
            headers["Content-Type"] = "application/octet-stream"
        conn = _UnixConnection(self.socket_path, self.timeout)
        try:
            conn.request(method, path, body=body, headers=headers)
            response = conn.getresponse()
            data = response.read()
        except TimeoutError as e:  # an engine is there but busy: not a reason to start another
            raise EngineError(f"the engine at {self.socket_path} did not answer within {self.timeout:.0f} s") from e
        except _LOST as e:
            raise EngineUnavailable(f"no engine answers at {self.socket_path}: {e}") from e
        finally:
            conn.close()
        if response.status >= 400:
            raise rejected(response.status, data, response.reason)
        if response.getheader("Content-Type", "").startswith("application/json"):
            return json.loads(data)
        return data

    def events(self, job_id: str) -> Iterator[dict[str, Any]]:
        """A job's events (server-sent) until its last one."""
        conn = _UnixConnection(self.socket_path, None)
        try:
            conn.request("GET", f"/v1/dreams/{job_id}/events")
            response = conn.getresponse()
            if response.status >= 400:
                raise rejected(response.status, response.read(), response.reason)
            data: list[str] = []
            for raw in response:
                line = raw.decode().rstrip("\r\n")
                if line.startswith("data:"):
                    data.append(line[5:].removeprefix(" "))
                elif not line and data:  # a blank line ends an event; `event:`, `id:` and `:` pings carry nothing
                    event = json.loads("\n".join(data))
                    data = []
                    yield event
                    if event.get("type") in TERMINAL:
                        return
            raise EngineUnavailable(f"the engine at {self.socket_path} ended job {job_id}'s events before its end")
        except _LOST as e:
            raise EngineUnavailable(f"lost the engine at {self.socket_path}: {e}") from e
        finally:
            conn.close()
