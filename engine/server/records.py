"""Gallery records as the engine's clients see them: the same records, with absolute file paths."""

from __future__ import annotations

from engine.client.answers import ImageInfo, ImageRecord, SearchResult, SearchResults
from engine.client.schema import Scope
from gallery.schemas import ImagePublic, SearchFilters
from gallery.search import SearchHit, SearchPage
from gallery.store import ImageNotFound, ImageStore


def image_record(image: ImagePublic, store: ImageStore) -> ImageRecord:
    """The whole record; `path` is absolute, for frontends on this machine."""
    return ImageRecord.model_validate(image.model_dump() | {"path": str(store.file_path(image))})


def image_info(image: ImagePublic, store: ImageStore) -> ImageInfo:
    """The short form a job's `image` events carry."""
    terms = image.params.get("with_variations") or []
    variation_seed = terms[-1].get("seed") if terms and isinstance(terms[-1], dict) else None
    path = str(store.file_path(image))
    return ImageInfo.model_validate(
        image.model_dump() | {"path": path, "seed": image.seed or 0, "variation_seed": variation_seed}
    )


def search_results(
    page: SearchPage, store: ImageStore, *, stacks_within: SearchFilters | None = None, limit: int | None = None
) -> SearchResults:
    """The page as clients see it; with `stacks_within`, one hit per stack (the best), sized within those filters,
    cut to `limit`."""
    hits, sizes = page.results, {}
    if stacks_within is not None:
        firsts: dict[str, SearchHit] = {}
        for hit in hits:
            firsts.setdefault(hit.image.stack_key or f"id:{hit.image.id}", hit)
        hits = list(firsts.values())[: limit or page.limit]
        sizes = store.stack_sizes([h.image for h in hits], stacks_within)
    results = [SearchResult(image=image_record(h.image, store).model_copy(update={"stack_size": sizes.get(h.image.id)}),
                            score=h.score) for h in hits]  # fmt: skip
    return SearchResults(results=results, offset=page.offset, limit=limit or page.limit)


def scoped_image(store: ImageStore, image_id: int, scope: Scope) -> ImagePublic:
    """An image, if the requester's scope (a guild, or a DM user) may see it; else as if it did not exist."""
    image = store.get(image_id)
    if not scope.allows(image):
        raise ImageNotFound(f"image {image_id} is not in this server's gallery")
    return image
