"""Search filters as LanceDB's SQL `where` clauses (values quoted, never pasted raw)."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime

from gallery.schemas import VectorFilters


def ids_in(image_ids: Iterable[int]) -> str:
    return f"image_id IN ({', '.join(str(int(i)) for i in image_ids)})"


def _quote(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _utc(moment: datetime) -> str:
    # Stored timestamps are naive UTC; a naive input is taken as UTC too.
    if moment.tzinfo is not None:
        moment = moment.astimezone(UTC)
    return moment.strftime("%Y-%m-%d %H:%M:%S")


def where_clause(filters: VectorFilters | None) -> str | None:
    """The SQL filter LanceDB applies before ranking (values quoted, never pasted raw)."""
    if filters is None:
        return None
    parts = [f"`{column}` IS NULL" if value is None else f"`{column}` = {_quote(value)}"
             for column, value in filters.conditions()]  # fmt: skip
    if filters.created_after is not None:
        parts.append(f"created_at >= timestamp {_quote(_utc(filters.created_after))}")
    if filters.created_before is not None:
        parts.append(f"created_at < timestamp {_quote(_utc(filters.created_before))}")
    return " AND ".join(parts) or None
