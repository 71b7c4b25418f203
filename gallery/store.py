"""The image store: rows in SQLite, bytes in content-addressed files.

Files are written first and rows second, in one transaction per call: a crash
can leave an unreferenced file (which `dreamhall gallery check` finds), never a
row whose file is missing.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import Engine, select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from gallery.files import write_content_addressed
from gallery.models import ImageRow
from gallery.schemas import ImageCreate, ImagePublic


class GalleryError(Exception):
    """Root of the gallery's exceptions.

    GalleryError
    ├── ImageNotFound
    └── StorageError
    """


class ImageNotFound(GalleryError):
    pass


class StorageError(GalleryError):
    pass


class ImageStore(ABC):
    """Where finished images are kept. `images_dir` is the root of the content-addressed files."""

    images_dir: Path

    @abstractmethod
    def add(self, items: list[tuple[ImageCreate, bytes]]) -> list[ImagePublic]:
        """Store PNG bytes with their records, all or nothing; return the stored images."""

    @abstractmethod
    def get(self, image_id: int) -> ImagePublic:
        """One image by id (raises ImageNotFound)."""

    @abstractmethod
    def for_job(self, job_id: str) -> list[ImagePublic]:
        """The images a job produced, in order."""

    @abstractmethod
    def soft_delete(self, image_id: int) -> ImagePublic:
        """Hide an image from every listing and search; its row and file stay (raises ImageNotFound)."""

    @abstractmethod
    def set_favourite(self, image_id: int, favourite: bool) -> ImagePublic:
        """Mark or unmark an image as a favourite."""

    @abstractmethod
    def file_path(self, image: ImagePublic) -> Path:
        """The absolute path of an image's file."""


class SqliteImageStore(ImageStore):
    """ImageStore on the gallery's SQLite database and an images directory."""

    def __init__(self, engine: Engine, images_dir: Path) -> None:
        self.engine = engine
        self.images_dir = images_dir
        images_dir.mkdir(parents=True, exist_ok=True)

    def add(self, items: list[tuple[ImageCreate, bytes]]) -> list[ImagePublic]:
        try:
            stored = [(info, *write_content_addressed(self.images_dir, data)) for info, data in items]
            with Session(self.engine) as session, session.begin():
                rows = [ImageRow(**info.model_dump(), sha256=sha, path=rel) for info, sha, rel in stored]
                session.add_all(rows)
                session.flush()
                return [ImagePublic.model_validate(r) for r in rows]
        except (OSError, SQLAlchemyError) as e:
            raise StorageError(f"could not store {len(items)} image(s): {e}") from e

    def get(self, image_id: int) -> ImagePublic:
        with Session(self.engine) as session:
            row = session.get(ImageRow, image_id)
            if row is None or row.deleted_at is not None:
                raise ImageNotFound(f"no image {image_id}")
            return ImagePublic.model_validate(row)

    def for_job(self, job_id: str) -> list[ImagePublic]:
        with Session(self.engine) as session:
            rows = session.scalars(select(ImageRow).where(ImageRow.job_id == job_id).order_by(ImageRow.index))
            return [ImagePublic.model_validate(r) for r in rows]

    def soft_delete(self, image_id: int) -> ImagePublic:
        with Session(self.engine) as session, session.begin():
            row = session.get(ImageRow, image_id)
            if row is None or row.deleted_at is not None:
                raise ImageNotFound(f"no image {image_id}")
            row.deleted_at = datetime.now(UTC)
            session.flush()
            return ImagePublic.model_validate(row)

    def set_favourite(self, image_id: int, favourite: bool) -> ImagePublic:
        with Session(self.engine) as session, session.begin():
            row = session.get(ImageRow, image_id)
            if row is None or row.deleted_at is not None:
                raise ImageNotFound(f"no image {image_id}")
            row.favourite = favourite
            session.flush()
            return ImagePublic.model_validate(row)

    def file_path(self, image: ImagePublic) -> Path:
        return self.images_dir / image.path
