"""Lexica-style search: by words, by an image, or by an image already in the gallery.

Text search fuses two rankings with reciprocal-rank fusion: CLIP (the text's
embedding against image vectors, for concepts) and SQLite FTS5 over prompts
(for exact words and phrases). Filters, tenant isolation by guild above all,
are part of both queries; nothing is filtered after ranking. This module only
ranks and fuses: rows come from the `ImageStore`, vectors from the `VectorIndex`.
"""

from __future__ import annotations

import re

from PIL import Image
from pydantic import BaseModel

from gallery.embeddings import Embedder
from gallery.index import VectorIndex
from gallery.schemas import ImagePublic, SearchFilters
from gallery.store import GalleryError, ImageStore

MAX_QUERY_CHARS = 1000
MAX_LIMIT = 200
RRF_K = 60  # the constant from Cormack et al.; damps the weight of top ranks


class SearchError(GalleryError):
    """A search that cannot be run as asked; the message says what to fix."""


class SearchHit(BaseModel):
    image: ImagePublic
    score: float


class SearchPage(BaseModel):
    results: list[SearchHit]
    offset: int
    limit: int


class BrowsePage(BaseModel):
    images: list[ImagePublic]
    total: int
    offset: int
    limit: int


def fts_query(query: str) -> str | None:
    """An FTS5 expression for free text: a quoted phrase stays a phrase, other words are OR-ed terms."""
    phrases = re.findall(r'"([^"]+)"', query)
    rest = re.sub(r'"[^"]*"', " ", query)
    terms = [f'"{p.replace(chr(34), "")}"' for p in phrases]
    terms += [f'"{w}"' for w in re.findall(r"\w+", rest)]
    return " OR ".join(terms) or None


def reciprocal_rank_fusion(*rankings: list[int]) -> list[tuple[int, float]]:
    scores: dict[int, float] = {}
    for ranking in rankings:
        for rank, image_id in enumerate(ranking):
            scores[image_id] = scores.get(image_id, 0.0) + 1.0 / (RRF_K + rank + 1)
    return sorted(scores.items(), key=lambda kv: -kv[1])


class GallerySearch:
    """Search over the gallery's images, their prompts and their CLIP vectors."""

    def __init__(self, *, store: ImageStore, embedder: Embedder, index: VectorIndex) -> None:
        self.store = store
        self.embedder = embedder
        self.index = index

    def by_text(
        self, *, query: str, limit: int = 20, offset: int = 0, filters: SearchFilters | None = None
    ) -> SearchPage:
        query = query.strip()
        if not query:
            raise SearchError("the search text is empty")
        if len(query) > MAX_QUERY_CHARS:
            raise SearchError(f"the search text is too long ({len(query)} characters; at most {MAX_QUERY_CHARS})")
        filters = filters or SearchFilters()
        depth = self._depth(limit, offset)
        vector = self.embedder.embed_texts([query])[0]
        semantic = [h.image_id for h in self.index.search(vector, k=depth, filters=filters.vector_filters())]
        keyword = self._keyword(query, depth, filters)
        fused = reciprocal_rank_fusion(semantic, keyword)
        return self._page(fused, limit, offset, filters)

    def by_image(self, *, image: Image.Image, limit: int = 20, offset: int = 0,
                 filters: SearchFilters | None = None, exclude: int | None = None) -> SearchPage:  # fmt: skip
        filters = filters or SearchFilters()
        vector = self.embedder.embed_images([image])[0]
        hits = self.index.search(vector, k=self._depth(limit, offset) + 1, filters=filters.vector_filters())
        ranked = [(h.image_id, h.score) for h in hits if h.image_id != exclude]
        return self._page(ranked, limit, offset, filters)

    def similar(self, *, image_id: int, limit: int = 20, offset: int = 0,
                filters: SearchFilters | None = None) -> SearchPage:  # fmt: skip
        source = self.store.get(image_id)
        tenant = SearchFilters(guild=filters.guild, dm_of=filters.dm_of) if filters is not None else None
        if tenant is not None and not self.store.filter_ids([image_id], tenant):
            raise SearchError(f"no image {image_id} in this guild")  # never confirm another tenant's image exists
        with Image.open(self.store.file_path(source)) as im:
            return self.by_image(image=im.convert("RGB"), limit=limit, offset=offset, filters=filters, exclude=image_id)

    @staticmethod
    def _depth(limit: int, offset: int) -> int:
        if not 1 <= limit <= MAX_LIMIT:
            raise SearchError(f"limit must be between 1 and {MAX_LIMIT} (got {limit})")
        if offset < 0:
            raise SearchError(f"offset must not be negative (got {offset})")
        return max(50, 2 * (limit + offset))

    def browse(self, *, limit: int = 100, offset: int = 0, filters: SearchFilters | None = None) -> BrowsePage:
        """The gallery newest first, with the total that matches (what a gallery grid pages through)."""
        images, total = self.store.page(filters=filters or SearchFilters(), limit=limit, offset=offset)
        return BrowsePage(images=images, total=total, offset=offset, limit=limit)

    def _keyword(self, query: str, k: int, filters: SearchFilters) -> list[int]:
        match = fts_query(query)
        return [] if match is None else self.store.keyword_ids(match, filters=filters, k=k)

    def _page(self, ranked: list[tuple[int, float]], limit: int, offset: int, filters: SearchFilters) -> SearchPage:
        # Re-check every filter in SQLite too: the vector index may lag behind a delete or a favourite.
        allowed = self.store.filter_ids([i for i, _ in ranked], filters)
        kept = [(i, s) for i, s in ranked if i in allowed][offset : offset + limit]
        images = {image.id: image for image in self.store.get_many([i for i, _ in kept])}
        results = [SearchHit(image=images[i], score=s) for i, s in kept if i in images]
        return SearchPage(results=results, offset=offset, limit=limit)
