"""The image store: rows in SQLite, bytes in content-addressed files.

Files are written first and rows second, in one transaction per call: a crash
can leave an unreferenced file (which `dreamhall gallery check` finds), never a
row whose file is missing.

`ImageStore` is the gateway to the images table: search, the indexer and
upkeep ask it. One exception: the indexer's quick start-up check fingerprints
the live ids in one SQL aggregate of its own (`Indexer.reconcile`).
"""

from __future__ import annotations

import functools
from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import Engine, select, text, update
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from gallery.files import write_content_addressed
from gallery.likeness import perceptual_hash
from gallery.models import ImageRow, ImageTagRow
from gallery.schemas import ImageCreate, ImagePublic, Lineage, LineageNode, SearchFilters, image_sources
from gallery.stacks import stack_key
from gallery.tags import auto_tags

# Every live image whose (job, index) an earlier live image already has: the later copies.
DUPLICATES_SQL = """
    SELECT i.id FROM images AS i
    WHERE i.job_id IS NOT NULL AND i.deleted_at IS NULL AND EXISTS (
        SELECT 1 FROM images AS e
        WHERE e.job_id = i.job_id AND e."index" = i."index" AND e.deleted_at IS NULL AND e.id < i.id
    )
    ORDER BY i.id
"""


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

    @abstractmethod
    def get_many(self, image_ids: list[int]) -> list[ImagePublic]:
        """The live images among `image_ids`, in the order given."""

    @abstractmethod
    def page(
        self, *, filters: SearchFilters, limit: int, offset: int, sort: str = "newest"
    ) -> tuple[list[ImagePublic], int]:
        """Live images newest first that pass `filters`, and how many pass in all."""

    @abstractmethod
    def stacked_page(
        self, *, filters: SearchFilters, limit: int, offset: int, sort: str = "newest"
    ) -> tuple[list[tuple[ImagePublic, int]], int]:
        """As `page`, one image per stack (the first in `sort` order) with the stack's size under `filters`."""

    @abstractmethod
    def stack_sizes(self, images: list[ImagePublic], filters: SearchFilters) -> dict[int, int]:
        """For each of `images`, how many live images that pass `filters` share its stack (1: alone)."""

    @abstractmethod
    def likeness_rows(self) -> list[tuple[int, str, str | None]]:
        """Every live image's (id, sha256, perceptual hash)."""

    @abstractmethod
    def set_phashes(self, hashes: dict[int, str]) -> None:
        """Store perceptual hashes computed after the fact (images older than the column)."""

    @abstractmethod
    def lineage(self, image_id: int, filters: SearchFilters) -> Lineage:
        """Its ancestors (nearest first) and its descendants (by depth), within `filters`."""

    @abstractmethod
    def newest_ids(self, filters: SearchFilters, limit: int) -> list[int]:
        """The ids of the newest live images that pass `filters` (no records built: a search's candidates)."""

    @abstractmethod
    def filter_ids(self, image_ids: list[int], filters: SearchFilters) -> set[int]:
        """Which of `image_ids` are live and pass `filters`."""

    @abstractmethod
    def keyword_ids(self, terms: Sequence[str], *, filters: SearchFilters, k: int) -> list[int]:
        """Up to `k` live images whose prompts match every FTS5 term (a quoted word or phrase), newest first (the
        search ranks them by CLIP afterwards; newest first lets SQLite stop at `k` instead of scoring every match:
        1.4 ms instead of 81 ms at a million images)."""

    @abstractmethod
    def live_ids(self) -> set[int]:
        """Every image that is not deleted."""

    @abstractmethod
    def paths(self) -> dict[int, tuple[str, bool]]:
        """Every image row's file: id -> (relative path, deleted)."""

    @abstractmethod
    def find_repeats(self, keys: list[str], filters: SearchFilters) -> dict[str, ImagePublic]:
        """The live images with these repeat keys that `filters` lets through (the oldest for each key)."""

    @abstractmethod
    def find_by_sha(self, sha256: str) -> int | None:
        """A live image with these bytes, if there is one."""

    @abstractmethod
    def ids_of_running_jobs(self) -> set[int]:
        """Images already stored by jobs that are still running (their vectors may not be written yet)."""

    @abstractmethod
    def duplicates(self) -> list[int]:
        """Live rows that repeat an earlier row's (job, image index): what a crash could once leave."""

    @abstractmethod
    def mark_deleted(self, image_ids: list[int]) -> None:
        """Soft-delete many at once (a repair: their files are gone)."""


