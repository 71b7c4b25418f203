"""The vector index: CLIP vectors in LanceDB with the columns search filters on.

Derived data: SQLite is the truth, and the index can always be rebuilt from
it (`dreamhall gallery reindex`). One table per CLIP model, named after the
model id, so vectors of two models never mix; a new model means a new table.

LanceDB writes a new version (and data file) on every add, so single-image
adds go to a small write-behind buffer, flushed every `flush_rows` rows and
before any read (a search always sees every image added before it); the
table is compacted (`optimize`) every `optimize_every` flushes. A crash loses
at most the buffer, which the reconciler re-embeds from SQLite on start.

Past `ann_threshold` rows an IVF_PQ index is built; queries then probe
`nprobes` partitions and re-rank `refine_factor`× the candidates with exact
distances, which keeps recall high.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
import threading
from abc import ABC, abstractmethod
from datetime import UTC, datetime, timedelta
from pathlib import Path

import lancedb
import numpy as np
import pyarrow as pa
from pydantic import BaseModel

from gallery.schemas import VectorFilters

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


class VectorHit(BaseModel):
    image_id: int
    score: float  # cosine similarity, 1 = identical direction


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
    def delete(self, image_ids: list[int]) -> None:
        """Drop the vectors of these images."""

    @abstractmethod
    def search(self, vector: np.ndarray, *, k: int, filters: VectorFilters | None = None) -> list[VectorHit]:
        """The k nearest images that pass the filters, best first."""

    @abstractmethod
    def scores(self, vector: np.ndarray, image_ids: list[int]) -> dict[int, float]:
        """The exact cosine similarity of `vector` to each of these images that has a vector."""

    @abstractmethod
    def clear(self) -> None:
        """Drop every vector (a reindex starts from here)."""

    @abstractmethod
    def image_ids(self) -> set[int]:
        """Every image id that has a vector."""

    @abstractmethod
    def count(self) -> int:
        """How many vectors the index holds."""

    @abstractmethod
    def present(self, image_ids: list[int]) -> set[int]:
        """Which of these images already have a vector."""


def _quote(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _utc(moment: datetime) -> str:
    # Stored timestamps are naive UTC; a naive input is taken as UTC too.
    if moment.tzinfo is not None:
        moment = moment.astimezone(UTC)
    return moment.strftime("%Y-%m-%d %H:%M:%S")


def where_clause(filters: VectorFilters | None) -> str | None:
    """The SQL filter LanceDB applies before ranking (values quoted, never pasted raw)."""
    if filters is None:
        return None
    parts = []
    for column in ("guild", "user", "source", "model"):
        value = getattr(filters, column)
        if value is not None:
            parts.append(f"`{column}` = {_quote(value)}")
    if filters.dm_of is not None:
        parts.append(f"`guild` IS NULL AND `source` = 'discord' AND `user` = {_quote(filters.dm_of)}")
    if filters.created_after is not None:
        parts.append(f"created_at >= timestamp {_quote(_utc(filters.created_after))}")
    if filters.created_before is not None:
        parts.append(f"created_at < timestamp {_quote(_utc(filters.created_before))}")
    return " AND ".join(parts) or None


class LanceIndex(VectorIndex):
    """VectorIndex on a LanceDB directory."""

    def __init__(
        self,
        directory: Path,
        *,
        model_id: str,
        dim: int,
        optimize_every: int = 50,
        flush_rows: int = 256,
        ann_threshold: int = 20_000,
        nprobes: int = 100,
        refine_factor: int = 50,
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
        self.refine_factor = refine_factor
        self.table_name = "images_" + hashlib.sha256(model_id.encode()).hexdigest()[:16]
        self._writes = 0
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

    def _open(self) -> None:
        try:
            self.db = lancedb.connect(self.directory)
            if self.table_name in self.db.list_tables().tables:
                self.table = self.db.open_table(self.table_name)
                self.table.count_rows()  # touch the data: a corrupt table fails here, not mid-search
            else:
                self.table = self.db.create_table(self.table_name, schema=self.schema)
            self._has_ann = self._read_has_ann()
        except Exception as e:  # lance raises many kinds on a damaged directory
            raise IndexError_(f"cannot open the vector index at {self.directory}: {e}") from e

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
                self.table.add(self._arrow(rows))
            except Exception as e:  # lance's errors carry no common base class
                raise IndexError_(f"could not add {len(rows)} vector(s): {e}") from e
            self._after_write()

    def clear(self) -> None:
        with self._lock:
            self._pending = []
        self.db.drop_table(self.table_name)
        self.table = self.db.create_table(self.table_name, schema=self.schema)
        self._has_ann = False

    def add_arrow(self, table: pa.Table) -> None:
        """Bulk load (benchmarks, reindex): append without the upsert check."""
        self.table.add(table)
        self._after_write()

    def delete(self, image_ids: list[int]) -> None:
        self.flush()
        if image_ids:
            self.table.delete(f"image_id IN ({', '.join(str(int(i)) for i in image_ids)})")
            self._after_write()

    def _after_write(self) -> None:
        self._writes += 1
        if self._writes % self.optimize_every == 0:
            self.optimize()

    def optimize(self) -> None:
        """Compact small files, drop old versions, and build or update the ANN index."""
        rows = self.table.count_rows()
        if rows >= self.ann_threshold and not self._has_ann:
            self.build_ann_index()
        # Keep a minute of old versions: a search thread may still be reading one.
        self.table.optimize(cleanup_older_than=timedelta(minutes=1))

    def has_ann_index(self) -> bool:
        return self._has_ann

    def _read_has_ann(self) -> bool:
        # Asked once per open (and kept in step by build/clear), not on every query.
        return any("vector" in idx.columns for idx in self.table.list_indices())

    def build_ann_index(self) -> None:
        rows = self.table.count_rows()
        partitions = max(1, int(np.sqrt(rows)))
        self.table.create_index(metric="cosine", index_type="IVF_PQ", num_partitions=partitions,
                                num_sub_vectors=max(1, self.dim // 8), vector_column_name="vector")  # fmt: skip
        self._has_ann = True
        for column in ("guild",):
            self.table.create_scalar_index(column, replace=True)

    def search(self, vector: np.ndarray, *, k: int, filters: VectorFilters | None = None) -> list[VectorHit]:
        self.flush()
        query = self.table.search(np.asarray(vector, dtype=np.float32), vector_column_name="vector")
        query = query.distance_type("cosine").limit(k).select(["image_id", "_distance"])
        where = where_clause(filters)
        if where:
            query = query.where(where, prefilter=True)
        if self._has_ann:
            query = query.nprobes(self.nprobes).refine_factor(self.refine_factor)
        result = query.to_arrow()
        ids = result.column("image_id").to_pylist()
        distances = result.column("_distance").to_pylist()
        return [VectorHit(image_id=i, score=1.0 - d) for i, d in zip(ids, distances)]

    def scores(self, vector: np.ndarray, image_ids: list[int]) -> dict[int, float]:
        self.flush()
        if not image_ids:
            return {}
        id_list = ", ".join(str(int(i)) for i in image_ids)
        query = self.table.search(np.asarray(vector, dtype=np.float32), vector_column_name="vector")
        query = query.distance_type("cosine").where(f"image_id IN ({id_list})", prefilter=True)
        result = query.bypass_vector_index().limit(len(image_ids)).select(["image_id", "_distance"]).to_arrow()
        return {
            i: 1.0 - d for i, d in zip(result.column("image_id").to_pylist(), result.column("_distance").to_pylist())
        }

    def image_ids(self) -> set[int]:
        self.flush()
        return set(self.table.to_arrow().column("image_id").to_pylist()) if self.count() else set()

    def count(self) -> int:
        self.flush()
        return self.table.count_rows()

    def present(self, image_ids: list[int]) -> set[int]:
        self.flush()
        if not image_ids:
            return set()
        id_list = ", ".join(str(int(i)) for i in image_ids)
        found = self.table.search().where(f"image_id IN ({id_list})").select(["image_id"]).to_arrow()
        return set(found.column("image_id").to_pylist())

    def versions(self) -> int:
        return len(self.table.list_versions())
