"""What frontends import: the wire contract, the `!dream` grammar, settings and paths, user-facing errors,
the sync/async clients, starting or finding an engine, grid tiling.

Nothing here imports the server or torch (import-linter holds it). The clients load httpx and
pydantic, so they are exported lazily: `dreamhall dream` reaches the engine through `wire` alone.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from engine.client.errors import EngineError, EngineUnavailable, RequestRejected

if TYPE_CHECKING:
    from engine.client.clients import AsyncEngineClient, EngineClient

__all__ = ["AsyncEngineClient", "EngineClient", "EngineError", "EngineUnavailable", "RequestRejected"]


def __getattr__(name: str) -> Any:
    if name in {"EngineClient", "AsyncEngineClient"}:
        from engine.client import clients

        return getattr(clients, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