class SqliteImageStore(ImageStore):
    """ImageStore on the gallery's SQLite database and an images directory."""

    def __init__(self, engine: Engine, images_dir: Path) -> None:
        self.engine = engine
        self.images_dir = images_dir
        images_dir.mkdir(parents=True, exist_ok=True)
        # A count only picks a keyword query's plan (any count gives the same answer): remembered, not kept exact.
        self._term_count = functools.lru_cache(maxsize=4096)(self._count_term)

    def add(self, items: list[tuple[ImageCreate, bytes]]) -> list[ImagePublic]:
        try:
            stored = [(info, *write_content_addressed(self.images_dir, data)) for info, data in items]
            with Session(self.engine) as session, session.begin():
                # Idempotent per (job, image index): a job re-run after a crash between storing its
                # images and being marked done finds them here instead of storing them twice.
                job_ids = {info.job_id for info, _, _ in stored if info.job_id is not None}
                existing = {
                    (r.job_id, r.index): r
                    for r in session.scalars(
                        select(ImageRow).where(ImageRow.job_id.in_(job_ids), ImageRow.deleted_at.is_(None))
                    )
                } if job_ids else {}  # fmt: skip
                rows, new = [], []
                for (info, sha, rel), (_, png) in zip(stored, items, strict=True):
                    row = existing.get((info.job_id, info.index)) if info.job_id is not None else None
                    if row is None:
                        fields = info.model_dump()
                        fields["stack_key"] = info.stack_key or stack_key(info)
                        fields["phash"] = info.phash or perceptual_hash(png)
                        row = ImageRow(**fields, sha256=sha, path=rel)
                        session.add(row)
                        new.append(row)
                    rows.append(row)
                session.flush()
                for row in new:  # what made it, as tags (gallery.tags)
                    tags = auto_tags(model=row.model, sampler=row.sampler, mode=row.mode, source=row.source,
                                     width=row.width, height=row.height, params=row.params or {})  # fmt: skip
                    session.add_all(ImageTagRow(image_id=row.id, tag=t, auto=True) for t in tags)
                links = [{"i": row.id, "s": source, "r": role} for row in new
                         for source, role in image_sources(row.params or {})]  # fmt: skip
                if links:  # the gallery pictures that steered them (a source is a row even when soft-deleted)
                    session.execute(text("INSERT OR IGNORE INTO image_sources (image_id, source_id, role) "
                                         "SELECT :i, id, :r FROM images WHERE id = :s"), links)  # fmt: skip
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

    def get_many(self, image_ids: list[int]) -> list[ImagePublic]:
        with Session(self.engine) as session:
            rows = session.scalars(select(ImageRow).where(ImageRow.id.in_(image_ids), ImageRow.deleted_at.is_(None)))
            found = {r.id: ImagePublic.model_validate(r) for r in rows}
        return [found[i] for i in image_ids if i in found]

    def page(
        self, *, filters: SearchFilters, limit: int, offset: int, sort: str = "newest"
    ) -> tuple[list[ImagePublic], int]:
        where, params = filter_sql(filters, "i")
        order = SORTS[sort]
        with Session(self.engine) as session:
            total = session.execute(text(f"SELECT count(*) FROM images AS i WHERE {where}"), params).scalar_one()
            sql = text(f"SELECT i.id FROM images AS i WHERE {where} ORDER BY {order} LIMIT :limit OFFSET :offset")
            ids = list(session.execute(sql, {**params, "limit": limit, "offset": offset}).scalars())
        return self.get_many(ids), total

    def stacked_page(
        self, *, filters: SearchFilters, limit: int, offset: int, sort: str = "newest"
    ) -> tuple[list[tuple[ImagePublic, int]], int]:
        # Walk the listing in order and keep each stack's first image: a job's images sit together, so a page
        # reads little more than its own rows (no GROUP BY over the whole guild).
        where, params = filter_sql(filters, "i")
        sql = text(f"SELECT i.id, coalesce(i.stack_key, 'id:' || i.id) FROM images AS i WHERE {where} "
                   f"ORDER BY {SORTS[sort]} LIMIT :limit OFFSET :offset")  # fmt: skip
        seen: set[str] = set()
        tops: list[int] = []
        chunk, position = max(4 * (offset + limit), 256), 0
        with self.engine.connect() as conn:
            total = conn.execute(text(f"SELECT count(*) FROM images AS i WHERE {where}"), params).scalar_one()
            while len(tops) < offset + limit:
                rows = conn.execute(sql, {**params, "limit": chunk, "offset": position}).all()
                for image_id, key in rows:
                    if key not in seen:
                        seen.add(key)
                        tops.append(image_id)
                if len(rows) < chunk:
                    break
                position += chunk
        images = self.get_many(tops[offset : offset + limit])
        sizes = self.stack_sizes(images, filters)
        return [(image, sizes[image.id]) for image in images], total

    def stack_sizes(self, images: list[ImagePublic], filters: SearchFilters) -> dict[int, int]:
        keys = sorted({i.stack_key for i in images if i.stack_key})
        counts: dict[str, int] = {}
        if keys:
            where, params = filter_sql(filters, "i")
            wanted = ", ".join(f":s{n}" for n in range(len(keys)))
            sql = text(f"SELECT i.stack_key, count(*) FROM images AS i INDEXED BY ix_images_stack_key "
                       f"WHERE i.stack_key IN ({wanted}) AND {where} GROUP BY i.stack_key")  # fmt: skip
            with self.engine.connect() as conn:
                counts = dict(conn.execute(sql, {**params, **{f"s{n}": k for n, k in enumerate(keys)}}).all())
        return {i.id: max(counts.get(i.stack_key, 1), 1) if i.stack_key else 1 for i in images}

    def likeness_rows(self) -> list[tuple[int, str, str | None]]:
        sql = text("SELECT id, sha256, phash FROM images WHERE deleted_at IS NULL")
        with self.engine.connect() as conn:
            return [(r[0], r[1], r[2]) for r in conn.execute(sql)]

    def set_phashes(self, hashes: dict[int, str]) -> None:
        with self.engine.begin() as conn:
            conn.execute(text("UPDATE images SET phash = :h WHERE id = :i"),
                         [{"i": i, "h": h} for i, h in hashes.items()])  # fmt: skip

    def lineage(self, image_id: int, filters: SearchFilters) -> Lineage:
        self.get(image_id)
        up = text("WITH RECURSIVE a(id, depth) AS (SELECT parent_id, 1 FROM images WHERE id = :start AND parent_id "
                  "IS NOT NULL UNION SELECT i.parent_id, a.depth + 1 FROM images AS i JOIN a ON i.id = a.id WHERE "
                  "i.parent_id IS NOT NULL AND a.depth < 64) SELECT id, depth FROM a")  # fmt: skip
        steered_by = text("SELECT source_id, role FROM image_sources WHERE image_id = :start")
        down = text(f"{DESCENDANTS_SQL.format(start=':start')} SELECT id, depth, via, edge FROM d")
        with self.engine.connect() as conn:
            ancestors = {r[0]: (r[1], None, None) for r in conn.execute(up, {"start": image_id})}
            sources = {r[0]: (1, image_id, r[1]) for r in conn.execute(steered_by, {"start": image_id})}
            descendants: dict[int, tuple[int, int | None, str | None]] = {}
            for i, depth, via, edge in conn.execute(down, {"start": image_id}):  # the nearest way to each
                if i not in descendants or depth < descendants[i][0]:
                    descendants[i] = (depth, via, edge)
        visible = self.filter_ids([*ancestors, *sources, *descendants], filters)
        records = {i.id: i for i in self.get_many(sorted(visible))}

        def nodes(found: dict[int, tuple[int, int | None, str | None]]) -> list[LineageNode]:
            return [LineageNode(id=i, parent_id=records[i].parent_id, relation=records[i].relation, depth=d,
                                prompt=records[i].prompt, mode=records[i].mode, via=via, edge=edge)
                    for i, (d, via, edge) in sorted(found.items(), key=lambda kv: (kv[1][0], kv[0]))
                    if i in records]  # fmt: skip

        # an ancestor outside the asker's gallery ends the walk up: nothing beyond it is theirs to see
        kept: list[LineageNode] = []
        for node in nodes(ancestors):
            if node.depth != len(kept) + 1:
                break
            kept.append(node)
        # a descendant is shown under an image the asker sees (one made from a hidden image is not theirs to place)
        shown: set[int] = {image_id}
        below = []
        for node in nodes(descendants):
            if node.via in shown:
                shown.add(node.id)
                below.append(node)
        return Lineage(image_id=image_id, ancestors=kept, descendants=below, sources=nodes(sources))

    def newest_ids(self, filters: SearchFilters, limit: int) -> list[int]:
        where, params = filter_sql(filters, "i")
        sql = text(f"SELECT i.id FROM images AS i WHERE {where} ORDER BY i.id DESC LIMIT :limit")
        with self.engine.connect() as conn:
            return list(conn.execute(sql, {**params, "limit": limit}).scalars())

    def filter_ids(self, image_ids: list[int], filters: SearchFilters) -> set[int]:
        if not image_ids:
            return set()
        where, params = filter_sql(filters, "i", row_by_row=True)  # a list of ids: few rows
        id_list = ",".join(str(int(i)) for i in image_ids)
        with Session(self.engine) as session:
            sql = text(f"SELECT i.id FROM images AS i WHERE i.id IN ({id_list}) AND {where}")
            return set(session.execute(sql, params).scalars())

    def keyword_ids(self, terms: Sequence[str], *, filters: SearchFilters, k: int) -> list[int]:
        # FTS5 walks a term's entries newest first slowly (a word in every prompt: 20 ms at a million, as part of
        # an AND): with rare and common terms, the rare ones lead the walk and the common ones are checked on its
        # rows, each a look-up (5 ms). Only common terms: FTS5's own AND (a look-up per row of a common lead
        # cost 170 ms for three colour words).
        if not terms:
            return []
        counts = {t: self._term_count(t) for t in terms} if len(terms) > 1 else {}
        rare = [t for t in terms if counts.get(t, 0) < COMMON_TERM]
        lead, rest = (rare, [t for t in terms if t not in rare]) if rare else (list(terms), [])
        where, params = filter_sql(filters, "i", row_by_row=self._frequent(filters.tags))
        also = "JOIN images_fts AS f2 ON f2.rowid = i.id AND f2.images_fts MATCH :rest " if rest else ""
        sql = text(
            f"SELECT i.id FROM images_fts AS f JOIN images AS i ON i.id = f.rowid {also}"
            f"WHERE f.images_fts MATCH :lead AND {where} ORDER BY f.rowid DESC LIMIT :k"
        )
        with self.engine.connect() as conn:
            rows = conn.execute(sql, {**params, "lead": " AND ".join(lead), "rest": " AND ".join(rest), "k": k})
            return [r[0] for r in rows]

    def _count_term(self, term: str) -> int:
        """How many prompts have `term`, counted up to COMMON_TERM (the entries walked oldest first: fast)."""
        return self._count_upto("SELECT 1 FROM images_fts WHERE images_fts MATCH :key", term, COMMON_TERM)

    def _frequent(self, tags: list[str]) -> list[str]:
        """The tags on so many images that checking a keyword hit's own tags beats building the tag's set (a count
        that stops at FREQUENT_TAG: an index walk of at most that many entries)."""
        rows = "SELECT 1 FROM image_tags WHERE tag = :key"
        return [t for t in tags if self._count_upto(rows, t, FREQUENT_TAG) >= FREQUENT_TAG]

    def _count_upto(self, rows: str, key: str, cap: int) -> int:
        """How many rows the query `rows` (with `:key`) gives, counting no further than `cap`."""
        sql = text(f"SELECT count(*) FROM ({rows} LIMIT :cap)")
        with self.engine.connect() as conn:
            return int(conn.execute(sql, {"key": key, "cap": cap}).scalar_one())

    def live_ids(self) -> set[int]:
        with Session(self.engine) as session:
            return set(session.scalars(select(ImageRow.id).where(ImageRow.deleted_at.is_(None))))

    def paths(self) -> dict[int, tuple[str, bool]]:
        with Session(self.engine) as session:
            rows = session.execute(select(ImageRow.id, ImageRow.path, ImageRow.deleted_at)).all()
        return {r.id: (r.path, r.deleted_at is not None) for r in rows}

    def find_repeats(self, keys: list[str], filters: SearchFilters) -> dict[str, ImagePublic]:
        if not keys:
            return {}
        # By the key's index alone, then the filters on those few rows: the planner must not walk a guild instead.
        wanted = ", ".join(f":k{n}" for n in range(len(keys)))
        sql = text(f"SELECT id, repeat_key FROM images INDEXED BY ix_images_repeat_key WHERE repeat_key IN ({wanted}) "
                   "ORDER BY id")  # fmt: skip
        with self.engine.connect() as conn:
            rows = conn.execute(sql, {f"k{n}": k for n, k in enumerate(keys)}).all()
        allowed = self.filter_ids([r[0] for r in rows], filters)
        first: dict[str, int] = {}
        for image_id, key in rows:
            if image_id in allowed:
                first.setdefault(key, image_id)
        images = {i.id: i for i in self.get_many(list(first.values()))}
        return {k: images[i] for k, i in first.items() if i in images}

    def find_by_sha(self, sha256: str) -> int | None:
        with Session(self.engine) as session:
            return session.scalars(
                select(ImageRow.id).where(ImageRow.sha256 == sha256, ImageRow.deleted_at.is_(None))
            ).first()

    def ids_of_running_jobs(self) -> set[int]:
        sql = "SELECT i.id FROM images AS i JOIN jobs AS j ON j.id = i.job_id WHERE j.status = 'running'"
        with Session(self.engine) as session:
            return set(session.execute(text(sql)).scalars())

    def duplicates(self) -> list[int]:
        with Session(self.engine) as session:
            return list(session.execute(text(DUPLICATES_SQL)).scalars())

    def mark_deleted(self, image_ids: list[int]) -> None:
        with Session(self.engine) as session, session.begin():
            session.execute(update(ImageRow).where(ImageRow.id.in_(image_ids)).values(deleted_at=datetime.now(UTC)))


