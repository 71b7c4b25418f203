"""What every command shares: one `dreamhall:` line per error, exit codes, the settings model.

The standard library at the top only: `dreamhall dream` is a process per image."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from engine.client.dream_args import DreamArgsError
from engine.client.errors import EngineError, RequestRejected

if TYPE_CHECKING:
    from engine.client.settings import Settings


def fail(message: str, code: int = 2) -> int:
    print(f"dreamhall: {message}", file=sys.stderr)
    return code


def fail_args(error: DreamArgsError, command: str = "dreamhall dream") -> int:
    """A grammar error, with examples in this command's words rather than Discord's."""
    text = str(error).replace("!dream --help", f"{command} --help").replace("!dream", command)
    return fail(text)


class Exit(Exception):
    """Leave the command with this exit code (the message is already printed)."""

    def __init__(self, code: int) -> None:
        super().__init__(code)
        self.code = code


@contextmanager
def engine_errors() -> Iterator[None]:
    """Engine errors as one line on stderr: 2 when the engine refused the request, 1 when there is no engine."""
    try:
        yield
    except RequestRejected as e:
        raise Exit(fail(str(e))) from None
    except EngineError as e:
        raise Exit(fail(str(e), 1)) from None


def load_settings(args: argparse.Namespace) -> Settings:
    """The settings model for this command (flags over DREAMHALL_* over config.toml); Exit(2) if they are bad."""
    from engine.client.settings import SettingsError, load_settings

    overrides = {k: v for k in ("home", "model", "device") if (v := getattr(args, k, None)) is not None}
    try:
        return load_settings(**overrides)
    except SettingsError as e:
        raise Exit(fail(str(e))) from None
