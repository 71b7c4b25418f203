"""Lexica-style search: by words, by an image, or by an image already in the gallery.

One score scale for every search: the CLIP cosine similarity between the query
(text or picture) and the image, -1..1, plus 1 when the image's prompt
contains every word of a text query (SQLite FTS5). So images whose prompts say
what was asked come first, then what CLIP finds alike; CLIP-only hits must
reach the relevance floor (`min_score`), and a text that matches nothing says
so instead of returning the nearest noise. A quoted phrase must appear in the
prompt. Filters, tenant isolation by guild above all, are part of every query. This module only
ranks and fuses: rows come from the `ImageStore`, vectors from the `VectorIndex`.
"""

from __future__ import annotations

import functools
import re
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING

from PIL import Image
from pydantic import BaseModel

from gallery.schemas import ImagePublic, SearchFilters, VectorHit
from gallery.store import GalleryError, ImageStore
from gallery.tags import tag_of, unique

if TYPE_CHECKING:  # torch and LanceDB load with the engine's backend, not with whoever imports this
    import numpy as np

    from gallery.embeddings import Embedder
    from gallery.index import VectorIndex

MAX_QUERY_CHARS = 1000
MAX_LIMIT = 200
SQLITE_CANDIDATES = 10_000  # a tag or board narrows a text search to at most this many newest images first
FILTERED_DEPTH = 400  # how deep a search narrowed by tags or a board looks before ranking the narrowed set itself
KEYWORD_BONUS = 1.0  # above any cosine: a prompt that says every word of the query outranks CLIP alone
# Searches repeat (the same words again, the next page, a Discord channel's favourite query), and a CLIP
# text embedding costs more than the rest of a search on a CPU (ViT-B-32: ~57 ms against ~15).
TEXT_VECTORS_CACHED = 1024
SEARCHES_BESIDE = 4  # vector queries run beside their searches' keyword vectors at once (threads)


class SearchError(GalleryError):
    """A search that cannot be run as asked; the message says what to fix."""


class SearchHit(BaseModel):
    image: ImagePublic
    score: float


class SearchPage(BaseModel):
    results: list[SearchHit]
    offset: int
    limit: int


def split_tags(query: str) -> tuple[str, list[str], int | None]:
    """`tag:NAME` and `derived_from:ID` words out of a search text: the rest, the tags (as gallery.tags spells them)
    and the image the results must be made from."""
    tags = [tag_of(t) for t in re.findall(r"(?:^|\s)tag:(\S+)", query)]
    origins = re.findall(r"(?:^|\s)derived_from:#?([0-9]{1,18})\b", query)
    rest = re.sub(r"(?:^|\s)(?:tag:\S+|derived_from:#?[0-9]{1,18}\b)", " ", query).strip()
    return rest, tags, int(origins[-1]) if origins else None


def phrases_of(query: str) -> list[str]:
    return [p.strip() for p in re.findall(r'"([^"]+)"', query) if p.strip()]


def fts_terms(query: str, *, only_phrases: bool = False) -> list[str]:
    """FTS5 terms for free text: every word and every quoted phrase must be in the prompt."""
    terms = [f'"{p.replace(chr(34), "")}"' for p in phrases_of(query)]
    if not only_phrases:
        terms += [f'"{w}"' for w in re.findall(r"\w+", re.sub(r'"[^"]*"', " ", query))]
    return terms


