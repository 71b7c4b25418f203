"""A job's terminal states: the last event of every stream, and the states the queue never leaves.

The standard library only, so the lean `dreamhall dream` path (engine.client.wire) reads the same set.
"""

from __future__ import annotations

TERMINAL: frozenset[str] = frozenset({"done", "failed", "cancelled"})
