"""SQLAlchemy models of the gallery database. Schema changes go through Alembic (migrations/)."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import JSON, Boolean, DateTime, Float, ForeignKey, Index, Integer, String, Text, UniqueConstraint, false
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


def utcnow() -> datetime:
    return datetime.now(UTC)


class Base(DeclarativeBase):
    pass


class JobRow(Base):
    """A queued, running or finished dream request. The queue lives in this table."""

    __tablename__ = "jobs"

    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(32), unique=True)
    status: Mapped[str] = mapped_column(String(16), index=True)
    queue_key: Mapped[str] = mapped_column(String(512))
    priority: Mapped[int] = mapped_column(Integer, default=0)
    request: Mapped[dict] = mapped_column(JSON)
    seed: Mapped[int] = mapped_column(Integer)
    source: Mapped[str] = mapped_column(String(16))
    user: Mapped[str | None] = mapped_column(String(200))
    guild: Mapped[str | None] = mapped_column(String(200))
    channel: Mapped[str | None] = mapped_column(String(200))
    error: Mapped[str | None] = mapped_column(Text)
    # Set when the worker claims the job; the fairness query serves the user
    # whose latest claim is oldest.
    claim_seq: Mapped[int | None] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    found: Mapped[list | None] = mapped_column(JSON)  # answered from the gallery: these images' ids
    # Queued jobs with the same key may share one pipeline call (engine.device.runner.batch_key); NULL: alone.
    batch_key: Mapped[str | None] = mapped_column(String(64))

    __table_args__ = (Index("ix_jobs_queue_key_claim_seq", "queue_key", "claim_seq"),)


class ImageRow(Base):
    """One generated (or imported) image and everything needed to make it again."""

    __tablename__ = "images"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str | None] = mapped_column(ForeignKey("jobs.id"), index=True)
    index: Mapped[int] = mapped_column(Integer, default=0)
    sha256: Mapped[str] = mapped_column(String(64), index=True)
    path: Mapped[str] = mapped_column(String(512))
    width: Mapped[int] = mapped_column(Integer)
    height: Mapped[int] = mapped_column(Integer)
    seed: Mapped[int | None] = mapped_column(Integer)
    prompt: Mapped[str] = mapped_column(Text, default="")
    negative_prompt: Mapped[str] = mapped_column(Text, default="")
    steps: Mapped[int | None] = mapped_column(Integer)
    cfg_scale: Mapped[float | None] = mapped_column(Float)
    sampler: Mapped[str | None] = mapped_column(String(32))
    model: Mapped[str | None] = mapped_column(String(1000))
    mode: Mapped[str] = mapped_column(String(16), default="txt2img")
    source: Mapped[str] = mapped_column(String(16), default="api")
    user: Mapped[str | None] = mapped_column(String(200))
    guild: Mapped[str | None] = mapped_column(String(200), index=True)
    channel: Mapped[str | None] = mapped_column(String(200))
    parent_id: Mapped[int | None] = mapped_column(ForeignKey("images.id"), index=True)
    relation: Mapped[str | None] = mapped_column(String(16))
    favourite: Mapped[bool] = mapped_column(Boolean, default=False)
    rating: Mapped[int | None] = mapped_column(Integer)  # 1-5, the owner's
    # what determines its pixels, hashed (engine.server.repeats): a repeated request is answered from it
    repeat_key: Mapped[str | None] = mapped_column(String(64), index=True)
    # images that differ only by seed or variation share it (gallery.stacks): listings collapse them
    stack_key: Mapped[str | None] = mapped_column(String(64), index=True)
    phash: Mapped[str | None] = mapped_column(String(16))  # perceptual hash (gallery.likeness): true duplicates
    nsfw: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    worker: Mapped[str | None] = mapped_column(String(200))
    params: Mapped[dict] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, index=True)
    deleted_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class EmbeddingRow(Base):
    """Which CLIP model embedded which image (the vectors themselves live in LanceDB)."""

    __tablename__ = "embeddings"

    image_id: Mapped[int] = mapped_column(ForeignKey("images.id", ondelete="CASCADE"), primary_key=True)
    clip_model: Mapped[str] = mapped_column(String(300), primary_key=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class BoardRow(Base):
    """A board (InvokeAI's word): a named set of images. `scope` says whose: `local` (the engine's owner: the CLI
    and the desktop), `g:<guild>` (shared in a Discord server), `g:<guild>:u:<user>` (one member's), `dm:<user>`."""

    __tablename__ = "boards"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    scope: Mapped[str] = mapped_column(String(450))
    name: Mapped[str] = mapped_column(String(100))
    name_key: Mapped[str] = mapped_column(String(100))
    owner: Mapped[str | None] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    __table_args__ = (UniqueConstraint("scope", "name_key", name="uq_boards_scope_name"),)


class BoardImageRow(Base):
    __tablename__ = "board_images"

    board_id: Mapped[int] = mapped_column(ForeignKey("boards.id", ondelete="CASCADE"), primary_key=True)
    image_id: Mapped[int] = mapped_column(ForeignKey("images.id", ondelete="CASCADE"), primary_key=True, index=True)
    added_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class ImageTagRow(Base):
    """A tag on an image: automatic (what made it) or a person's."""

    __tablename__ = "image_tags"

    image_id: Mapped[int] = mapped_column(ForeignKey("images.id", ondelete="CASCADE"), primary_key=True)
    tag: Mapped[str] = mapped_column(String(64), primary_key=True)
    auto: Mapped[bool] = mapped_column(Boolean, default=False)

    __table_args__ = (Index("ix_image_tags_tag_image", "tag", "image_id"),)


class ImageSourceRow(Base):
    """A gallery picture that steered an image (a control, a reference): lineage beside `images.parent_id`."""

    __tablename__ = "image_sources"

    image_id: Mapped[int] = mapped_column(ForeignKey("images.id", ondelete="CASCADE"), primary_key=True)
    source_id: Mapped[int] = mapped_column(ForeignKey("images.id", ondelete="CASCADE"), primary_key=True)
    role: Mapped[str] = mapped_column(String(16), primary_key=True)

    __table_args__ = (Index("ix_image_sources_source", "source_id", "image_id"),)


class SavedSearchRow(Base):
    """A search saved by name ("smart board"): its text and filters, re-run as the gallery grows. Scoped as boards."""

    __tablename__ = "saved_searches"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    scope: Mapped[str] = mapped_column(String(450))
    name: Mapped[str] = mapped_column(String(100))
    name_key: Mapped[str] = mapped_column(String(100))
    owner: Mapped[str | None] = mapped_column(String(200))
    query: Mapped[str] = mapped_column(Text)
    filters: Mapped[dict] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    __table_args__ = (UniqueConstraint("scope", "name_key", name="uq_saved_searches_scope_name"),)
