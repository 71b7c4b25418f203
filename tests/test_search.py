"""Search on the built-in CLIP with a real SQLite file and a real LanceDB directory."""

from __future__ import annotations

import io
import re
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sqlalchemy import update
from sqlalchemy.orm import Session

from gallery.db import open_gallery_db
from gallery.embeddings import OpenClipEmbedder, builtin_clip_dir
from gallery.files import BadImage, decode_image, encode_png
from gallery.index import LanceIndex
from gallery.indexer import Indexer
from gallery.models import ImageRow
from gallery.schemas import ImageCreate, SearchFilters
from gallery.search import GallerySearch, SearchError
from gallery.store import SqliteImageStore
from models import toyworld


@pytest.fixture(scope="module")
def embedder() -> OpenClipEmbedder:
    return OpenClipEmbedder()


class Gallery:
    def __init__(self, root: Path, embedder: OpenClipEmbedder) -> None:
        self.root = root
        self.db = open_gallery_db(root / "gallery.db")
        self.store = SqliteImageStore(self.db, root / "images")
        self.embedder = embedder
        self.open_index()

    def open_index(self) -> None:
        self.index, self.rebuilt = LanceIndex.open_or_rebuild(
            self.root / "lancedb", model_id=self.embedder.model_id, dim=self.embedder.dim
        )
        self.indexer = Indexer(engine=self.db, store=self.store, embedder=self.embedder, index=self.index)
        self.search = GallerySearch(store=self.store, embedder=self.embedder, index=self.index)

    def add(self, count: int, *, seed: int, guild: str | None = None, index: bool = True, **kw) -> list:
        images, scenes, captions = toyworld.dataset(count, scenes=toyworld.all_scenes(), seed=seed)
        items = []
        for im, caption in zip(images, captions):
            info = ImageCreate(width=64, height=64, prompt=caption, guild=guild, source="discord", seed=seed, **kw)
            items.append((info, encode_png(Image.fromarray(im), info)))
        stored = self.store.add(items)
        if index:
            self.indexer.index_images(stored)
        return list(zip(stored, scenes))


@pytest.fixture(scope="module")
def gallery(tmp_path_factory: pytest.TempPathFactory, embedder: OpenClipEmbedder) -> tuple[Gallery, list, list]:
    g = Gallery(tmp_path_factory.mktemp("gallery"), embedder)
    a = g.add(240, seed=1, guild="guild-a")
    b = g.add(120, seed=2, guild="guild-b")
    return g, a, b


def scene_of(pairs: list, image_id: int) -> toyworld.Scene:
    return {img.id: scene for img, scene in pairs}[image_id]


def test_green_triangle_finds_green_triangles(gallery) -> None:
    g, a, _b = gallery
    page = g.search.by_text(query="green triangle", limit=5, filters=SearchFilters(guild="guild-a"))
    found = [scene_of(a, hit.image.id) for hit in page.results]
    assert len(found) == 5
    assert all((s.colour, s.shape) == ("green", "triangle") for s in found), found


def test_reverse_search_returns_itself_then_its_class(gallery) -> None:
    g, a, _ = gallery
    image, scene = a[7]
    with Image.open(g.store.file_path(image)) as im:
        page = g.search.by_image(image=im.convert("RGB"), limit=4, filters=SearchFilters(guild="guild-a"))
    assert page.results[0].image.id == image.id
    assert page.results[0].score > 0.99
    same = sum(scene_of(a, h.image.id) == scene for h in page.results[1:])
    assert same >= 2, [scene_of(a, h.image.id) for h in page.results]
    similar = g.search.similar(image_id=image.id, limit=3, filters=SearchFilters(guild="guild-a"))
    assert image.id not in [h.image.id for h in similar.results]


