"""The one map from the engine's errors to what a user reads: which errors are the user's (one sentence
each) and their status codes.

The routes answer them through engine.server.error_handlers; a job that fails with one records the
same sentence (engine.server.front). Anything else is a bug: a 500 for a route, a logged traceback for a job.
"""

from __future__ import annotations

from engine.client.errors import UserError
from engine.server.queue import JobNotFound, TooManyQueued
from gallery.boards import BoardDenied, BoardExists, BoardNotFound
from gallery.files import BadImage
from gallery.search import SearchError
from gallery.store import ImageNotFound
from gallery.tags import BadName


class EngineStarting(RuntimeError):
    """Asked for what the backend does (search, models, progress) while it is still loading."""


# The user's mistakes (and "not yet") -> status codes, in one place; a subclass answers as its base.
USER_ERRORS: dict[type[Exception], int] = {
    JobNotFound: 404,
    ImageNotFound: 404,
    BoardNotFound: 404,
    BoardDenied: 403,
    BoardExists: 409,
    BadName: 422,
    SearchError: 422,
    BadImage: 422,
    UserError: 422,  # InputError, UnknownModel, PromptError, SamplerError, ModelLoadError, ...
    TooManyQueued: 429,
    EngineStarting: 503,
}


def is_user_error(e: BaseException) -> bool:
    """Whether `e`'s message is a sentence for the user (else it is a bug, with a traceback for the log)."""
    return isinstance(e, tuple(USER_ERRORS))
