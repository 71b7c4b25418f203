"""Gallery storage on a real SQLite file: PNG metadata, content addressing, migrations."""

from __future__ import annotations

import json
from pathlib import Path

from PIL import Image
from sqlalchemy import inspect, text

from gallery.db import connect, downgrade, open_gallery_db, upgrade
from gallery.files import a1111_parameters, encode_png, read_text_chunks
from gallery.schemas import ImageCreate, SearchFilters
from gallery.store import SqliteImageStore


def info(**kw) -> ImageCreate:
    base = dict(width=64, height=64, seed=123, prompt="a red circle", steps=20, sampler="Euler a", cfg_scale=7.0,
                model="toy", params={"prompt": "a red circle", "seed": 123})  # fmt: skip
    return ImageCreate(**{**base, **kw})


def test_a1111_parameters_text() -> None:
    assert a1111_parameters(info()) == (
        "a red circle\nSteps: 20, Sampler: Euler a, CFG scale: 7, Seed: 123, Size: 64x64, Model: toy"
    )
    with_negative = a1111_parameters(info(negative_prompt="blurry", cfg_scale=7.5))
    assert with_negative.splitlines()[1] == "Negative prompt: blurry"
    assert "CFG scale: 7.5" in with_negative
    # An img2img records its strength as A1111 does; a txt2img has none.
    img2img = a1111_parameters(info(mode="img2img", params={"prompt": "a red circle", "strength": 0.6}))
    assert img2img.endswith("Model: toy, Denoising strength: 0.6") and "Denoising" not in a1111_parameters(info())


def test_png_carries_both_chunks_and_is_content_addressed(tmp_path: Path) -> None:
    store = SqliteImageStore(open_gallery_db(tmp_path / "g.db"), tmp_path / "images")
    png = encode_png(Image.new("RGB", (64, 64), (200, 0, 0)), info())
    (stored,) = store.add([(info(), png)])
    path = store.file_path(stored)
    assert path.name == f"{stored.sha256}.png" and path.parent.name == stored.sha256[:2]
    chunks = read_text_chunks(path)
    assert chunks["parameters"].startswith("a red circle\nSteps: 20")
    assert json.loads(chunks["dreamhall"]) == {"prompt": "a red circle", "seed": 123}
    # Same bytes, same file: a second row may point at it, the file is written once.
    (again,) = store.add([(info(), png)])
    assert again.sha256 == stored.sha256 and again.id != stored.id
    assert len(list((tmp_path / "images").rglob("*.png"))) == 1
    assert not list((tmp_path / "images").rglob(".tmp-*"))


def test_migrations_keep_data_through_downgrade_and_upgrade(tmp_path: Path) -> None:
    engine = open_gallery_db(tmp_path / "g.db")
    store = SqliteImageStore(engine, tmp_path / "images")
    store.add([(info(prompt="a purple star"), encode_png(Image.new("RGB", (8, 8)), info()))])
    downgrade(engine, "0001")
    assert "images_fts" not in inspect(engine).get_table_names()
    upgrade(engine)
    upgrade(engine)  # idempotent
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM images")).scalar() == 1
        # The full-text index is rebuilt for rows that predate it.
        hits = conn.execute(text("SELECT rowid FROM images_fts WHERE images_fts MATCH 'purple'")).all()
        assert len(hits) == 1
    # Later migrations must not drop the triggers that keep the full-text index current.
    store.add([(info(prompt="a golden ring"), encode_png(Image.new("RGB", (9, 9)), info()))])
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM images_fts WHERE images_fts MATCH 'golden'")).scalar() == 1
        assert conn.execute(text("SELECT count(*) FROM images WHERE nsfw = 0")).scalar() == 2


def test_migrations_round_trip_from_base(tmp_path: Path) -> None:
    db = tmp_path / "g.db"
    engine = open_gallery_db(db)
    store = SqliteImageStore(engine, tmp_path / "images")
    store.add([(info(), encode_png(Image.new("RGB", (8, 8)), info()))])
    downgrade(engine, "base")
    assert "images" not in inspect(engine).get_table_names()
    upgrade(engine)
    upgrade(engine)  # idempotent
    assert {"jobs", "images"} <= set(inspect(engine).get_table_names())
    store.add([(info(), encode_png(Image.new("RGB", (8, 8)), info()))])
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM images")).scalar() == 1
        assert conn.execute(text("PRAGMA journal_mode")).scalar() == "wal"


