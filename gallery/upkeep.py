"""Gallery upkeep: importing other tools' images, and checking rows, files and vectors agree."""

from __future__ import annotations

import hashlib
import io
import logging
from pathlib import Path

from PIL import Image

from gallery.files import decode_image
from gallery.importers import read_metadata
from gallery.indexer import Indexer
from gallery.likeness import SIMILAR_WINDOW, duplicate_groups, perceptual_hash, similar_groups
from gallery.schemas import CheckReport, ImageCreate, ImportResult
from gallery.store import ImageStore

log = logging.getLogger(__name__)


def _png_bytes(data: bytes, image: Image.Image) -> bytes:
    """PNGs are kept byte for byte (their metadata intact); other formats become PNG."""
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return data
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


class Upkeep:
    """Import, check and repair, on the gallery's database, files and index."""

    def __init__(self, *, store: ImageStore, indexer: Indexer) -> None:
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
        first = self.store.find_by_sha(sha)
        if first is not None:
            return ImportResult(id=first, status="duplicate", tool=tool)
        if tool == "none":
            fields = {**fields, "mode": "import"}  # no parameters: not a txt2img we could remake or vary
        info = ImageCreate(
            **{"width": image.width, "height": image.height, **fields},
            source=source,
            params={**params, "imported_from": filename} if filename else params,
        )
        (stored,) = self.store.add([(info, png)])
        self.indexer.index_images([stored])
        return ImportResult(id=stored.id, status="added", tool=tool)

    def check(self, *, repair: bool = False, similar_window: int = SIMILAR_WINDOW) -> CheckReport:
        images_dir = self.store.images_dir
        rows = self.store.paths()
        live = {i: path for i, (path, deleted) in rows.items() if not deleted}
        referenced = {path for path, _ in rows.values()}
        files = {str(p.relative_to(images_dir)) for p in images_dir.glob("??/*.png")}
        temp = sorted(str(p.relative_to(images_dir)) for p in images_dir.glob("??/.tmp-*"))
        missing = sorted(i for i, path in live.items() if not _readable(images_dir / path))
        orphans = sorted(files - referenced)
        have = self.indexer.vector_ids()
        # Images of a job still running are stored, then indexed, then the job is done: not missing yet.
        live_ids = set(live) - set(missing) - self.store.ids_of_running_jobs()
        report = CheckReport(
            rows=len(live), files=len(files), vectors=len(have), missing_files=missing, orphan_files=orphans,
            temp_files=temp, missing_vectors=len(live_ids - have), orphan_vectors=len(have - live_ids),
            duplicates=self.store.duplicates(),
        )  # fmt: skip
        self._likeness(report, {i: p for i, p in live.items() if i not in set(missing)}, similar_window)
        if repair and not report.consistent:
            self._repair(report, images_dir)
        return report

    def _likeness(self, report: CheckReport, readable: dict[int, str], window: int) -> None:
        """True duplicates and similar pictures: listed apart, never merged (repair leaves them alone)."""
        rows = self.store.likeness_rows()
        hashed: dict[int, str] = {}
        for image_id, _, phash in rows:  # images older than the column: hashed once, here
            if phash is None and image_id in readable:
                try:
                    hashed[image_id] = perceptual_hash((self.store.images_dir / readable[image_id]).read_bytes())
                except (OSError, ValueError):
                    continue
        if hashed:
            self.store.set_phashes(hashed)
            rows = [(i, sha, hashed.get(i, phash)) for i, sha, phash in rows]
        report.hashed = len(hashed)
        report.same_pictures = duplicate_groups(rows)
        newest = sorted((i for i, _, _ in rows), reverse=True)[:window]
        ids, vectors = self.indexer.index.vectors(newest)
        report.similar = similar_groups(ids, vectors, apart_from=report.same_pictures)
        report.similar_window = len(newest)

    def _repair(self, report: CheckReport, images_dir: Path) -> None:
        if report.duplicates:
            self.store.mark_deleted(report.duplicates)  # the first copy stays; its twins go
        if report.missing_files:
            # The row keeps its parameters (the image can be made again); it just stops being shown.
            self.store.mark_deleted(report.missing_files)
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
