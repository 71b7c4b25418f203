"""The vector index: CLIP vectors in LanceDB with the columns search filters on.

Derived data: SQLite is the truth, and the index can always be rebuilt from
it (`dreamhall gallery reindex`). Tables are named after the CLIP model id, so
vectors of two models never mix; a new model means new tables.

One table per guild (a *shard*; images of no guild, the DMs, the CLI's and the
desktop's, share one more): a guild's search reads its own table and nothing
else, which is both its isolation and its speed (a filter over one table of
every guild read and decoded every vector before keeping a tenth of them).
A search with no guild reads every shard and merges their best.

LanceDB writes a new version (and data file) on every add, so single-image
adds go to a small write-behind buffer, flushed every `flush_rows` rows and
before any read (a search always sees every image added before it); the
table is compacted (`optimize`) every `optimize_every` flushes. A crash loses
at most the buffer, which the reconciler re-embeds from SQLite on start.

A shard is searched one of two ways. While it is small (under `ann_threshold`
rows, no index) its unit vectors are also kept in memory (up to `cache_bytes`
for all such shards together, kept in step by every write) and a guild's query
is an exact product over them: no disk, recall 1. Past `ann_threshold` rows it
gets an IVF_HNSW_SQ index (a graph in each of about rows/6000 partitions over
8-bit vectors); queries probe `nprobes` partitions with `ef` candidates each.
Queries with other filters (user, source, model, dates, DMs) go to LanceDB,
filter first. Figures: bench/search.py and the README.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
import threading
from abc import ABC, abstractmethod
from collections.abc import Collection, Iterable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import lancedb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import BaseModel

from gallery.lance_filters import ids_in, where_clause
from gallery.schemas import VectorFilters, VectorHit
from gallery.shards import Shard, exact

log = logging.getLogger(__name__)


class IndexError_(Exception):
    """The vector index could not be read or written."""


class IndexRow(BaseModel):
    """One image's vector and the fields search filters on."""

    image_id: int
    vector: list[float]
    guild: str | None = None
    user: str | None = None
    source: str = "api"
    model: str | None = None
    created_at: datetime