def test_open_upgrades_an_empty_file(tmp_path: Path) -> None:
    engine = connect(tmp_path / "new.db")
    assert inspect(engine).get_table_names() == []
    engine = open_gallery_db(tmp_path / "new.db")
    assert "alembic_version" in inspect(engine).get_table_names()


def test_storing_a_jobs_images_again_is_idempotent_and_check_finds_old_twins(tmp_path: Path) -> None:
    from sqlalchemy import insert

    from gallery.models import ImageRow, JobRow

    engine = open_gallery_db(tmp_path / "g.db")
    store = SqliteImageStore(engine, tmp_path / "images")
    with engine.begin() as conn:
        conn.execute(insert(JobRow).values(id="job1", status="running", queue_key="k", priority=0, request={},
                                           seed=1, source="cli"))  # fmt: skip
    images = [Image.new("RGB", (8, 8), (i * 40, 0, 0)) for i in range(3)]
    infos = [ImageCreate(job_id="job1", index=i, width=8, height=8, seed=i) for i in range(3)]
    items = [(info, encode_png(im, info)) for info, im in zip(infos, images)]
    first = store.add(items)
    # A crash after the commit, before the job was marked done: the job runs again and stores again.
    again = store.add(items)
    assert [i.id for i in again] == [i.id for i in first]
    assert len(store.for_job("job1")) == 3 and store.duplicates() == []
    # Twins left by an engine from before this fix are found (and the first copy is the one that stays).
    row = {**infos[1].model_dump(), "sha256": first[1].sha256, "path": first[1].path}
    with engine.begin() as conn:
        conn.execute(insert(ImageRow).values(**row))
    twins = store.duplicates()
    assert len(twins) == 1 and twins[0] > first[-1].id


def test_an_old_gallery_upgrades_in_place_with_automatic_tags(tmp_path: Path) -> None:
    """A gallery at revision 0004 (before boards and tags) keeps every row and gets its images' automatic tags."""
    engine = open_gallery_db(tmp_path / "g.db")
    store = SqliteImageStore(engine, tmp_path / "images")
    downgrade(engine, "0004")
    assert "image_tags" not in inspect(engine).get_table_names()
    with engine.begin() as conn:  # a row as the older engine wrote it
        conn.execute(text(
            "INSERT INTO images (job_id, \"index\", sha256, path, width, height, seed, prompt, negative_prompt, mode, "
            "source, favourite, nsfw, params, created_at, model, sampler) VALUES (NULL, 0, 'x', 'x.png', 96, 64, 1, "
            "'an old fox', '', 'txt2img', 'discord', 0, 0, '{\"loras\": [{\"name\": \"Ink Wash\"}]}', "
            "'2026-11-01 10:00:00', 'toy', 'Euler a')"
        ))  # fmt: skip
    upgrade(engine)
    (old,) = store.page(filters=SearchFilters(tags=["landscape"]), limit=10, offset=0)[0]
    assert old.prompt == "an old fox" and old.rating is None
    with engine.connect() as conn:
        tags = set(conn.execute(text("SELECT tag FROM image_tags WHERE image_id = :i"), {"i": old.id}).scalars())
    assert tags == {"mode:txt2img", "source:discord", "landscape", "small", "model:toy", "sampler:euler-a",
                    "lora:ink-wash"}  # fmt: skip
    ((stacked, size),) = store.stacked_page(filters=SearchFilters(), limit=10, offset=0)[0]  # 0009: a stack alone
    assert stacked.id == old.id and stacked.stack_key is None and size == 1


