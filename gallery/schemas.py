"""Pydantic records of the gallery (kept apart from the SQLAlchemy models)."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field


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
    params: dict = Field(default_factory=dict, description="the full request, as JSON")


class ImagePublic(ImageCreate):
    """An image as stored: its id, file and timestamps."""

    model_config = ConfigDict(from_attributes=True)

    id: int
    sha256: str
    path: str
    favourite: bool = False
    created_at: datetime
    deleted_at: datetime | None = None