# Everything made from an image, at any depth: through the init image (parent_id) and through steering (a control or
# a reference, image_sources); each row with the image it was made from and how (`edge`: NULL for parent_id).
DESCENDANTS_SQL = (
    "WITH RECURSIVE d(id, depth, via, edge) AS ("
    "SELECT id, 1, {start}, NULL FROM images WHERE parent_id = {start} "
    "UNION SELECT image_id, 1, {start}, role FROM image_sources WHERE source_id = {start} "
    "UNION SELECT c.id, d.depth + 1, d.id, NULL FROM images AS c JOIN d ON c.parent_id = d.id WHERE d.depth < 64 "
    "UNION SELECT s.image_id, d.depth + 1, d.id, s.role FROM image_sources AS s JOIN d ON s.source_id = d.id "
    "WHERE d.depth < 64)"
)
COMMON_TERM = 5_000  # prompts with a search's word; fewer: the word leads FTS5's walk, and common ones are checked
FREQUENT_TAG = 20_000  # images; past it a tag's set costs more to build than a search's rows cost to check
# How a listing may be ordered: newest first, best rated first, favourites first (then newest).
SORTS = {
    "newest": "i.id DESC",
    "rating": "i.rating IS NULL, i.rating DESC, i.id DESC",
    "favourites": "i.favourite DESC, i.id DESC",
}


