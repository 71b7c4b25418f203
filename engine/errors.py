"""What a frontend's call to the engine can raise; the standard library only, so every client shares it.

EngineError
├── EngineUnavailable   nothing answers on the socket / port
└── RequestRejected     the engine said no (bad request, unknown job, queue full); `.status` holds the HTTP status
"""

from __future__ import annotations

import json


class EngineError(Exception):
    """Root of the client's exceptions."""


class EngineUnavailable(EngineError):
    pass


class RequestRejected(EngineError):
    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


def rejected(status: int, body: bytes, reason: str = "") -> RequestRejected:
    """The engine's refusal as an exception: its one-sentence `error` (both API shapes carry one)."""
    try:
        answer = json.loads(body)
        message = (answer.get("error") if isinstance(answer, dict) else None) or body.decode(errors="replace")
    except ValueError:
        message = body.decode(errors="replace") or reason
    return RequestRejected(message, status)