class VectorIndex(ABC):
    """Nearest-neighbour search over image vectors of one CLIP model."""

    model_id: str

    @abstractmethod
    def add(self, rows: list[IndexRow]) -> None:
        """Add vectors of images that have none yet (possibly buffered until the next read)."""

    @abstractmethod
    def flush(self) -> None:
        """Write whatever is buffered."""

    @abstractmethod
    def delete(self, image_ids: list[int], *, guilds: Iterable[str | None] | None = None) -> None:
        """Drop the vectors of these images (in these guilds' tables; None: in every table)."""

    @abstractmethod
    def search(
        self, vector: np.ndarray, *, k: int, filters: VectorFilters | None = None, among: Collection[int] | None = None
    ) -> list[VectorHit]:
        """The k nearest images that pass the filters (and are `among` these ids, when given), best first."""

    def scores(
        self, vector: np.ndarray, image_ids: list[int], *, filters: VectorFilters | None = None
    ) -> dict[int, float]:
        """The exact cosine similarity of `vector` to each of these images that has a vector (looked for
        where `filters` allow: a guild's ids in its own table)."""
        return self.cosines(vector, *self.vectors(image_ids, filters=filters))

    @staticmethod
    def cosines(vector: np.ndarray, ids: np.ndarray, vectors: np.ndarray) -> dict[int, float]:
        """id -> the cosine of its (unit) vector to `vector` (what `vectors` gave)."""
        unit = vector / max(float(np.linalg.norm(vector)), 1e-12)
        return dict(zip(ids.tolist(), (vectors @ unit).tolist()))

    @abstractmethod
    def vectors(self, image_ids: list[int], *, filters: VectorFilters | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The vectors of these images that have one (looked for where `filters` allow): (ids, vectors), in no
        particular order."""

    @abstractmethod
    def clear(self) -> None:
        """Drop every vector (a reindex starts from here)."""

    @abstractmethod
    def id_column(self) -> np.ndarray:
        """The image id of every vector (int64, one entry per vector: an id twice if it is there twice)."""

    def image_ids(self) -> set[int]:
        """Every image id that has a vector."""
        return set(self.id_column().tolist())

    @abstractmethod
    def count(self) -> int:
        """How many vectors the index holds."""

    @abstractmethod
    def warm(self) -> None:
        """Read what the first search of each part of the index would read (after a start, in the background)."""

    @abstractmethod
    def present(self, image_ids: list[int], *, guilds: Iterable[str | None] | None = None) -> set[int]:
        """Which of these images already have a vector (looked for in these guilds' tables; None: in all)."""


class LanceIndex(VectorIndex):
    """VectorIndex on a LanceDB directory: a table per guild (see the module's docstring)."""

    def __init__(
        self,
        directory: Path,
        *,
        model_id: str,
        dim: int,
        optimize_every: int = 50,
        flush_rows: int = 256,
        ann_threshold: int = 20_000,
        nprobes: int = 12,
        ef: int = 128,
        cache_bytes: int = 256 * 2**20,
    ) -> None:
        self.directory = directory
        self.model_id = model_id
        self.dim = dim
        self.optimize_every = optimize_every
        self.flush_rows = flush_rows
        self._pending: list[IndexRow] = []
        self._lock = threading.RLock()
        self.ann_threshold = ann_threshold
        self.nprobes = nprobes
        self.ef = ef
        self.cache_bytes = cache_bytes  # for the small shards' vectors in memory, all together
        self._cached = 0
        self.table_name = "images_" + hashlib.sha256(model_id.encode()).hexdigest()[:16]
        self._shards: dict[str, Shard] = {}  # by table name
        self.schema = pa.schema(
            [
                pa.field("image_id", pa.int64()),
                pa.field("vector", pa.list_(pa.float32(), dim)),
                pa.field("guild", pa.string()),
                pa.field("user", pa.string()),
                pa.field("source", pa.string()),
                pa.field("model", pa.string()),
                pa.field("created_at", pa.timestamp("us")),
            ],
            metadata={"clip_model": model_id},
        )
        self._open()

    def shard_name(self, guild: str | None) -> str:
        key = "none" if guild is None else hashlib.sha256(guild.encode()).hexdigest()[:16]
        return f"{self.table_name}__{key}"

    def _open(self) -> None:
        try:
            self.db = lancedb.connect(self.directory)
            names = self.db.list_tables().tables
            for name in names:
                if name.startswith(self.table_name + "__"):
                    shard = Shard(self.db.open_table(name))
                    shard.table.count_rows()  # touch the data: a corrupt table fails here, not mid-search
                    self._shards[name] = shard
            if self.table_name in names:
                for name in list(self._shards):  # a split cut short (the old table is dropped last): again
                    self.db.drop_table(name)
                self._shards.clear()
                self._split_single_table()
            self._shard(None)  # always there: a new index is a directory with a table in it
        except Exception as e:  # lance raises many kinds on a damaged directory
            raise IndexError_(f"cannot open the vector index at {self.directory}: {e}") from e

    def _split_single_table(self) -> None:
        """An index from before the shards: its vectors move into their guilds' tables, once."""
        old = self.db.open_table(self.table_name)
        log.info("splitting the vector index (%d vectors) into one table per guild", old.count_rows())
        for batch in old.search().limit(None).to_batches(batch_size=50_000):
            self.add_arrow(pa.Table.from_batches([batch]).select(self.schema.names).cast(self.schema))
        self.db.drop_table(self.table_name)

    def _shard(self, guild: str | None) -> Shard:
        name = self.shard_name(guild)
        with self._lock:
            if name not in self._shards:
                self._shards[name] = Shard(self.db.create_table(name, schema=self.schema, exist_ok=True))
            return self._shards[name]

    def _in_scope(self, filters: VectorFilters | None) -> list[Shard]:
        """The shards a query may read: a guild's own, the no-guild one for DMs, else all."""
        # A shard is one value of `guild`: the tenant rule's first condition on it names the one to read.
        guild = next((c for c in filters.conditions() if c.column == "guild"), None) if filters else None
        with self._lock:
            if guild is not None:
                shard = self._shards.get(self.shard_name(guild.value))
                return [shard] if shard is not None else []
            return list(self._shards.values())

    def _tables_of(self, guilds: Iterable[str | None] | None) -> list[Shard]:
        """These guilds' shards (None: every shard)."""
        if guilds is None:
            return self._in_scope(None)
        with self._lock:
            return [shard for name in {self.shard_name(g) for g in guilds} if (shard := self._shards.get(name))]

    @classmethod
    def open_or_rebuild(cls, directory: Path, **kwargs) -> tuple[LanceIndex, bool]:
        """Open the index; if the directory is damaged, move it aside and start empty (SQLite is the truth)."""
        try:
            return cls(directory, **kwargs), False
        except IndexError_ as e:
            aside = directory.with_name(f"{directory.name}.damaged-{datetime.now(UTC):%Y%m%d%H%M%S}")
            log.warning("%s; moving it to %s and rebuilding from the gallery", e, aside)
            shutil.move(str(directory), aside)
            return cls(directory, **kwargs), True

    def _arrow(self, rows: list[IndexRow]) -> pa.Table:
        return pa.table(
            {
                "image_id": pa.array([r.image_id for r in rows], pa.int64()),
                "vector": pa.array(
                    list(np.asarray([r.vector for r in rows], dtype=np.float32)), pa.list_(pa.float32(), self.dim)
                ),
                "guild": [r.guild for r in rows],
                "user": [r.user for r in rows],
                "source": [r.source for r in rows],
                "model": [r.model for r in rows],
                "created_at": pa.array([r.created_at.replace(tzinfo=None) for r in rows], pa.timestamp("us")),
            },
            schema=self.schema,
        )

    def add(self, rows: list[IndexRow]) -> None:
        with self._lock:
            self._pending += rows
            if len(self._pending) >= self.flush_rows:
                self.flush()

    def flush(self) -> None:
        with self._lock:
            if not self._pending:
                return
            rows, self._pending = self._pending, []
            try:
                # Callers add images that have no vector yet (new images, or what reconcile found
                # missing), so a plain append is enough; an upsert costs a scan per write.
                self.add_arrow(self._arrow(rows))
            except Exception as e:  # lance's errors carry no common base class
                raise IndexError_(f"could not add {len(rows)} vector(s): {e}") from e

    def add_arrow(self, table: pa.Table) -> None:
        """Append rows (in the index's schema) to their guilds' tables."""
        guilds = table.column("guild")
        for guild in pc.unique(guilds).to_pylist():
            mask = pc.is_null(guilds) if guild is None else pc.equal(guilds, guild)
            shard, rows = self._shard(guild), table.filter(mask)
            shard.table.add(rows)
            with self._lock:
                shard.cached_add(rows, self.dim)
                self._cached += 0 if shard.vectors is None else rows.num_rows * self.dim * 4
            self._after_write(shard)

    def clear(self) -> None:
        with self._lock:
            self._pending = []
            for name in list(self._shards):
                self.db.drop_table(name)
            self._shards.clear()
            self._cached = 0

    def delete(self, image_ids: list[int], *, guilds: Iterable[str | None] | None = None) -> None:
        self.flush()
        if image_ids:
            where = ids_in(image_ids)
            for shard in self._tables_of(guilds):  # each one a commit: only where the images are, when known
                shard.table.delete(where)
                with self._lock:
                    shard.cached_delete(image_ids)
                self._after_write(shard)

    def _after_write(self, shard: Shard) -> None:
        shard.writes += 1
        if shard.writes % self.optimize_every == 0:
            self._optimize(shard)

    def optimize(self) -> None:
        """Compact small files, drop old versions, and build or update the ANN indexes."""
        for shard in self._in_scope(None):
            self._optimize(shard)

    def _optimize(self, shard: Shard) -> None:
        self._ensure_indexes(shard)
        # Keep a minute of old versions: a search thread may still be reading one.
        shard.table.optimize(cleanup_older_than=timedelta(minutes=1))

    def has_ann_index(self) -> bool:
        return any(shard.has_ann for shard in self._in_scope(None))

    def build_ann_index(self) -> None:
        """An ANN index on every shard past `ann_threshold` that has none yet (a bulk load, benchmarks)."""
        for shard in self._in_scope(None):
            self._ensure_indexes(shard)

    def _ensure_indexes(self, shard: Shard) -> None:
        if not shard.has_ann and shard.table.count_rows() >= self.ann_threshold:
            self._build(shard)
        elif shard.has_ann and not shard.has_id_index:  # built before shards had one
            self._index_ids(shard)

    def _build(self, shard: Shard) -> None:
        rows = shard.table.count_rows()
        shard.table.create_index(metric="cosine", index_type="IVF_HNSW_SQ", vector_column_name="vector",
                                 num_partitions=max(1, rows // 6000), replace=True)  # fmt: skip
        shard.has_ann = True
        self._index_ids(shard)
        with self._lock:
            self._cached -= shard.drop_cache()  # big now: its index serves it

    def _index_ids(self, shard: Shard) -> None:
        # A big shard is not in memory: looking given ids up (keyword hits' scores, `present`) would scan it.
        shard.table.create_scalar_index("image_id", index_type="BTREE", replace=True)
        shard.has_id_index = True

    def _in_memory(self, shard: Shard) -> tuple[np.ndarray, np.ndarray] | None:
        """The shard's ids and vectors when it is searched in memory: small (no ANN index yet) and
        within the budget (read on its first search, kept in step by every write)."""
        with self._lock:
            if shard.has_ann:
                return None
            if shard.vectors is None:
                rows = shard.table.count_rows()
                if self._cached + rows * self.dim * 4 > self.cache_bytes:
                    return None
                self._cached += shard.cache(self.dim)
            assert shard.ids is not None and shard.vectors is not None
            return shard.ids, shard.vectors

    def warm(self) -> None:
        # A big shard's first ANN query after a start opens its index: 0.16-0.59 s per guild at 100,000 vectors
        # here, then 5-11 ms. One query each, biggest first, takes that off the users' first searches.
        probe = np.zeros(self.dim, dtype=np.float32)
        probe[0] = 1.0
        shards = [s for s in self._in_scope(None) if s.has_ann]
        for shard in sorted(shards, key=lambda s: -s.table.count_rows()):
            query = shard.table.search(probe, vector_column_name="vector").distance_type("cosine").limit(1)
            query.nprobes(self.nprobes).ef(self.ef).select(["image_id", "_distance"]).to_arrow()

    def search(
        self, vector: np.ndarray, *, k: int, filters: VectorFilters | None = None, among: Collection[int] | None = None
    ) -> list[VectorHit]:
        self.flush()
        where = where_clause(filters.model_copy(update={"guild": None}) if filters is not None else None)
        if among is not None:  # a prefilter: 4,000 ids at 1M take 18 ms, against 94-520 ms to read their vectors
            if not among:
                return []
            where = f"({where}) AND {ids_in(among)}" if where else ids_in(among)
        hits: list[VectorHit] = []
        for shard in self._in_scope(filters):
            if not where and (cached := self._in_memory(shard)) is not None:
                hits += exact(*cached, np.asarray(vector, dtype=np.float32), k)
                continue
            query = shard.table.search(np.asarray(vector, dtype=np.float32), vector_column_name="vector")
            query = query.distance_type("cosine").limit(k).select(["image_id", "_distance"])
            if where:
                query = query.where(where, prefilter=True)
            if shard.has_ann:
                query = query.nprobes(self.nprobes).ef(max(self.ef, k))  # HNSW: ef below k is an error
            result = query.to_arrow()
            ids = result.column("image_id").to_pylist()
            distances = result.column("_distance").to_pylist()
            hits += [VectorHit(image_id=i, score=1.0 - d) for i, d in zip(ids, distances)]
        return sorted(hits, key=lambda h: -h.score)[:k]

    def vectors(self, image_ids: list[int], *, filters: VectorFilters | None = None) -> tuple[np.ndarray, np.ndarray]:
        return self._vectors_of(set(image_ids), self._in_scope(filters))

    def _vectors_of(self, rest: set[int], shards: list[Shard]) -> tuple[np.ndarray, np.ndarray]:
        self.flush()
        all_ids, all_vectors = [np.empty(0, dtype=np.int64)], [np.empty((0, self.dim), dtype=np.float32)]
        for shard in shards:
            if not rest:
                break
            ids, vectors = shard.ids, shard.vectors
            if ids is not None and vectors is not None:  # in memory: the few rows asked for
                rows = np.flatnonzero(np.isin(ids, list(rest)))
                ids, vectors = ids[rows], vectors[rows]
            else:  # their vectors by id (the shard's id index): half a flat query's time
                result = shard.table.search().where(ids_in(rest)).select(["image_id", "vector"]).to_arrow()
                ids = result.column("image_id").to_numpy()
                vectors = result.column("vector").combine_chunks().flatten().to_numpy().reshape(-1, self.dim)
            all_ids.append(ids)
            all_vectors.append(vectors)
            rest -= set(ids.tolist())
        return np.concatenate(all_ids), np.concatenate(all_vectors)

    def to_arrow(self) -> pa.Table:
        """Every row of every shard."""
        self.flush()
        tables = [shard.table.to_arrow() for shard in self._in_scope(None)]
        return pa.concat_tables(tables) if tables else self.schema.empty_table()

    def id_column(self) -> np.ndarray:
        self.flush()
        columns = [shard.table.search().limit(None).select(["image_id"]).to_arrow().column("image_id").to_numpy()
                   for shard in self._in_scope(None)]  # fmt: skip
        return np.concatenate(columns) if columns else np.empty(0, dtype=np.int64)

    def count(self) -> int:
        self.flush()
        return sum(shard.table.count_rows() for shard in self._in_scope(None))

    def present(self, image_ids: list[int], *, guilds: Iterable[str | None] | None = None) -> set[int]:
        # Asked before every write (the worker's new images, a repair's): answered from the buffer and the
        # in-memory shards where it can, without flushing, so the buffer really gathers writes; and only in
        # the writer's guilds' tables (each a lookup by id, ~4 ms on a big one).
        with self._lock:
            rest = set(image_ids)
            found = {r.image_id for r in self._pending if r.image_id in rest}
            rest -= found
            for shard in self._tables_of(guilds):
                if not rest:
                    break
                if shard.ids is not None:
                    hits = set(shard.ids[np.isin(shard.ids, list(rest))].tolist())
                else:
                    result = shard.table.search().where(ids_in(rest)).select(["image_id"]).to_arrow()
                    hits = set(result.column("image_id").to_pylist())
                found |= hits
                rest -= hits
        return found

    def versions(self) -> int:
        return sum(len(shard.table.list_versions()) for shard in self._in_scope(None))