def test_a_guild_never_sees_another_guilds_images(gallery) -> None:
    g, _a, b = gallery
    b_ids = {img.id for img, _ in b}
    for query in ["red circle", "a blue square on a white background", "star"]:
        page = g.search.by_text(query=query, limit=50, filters=SearchFilters(guild="guild-a"))
        assert page.results and not ({h.image.id for h in page.results} & b_ids)
    with Image.open(g.store.file_path(b[0][0])) as im:  # guild B's own picture, searched from guild A
        page = g.search.by_image(image=im.convert("RGB"), limit=20, filters=SearchFilters(guild="guild-a"))
    assert not ({h.image.id for h in page.results} & b_ids)
    with pytest.raises(SearchError, match="no image"):
        g.search.similar(image_id=b[0][0].id, filters=SearchFilters(guild="guild-a"))


def test_exact_words_from_a_prompt_are_found(tmp_path: Path, embedder: OpenClipEmbedder) -> None:
    g = Gallery(tmp_path, embedder)
    g.add(30, seed=3)
    (special, _), = g.add(1, seed=4, user="zed")  # fmt: skip
    with Session(g.db) as s, s.begin():
        s.execute(update(ImageRow).where(ImageRow.id == special.id).values(prompt="a zebra in the snow at dawn"))
    page = g.search.by_text(query="zebra", limit=3)
    assert page.results[0].image.id == special.id
    page = g.search.by_text(query='"snow at dawn"', limit=3)
    assert page.results[0].image.id == special.id


def test_filters_favourites_and_deleted(tmp_path: Path, embedder: OpenClipEmbedder) -> None:
    g = Gallery(tmp_path, embedder)
    pairs = g.add(20, seed=5)
    fav, gone = pairs[0][0].id, pairs[1][0].id
    with Session(g.db) as s, s.begin():
        s.execute(update(ImageRow).where(ImageRow.id == fav).values(favourite=True))
        s.execute(update(ImageRow).where(ImageRow.id == gone).values(deleted_at=datetime.now(UTC)))
    prompt = pairs[0][0].prompt  # a query that matches (words are matches whatever CLIP thinks)
    page = g.search.by_text(query=prompt, limit=50, filters=SearchFilters(favourites=True))
    assert [h.image.id for h in page.results] == [fav]
    everything = g.search.by_text(query="a shape on a background", limit=50)
    assert gone not in {h.image.id for h in everything.results}
    assert g.search.by_text(query=prompt, limit=50).results  # found without the filters below
    assert g.search.by_text(query=prompt, limit=50, filters=SearchFilters(source="cli")).results == []
    later = SearchFilters(created_after=datetime(2999, 1, 1, tzinfo=UTC))
    assert g.search.by_text(query=prompt, limit=50, filters=later).results == []


def test_bad_queries_are_clear_errors(gallery) -> None:
    g, _, _ = gallery
    with pytest.raises(SearchError, match="empty"):
        g.search.by_text(query="   ")
    with pytest.raises(SearchError, match="too long"):
        g.search.by_text(query="x" * 1001)
    with pytest.raises(SearchError, match="limit must be between 1 and 200"):
        g.search.by_text(query="x", limit=0)


def test_untrusted_image_bytes() -> None:
    good = io.BytesIO()
    Image.new("RGB", (32, 32), (1, 2, 3)).save(good, format="PNG")
    assert decode_image(good.getvalue()).size == (32, 32)
    with pytest.raises(BadImage, match="empty"):
        decode_image(b"")
    with pytest.raises(BadImage, match="not a readable image"):
        decode_image(b"this is not a picture")
    with pytest.raises(BadImage, match="not a readable image"):
        decode_image(good.getvalue()[:60])  # truncated
    bomb = io.BytesIO()
    Image.new("1", (20000, 20000)).save(bomb, format="PNG")  # tiny file, 400 megapixels
    assert len(bomb.getvalue()) < 100_000
    with pytest.raises(BadImage, match="too large"):
        decode_image(bomb.getvalue())


