"""Errors, in two trees; the standard library only, so every client (and the lean CLI path) shares them.

What a frontend's call to the engine can raise:

EngineError
├── EngineUnavailable   nothing answers on the socket / port
└── RequestRejected     the engine said no (bad request, unknown job, queue full); `.status` holds the HTTP status

What the engine raises for a mistake its user can fix. Its message is the one sentence the user reads:
the API answers it as the error of a 4xx, a job that fails with it records it as the job's error, and
the log says it on one line without a traceback (engine.server.errors maps both).

UserError
├── InputError          an input image or value that cannot be used as asked
└── (the server's and device's own: UnknownModel, PromptError, SamplerError, ModelLoadError, ...)
"""

from __future__ import annotations

import json


def clip_text(text: str, limit: int = 60) -> str:
    """At most `limit` characters of user input, for error messages (never echo a whole input back)."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


def error_line(e: BaseException) -> str:
    """A failure that is not the user's mistake, in one line (its type and its message's first line); the
    traceback stays in the log."""
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[0]}" if text else type(e).__name__


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


class UserError(Exception):
    """A mistake the user can fix (a bad value, a model that does not fit); str() is the one sentence they read."""


class InputError(UserError, ValueError):
    """An input image or value that cannot be used as asked; the message says what to fix."""
