"""One shard of the vector index (a guild's LanceDB table) and, while it is small, its unit vectors in memory
for an exact search: no disk, recall 1 (gallery.index decides which shards are kept, within its budget)."""

from __future__ import annotations

import lancedb
import numpy as np
import pyarrow as pa

from gallery.schemas import VectorHit


def _unit_rows(vectors: pa.Array, dim: int) -> np.ndarray:
    v = vectors.flatten().to_numpy(zero_copy_only=False).reshape(-1, dim).astype(np.float32)
    return v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)


class Shard:
    """One guild's table (or the table of images with no guild), and while it is small, its vectors in
    memory: an exact search over them beats any query to disk (and than numpy over every guild's rows)."""

    def __init__(self, table: lancedb.table.Table) -> None:
        self.table = table
        indices = table.list_indices()
        self.has_ann = any("vector" in idx.columns for idx in indices)
        self.has_id_index = any(idx.columns == ["image_id"] for idx in indices)
        self.writes = 0
        self.ids: np.ndarray | None = None  # the in-memory copy: ids and unit vectors, or None
        self.vectors: np.ndarray | None = None

    def cache(self, dim: int) -> int:
        """Read the shard into memory; returns its bytes."""
        rows = self.table.search().limit(None).select(["image_id", "vector"]).to_arrow()
        self.ids = rows.column("image_id").to_numpy()
        self.vectors = _unit_rows(rows.column("vector").combine_chunks(), dim)
        return self.vectors.nbytes

    def cached_add(self, rows: pa.Table, dim: int) -> None:
        if self.ids is not None and self.vectors is not None:
            self.ids = np.concatenate([self.ids, rows.column("image_id").to_numpy()])
            self.vectors = np.concatenate([self.vectors, _unit_rows(rows.column("vector").combine_chunks(), dim)])

    def cached_delete(self, image_ids: list[int]) -> None:
        if self.ids is not None and self.vectors is not None:
            keep = ~np.isin(self.ids, image_ids)
            self.ids, self.vectors = self.ids[keep], self.vectors[keep]

    def drop_cache(self) -> int:
        freed = 0 if self.vectors is None else self.vectors.nbytes
        self.ids = self.vectors = None
        return freed


def exact(ids: np.ndarray, vectors: np.ndarray, vector: np.ndarray, k: int) -> list[VectorHit]:
    """The k best by cosine similarity, exactly (`vectors` are unit rows)."""
    scores = vectors @ (vector / max(float(np.linalg.norm(vector)), 1e-12))
    top = np.argpartition(-scores, k)[:k] if len(scores) > k else np.arange(len(scores))
    top = top[np.argsort(-scores[top])]
    return [VectorHit(image_id=int(ids[i]), score=float(scores[i])) for i in top]