def test_reconcile_repairs_a_crash_between_rows_and_vectors(tmp_path: Path, embedder: OpenClipEmbedder) -> None:
    g = Gallery(tmp_path, embedder)
    indexed = g.add(10, seed=6)
    unindexed = g.add(5, seed=7, index=False)  # rows and files written, then the process died
    with Session(g.db) as s, s.begin():  # and one image was deleted while its vector stayed
        s.execute(update(ImageRow).where(ImageRow.id == indexed[0][0].id).values(deleted_at=datetime.now(UTC)))
    report = g.indexer.reconcile()
    assert (report.embedded, report.dropped) == (5, 1)
    live = {img.id for img, _ in indexed[1:] + unindexed}
    assert g.index.image_ids() == live
    assert g.indexer.reconcile().embedded == 0  # nothing left to do


def test_a_damaged_index_is_rebuilt_from_sqlite(tmp_path: Path, embedder: OpenClipEmbedder) -> None:
    g = Gallery(tmp_path, embedder)
    pairs = g.add(12, seed=8)
    for data_file in (tmp_path / "lancedb").rglob("*"):
        if data_file.is_file():
            data_file.write_bytes(b"garbage")
    g.open_index()
    assert g.rebuilt and g.index.count() == 0
    g.indexer.reconcile()
    assert g.index.image_ids() == {img.id for img, _ in pairs}


def test_a_new_clip_model_gets_its_own_vectors(tmp_path: Path, embedder: OpenClipEmbedder) -> None:
    g = Gallery(tmp_path, embedder)
    g.add(6, seed=9)
    other = OpenClipEmbedder(str(builtin_clip_dir() / "dreamhall-toy-clip.json"), None)  # same shape, random weights
    assert other.model_id != embedder.model_id
    index = LanceIndex(tmp_path / "lancedb", model_id=other.model_id, dim=other.dim)
    assert index.count() == 0  # never the old model's vectors
    Indexer(engine=g.db, store=g.store, embedder=other, index=index).reconcile()
    assert index.count() == 6 and g.index.count() == 6
    v_old = g.index.table.to_arrow().column("vector").to_pylist()[0]
    v_new = index.table.to_arrow().column("vector").to_pylist()[0]
    assert not np.allclose(v_old, v_new)


def test_nonsense_finds_nothing_and_a_quoted_phrase_is_a_promise(tmp_path: Path, embedder: OpenClipEmbedder) -> None:
    g = Gallery(tmp_path, embedder)
    g.add(30, seed=3)
    (special, _), = g.add(1, seed=4)  # fmt: skip
    with Session(g.db) as s, s.begin():
        s.execute(update(ImageRow).where(ImageRow.id == special.id).values(prompt="a zebra in the snow at dawn"))
    assert g.search.by_text(query="xyzzy plugh", limit=10).results == []
    # Before: five images came back for this phrase, four of them without it.
    assert [h.image.id for h in g.search.by_text(query='"snow at dawn"', limit=10).results] == [special.id]
    assert g.search.by_text(query='"dawn at snow"', limit=10).results == []


def test_text_and_image_scores_share_one_scale(gallery) -> None:
    g, _, _ = gallery
    text = g.search.by_text(query="green triangle", limit=10, filters=SearchFilters(guild="guild-a")).results
    scores = [h.score for h in text]
    assert scores == sorted(scores, reverse=True)
    # Prompts with every word score 1 + their cosine; CLIP-only hits their cosine, above the floor.
    for hit in text:
        words = {"green", "triangle"} <= set(re.findall(r"\w+", hit.image.prompt))
        assert (1.0 <= hit.score <= 2.0) if words else (g.search.min_score <= hit.score <= 1.0)
    with Image.open(g.store.file_path(text[0].image)) as im:
        by_image = g.search.by_image(image=im.convert("RGB"), limit=3, filters=SearchFilters(guild="guild-a"))
    assert 0.99 <= by_image.results[0].score <= 1.0001 and by_image.results[0].image.id == text[0].image.id
