"""Organising a large gallery: tag and board filters, and the repeat check of find-before-draw, on SQLite.

A synthetic gallery of N images in 10 guilds (rows as the engine writes them, with their automatic tags and a
person's tag on one image in fifty), 50 boards of 1,000 images each, a repeat key on every image. Then, through
the production SQL (gallery.store, gallery.boards):

  tag filter     a guild's newest page of images with one tag (`gallery list --tag`, `tag:x` alone)      p50/p99
  tag + 2 tags   the same with a person's tag and an automatic one                                        p50/p99
  board page     a board's newest page (`gallery list --board`)                                             p50/p99
  repeat check   the lookup find-before-draw makes for a 4-image request (4 keys, the asker's guild)        p50/p99
  tag counts     the autocomplete list of a guild's tags starting with "s"                                 p50/p99
  stacked page   a guild's newest page with stacks folded (`gallery list --stacks`; jobs of 4)               p50/p99

With --vectors, the images also get 512-d vectors in a real LanceIndex (one table per guild, ANN as the engine
builds it), and GallerySearch (the production search) runs text searches narrowed by SQLite-only filters. The text
vector comes from a synthetic embedder (a direction near one of the vectors' clusters): this measures the search,
not CLIP, whose text encoding is cached per query text in the engine anyway.

  tag + text     `red fox tag:portrait` in a guild (a frequent automatic tag)                             p50/p99
  ptag + text    the same with a person's tag (one image in fifty)                                          p50/p99
  board + text   a text search within a board                                                                p50/p99

With --duplicates N: N images' perceptual hashes (some near copies planted), and the scan `gallery check` runs
(gallery.likeness: same bytes, hashes within 4 bits; then the similar pictures among the newest 2,000 vectors).

    python bench/organise.py [--images 1000000] [--queries 200] [--vectors] [--duplicates 100000]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sqlalchemy import text  # noqa: E402

from gallery.boards import Organiser, Who  # noqa: E402
from gallery.db import open_gallery_db  # noqa: E402
from gallery.embeddings import Embedder  # noqa: E402
from gallery.index import LanceIndex  # noqa: E402
from gallery.likeness import SIMILAR_WINDOW, duplicate_groups, similar_groups  # noqa: E402
from gallery.schemas import SearchFilters  # noqa: E402
from gallery.search import GallerySearch  # noqa: E402
from gallery.store import SqliteImageStore  # noqa: E402
from gallery.tags import auto_tags  # noqa: E402

GUILDS = 10
DIM = 512
PEOPLE_TAGS = ("sunset", "portrait-of-gran", "snow", "cats", "for-the-poster")


def key(i: int) -> str:
    return hashlib.sha256(str(i).encode()).hexdigest()


def build(db: Path, n: int, rng: np.random.Generator) -> None:
    engine = open_gallery_db(db)
    sizes = [(512, 512), (512, 768), (768, 512), (1024, 1024)]
    modes = ["txt2img", "img2img", "inpaint", "upscale"]
    now = datetime.now(UTC).isoformat(" ")
    started = time.perf_counter()
    with engine.begin() as conn:
        for lo in range(0, n, 50_000):
            rows, tags = [], []
            for i in range(lo + 1, min(n, lo + 50_000) + 1):
                w, h = sizes[i % 4]
                mode, guild = modes[i % 4 if i % 10 else 0], f"g{i % GUILDS}"
                params = {"loras": [{"name": f"lora{i % 7}"}]} if i % 5 == 0 else {}
                # a job's four images share a stack (images i..i+3 of one guild are 10 apart: jobs interleave)
                rows.append({"id": i, "sha": key(-i), "path": f"{i}.png", "w": w, "h": h, "seed": i, "prompt":
                             f"picture {i % 997} of things", "mode": mode, "guild": guild, "params": json.dumps(params),
                             "at": now, "key": key(i), "stack": key(-(i // 40) - 10**9 - i % GUILDS)})  # fmt: skip
                for t in auto_tags(model="sd15", sampler="Euler a", mode=mode, source="discord", width=w, height=h,
                                   params=params):  # fmt: skip
                    tags.append({"i": i, "t": t, "a": 1})
                if i % 50 == 0:
                    tags.append({"i": i, "t": PEOPLE_TAGS[i // 50 % len(PEOPLE_TAGS)], "a": 0})
            conn.execute(text(
                'INSERT INTO images (id, job_id, "index", sha256, path, width, height, seed, prompt, negative_prompt, '
                "mode, source, guild, favourite, nsfw, params, created_at, model, sampler, repeat_key, stack_key) "
                "VALUES (:id, NULL, 0, :sha, :path, :w, :h, :seed, :prompt, '', :mode, 'discord', :guild, 0, 0, "
                ":params, :at, 'sd15', 'Euler a', :key, :stack)"), rows)  # fmt: skip
            conn.execute(text("INSERT INTO image_tags (image_id, tag, auto) VALUES (:i, :t, :a)"), tags)
        for b in range(50):
            guild = f"g{b % GUILDS}"
            conn.execute(text("INSERT INTO boards (id, scope, name, name_key, owner, created_at) VALUES "
                              "(:id, :scope, :name, :name, 'u', :at)"),
                         {"id": b + 1, "scope": f"g:{guild}", "name": f"board {b}", "at": now})  # fmt: skip
            members = [i for i in range(b % GUILDS or GUILDS, n + 1, GUILDS)][:: max(1, n // GUILDS // 1000)][:1000]
            conn.execute(text("INSERT INTO board_images (board_id, image_id, added_at) VALUES (:b, :i, :at)"),
                         [{"b": b + 1, "i": i, "at": now} for i in members])  # fmt: skip
    print(f"built {n:,} images in {GUILDS} guilds with their tags, 50 boards: {time.perf_counter() - started:.0f} s")


def timed(fn, queries: int) -> tuple[float, float]:
    spent = []
    for q in range(queries):
        started = time.perf_counter()
        fn(q)
        spent.append(time.perf_counter() - started)
    spent.sort()
    return statistics.median(spent) * 1000, spent[int(len(spent) * 0.99) - 1] * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=1_000_000)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--keep", type=Path, metavar="DIR", help="build the gallery (and vectors) here once; reuse")
    parser.add_argument("--vectors", action="store_true", help="also text searches narrowed by tags and boards")
    parser.add_argument("--duplicates", type=int, default=0, metavar="N", help="also the duplicate scan of N images")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as scratch:
        tmp = args.keep or Path(scratch)
        tmp.mkdir(parents=True, exist_ok=True)
        db = Path(tmp) / "gallery.db"
        if not db.exists():
            build(db, args.images, rng)
        engine = open_gallery_db(db)
        store = SqliteImageStore(engine, Path(tmp) / "images")
        organiser = Organiser(engine, store)

        def guild(q: int) -> str:
            return f"g{q % GUILDS}"

        figures = {
            "tag filter": lambda q: store.page(filters=SearchFilters(guild=guild(q), tags=["portrait"]), limit=50,
                                               offset=0),
            "tag + 2 tags": lambda q: store.page(filters=SearchFilters(guild=guild(q), tags=["sunset", "mode:txt2img"]),
                                                 limit=50, offset=0),
            "board page": lambda q: store.page(filters=SearchFilters(guild=guild(q), board=q % 50 + 1), limit=50,
                                               offset=0),
            "repeat check": lambda q: store.find_repeats([key(q * 4 + k + 1) for k in range(4)],
                                                         SearchFilters(guild=guild(q))),
            "tag counts": lambda q: organiser.tag_counts(SearchFilters(guild=guild(q)), prefix="s"),
            "board list": lambda q: organiser.boards(Who(user="u", guild=guild(q), discord=True)),
        }  # fmt: skip
        figures["stacked page"] = lambda q: store.stacked_page(filters=SearchFilters(guild=guild(q)), limit=50,
                                                               offset=0)  # fmt: skip
        if args.vectors:
            search = vector_search(Path(tmp), store, args.images, rng)
            figures |= {
                "tag + text": lambda q: search.by_text(query=f"picture {q % 997} tag:portrait", limit=20,
                                                       filters=SearchFilters(guild=guild(q))),
                "ptag + text": lambda q: search.by_text(query=f"picture {q % 997} tag:sunset", limit=20,
                                                        filters=SearchFilters(guild=guild(q))),
                "board + text": lambda q: search.by_text(query=f"picture {q % 997}", limit=20,
                                                         filters=SearchFilters(guild=guild(q), board=q % 50 + 1)),
            }  # fmt: skip
        for name, fn in figures.items():
            p50, p99 = timed(fn, args.queries)
            print(f"{name:<14} p50 {p50:7.2f} ms   p99 {p99:7.2f} ms")
        if args.duplicates:
            duplicate_scan(args.duplicates, rng, search.index if args.vectors else None)


class SyntheticTexts(Embedder):
    """Text vectors near the bench's clusters (a stand-in for CLIP's text tower in a search benchmark)."""

    dim = DIM
    relevance_floor = 0.2

    def __init__(self, centres: np.ndarray) -> None:
        self.centres = centres

    def embed_images(self, images: list) -> np.ndarray:
        raise NotImplementedError("the bench searches by text")

    def embed_texts(self, texts: list[str]) -> np.ndarray:
        picks = [int(hashlib.sha256(t.encode()).hexdigest(), 16) % len(self.centres) for t in texts]
        return self.centres[picks]


def vector_search(root: Path, store: SqliteImageStore, n: int, rng: np.random.Generator) -> GallerySearch:
    from bench.search import arrow, clustered, unit

    started = time.perf_counter()
    centres = unit(np.random.default_rng(1), 2000)  # their own seed: the same with a --keep gallery
    kept = (root / "vectors").exists()
    index = LanceIndex(root / "vectors", model_id="bench", dim=DIM, optimize_every=10**9)
    if kept:  # --keep: the vectors of an earlier run (the same seed drew the same clusters)
        index.warm()  # as the engine does after its start: each guild's ANN index read once
        return GallerySearch(store=store, embedder=SyntheticTexts(centres), index=index)
    for lo in range(1, n + 1, 100_000):
        ids = np.arange(lo, min(n, lo + 99_999) + 1)
        index.add_arrow(arrow(ids, clustered(rng, len(ids), centres), np.array([f"g{i % GUILDS}" for i in ids])))
    index.build_ann_index()
    index.optimize()
    print(f"indexed {n:,} vectors in LanceDB (10 guild tables, ANN): {time.perf_counter() - started:.0f} s")
    return GallerySearch(store=store, embedder=SyntheticTexts(centres), index=index)


def duplicate_scan(n: int, rng: np.random.Generator, index: LanceIndex | None) -> None:
    hashes = rng.integers(0, 2**63, size=n, dtype=np.int64).astype(np.uint64) * np.uint64(2) + np.uint64(1)
    rows = [(i + 1, key(i), f"{int(h):016x}") for i, h in enumerate(hashes)]
    for k in range(0, n, 1000):  # a near copy in every thousand: 3 bits flipped
        rows.append((n + k + 1, key(-k - 1), f"{int(hashes[k]) ^ 0b10101:016x}"))
    started = time.perf_counter()
    groups = duplicate_groups(rows)
    scan = time.perf_counter() - started
    similar = ""
    if index is not None:
        started = time.perf_counter()
        ids, vectors = index.vectors(list(range(min(n, 1_000_000), min(n, 1_000_000) - SIMILAR_WINDOW, -1)))
        found = similar_groups(ids, vectors)
        similar = (
            f"; similar among the newest {len(ids):,}: {len(found)} group(s) in {time.perf_counter() - started:.2f} s"
        )
    print(f"duplicate scan of {len(rows):,} images: {len(groups)} group(s) in {scan:.2f} s{similar}")


if __name__ == "__main__":
    main()