def filter_sql(filters: SearchFilters, alias: str = "i", *, row_by_row: Iterable[str] | bool = ()) -> tuple[str, dict]:
    """WHERE conditions on the images table for `filters` (always excluding deleted images). `row_by_row`: the tags
    (True: every tag and board) to check row by row through their primary keys, for a query that walks few rows."""
    conds, params = [f"{alias}.deleted_at IS NULL"], {}
    for i, (column, value) in enumerate(filters.conditions()):
        if value is None:
            conds.append(f'{alias}."{column}" IS NULL')
        else:
            conds.append(f'{alias}."{column}" = :f_{i}')
            params[f"f_{i}"] = value
    if filters.created_after is not None:
        conds.append(f"{alias}.created_at >= :f_after")
        params["f_after"] = filters.created_after
    if filters.created_before is not None:
        conds.append(f"{alias}.created_at < :f_before")
        params["f_before"] = filters.created_before
    if filters.favourites:
        conds.append(f"{alias}.favourite = 1")
    if filters.min_width is not None:
        conds.append(f"{alias}.width >= :f_min_w")
        params["f_min_w"] = filters.min_width
    if filters.min_height is not None:
        conds.append(f"{alias}.height >= :f_min_h")
        params["f_min_h"] = filters.min_height
    # Tags and boards as sets from their own indexes ((tag, image_id), (board_id, image_id)): SQLite then walks
    # only their images, not the guild's. Row by row through their primary keys where the query walks few rows: the
    # set of a frequent tag (a quarter of a million images) took ~200 ms to build for a few hundred keyword hits.
    every = row_by_row is True
    singly = set() if isinstance(row_by_row, bool) else set(row_by_row)
    for k, tag in enumerate(filters.tags):
        conds.append(f"EXISTS (SELECT 1 FROM image_tags AS t WHERE t.image_id = {alias}.id AND t.tag = :f_tag{k})"
                     if every or tag in singly
                     else f"{alias}.id IN (SELECT image_id FROM image_tags WHERE tag = :f_tag{k})")  # fmt: skip
        params[f"f_tag{k}"] = tag
    board_row = f"SELECT 1 FROM board_images AS b WHERE b.image_id = {alias}.id AND b.board_id = "
    if filters.board is not None:
        conds.append(f"EXISTS ({board_row}:f_board)" if every
                     else f"{alias}.id IN (SELECT image_id FROM board_images WHERE board_id = :f_board)")  # fmt: skip
        params["f_board"] = filters.board
    if filters.not_board is not None:
        hidden = f"{alias}.id NOT IN (SELECT image_id FROM board_images WHERE board_id = :f_not_board)"
        conds.append(f"NOT EXISTS ({board_row}:f_not_board)" if every else hidden)
        params["f_not_board"] = filters.not_board
    if filters.derived_from is not None:
        conds.append(f"{alias}.id IN ({DESCENDANTS_SQL.format(start=':f_from')} SELECT id FROM d)")
        params["f_from"] = filters.derived_from
    if filters.stack is not None:
        conds.append(f"{alias}.stack_key = :f_stack")
        params["f_stack"] = filters.stack
    if filters.min_rating is not None:
        conds.append(f"{alias}.rating >= :f_min_rating")
        params["f_min_rating"] = filters.min_rating
    if filters.lora is not None:
        conds.append(f"EXISTS (SELECT 1 FROM json_each({alias}.params, '$.loras') AS l "
                     "WHERE json_extract(l.value, '$.name') = :f_lora)")  # fmt: skip
        params["f_lora"] = filters.lora
    return " AND ".join(conds), params
