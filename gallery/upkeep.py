"""Gallery upkeep: importing other tools' images, and checking rows, files and vectors agree."""

from __future__ import annotations

import hashlib
import io
import logging
from datetime import UTC, datetime
from pathlib import Path

from PIL import Image
from pydantic import BaseModel
from sqlalchemy import Engine, select, update
from sqlalchemy.orm import Session

from gallery.files import decode_image
from gallery.importers import read_metadata
from gallery.indexer import Indexer
from gallery.models import ImageRow
from gallery.schemas import ImageCreate
from gallery.store import ImageStore

log = logging.getLogger(__name__)


class ImportResult(BaseModel):
    id: int
    status: str  # "added" or "duplicate"
    tool: str  # whose metadata was read: dreamhall, a1111, comfyui, invokeai, none


class CheckReport(BaseModel):
    rows: int
    files: int
    vectors: int
    missing_files: list[int]  # live rows whose file is gone or unreadable
    orphan_files: list[str]  # files no row points at
    temp_files: list[str]  # half-written files left by a crash
    missing_vectors: int
    orphan_vectors: int
    repaired: bool = False

    @property
    def consistent(self) -> bool:
        return not (self.missing_files or self.orphan_files or self.temp_files
                    or self.missing_vectors or self.orphan_vectors)  # fmt: skip


def _png_bytes(data: bytes, image: Image.Image) -> bytes:
    """PNGs are kept byte for byte (their metadata intact); other formats become PNG."""
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return data
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


class Upkeep:
    """Import, check and repair, on the gallery's database, files and index."""

    def __init__(self, *, engine: Engine, store: ImageStore, indexer: Indexer) -> None:
        self.engine = engine
        self.store = store
        self.indexer = indexer

    def import_image(self, data: bytes, *, filename: str = "", source: str = "import") -> ImportResult:
        """Add one image file (idempotent: the same bytes are only added once)."""
        image = decode_image(data)  # validates before anything is written
        png = _png_bytes(data, image)
        with Image.open(io.BytesIO(png)) as im:
            chunks = {k: v for k, v in getattr(im, "text", {}).items() if isinstance(v, str)}
        tool, fields, params = read_metadata(chunks)
        sha = hashlib.sha256(png).hexdigest()
        with Session(self.engine) as s:
            existing = s.scalars(select(ImageRow.id).where(ImageRow.sha256 == sha, ImageRow.deleted_at.is_(None)))
            first = existing.first()
        if first is not None:
            return ImportResult(id=first, status="duplicate", tool=tool)
        info = ImageCreate(
            **{"width": image.width, "height": image.height, **fields},
            source=source,
            params={**params, "imported_from": filename} if filename else params,
        )
        (stored,) = self.store.add([(info, png)])
        self.indexer.index_images([stored])
        return ImportResult(id=stored.id, status="added", tool=tool)

    def check(self, *, repair: bool = False) -> CheckReport:
        images_dir = self.store.images_dir
        with Session(self.engine) as s:
            rows = list(s.execute(select(ImageRow.id, ImageRow.path, ImageRow.deleted_at)).all())
        live = {r.id: r.path for r in rows if r.deleted_at is None}
        referenced = {r.path for r in rows}
        files = {str(p.relative_to(images_dir)) for p in images_dir.glob("??/*.png")}
        temp = sorted(str(p.relative_to(images_dir)) for p in images_dir.glob("??/.tmp-*"))
        missing = sorted(i for i, path in live.items() if not _readable(images_dir / path))
        orphans = sorted(files - referenced)
        have = self.indexer.index.image_ids()
        live_ids = set(live) - set(missing)
        report = CheckReport(
            rows=len(live), files=len(files), vectors=len(have), missing_files=missing, orphan_files=orphans,
            temp_files=temp, missing_vectors=len(live_ids - have), orphan_vectors=len(have - live_ids),
        )  # fmt: skip
        if repair and not report.consistent:
            self._repair(report, images_dir)
        return report

    def _repair(self, report: CheckReport, images_dir: Path) -> None:
        if report.missing_files:
            # The row keeps its parameters (the image can be made again); it just stops being shown.
            with Session(self.engine) as s, s.begin():
                s.execute(
                    update(ImageRow).where(ImageRow.id.in_(report.missing_files)).values(deleted_at=datetime.now(UTC))
                )
        for rel in report.orphan_files:
            # A crash between writing a file and its row: the PNG carries its parameters, so import it.
            path = images_dir / rel
            try:
                self.import_image(path.read_bytes(), filename=rel, source="recovered")
            except ValueError:
                log.warning("could not recover %s; leaving it in place", path)
        for rel in report.temp_files:
            (images_dir / rel).unlink(missing_ok=True)
        self.indexer.reconcile()
        report.repaired = True


def _readable(path: Path) -> bool:
    try:
        with Image.open(path) as im:
            im.verify()
        return True
    except (OSError, SyntaxError, ValueError):
        return False
