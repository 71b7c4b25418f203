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
from gallery.index import IndexRow, LanceIndex
from gallery.indexer import Indexer
from gallery.models import ImageRow
from gallery.schemas import ImageCreate, ReconcileReport, SearchFilters, VectorFilters
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


def test_the_starts_quick_check_finds_what_a_crash_left_even_at_the_same_count(
    tmp_path: Path, embedder: OpenClipEmbedder
) -> None:
    g = Gallery(tmp_path, embedder)
    pairs = g.add(8, seed=10)
    assert g.indexer.reconcile(quick=True) == ReconcileReport()  # the two sides agree: nothing to do
    # One image's vector never written, and a deleted image's vector left behind: the counts still agree.
    unindexed, deleted = pairs[0][0], pairs[1][0]
    g.index.delete([unindexed.id])
    with Session(g.db) as s, s.begin():
        s.execute(update(ImageRow).where(ImageRow.id == deleted.id).values(deleted_at=datetime.now(UTC)))
    assert g.index.count() == len(g.store.live_ids())
    report = g.indexer.reconcile(quick=True)
    assert (report.embedded, report.dropped) == (1, 1)
    assert g.index.image_ids() == g.store.live_ids() == {img.id for img, _ in pairs} - {deleted.id}


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
    v_old = g.index.to_arrow().sort_by("image_id").column("vector").to_pylist()[0]
    v_new = index.to_arrow().sort_by("image_id").column("vector").to_pylist()[0]
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


class Counting:
    """The real object, with a count of the calls to one of its methods."""

    def __init__(self, inner, method: str) -> None:
        self.inner, self.method, self.calls = inner, method, 0

    def __getattr__(self, name: str):
        attr = getattr(self.inner, name)
        if name != self.method:
            return attr

        def counted(*args, **kwargs):
            self.calls += 1
            return attr(*args, **kwargs)

        return counted


def test_keyword_hits_that_fill_the_page_skip_the_vector_query_and_rank_the_same(gallery) -> None:
    g, _, _ = gallery
    index, embedder = Counting(g.index, "search"), Counting(g.embedder, "embed_texts_soon")
    search = GallerySearch(store=g.store, embedder=embedder, index=index)
    guild_a = SearchFilters(guild="guild-a")
    # Deep enough that the vector query runs: its ranking, keyword hits and CLIP-only hits together.
    full = [(h.image.id, h.score) for h in search.by_text(query="star", limit=200, filters=guild_a).results]
    assert index.calls == 1 and any(s < 1.0 for _, s in full) and sum(s >= 1.0 for _, s in full) >= 8
    page = search.by_text(query="star", limit=4, offset=2, filters=guild_a)
    assert index.calls == 1  # four keyword hits from the third on: CLIP-only hits could not reach them
    assert [(h.image.id, h.score) for h in page.results] == full[2:6]
    # The words were embedded once: the same words again (the next page, here) reuse the vector.
    assert embedder.calls == 1
    assert search.by_text(query="xyzzy plugh", limit=5, filters=guild_a).results == []
    assert index.calls == 2 and embedder.calls == 2  # no keyword hit: CLIP alone decides