def test_pictures_that_steered_an_image_are_its_lineage_and_an_old_gallery_gets_them(tmp_path: Path) -> None:
    """Controls and references from the gallery link an image to them (image_sources), beside its init parent: in
    its lineage, in the lineage below them, in `derived_from`; a gallery from before 0011 gets the links its images'
    parameters name (an upload, or an image no longer a row, links nothing)."""
    engine = open_gallery_db(tmp_path / "g.db")
    store = SqliteImageStore(engine, tmp_path / "images")

    def add(info: ImageCreate, shade: int) -> int:
        return store.add([(info, encode_png(Image.new("RGB", (8, 8), (shade, 0, 0)), info))])[0].id

    disc = add(ImageCreate(width=8, height=8, prompt="a disc"), 1)
    style = add(ImageCreate(width=8, height=8, prompt="a style"), 2)
    base = add(ImageCreate(width=8, height=8, prompt="a base"), 3)
    steered = add(ImageCreate(width=8, height=8, prompt="steered", parent_id=base, relation="img2img", mode="img2img",
                              params={"controls": [{"image": f"gallery:{disc}"}, {"image": "upload:" + "a" * 64}],
                                      "references": [{"image": f"gallery:{style}"}, {"image": "gallery:999"}]}),
                  4)  # fmt: skip
    upscaled = add(ImageCreate(width=8, height=8, prompt="steered", parent_id=steered, relation="upscale"), 5)
    tree = store.lineage(steered, SearchFilters())
    assert [(n.id, n.edge, n.via) for n in tree.sources] == [(disc, "control", steered), (style, "reference", steered)]
    assert [n.id for n in tree.ancestors] == [base]
    below = store.lineage(disc, SearchFilters())
    assert [(n.id, n.depth, n.via, n.edge) for n in below.descendants] == [(steered, 1, disc, "control"),
                                                                           (upscaled, 2, steered, None)]  # fmt: skip
    assert {i.id for i in store.page(filters=SearchFilters(derived_from=style), limit=10, offset=0)[0]} == {
        steered, upscaled}  # fmt: skip
    assert store.lineage(base, SearchFilters()).sources == []
    # an old gallery: the links come from the parameters when it upgrades
    downgrade(engine, "0010")
    assert "image_sources" not in inspect(engine).get_table_names()
    upgrade(engine)
    again = store.lineage(steered, SearchFilters())
    assert [(n.id, n.edge) for n in again.sources] == [(disc, "control"), (style, "reference")]


def test_duplicate_groups_find_every_pair_within_the_bits() -> None:
    """Multi-index hashing must find exactly the pairs a brute-force comparison finds."""
    import random

    from gallery.likeness import DUPLICATE_BITS, duplicate_groups

    rng = random.Random(5)
    hashes = [rng.getrandbits(64) for _ in range(200)]
    for n in range(60):  # near copies: up to one bit past the limit
        base = hashes[n]
        for bit in rng.sample(range(64), n % (DUPLICATE_BITS + 2)):
            base ^= 1 << bit
        hashes.append(base)
    rows = [(i, f"sha{i}", f"{h:016x}") for i, h in enumerate(hashes)] + [(999, "sha0", None)]  # same bytes as #0
    pairs = {(a, b) for a in range(len(hashes)) for b in range(a + 1, len(hashes))
             if (hashes[a] ^ hashes[b]).bit_count() <= DUPLICATE_BITS}  # fmt: skip
    grouped = {(a, b) for g in duplicate_groups(rows) for a in g for b in g if a < b}
    assert pairs and pairs <= grouped
    assert (0, 999) in grouped
    too_far = {(n, 200 + n) for n in range(60) if n % (DUPLICATE_BITS + 2) == DUPLICATE_BITS + 1}
    assert too_far and not too_far & grouped  # one bit past the limit: different pictures


