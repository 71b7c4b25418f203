"""Pydantic records of the gallery (kept apart from the SQLAlchemy models)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Literal, NamedTuple

from pydantic import AfterValidator, BaseModel, ConfigDict, Field


def _utc(moment: datetime) -> datetime:
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


# SQLite hands back naive datetimes; every stored moment is UTC, and says so on the wire (RFC 3339).
UtcDateTime = Annotated[datetime, AfterValidator(_utc)]


def gallery_id(ref: str) -> int | None:
    """The image id of a `gallery:<id>` reference (None for uploads)."""
    return int(ref.split(":", 1)[1]) if ref.startswith("gallery:") else None


# How a gallery picture steered an image (lineage beside its parent), and the request's list that names it.
SOURCE_ROLES = {"control": "controls", "reference": "references"}


def image_sources(params: dict[str, Any]) -> list[tuple[int, str]]:
    """The gallery pictures that steered an image, from its request's parameters: (image id, role), in order."""
    found: list[tuple[int, str]] = []
    for role, key in SOURCE_ROLES.items():
        for item in params.get(key) or []:
            source = gallery_id(str(item.get("image", ""))) if isinstance(item, dict) else None
            if source is not None and (source, role) not in found:
                found.append((source, role))
    return found


class ImageCreate(BaseModel):
    """What a producer (the engine, an importer) knows about a new image."""

    job_id: str | None = None
    index: int = 0
    width: int
    height: int
    seed: int | None = None
    prompt: str = ""
    negative_prompt: str = ""
    steps: int | None = None
    cfg_scale: float | None = None
    sampler: str | None = Field(default=None, description="display name as AUTOMATIC1111 writes it")
    model: str | None = None
    mode: str = "txt2img"
    source: str = "api"
    user: str | None = None
    guild: str | None = None
    channel: str | None = None
    parent_id: int | None = None
    relation: str | None = None
    nsfw: bool = Field(default=False, description="flagged by the model's own safety checker")
    repeat_key: str | None = Field(default=None, description="what determines its pixels, hashed (find before draw)")
    stack_key: str | None = Field(default=None, description="shared by images that differ only by seed or variation")
    phash: str | None = Field(default=None, description="perceptual hash (64 bits, hex): near-identical pictures")
    asked_size: list | None = Field(default=None, exclude=True, description="the request's width, height and aspect "
                                    "ratio as asked: what its repeat key is made of, never stored")  # fmt: skip
    worker: str | None = Field(default=None, description="the engine worker that made it (None: imported)")
    params: dict[str, Any] = Field(default_factory=dict, description="the full request, as JSON")


class ImagePublic(ImageCreate):
    """An image as stored: its id, file and timestamps."""

    model_config = ConfigDict(from_attributes=True)

    id: int
    sha256: str
    path: str
    favourite: bool = False
    rating: int | None = Field(default=None, description="1-5, the owner's rating")
    created_at: UtcDateTime
    deleted_at: UtcDateTime | None = None


class Condition(NamedTuple):
    """`column = value` on an image's row (None: the column IS NULL)."""

    column: str
    value: str | None


def tenant_conditions(guild: str | None, dm_of: str | None) -> list[Condition]:
    """The tenant rule, written once: a Discord guild sees its own images; in a DM, a user sees the images of
    their own DMs. SQLite's filter (gallery.store), LanceDB's (gallery.lance_filters, and which shards a query
    reads) and the engine's check of one image or job (engine.client.schema.Scope) all render these."""
    conditions = [Condition("guild", guild)] if guild is not None else []
    if dm_of is not None:
        conditions += [Condition("guild", None), Condition("source", "discord"), Condition("user", dm_of)]
    return conditions


class VectorFilters(BaseModel):
    """Filters that are also columns of the vector index: applied inside the vector query, never afterwards."""

    guild: str | None = None
    user: str | None = None
    source: str | None = None
    model: str | None = None
    created_after: datetime | None = None
    created_before: datetime | None = None
    dm_of: str | None = Field(default=None, description="only this Discord user's images from direct messages")

    def conditions(self) -> list[Condition]:
        """Every equality this filter asks for: the tenant rule's, then user, source and model."""
        own = [Condition(c, getattr(self, c)) for c in ("user", "source", "model") if getattr(self, c) is not None]
        return tenant_conditions(self.guild, self.dm_of) + own


