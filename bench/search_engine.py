"""Search through a real engine at gallery scale: `GET /v1/search` against its parts alone.

A fresh home with N images in SQLite (prompts from a small vocabulary of coloured shapes, 10 guilds)
and their vectors in LanceDB (the prompt's CLIP text embedding plus noise: an image sits near its
caption), an ANN index where a guild passes the threshold, then a real engine on that home with
`clip_model = ViT-B-32` (512-d like real CLIP; random weights, as nothing is downloaded here).
Guild-filtered text searches (k=10) are timed at the client, each text asked once: words from the
prompts ("red circle blue": keyword hits fill the page, ranked by CLIP), and words no prompt has
("misty castle": CLIP alone, through the guild's vector index); then the word queries again (the
engine keeps recent text embeddings). Then, in this process on the same home, the search's parts:
the CLIP text embedding, the keyword query (SQLite FTS5), the guild's vector query, the keyword
hits' scores, and the whole `GallerySearch.by_text` without HTTP.

    python bench/search_engine.py [--rows 100000] [--queries 100] [--home DIR] [--idle]

The engine's worker is kept busy with a long job meanwhile (what a guild's search meets), unless --idle. Each
guild's first search after the start is timed apart, at once; the rest once the engine's start-up work on the
search index (its check, and reading each big guild's ANN index ahead) is done and the process that embeds the
searches' words on a CPU (started by the first search) is up.

--home keeps the built home in DIR, and uses it as it is when it was built before (a million rows
take ~12 minutes to build here).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pyarrow as pa

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sqlalchemy import insert  # noqa: E402

from bench.engine_process import running_engine  # noqa: E402
from engine.client.schema import DreamRequest, Requester  # noqa: E402
from engine.client.settings import load_settings  # noqa: E402
from gallery.db import open_gallery_db  # noqa: E402
from gallery.embeddings import OpenClipEmbedder  # noqa: E402
from gallery.index import LanceIndex  # noqa: E402
from gallery.models import ImageRow  # noqa: E402
from gallery.schemas import SearchFilters  # noqa: E402
from gallery.search import GallerySearch, fts_terms  # noqa: E402
from gallery.store import SqliteImageStore  # noqa: E402

GUILDS = [f"guild-{i}" for i in range(10)]
COLOURS = ["red", "green", "blue", "yellow", "purple", "orange", "white", "black"]
SHAPES = ["circle", "square", "triangle", "star", "hexagon", "cross"]
MOODS = ["misty", "ancient", "neon", "quiet", "golden", "frozen", "stormy", "tiny", "endless", "hidden"]
PLACES = ["castle", "forest", "harbour", "desert", "library", "mountain", "garden", "city", "canyon", "temple"]
CLIP = "ViT-B-32"
CHUNK = 20_000


def build_home(home: Path, rows: int, embedder: OpenClipEmbedder, rng: np.random.Generator) -> float:
    """The gallery's rows and vectors, written in bulk as an import would; returns the seconds it took."""
    started = time.perf_counter()
    prompts = [f"a {c} {s} on a {b} background" for c in COLOURS for s in SHAPES for b in COLOURS if b != c]
    centres = embedder.embed_texts(prompts)
    db = open_gallery_db(home / "gallery.db")
    index = LanceIndex(home / "lancedb", model_id=embedder.model_id, dim=embedder.dim)
    now = datetime.now(UTC)
    for start in range(0, rows, CHUNK):
        ids = np.arange(start + 1, min(rows, start + CHUNK) + 1)
        which = rng.integers(len(prompts), size=len(ids))
        guilds = [GUILDS[i % len(GUILDS)] for i in ids]
        users = [f"user-{i % 97}" for i in ids]
        with db.begin() as conn:
            conn.execute(insert(ImageRow), [
                {"id": int(i), "sha256": f"{i:064x}", "path": f"bench/{i}.png", "width": 512, "height": 512,
                 "seed": int(i), "prompt": prompts[p], "steps": 20, "cfg_scale": 7.5, "sampler": "k_euler_a",
                 "model": "bench", "source": "discord", "user": u, "guild": g, "params": {}, "created_at": now}
                for i, p, u, g in zip(ids, which, users, guilds)
            ])  # fmt: skip
        noisy = centres[which] + 0.6 * rng.standard_normal((len(ids), embedder.dim), dtype=np.float32) / np.sqrt(
            embedder.dim
        )
        noisy /= np.linalg.norm(noisy, axis=1, keepdims=True)
        index.add_arrow(pa.table({
            "image_id": pa.array(ids, pa.int64()),
            "vector": pa.FixedSizeListArray.from_arrays(pa.array(noisy.ravel(), pa.float32()), embedder.dim),
            "guild": guilds, "user": users, "source": ["discord"] * len(ids), "model": ["bench"] * len(ids),
            "created_at": pa.array([now.replace(tzinfo=None)] * len(ids), pa.timestamp("us")),
        }, schema=index.schema))  # fmt: skip
    index.build_ann_index()
    index.optimize()
    return time.perf_counter() - started


