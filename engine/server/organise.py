"""Organising the gallery over HTTP: boards, tags and ratings (gallery.boards does the work).

Every route says who asks (`source`, `user`, `guild` as query parameters: the bot passes the member, the CLI and
the desktop the local user); a board outside the asker's scopes, or an image outside their gallery, answers 404
as if it did not exist.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query
from pydantic import Field, ValidationError

from engine.client.answers import (
    BoardCreate,
    BoardImages,
    BoardPublic,
    BoardRename,
    Lineage,
    SavedSearch,
    SearchResults,
    SearchSave,
    TagChange,
    TagCount,
)
from engine.client.dream_args import explain
from engine.client.schema import MAX_ID
from engine.server.queries import FilterQuery, ImageId, ScopeQuery, WhoParams, WhoQuery
from engine.server.records import scoped_image, search_results
from engine.server.services import ServicesDep
from gallery.schemas import SearchFilters
from gallery.search import MAX_LIMIT, SearchError

router = APIRouter(tags=["boards and tags"])
BoardId = Annotated[int, Path(ge=1, le=MAX_ID, description="a board's (or a saved search's) id")]


class WhoPageQuery(WhoQuery):
    """Who asks, and which page of the results."""

    limit: int = Field(default=20, ge=1, le=MAX_LIMIT)
    offset: int = Field(default=0, ge=0, le=10_000)


@router.get("/v1/boards")
def list_boards(s: ServicesDep, who: WhoParams) -> list[BoardPublic]:
    """The asker's boards by name, with counts and a cover (the newest image added)."""
    return s.organiser.boards(who.who())


@router.post("/v1/boards", status_code=201)
def create_board(body: BoardCreate, s: ServicesDep, who: WhoParams) -> BoardPublic:
    return s.organiser.create(who.who(), body.name, shared=body.shared)


@router.get("/v1/boards/{board_id}")
def get_board(board_id: BoardId, s: ServicesDep, who: WhoParams) -> BoardPublic:
    return s.organiser.board(who.who(), board_id)


@router.patch("/v1/boards/{board_id}")
def rename_board(board_id: BoardId, body: BoardRename, s: ServicesDep, who: WhoParams) -> BoardPublic:
    return s.organiser.rename(who.who(), board_id, body.name)


@router.delete("/v1/boards/{board_id}")
def delete_board(board_id: BoardId, s: ServicesDep, who: WhoParams) -> BoardPublic:
    """The board goes; its images stay in the gallery."""
    return s.organiser.delete(who.who(), board_id)


@router.post("/v1/boards/{board_id}/images")
def add_to_board(board_id: BoardId, body: BoardImages, s: ServicesDep, who: WhoParams) -> BoardPublic:
    return s.organiser.add(who.who(), board_id, body.image_ids)


@router.post("/v1/boards/{board_id}/images/remove")
def remove_from_board(board_id: BoardId, body: BoardImages, s: ServicesDep, who: WhoParams) -> BoardPublic:
    return s.organiser.remove(who.who(), board_id, body.image_ids)


@router.post("/v1/images/{image_id}/tags")
def tag_image(image_id: ImageId, body: TagChange, s: ServicesDep, scope: ScopeQuery) -> list[str]:
    """A person's tags on and off the image; its tags after (people's first, then the automatic ones)."""
    scoped_image(s.store, image_id, scope)
    return s.organiser.tag(image_id, body.add, body.remove)


class TagQuery(FilterQuery):
    prefix: str = Field(default="", max_length=64, description="only tags that start so")
    limit: int = Field(default=20, ge=1, le=200)


@router.get("/v1/images/{image_id}/lineage")
def lineage(image_id: ImageId, s: ServicesDep, scope: ScopeQuery) -> Lineage:
    """Where the image came from and everything made from it (variations, upscales, inpaints, outpaints, zooms),
    as far as the asker's gallery goes."""
    scoped_image(s.store, image_id, scope)
    return s.store.lineage(image_id, SearchFilters(guild=scope.guild, dm_of=scope.dm_of))


@router.get("/v1/searches")
def saved_searches(s: ServicesDep, who: WhoParams) -> list[SavedSearch]:
    return s.organiser.saved_searches(who.who())


@router.post("/v1/searches", status_code=201)
def save_search(body: SearchSave, s: ServicesDep, who: WhoParams) -> SavedSearch:
    """Save a search by name ("smart board"): re-run later as the gallery grows."""
    try:
        filters = FilterQuery.model_validate(body.filters).model_dump(exclude_defaults=True, mode="json")
    except ValidationError as e:
        raise SearchError(f"filters: {explain(e)}") from None
    return s.organiser.save_search(who.who(), body.name, body.q, filters, shared=body.shared)


@router.delete("/v1/searches/{search_id}")
def delete_search(search_id: BoardId, s: ServicesDep, who: WhoParams) -> SavedSearch:
    return s.organiser.delete_search(who.who(), search_id)


@router.get("/v1/searches/{search_id}/results")
def run_saved_search(search_id: BoardId, s: ServicesDep, page: Annotated[WhoPageQuery, Query()]) -> SearchResults:
    """The saved search run now, within the asker's gallery."""
    asker = page.who()
    saved = s.organiser.saved_search(asker, search_id)
    filters = FilterQuery.model_validate(saved.filters).filters()
    tenant = asker.tenant()
    filters = filters.model_copy(
        update={"guild": tenant.guild or filters.guild, "dm_of": tenant.dm_of or filters.dm_of}
    )
    found = s.search.by_text(query=saved.query, limit=page.limit, offset=page.offset, filters=filters)
    return search_results(found, s.store)


@router.get("/v1/tags")
def tag_counts(s: ServicesDep, query: Annotated[TagQuery, Query()]) -> list[TagCount]:
    """The most used tags of the images the filters let through, starting with `prefix` (autocomplete)."""
    return s.organiser.tag_counts(query.filters(), prefix=query.prefix, limit=query.limit)
