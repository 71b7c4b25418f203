"""What -I/-M mean on the user's machine: a gallery reference as it is, or a local file that a frontend
uploads first (the engine never reads a path of the frontend's machine). The standard library only."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

from engine.client.errors import RequestRejected, clip_text


def looks_like_ref(value: str) -> bool:
    """Whether a -I/-M value already names an image (a gallery id or reference) rather than a file."""
    value = value.strip()
    return bool(re.fullmatch(r"[0-9]+", value)) or value.startswith(("gallery:", "upload:"))


def local_image(value: str) -> tuple[str, bytes | None]:
    """What -I/-M mean on this machine: (a gallery id or reference, None) as is, or (file name, its bytes).

    Raises ValueError with a message for the user (the parser reports it against the flag).
    """
    if looks_like_ref(value):
        return value, None
    path = existing_file(value)
    if path is None:
        raise ValueError(f"{clip_text(value)!r} is neither a gallery image id nor a file")
    try:
        return path.name, path.read_bytes()
    except OSError as e:
        raise ValueError(f"cannot read {clip_text(value)!r}: {e.strerror or e}") from None


def existing_file(value: str) -> Path | None:
    """The file `value` names on this machine, or None (also for names no file system takes: too long, NUL)."""
    try:
        path = Path(value).expanduser()
        return path if path.is_file() else None
    except (OSError, ValueError):
        return None


def resolve_local(value: str, upload: Callable[[bytes], str]) -> str:
    """-I/-M as the engine reads them: a gallery reference as is, a local file sent through `upload` (bytes
    -> reference) first; the engine's refusal becomes a ValueError the parser reports against the flag."""
    name, data = local_image(value)
    if data is None:
        return name
    try:
        return upload(data)
    except RequestRejected as e:
        raise ValueError(f"{name}: {e}") from None
