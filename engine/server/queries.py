"""The query and path parameters the routes share: filters, pages, ids and scopes, each with the bounds the
engine enforces (so /openapi.json says what the engine accepts)."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Literal

from fastapi import Path, Query
from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field

from engine.client.schema import MAX_ID, Scope, Source
from gallery.boards import Who
from gallery.schemas import SearchFilters
from gallery.search import MAX_LIMIT, MAX_QUERY_CHARS, SearchError
from gallery.tags import BadName, tag_of

ImageId = Annotated[int, Path(ge=1, le=MAX_ID, description="a gallery image id")]
MAX_OFFSET = 10**9  # past any gallery; a larger one is a mistake, not a page
MAX_FILTER_SIDE = 65_536  # no image is wider; larger is a mistake (and would overflow SQLite)


def _date(value: object) -> object:
    """ISO dates only, from year 1900: a bare number is not read as a Unix timestamp."""
    if isinstance(value, (int, float)) or (isinstance(value, str) and re.fullmatch(r"[-+]?[0-9.eE+-]+", value)):
        raise ValueError("use an ISO date such as 2026-11-21 or 2026-11-21T18:00:00Z")
    return value


def _from_1900(value: datetime | None) -> datetime | None:
    if value is not None and value.year < 1900:
        raise ValueError("dates before 1900 hold no images")
    return value


# The schema says what the validators enforce (an ISO date from 1900), so a client or a fuzzer reading
# /openapi.json finds no value the schema allows and the engine refuses.
Date = Annotated[
    datetime | None,
    BeforeValidator(_date),
    AfterValidator(_from_1900),
    Field(json_schema_extra={"pattern": r"^(19|[2-9][0-9])[0-9][0-9]-"}),
]


class FilterQuery(BaseModel):
    """The filters every listing and search takes, as query parameters; an unknown one is a 422."""

    model_config = ConfigDict(extra="forbid")

    guild: str | None = None
    user: str | None = None
    source: str | None = None
    model: str | None = None
    after: Date = None
    before: Date = None
    dm_of: str | None = Field(default=None, description="a Discord user: only their images from direct messages")
    favourites: bool = False
    min_width: int | None = Field(default=None, ge=1, le=MAX_FILTER_SIDE)
    min_height: int | None = Field(default=None, ge=1, le=MAX_FILTER_SIDE)
    lora: str | None = Field(default=None, max_length=200, description="only images made with this LoRA")
    tag: list[Annotated[str, Field(max_length=200)]] = Field(
        default_factory=list, max_length=8, description="only images with every one of these tags"
    )
    board: int | None = Field(default=None, ge=1, le=MAX_ID, description="only images on this board")
    min_rating: int | None = Field(default=None, ge=1, le=5)
    derived_from: int | None = Field(default=None, ge=1, le=MAX_ID, description="only images made from this one")
    not_board: int | None = Field(default=None, ge=1, le=MAX_ID, description="leave out this board's images")
    stack: str | None = Field(default=None, max_length=64, description="only this stack's images (its expansion)")

    def filters(self) -> SearchFilters:
        try:
            tags = [tag_of(t) for t in self.tag]
        except BadName as e:
            raise SearchError(f"tag: {e}") from None
        return SearchFilters(guild=self.guild, user=self.user, source=self.source, model=self.model,
                             created_after=self.after, created_before=self.before, dm_of=self.dm_of,
                             favourites=self.favourites, min_width=self.min_width,
                             min_height=self.min_height, lora=self.lora, tags=tags, board=self.board,
                             min_rating=self.min_rating, derived_from=self.derived_from,
                             not_board=self.not_board, stack=self.stack)  # fmt: skip


class BrowseQuery(FilterQuery):
    """A page of the gallery, newest first."""

    limit: int = Field(default=100, ge=1, le=1000)
    offset: int = Field(default=0, ge=0, le=MAX_OFFSET)
    sort: Literal["newest", "rating", "favourites"] = "newest"
    stacks: bool = Field(default=False, description="one image per stack (images that differ only by seed or "
                         "variation), with its stack_size; `stack=KEY` lists a stack")  # fmt: skip


class SearchQuery(FilterQuery):
    """A page of search results, best first."""

    limit: int = Field(default=20, ge=1, le=MAX_LIMIT)
    offset: int = Field(default=0, ge=0, le=10_000)
    stacks: bool = Field(default=False, description="one result per stack (its best), with its stack_size")

    @property
    def wanted(self) -> int:
        """How many results to ask the search for: more when stacks will fold some away."""
        return min(self.limit * 3, MAX_LIMIT) if self.stacks else self.limit


class TextSearchQuery(SearchQuery):
    # The search's own check answers with its sentence; the schema says the same bounds.
    q: str = Field(json_schema_extra={"minLength": 1, "maxLength": MAX_QUERY_CHARS, "pattern": r"\S"})
    nearest: bool = Field(default=False, description="the nearest images by CLIP alone, however far (no relevance "
                          "floor, no keywords): what the gallery has closest, e.g. while a job waits")  # fmt: skip


ScopeQuery = Annotated[Scope, Query()]


class WhoQuery(BaseModel):
    """Who is asking, for boards: the engine's owner (any source but discord), or a Discord member (`guild`) or
    DM user (no `guild`)."""

    model_config = ConfigDict(extra="forbid")

    source: Source = "api"
    user: str | None = Field(default=None, max_length=200)
    guild: str | None = Field(default=None, max_length=200)

    def who(self) -> Who:
        return Who(user=self.user, guild=self.guild, discord=self.source == "discord")


WhoParams = Annotated[WhoQuery, Query()]