def percentiles(values: list[float]) -> str:
    q = statistics.quantiles(values, n=100)
    return f"p50 {statistics.median(values) * 1000:6.1f} ms  p99 {q[98] * 1000:6.1f} ms"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--queries", type=int, default=100)
    ap.add_argument("--home", type=Path, help="build the home here, or use the one built here before")
    ap.add_argument("--idle", action="store_true", help="search with the worker idle (default: a job running)")
    args = ap.parse_args()
    print(f"{platform.machine()}, {os.cpu_count()} cores, load {os.getloadavg()[0]:.2f}; {args.rows:,} images, "
          f"{len(GUILDS)} guilds, clip {CLIP} (random weights)")  # fmt: skip
    rng = np.random.default_rng(0)
    embedder = OpenClipEmbedder(CLIP, None)
    home = args.home or Path(tempfile.mkdtemp(prefix="dh-search-engine-"))
    if (home / "gallery.db").exists():
        print(f"using the gallery built before in {home}")
    else:
        home.mkdir(parents=True, exist_ok=True)
        print(f"built the gallery and its index in {build_home(home, args.rows, embedder, rng):.0f} s")
    words = [f"{c} {s} {b}" for c in COLOURS for s in SHAPES for b in COLOURS if b != c]
    places = [f"{m} {p}" for m in MOODS for p in PLACES]
    rng.shuffle(words)
    rng.shuffle(places)
    n = min(args.queries, len(words), len(places))
    guilds = [GUILDS[i] for i in rng.integers(len(GUILDS), size=n)]
    keyword_queries, clip_queries = list(zip(words[:n], guilds)), list(zip(places[:n], guilds))

    with running_engine(home, {"DREAMHALL_CLIP_MODEL": CLIP}) as client:
        busy = []
        if not args.idle:  # long jobs on the built-in model, one after another, while the searches run
            for i in range(8):
                request = DreamRequest(prompt=f"a busy red circle {i}", steps=150, n=4, fresh=True,
                                       requester=Requester(source="api", user="busy"))  # fmt: skip
                busy.append(client.submit(request).id)
            while client.job(busy[0]).status == "queued":
                time.sleep(0.05)
        first = []
        for guild in GUILDS:  # a guild's first search after a start reads its index: apart
            t = time.perf_counter()
            client.search("red circle", guild=guild, limit=10)
            first.append(time.perf_counter() - t)
        # The timed searches meet the engine as it runs, not as it starts: its start-up check and read-ahead of the
        # index are done, and the process that embeds searches' words (started by the first search) is up.
        settled = time.monotonic() + 120
        process = load_settings(home=home).search_process  # as the engine reads it (DREAMHALL_SEARCH_PROCESS, ...)
        process_up = ("search texts are embedded in process", "could not start the search's")
        while time.monotonic() < settled:
            log = (home / "engine.log").read_text()
            if "search index read ahead" in log and (not process or any(line in log for line in process_up)):
                break
            time.sleep(0.1)

        def timed(queries: list[tuple[str, str]]) -> tuple[list[float], float]:
            spent, found = [], []
            for query, guild in queries:
                t = time.perf_counter()
                results = client.search(query, guild=guild, limit=10).results
                spent.append(time.perf_counter() - t)
                found.append(sum(all(w in r.image.prompt for w in query.split()) for r in results)
                                 / max(1, len(results)))  # fmt: skip
            return spent, statistics.mean(found)

        by_words, found = timed(keyword_queries)
        by_clip, _ = timed(clip_queries)
        again, _ = timed(keyword_queries)
        running = sum(client.job(job).status == "running" for job in busy)
        for job in busy:
            client.cancel(job)

    # The parts, in this process, on the same home (the engine has stopped).
    store = SqliteImageStore(open_gallery_db(home / "gallery.db"), home / "images")
    index = LanceIndex(home / "lancedb", model_id=embedder.model_id, dim=embedder.dim)
    search = GallerySearch(store=store, embedder=embedder, index=index)
    parts: dict[str, list[float]] = {"CLIP text embedding": [], "keyword query (FTS5)": [],
                                     "vector query (guild, k=50)": [], "keyword hits' scores": [],
                                     "GallerySearch.by_text, words": [], "GallerySearch.by_text, CLIP": []}  # fmt: skip
    for guild in GUILDS:
        search.by_text(query="red circle", limit=10, filters=SearchFilters(guild=guild))
    for (query, guild), (other, _) in zip(keyword_queries, clip_queries):
        filters = SearchFilters(guild=guild)
        t0 = time.perf_counter()
        vector = embedder.embed_texts([query])[0]
        t1 = time.perf_counter()
        hits = store.keyword_ids(fts_terms(query), filters=filters, k=50)
        t2 = time.perf_counter()
        index.search(vector, k=50, filters=filters.vector_filters())
        t3 = time.perf_counter()
        index.scores(vector, hits, filters=filters.vector_filters())
        t4 = time.perf_counter()
        search._text_vector.cache_clear()  # each text as if asked for the first time
        search.by_text(query=query, limit=10, filters=filters)
        t5 = time.perf_counter()
        search.by_text(query=other, limit=10, filters=filters)
        t6 = time.perf_counter()
        for name, spent in zip(parts, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4, t6 - t5)):
            parts[name].append(spent)
    print(f"GET /v1/search through the engine ({n} texts each; a guild's first search after a start: "
          f"{max(first) * 1000:.0f} ms at most; {'worker idle' if args.idle else 'a job running throughout'}"
          f"{'' if args.idle or running else ' (NOT: the busy jobs had ended)'})")  # fmt: skip
    print(f"  words from the prompts, first time   {percentiles(by_words)}   (results with every word: {found:.2f})")
    print(f"  words no prompt has (CLIP alone)     {percentiles(by_clip)}")
    print(f"  the word queries again               {percentiles(again)}   (the text embedding is remembered)")
    print("the parts, in-process:")
    for name, values in parts.items():
        print(f"  {name:<35} {percentiles(values)}")


if __name__ == "__main__":
    main()
