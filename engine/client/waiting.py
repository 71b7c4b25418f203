"""While you wait: a queued job's frontend shows the nearest images its asker may already see (CLIP text -> image),
so a person waiting behind others has something to look at, and may find what they wanted was already made. One rule
for the bot and the desktop: when to look, and what for."""

from __future__ import annotations

from typing import Any

from engine.client.answers import Accepted
from engine.client.schema import DreamRequest, Scope

SHOWN = 4  # a grid's worth
QUERY_CHARS = 300  # the prompt's opening is what it is about; flags and long tails only blur the search


def worth_showing(accepted: Accepted) -> bool:
    """Only when the job really waits behind others (answered from the gallery, or next up: nothing to wait for)."""
    return accepted.found is None and accepted.position is not None and accepted.position >= 1


def nearest_query(request: DreamRequest) -> dict[str, Any] | None:
    """The search (text and filters) of a queued request's nearest images: within the asker's gallery, one per
    stack (None: a request without words, e.g. pictures alone)."""
    text = request.prompt.strip()[:QUERY_CHARS]
    if not text:
        return None
    scope = Scope.of(request.requester)
    return {"query": text, "limit": SHOWN, "stacks": True, "nearest": True,
            **(scope.params() if scope is not None else {})}  # fmt: skip