def test_tags_and_boards_checked_row_by_row_or_as_sets_let_the_same_images_through(tmp_path: Path, monkeypatch) -> None:
    """A frequent tag is checked per keyword hit (EXISTS), a rare one as a set (IN): the same answers either way,
    for keyword hits and for given ids, with a board and a hidden board."""
    import gallery.store as store_module

    engine = open_gallery_db(tmp_path / "g.db")
    store = SqliteImageStore(engine, tmp_path / "images")
    infos = [ImageCreate(width=8, height=8, seed=i, prompt=f"a red fox number {i}", guild="g") for i in range(12)]
    made = store.add([(info, encode_png(Image.new("RGB", (8, 8), (i * 20, 0, 0)), info)) for i, info in
                      enumerate(infos)])  # fmt: skip
    ids = [m.id for m in made]
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO image_tags (image_id, tag, auto) VALUES (:i, 'fox', 0)"),
                     [{"i": i} for i in ids[::2]])  # fmt: skip
        conn.execute(text("INSERT INTO boards (id, scope, name, name_key, created_at) VALUES "
                          "(1, 'local', 'B', 'b', '2026-12-04'), (2, 'local', 'H', 'h', '2026-12-04')"))  # fmt: skip
        conn.execute(text("INSERT INTO board_images (board_id, image_id, added_at) VALUES (:b, :i, '2026-12-04')"),
                     [{"b": 1, "i": i} for i in ids[:8]] + [{"b": 2, "i": ids[0]}])  # fmt: skip
    filters = SearchFilters(guild="g", tags=["fox"], board=1, not_board=2)
    want = [i for i in ids[:8:2] if i != ids[0]]
    as_sets = store.keyword_ids(['"red"', '"fox"'], filters=filters, k=50)
    monkeypatch.setattr(store_module, "FREQUENT_TAG", 1)  # every tag counts as frequent: checked row by row
    assert store._frequent(["fox"]) == ["fox"]
    row_by_row = store.keyword_ids(['"red"', '"fox"'], filters=filters, k=50)
    assert sorted(as_sets) == sorted(row_by_row) == sorted(want)
    assert store.filter_ids(ids, filters) == set(want)


def test_a_keyword_search_walks_its_rare_words_and_checks_the_common_ones_on_their_rows(
    tmp_path: Path, monkeypatch
) -> None:
    """FTS5 walks a word's entries newest first slowly when the word is in nearly every prompt: the rare words of
    the query lead the walk, whatever their place in the query, the common ones are checked on its rows, and the
    answer is every prompt with all the words, newest first, in a guild; only common words: FTS5's own AND."""
    from sqlalchemy import event

    import gallery.store as store_module

    monkeypatch.setattr(store_module, "COMMON_TERM", 20)  # "picture" and "things" (48 prompts) are common here

    engine = open_gallery_db(tmp_path / "g.db")
    store = SqliteImageStore(engine, tmp_path / "images")
    prompts = [f"picture {i % 7} of things" if i % 5 else f"drawing {i % 7}" for i in range(60)]
    infos = [ImageCreate(width=8, height=8, seed=i, guild=f"g{i % 2}", prompt=p) for i, p in enumerate(prompts)]
    made = store.add([(info, encode_png(Image.new("RGB", (8, 8), (i, 0, 0)), info)) for i, info in enumerate(infos)])
    leads: list[str] = []

    @event.listens_for(engine, "before_cursor_execute")
    def _lead(conn, cursor, statement, parameters, context, executemany) -> None:
        if "f.images_fts MATCH ?" in statement:  # the lead's parameter: the one at that place
            leads.append(parameters[statement.split("f.images_fts MATCH ?")[0].count("?")])

    want = [m.id for m in reversed(made) if m.prompt.startswith("picture 3 ") and m.guild == "g1"]
    assert any(m.prompt == "drawing 3" and m.guild == "g1" for m in made)  # "3" without "picture": left out
    for terms in (['"picture"', '"3"'], ['"3"', '"picture"'], ['"things"', '"3"', '"picture"']):
        assert store.keyword_ids(terms, filters=SearchFilters(guild="g1"), k=50) == want
        assert leads.pop() == '"3"'
    assert store.keyword_ids(['"3"', '"picture"'], filters=SearchFilters(guild="g1"), k=2) == want[:2]
    both = [m.id for m in reversed(made) if "picture" in m.prompt and m.guild == "g1"]
    assert store.keyword_ids(['"things"', '"picture"'], filters=SearchFilters(guild="g1"), k=50) == both
    assert leads.pop() == '"things" AND "picture"'  # no rare word: one walk of both, no look-ups
    assert store.keyword_ids(['"3"', '"seven"'], filters=SearchFilters(guild="g1"), k=50) == []