class SearchFilters(VectorFilters):
    """What a listing or search may be narrowed to. `guild` is tenant isolation: set, it is never crossed.

    The inherited fields are also columns of the vector index; the ones added here live only in SQLite.
    """

    favourites: bool = False
    min_width: int | None = Field(default=None, ge=1)
    min_height: int | None = Field(default=None, ge=1)
    lora: str | None = Field(default=None, description="only images made with this LoRA (by name)")
    tags: list[str] = Field(default_factory=list, description="only images with every one of these tags")
    board: int | None = Field(default=None, description="only images on this board (its visibility checked before)")
    min_rating: int | None = Field(default=None, ge=1, le=5)
    derived_from: int | None = Field(default=None, ge=1, description="only images made from this one, at any depth")
    not_board: int | None = Field(default=None, ge=1, description="leave out this board's images (a member's Hidden)")
    stack: str | None = Field(default=None, description="only the images of this stack (a stacked listing's expansion)")

    @property
    def sqlite_only(self) -> bool:
        """Whether it narrows by what only SQLite knows (tags, boards, ratings, lineage, stacks): a vector query
        cannot."""
        return bool(self.tags) or any(
            v is not None for v in (self.board, self.min_rating, self.derived_from, self.not_board, self.stack)
        )

    def vector_filters(self) -> VectorFilters:
        return VectorFilters(**self.model_dump(include=set(VectorFilters.model_fields)))


class BoardPublic(BaseModel):
    """A board as listed: its images' count and the newest one added (its cover)."""

    id: int
    name: str
    shared: bool = Field(description="seen by the whole Discord server (else by its creator only)")
    owner: str | None = None
    count: int = 0
    cover: int | None = None
    created_at: UtcDateTime


class LineageNode(BaseModel):
    """One image of a lineage: how it came from its parent, and how far it is from the image asked about."""

    id: int
    parent_id: int | None
    relation: str | None
    depth: int = Field(description="ancestors: 1 = the parent; descendants: 1 = a child")
    prompt: str
    mode: str
    via: int | None = Field(
        default=None,
        description="the image of this lineage it was reached from (a tree's "
        "parent: for descendants the one it was made from, for sources the image they steered)",
    )
    edge: str | None = Field(
        default=None,
        description="how: `control` or `reference` when it was steered by (or "
        "steered) that image; None when through the init image (see `relation`)",
    )


class Lineage(BaseModel):
    """Where an image came from (its parents up to the first; one outside the asker's gallery ends the walk up) and
    everything made from it that the asker may see."""

    image_id: int
    ancestors: list[LineageNode]
    descendants: list[LineageNode]
    sources: list[LineageNode] = Field(
        default_factory=list,
        description="the gallery pictures that steered it (its controls and references) that the asker may see",
    )


class SavedSearch(BaseModel):
    """A search saved by name: its text (with any `tag:`/`derived_from:` words) and its filters."""

    id: int
    name: str
    query: str
    filters: dict[str, Any] = Field(default_factory=dict)
    shared: bool
    owner: str | None = None
    created_at: UtcDateTime


class TagCount(BaseModel):
    tag: str
    count: int
    auto: bool = Field(description="automatic (what made the image) rather than a person's")


class ImportResult(BaseModel):
    """One file given to `dreamhall gallery import`."""

    id: int
    status: Literal["added", "duplicate"]
    tool: str = Field(description="whose metadata was read: dreamhall, a1111, comfyui, invokeai, none")


class CheckReport(BaseModel):
    """Whether rows, files and vectors agree (and what --repair did)."""

    rows: int
    files: int
    vectors: int
    missing_files: list[int] = Field(description="live rows whose file is gone or unreadable")
    orphan_files: list[str] = Field(description="files no row points at")
    temp_files: list[str] = Field(description="half-written files left by a crash")
    missing_vectors: int
    orphan_vectors: int
    duplicates: list[int] = Field(default=[], description="rows repeating an earlier row's job and image index")
    same_pictures: list[list[int]] = Field(
        default=[], description="true duplicates: the same pixels, or perceptual hashes within a few bits (listed, "
        "never merged)")  # fmt: skip
    similar: list[list[int]] = Field(
        default=[], description="similar but different pictures (close CLIP vectors) among the newest images"
    )
    similar_window: int = Field(default=0, description="how many of the newest images were compared for `similar`")
    hashed: int = Field(default=0, description="older images whose perceptual hash this check computed")
    repaired: bool = False

    @property
    def consistent(self) -> bool:
        return not (self.missing_files or self.orphan_files or self.temp_files
                    or self.missing_vectors or self.orphan_vectors or self.duplicates)  # fmt: skip


class ReconcileReport(BaseModel):
    """What bringing the vector index in line with SQLite did."""

    embedded: int = 0
    dropped: int = 0
    unreadable: list[int] = []


class VectorHit(BaseModel):
    """One hit of the vector index."""

    image_id: int
    score: float  # cosine similarity, 1 = identical direction