def unit_rows(rng: np.random.Generator, n: int, dim: int = 64) -> np.ndarray:
    v = rng.standard_normal((n, dim)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def index_rows(vectors: np.ndarray, guilds: list[str | None], first_id: int = 0) -> list[IndexRow]:
    now = datetime.now(UTC)
    return [IndexRow(image_id=first_id + i, vector=v.tolist(), guild=g, user=f"u{i % 3}", source="discord",
                     created_at=now) for i, (v, g) in enumerate(zip(vectors, guilds))]  # fmt: skip


def test_each_guild_has_a_table_of_its_own_and_a_search_reads_only_its_scope(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    vectors = unit_rows(rng, 90)
    guilds = ["a", "b", None] * 30
    index = LanceIndex(tmp_path / "lancedb", model_id="test-clip", dim=64)
    index.add(index_rows(vectors, guilds))
    assert index.count() == 90
    tables = set(index.db.list_tables().tables)
    assert {index.shard_name("a"), index.shard_name("b"), index.shard_name(None)} == tables
    query = vectors[4]  # guild b's image 4
    for guild in ("a", "b"):
        hits = index.search(query, k=10, filters=VectorFilters(guild=guild))
        assert len(hits) == 10 and all(guilds[h.image_id] == guild for h in hits)
        exact = sorted((i for i, g in enumerate(guilds) if g == guild), key=lambda i: -float(vectors[i] @ query))
        assert [h.image_id for h in hits] == exact[:10]
    assert index.search(query, k=5, filters=VectorFilters(guild="nobody")) == []
    dm = index.search(query, k=30, filters=VectorFilters(dm_of="u2"))
    assert dm and all(guilds[h.image_id] is None and h.image_id % 3 == 2 for h in dm)
    # No guild: every table, merged best first.
    everywhere = index.search(query, k=10)
    assert [h.image_id for h in everywhere] == sorted(range(90), key=lambda i: -float(vectors[i] @ query))[:10]
    index.delete([4, 5, 6])
    assert index.count() == 87 and not index.present([4, 5, 6]) and index.present([7]) == {7}
    # Small shards are searched from memory: kept in step with deletes and adds.
    assert 4 not in {h.image_id for h in index.search(query, k=10, filters=VectorFilters(guild="b"))}
    index.add(index_rows(query[None, :], ["a"], first_id=1000))
    assert index.search(query, k=1, filters=VectorFilters(guild="a"))[0].image_id == 1000
    # Exact scores of given images (keyword hits), looked up in the guild's own table only.
    exact = {i: float(vectors[i] @ query) for i in (7, 10)}  # guild b's 7 and 10
    for scored in (index.scores(query, [7, 10], filters=VectorFilters(guild="b")), index.scores(query, [7, 10])):
        assert scored.keys() == exact.keys() and all(scored[i] == pytest.approx(exact[i], abs=1e-4) for i in exact)
    assert index.scores(query, [7, 9], filters=VectorFilters(guild="a")) == {
        9: pytest.approx(float(vectors[9] @ query), abs=1e-4)
    }


def test_present_sees_the_buffer_memory_and_disk_without_flushing(tmp_path: Path) -> None:
    # `present` guards every write against a second vector for an image; it must not flush the
    # write-behind buffer (that made every job write LanceDB) and must still see every copy.
    rng = np.random.default_rng(4)
    index = LanceIndex(tmp_path / "lancedb", model_id="test-clip", dim=64)
    index.add(index_rows(unit_rows(rng, 6), ["a", "b", None] * 2))
    index.flush()
    index.search(unit_rows(rng, 1)[0], k=3, filters=VectorFilters(guild="a"))  # guild a's shard now in memory
    index.add(index_rows(unit_rows(rng, 2), ["a", None], first_id=10))  # buffered
    versions = index.versions()
    assert index.present([0, 1, 2, 10, 11, 99]) == {0, 1, 2, 10, 11}  # memory (a), disk (b, none), buffer
    assert index.versions() == versions and len(index._pending) == 2  # nothing was written to answer
    index.delete([1])
    assert index.present([1, 0]) == {0}
    reopened = LanceIndex(tmp_path / "lancedb", model_id="test-clip", dim=64)  # nothing in memory: disk only
    assert reopened.present([0, 1, 2, 3]) == {0, 2, 3}
    assert reopened.present([0, 1, 2, 3], guilds={"a"}) == {0, 3}  # only where a writer's images can be
    assert reopened.present([0, 1, 2, 3], guilds={None, "a"}) == {0, 2, 3}
    # A delete whose guilds are known writes (commits) only their tables.
    versions = {name: len(shard.table.list_versions()) for name, shard in reopened._shards.items()}
    reopened.delete([3], guilds={"a"})
    after = {name: len(shard.table.list_versions()) for name, shard in reopened._shards.items()}
    assert [name for name in versions if after[name] != versions[name]] == [reopened.shard_name("a")]
    assert reopened.present([0, 2, 3]) == {0, 2}


def test_a_big_shard_looks_ids_up_by_an_index(tmp_path: Path) -> None:
    # Past the threshold a shard is not in memory: keyword hits' scores and `present` look ids up in a
    # BTREE on image_id (they scanned the whole table: 160 ms at 100k rows), also on a shard built before it.
    rng = np.random.default_rng(5)
    vectors = unit_rows(rng, 300)
    index = LanceIndex(tmp_path / "lancedb", model_id="test-clip", dim=64, ann_threshold=200)
    index.add(index_rows(vectors, ["big"] * 300))
    index.build_ann_index()
    shard = index._shards[index.shard_name("big")]
    assert shard.has_ann and shard.has_id_index
    scored = index.scores(vectors[3], [3, 250, 999], filters=VectorFilters(guild="big"))
    assert scored.keys() == {3, 250} and scored[3] == pytest.approx(1.0, abs=1e-4)
    assert index.present([3, 250, 999], guilds={"big"}) == {3, 250}
    shard.table.drop_index(next(i.name for i in shard.table.list_indices() if i.columns == ["image_id"]))
    reopened = LanceIndex(tmp_path / "lancedb", model_id="test-clip", dim=64, ann_threshold=200)
    assert not reopened._shards[index.shard_name("big")].has_id_index
    reopened.optimize()
    assert reopened._shards[index.shard_name("big")].has_id_index


def test_an_index_of_one_table_is_split_by_guild_once(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    vectors = unit_rows(rng, 40)
    guilds = ["a", None, "b", "a"] * 10
    index = LanceIndex(tmp_path / "lancedb", model_id="test-clip", dim=64)
    # The layout before shards: every vector in one table named after the CLIP model.
    index.db.create_table(index.table_name, index._arrow(index_rows(vectors, guilds)))
    index._shard("a").table.add(index._arrow(index_rows(vectors[:2], ["a", "a"])))  # a split cut short
    split = LanceIndex(tmp_path / "lancedb", model_id="test-clip", dim=64)
    assert index.table_name not in split.db.list_tables().tables
    assert split.count() == 40 and split.image_ids() == set(range(40))
    hits = split.search(vectors[0], k=3, filters=VectorFilters(guild="a"))
    assert hits[0].image_id == 0 and all(guilds[h.image_id] == "a" for h in hits)
    assert LanceIndex(tmp_path / "lancedb", model_id="test-clip", dim=64).count() == 40, "reopened: still 40"


def test_a_shard_past_the_threshold_gets_an_ann_index_and_still_finds_its_nearest(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    vectors = unit_rows(rng, 600)
    index = LanceIndex(tmp_path / "lancedb", model_id="test-clip", dim=64, ann_threshold=500, flush_rows=100,
                       optimize_every=3)  # fmt: skip
    index.add(index_rows(vectors[:300], ["big"] * 300) + index_rows(vectors[300:], [None] * 300, first_id=300))
    index.flush()
    index.optimize()
    assert not index.has_ann_index()
    index.add(index_rows(unit_rows(rng, 300), ["big"] * 300, first_id=600))
    index.optimize()
    shards = {name: shard.has_ann for name, shard in index._shards.items()}
    assert shards == {index.shard_name("big"): True, index.shard_name(None): False}
    hits = index.search(vectors[7], k=5, filters=VectorFilters(guild="big"))
    assert hits[0].image_id == 7 and hits[0].score == pytest.approx(1.0, abs=0.02)
    deep = index.search(vectors[7], k=index.ef + 100, filters=VectorFilters(guild="big"))  # past HNSW's ef
    assert len(deep) == index.ef + 100 and deep[0].image_id == 7


def test_the_text_tower_stops_at_the_end_token_with_the_same_vector() -> None:
    """CLIP's causal text transformer pools at the end token: running it only that far gives the same vector
    (the built-in CLIP and a random-weight ViT-B-32), for short, empty and over-long texts in one batch."""
    import open_clip
    import torch

    from gallery.embeddings import OpenClipEmbedder, encode_text_to_end

    texts = ["a red circle on a blue background", "", "fox", "a very long prompt about many things " * 12]
    builtin = OpenClipEmbedder()
    vit = open_clip.create_model("ViT-B-32").eval()
    for model, tokenizer in ((builtin.model, builtin.tokenizer), (vit, open_clip.get_tokenizer("ViT-B-32"))):
        tokens = tokenizer(texts)
        with torch.inference_mode():
            full, short = model.encode_text(tokens), encode_text_to_end(model, tokens)
        assert torch.nn.functional.cosine_similarity(full, short).min().item() >= 1 - 1e-5
        with torch.inference_mode():  # a lone short text really runs a short sequence (not all 77 positions)
            ran: list[int] = []
            hook = model.transformer.register_forward_hook(lambda _m, args, _o, ran=ran: ran.append(args[0].shape[1]))
            encode_text_to_end(model, tokenizer(["fox"]))
            hook.remove()
        assert ran and ran[0] < 8


def test_a_search_narrowed_by_a_frequent_tag_ranks_as_ranking_the_narrowed_set_does(gallery, monkeypatch) -> None:
    from sqlalchemy import text

    g, a, _ = gallery
    search = GallerySearch(store=g.store, embedder=g.embedder, index=g.index)
    within = Counting(search, "_within")  # the narrowed set's own ranking
    monkeypatch.setattr(search, "_within", within.__getattr__("_within"))
    frequent = SearchFilters(guild="guild-a", tags=["source:discord"])  # every image of the guild has it
    fast = search.by_text(query="green triangle", limit=10, filters=frequent)
    assert within.calls == 0 and len(fast.results) == 10
    vector = g.embedder.embed_texts(["green triangle"])[0]
    for query in ("green triangle", "green triangle fox"):  # keyword hits fill the page; CLIP alone does
        slow = search._within(query, g.embedder.embed_texts([query])[0], 10, 0, frequent, depth=50)
        full = GallerySearch(store=g.store, embedder=g.embedder, index=g.index)
        ranked = full.by_text(query=query, limit=10, filters=frequent)
        assert [(h.image.id, round(h.score, 4)) for h in ranked.results] == [
            (h.image.id, round(h.score, 4)) for h in slow.results
        ]
    assert [h.image.id for h in fast.results] == [h.image.id for h in search._within(
        "green triangle", vector, 10, 0, frequent, depth=50).results]  # fmt: skip
    within.calls = 0
    rare = [img.id for img, _ in a if "green triangle" in img.prompt][:2]
    assert len(rare) == 2
    with g.db.begin() as conn:  # a person's tag on two images only: the deep search cannot fill a page
        conn.execute(text("INSERT INTO image_tags (image_id, tag, auto) VALUES (:i, 'rare-one', 0)"),
                     [{"i": i} for i in rare])  # fmt: skip
    rare_one = SearchFilters(guild="guild-a", tags=["rare-one"])
    found = search.by_text(query="green triangle", limit=10, filters=rare_one)
    # the deep search saw all there was (its keyword hits and CLIP's above the floor ran out before its depth): it
    # answers, and the narrowed set is not ranked again (at a million images that second look cost ~200 ms)
    assert within.calls == 0 and sorted(h.image.id for h in found.results) == sorted(rare)
    # when the deep search's depth was full of hits above the floor, more may lie beyond it: the narrowed set's own
    # ranking looks (here every cosine counts, and the depth is 50)
    monkeypatch.setattr("gallery.search.FILTERED_DEPTH", 50)
    search.min_score = -1.0
    found = search.by_text(query="green triangle", limit=10, filters=rare_one)
    assert within.calls == 1 and set(rare) <= {h.image.id for h in found.results}


def test_a_search_embeds_its_text_without_waiting_for_the_worker_s_step(embedder: OpenClipEmbedder) -> None:
    """A step of a real model on a CPU takes seconds: a search's text embedding runs beside it, and leaves the
    worker's torch threads as they were."""
    import threading

    import torch

    from engine.device.worker import TorchThread, WorkerEmbedder

    thread = TorchThread()
    thread.start()
    threads = thread.call(torch.get_num_threads)
    in_step, release = threading.Event(), threading.Event()

    def a_long_step() -> int:
        torch.zeros(1).add_(1)  # the worker has run torch before (it loads the models)
        in_step.set()
        release.wait(120)
        return torch.get_num_threads()

    worker = WorkerEmbedder(embedder, thread)
    try:
        thread.loop(lambda: False)
        step = threading.Thread(target=lambda: results.append(thread.call(a_long_step)))
        results: list[int] = []
        step.start()
        assert in_step.wait(30)
        got: list[np.ndarray] = []
        search = threading.Thread(target=lambda: got.append(worker.embed_texts(["a green triangle"])))
        search.start()
        search.join(30)
        assert got, "the search waited for the worker's step"  # answered while the worker's thread is in its step
        vector = got[0]
        assert vector.shape == (1, embedder.dim)
        assert np.allclose(vector, embedder.embed_texts(["a green triangle"]), atol=1e-5)
        release.set()
        step.join(30)
        assert results == [threads]  # the worker keeps its torch threads
    finally:
        release.set()
        thread.stop(timeout=30)


def test_on_a_cpu_search_texts_move_to_a_process_of_their_own_and_come_back_if_it_dies(
    embedder: OpenClipEmbedder, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first search starts the process (and is answered here meanwhile); then the words go there, with the
    vectors the engine's own thread makes; if it dies, searches are answered here again, and say so in the log."""
    import os
    import signal

    from engine.device.worker import TorchThread, WorkerEmbedder

    thread = TorchThread()
    thread.start()
    worker = WorkerEmbedder(embedder, thread, text_process=True)
    words = ["a green triangle", "a red circle on a blue background"]
    try:
        here = embedder.embed_texts(words)
        in_engine: list[list[str]] = []
        monkeypatch.setattr(embedder, "embed_texts", lambda texts: in_engine.append(texts) or here)
        first = worker.embed_texts(words)  # starts the process, answered here
        assert worker._started is not None
        worker._started.join(120)
        process = worker._process
        assert process is not None and process.pid not in (None, os.getpid())
        there = worker.embed_texts(words)
        assert in_engine == [words]  # the second went to the process
        assert np.array_equal(first, here)
        assert np.allclose(there, here, atol=1e-5) and (there * here).sum(axis=1).min() > 1 - 1e-5
        assert worker._process is process  # still there: it answered
        os.kill(process.pid, signal.SIGKILL)  # type: ignore[arg-type]
        with caplog.at_level("WARNING"):
            again = worker.embed_texts(words)
        assert np.array_equal(again, here) and worker._process is None and in_engine == [words, words]
        assert "the search's CLIP process stopped" in caplog.text
    finally:
        worker.close()
        thread.stop(timeout=30)


def test_search_texts_run_a_bf16_text_tower_with_fp32_s_vectors_and_images_keep_fp32() -> None:
    """On a CPU that computes bf16, a search's words run a bf16 copy of the text tower (half the bytes to read):
    its vectors stay within 2e-4 cosine of the fp32 tower's (the built-in CLIP and a random-weight ViT-B-32), and
    the image tower, whose vectors the gallery stores, stays fp32."""
    import torch

    from gallery.embeddings import _native_bf16

    if not _native_bf16():
        pytest.skip("this CPU has no native bf16: the text tower stays fp32")
    texts = ["a red circle on a blue background", "", "fox", "a very long prompt about many things " * 12]
    torch.manual_seed(0)  # the random ViT-B-32's weights: one draw (12 draws: 9e-5 from fp32 at worst)
    for model in (OpenClipEmbedder(), OpenClipEmbedder("ViT-B-32", None)):
        assert next(model.text_model.parameters()).dtype == torch.bfloat16
        assert next(model.model.visual.parameters()).dtype == torch.float32
        with torch.inference_mode():
            exact = torch.nn.functional.normalize(model.model.encode_text(model.tokenizer(texts)), dim=-1).numpy()
        got = model.embed_texts(texts)
        assert got.dtype == np.float32
        assert (got * exact).sum(axis=1).min() >= 1 - 2e-4


def test_a_search_reads_its_keyword_hits_while_its_text_is_embedded(gallery) -> None:
    """The text's embedding (CLIP, the most of a first-time search) and SQLite's keyword query with the hits'
    vectors run at the same time: the search asks for the vector only after reading them."""
    from concurrent.futures import Future

    g, _, _ = gallery

    class Later(OpenClipEmbedder):
        def __init__(self, inner: OpenClipEmbedder) -> None:
            self.__dict__.update(inner.__dict__)
            self.pending: list[Future] = []

        def embed_texts_soon(self, texts: list[str]) -> Future:
            self.pending.append(Future())
            self.texts = texts
            return self.pending[-1]

    class Watched(SqliteImageStore):
        def keyword_ids(self, match, *, filters, k):
            seen.append(("keywords", embedder.pending[-1].done()))
            return super().keyword_ids(match, filters=filters, k=k)

    class WatchedIndex(LanceIndex):
        def vectors(self, image_ids, *, filters=None):
            seen.append(("vectors", embedder.pending[-1].done()))
            answer = super().vectors(image_ids, filters=filters)
            embedder.pending[-1].set_result(g.embedder.embed_texts(embedder.texts))  # CLIP finishes now
            return answer

    seen: list[tuple[str, bool]] = []
    embedder = Later(g.embedder)
    store = Watched(g.db, g.root / "images")
    index = WatchedIndex(g.root / "lancedb", model_id=g.embedder.model_id, dim=g.embedder.dim)
    found = GallerySearch(store=store, embedder=embedder, index=index).by_text(query="green triangle", limit=5)
    assert seen == [("keywords", False), ("vectors", False)]
    assert found.results and all("green triangle" in h.image.prompt for h in found.results)
    assert [h.image.id for h in found.results] == [
        h.image.id for h in g.search.by_text(query="green triangle", limit=5).results
    ]


def test_a_failed_text_embedding_is_not_remembered(gallery) -> None:
    g, _, _ = gallery
    failures = [RuntimeError("CLIP fell over")]

    class Flaky(OpenClipEmbedder):
        def __init__(self, inner: OpenClipEmbedder) -> None:
            self.__dict__.update(inner.__dict__)

        def embed_texts(self, texts: list[str]) -> np.ndarray:
            if failures:
                raise failures.pop()
            return super().embed_texts(texts)

    search = GallerySearch(store=g.store, embedder=Flaky(g.embedder), index=g.index)
    with pytest.raises(RuntimeError):
        search.by_text(query="green triangle", limit=5)
    assert search.by_text(query="green triangle", limit=5).results  # asked again, not the remembered failure


def test_reading_the_index_ahead_queries_each_ann_shard_once_and_changes_no_answer(tmp_path: Path) -> None:
    """After a start, each shard with an ANN index is queried once in the background (its first query opens the
    index: 0.2-0.6 s at 100,000 vectors), so that no user's first search pays for it; small shards, searched in
    memory, are left alone."""
    rng = np.random.default_rng(5)
    vectors = unit_rows(rng, 700)
    index = LanceIndex(tmp_path / "lancedb", model_id="test-clip", dim=64, ann_threshold=500)
    index.add(index_rows(vectors[:600], ["big"] * 600) + index_rows(vectors[600:], ["small"] * 100, first_id=600))
    index.flush()
    index.build_ann_index()
    before = index.search(vectors[9], k=5, filters=VectorFilters(guild="big"))
    reopened = LanceIndex(tmp_path / "lancedb", model_id="test-clip", dim=64, ann_threshold=500)
    asked: list[str] = []
    for name, shard in reopened._shards.items():
        shard.table.search = lambda *a, _ask=shard.table.search, _name=name, **kw: asked.append(_name) or _ask(*a, **kw)
    reopened.warm()
    assert asked == [reopened.shard_name("big")]
    assert reopened.search(vectors[9], k=5, filters=VectorFilters(guild="big")) == before


def test_the_worker_s_thread_yields_the_cores_to_a_search() -> None:
    """The denoising thread (and the OpenMP team it starts) runs at a lower CPU priority than the engine's other
    threads: a search's few milliseconds of CLIP take the cores from a step, not the other way round."""
    import os
    import threading

    from engine.device.worker import WORKER_NICE, TorchThread

    if not hasattr(os, "setpriority"):
        pytest.skip("no per-thread priorities on this platform")
    thread = TorchThread()
    thread.start()
    try:
        worker = thread.call(threading.get_native_id)
        assert os.getpriority(os.PRIO_PROCESS, worker) == min(19, os.getpriority(os.PRIO_PROCESS, 0) + WORKER_NICE)
    finally:
        thread.stop(timeout=30)
