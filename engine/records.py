"""Gallery records as the engine's clients see them: the same records, with absolute file paths."""

from __future__ import annotations

from engine.schema import ImageInfo, ImageRecord
from gallery.schemas import ImagePublic
from gallery.store import ImageStore


def image_record(image: ImagePublic, store: ImageStore) -> ImageRecord:
    """The whole record; `path` is absolute, for frontends on this machine."""
    return ImageRecord.model_validate(image.model_dump() | {"path": str(store.file_path(image))})


def image_info(image: ImagePublic, store: ImageStore) -> ImageInfo:
    """The short form a job's `image` events carry."""
    return ImageInfo.model_validate(image.model_dump() | {"path": str(store.file_path(image)), "seed": image.seed or 0})