class GallerySearch:
    """Search over the gallery's images, their prompts and their CLIP vectors."""

    def __init__(self, *, store: ImageStore, embedder: Embedder, index: VectorIndex, min_score: float | None = None):
        self.store = store
        self.embedder = embedder
        self.index = index
        # CLIP-only hits below this cosine are noise, not matches (calibrated per CLIP model; see Embedder).
        self.min_score = embedder.relevance_floor if min_score is None else min_score
        self._text_vector = functools.lru_cache(maxsize=TEXT_VECTORS_CACHED)(self._embed_text)
        # A search's vector query beside its keyword hits' vectors: both mostly wait on LanceDB's own threads.
        self._beside = ThreadPoolExecutor(SEARCHES_BESIDE, thread_name_prefix="dreamhall-search")

    def _embed_text(self, query: str) -> Future[np.ndarray]:
        return self.embedder.embed_texts_soon([query])

    def _vector(self, pending: Future[np.ndarray]) -> np.ndarray:
        try:
            rows = pending.result()
        except Exception:
            self._text_vector.cache_clear()  # a failed embedding is not remembered
            raise
        rows.flags.writeable = False  # shared by every search for the same words
        return rows[0]

    def by_text(
        self, *, query: str, limit: int = 20, offset: int = 0, filters: SearchFilters | None = None,
        nearest: bool = False,
    ) -> SearchPage:  # fmt: skip
        """Images by words: prompt keywords and CLIP above the relevance floor; `nearest`: by CLIP alone, however
        far (the closest the gallery has, e.g. while a job waits)."""
        query = query.strip()
        if not query:
            raise SearchError("the search text is empty")
        if len(query) > MAX_QUERY_CHARS:
            raise SearchError(f"the search text is too long ({len(query)} characters; at most {MAX_QUERY_CHARS})")
        filters = filters or SearchFilters()
        query, tags, origin = split_tags(query)  # `tag:portrait`, `derived_from:42` in the search box are filters
        if tags:
            filters = filters.model_copy(update={"tags": unique([*filters.tags, *tags])})
        if origin is not None:
            filters = filters.model_copy(update={"derived_from": origin})
        depth = self._depth(limit, offset)
        if not query:  # tags alone: the newest images that have them
            images, _ = self.store.page(filters=filters, limit=limit, offset=offset)
            return SearchPage(results=[SearchHit(image=i, score=1.0) for i in images], offset=offset, limit=limit)
        # The text is embedded (on the embedder's own thread in the engine) while SQLite finds the keyword hits.
        pending = self._text_vector(query)
        if nearest:
            hits = self.index.search(self._vector(pending), k=depth, filters=filters.vector_filters())
            return self._page([(h.image_id, h.score) for h in hits], limit, offset, filters)
        if filters.sqlite_only:
            # Tags, a board, a rating: first the ordinary search a few times deeper, its hits checked in SQLite. A
            # frequent tag fills the page from there (the best-scoring images that have it, as the vector index
            # ranks everything); a rare one does not, and then what SQLite lets through is ranked by CLIP and words.
            page, exhausted = self._ranked(query, pending, limit, offset, filters, depth=max(depth, FILTERED_DEPTH))
            if len(page.results) == limit or exhausted:
                return page
            return self._within(query, self._vector(pending), limit, offset, filters, depth=depth)
        return self._ranked(query, pending, limit, offset, filters, depth=depth)[0]

    def _ranked(self, query: str, pending: Future[np.ndarray], limit: int, offset: int, filters: SearchFilters, *,
                depth: int) -> tuple[SearchPage, bool]:  # fmt: skip
        """Keyword hits (ranked above CLIP by their bonus) and CLIP's nearest `depth` above the relevance floor; and
        whether that was all there is (fewer keyword hits than `depth`, and CLIP's ran below the floor before
        `depth`): then a deeper look at what SQLite-only filters let through finds nothing more."""
        keyword = self.store.keyword_ids(fts_terms(query), filters=filters, k=depth)
        exhausted = len(keyword) < depth
        nearest: Future[list[VectorHit]] | None = None
        if keyword and len(keyword) < offset + limit:  # they cannot fill the page: CLIP's nearest, meanwhile
            nearest = self._beside.submit(lambda: self.index.search(self._vector(pending), k=depth,
                                                                    filters=filters.vector_filters()))  # fmt: skip
        found = self.index.vectors(keyword, filters=filters.vector_filters()) if keyword else None
        vector = self._vector(pending)
        # Keyword hits are ranked by their own cosine, even below the floor: the prompt says it.
        cosines = self.index.cosines(vector, *found) if found is not None else {}
        scores = {i: cosines.get(i, 0.0) + KEYWORD_BONUS for i in keyword}
        # A CLIP-only hit scores at most 1 (a cosine): when keyword hits at or above that fill the page,
        # the vector query cannot change it (at 1M images it is most of a search's time after CLIP).
        if nearest is not None or sum(s >= KEYWORD_BONUS for s in scores.values()) < offset + limit:
            hits = (
                nearest.result()
                if nearest is not None
                else self.index.search(vector, k=depth, filters=filters.vector_filters())
            )
            clip_only = {h.image_id: h.score for h in hits if h.score >= self.min_score}
            scores = clip_only | scores
            exhausted = exhausted and len(clip_only) < depth
        ranked = sorted(self._promised(query, scores, filters, depth).items(), key=lambda kv: -kv[1])
        return self._page(ranked, limit, offset, filters), exhausted

    def _within(self, query: str, vector: np.ndarray, limit: int, offset: int, filters: SearchFilters, *,
                depth: int) -> SearchPage:  # fmt: skip
        """A text search among the images that SQLite-only filters let through (the newest SQLITE_CANDIDATES): the
        vector index looks among their ids, first the keyword hits' (ranked above CLIP alone), then all of them."""
        where = filters.vector_filters()
        keyword = self.store.keyword_ids(fts_terms(query), filters=filters, k=SQLITE_CANDIDATES)
        best = self.index.search(vector, k=depth, filters=where, among=keyword) if keyword else []
        scores = {h.image_id: h.score + KEYWORD_BONUS for h in best}
        if len(best) < depth:  # every keyword hit counts, one without a vector yet too (after those with one)
            scores |= {i: KEYWORD_BONUS for i in keyword if i not in scores}
        if len(scores) < offset + limit:
            ids = self.store.newest_ids(filters, SQLITE_CANDIDATES)
            hits = self.index.search(vector, k=depth, filters=where, among=ids)
            scores = {h.image_id: h.score for h in hits if h.score >= self.min_score} | scores
        ranked = sorted(self._promised(query, scores, filters, depth).items(), key=lambda kv: -kv[1])
        return self._page(ranked, limit, offset, filters)

    def _promised(self, query: str, scores: dict[int, float], filters: SearchFilters, depth: int) -> dict[int, float]:
        """A quoted phrase is a promise: only the images whose prompts contain it."""
        phrases = fts_terms(query, only_phrases=True)
        if not phrases:
            return scores
        allowed = set(self.store.keyword_ids(phrases, filters=filters, k=max(depth, 10_000)))
        return {i: s for i, s in scores.items() if i in allowed}

    def by_image(self, *, image: Image.Image, limit: int = 20, offset: int = 0,
                 filters: SearchFilters | None = None, exclude: int | None = None) -> SearchPage:  # fmt: skip
        filters = filters or SearchFilters()
        vector = self.embedder.embed_images([image])[0]
        hits = self.index.search(vector, k=self._depth(limit, offset) + 1, filters=filters.vector_filters())
        ranked = [(h.image_id, h.score) for h in hits if h.image_id != exclude and h.score >= self.min_score]
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

    def _page(self, ranked: list[tuple[int, float]], limit: int, offset: int, filters: SearchFilters) -> SearchPage:
        # Re-check every filter in SQLite too: the vector index may lag behind a delete or a favourite.
        allowed = self.store.filter_ids([i for i, _ in ranked], filters)
        kept = [(i, s) for i, s in ranked if i in allowed][offset : offset + limit]
        images = {image.id: image for image in self.store.get_many([i for i, _ in kept])}
        results = [SearchHit(image=images[i], score=s) for i, s in kept if i in images]
        return SearchPage(results=results, offset=offset, limit=limit)
