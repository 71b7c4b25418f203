"""Vector search at gallery scale, through the production LanceIndex.

Synthetic L2-normalised 512-d vectors with metadata (10 guilds) at each size:
p50/p99 latency of guild-filtered queries ("image-vector": near an existing
image; "text-vector": a random direction, as a text query tends to be),
recall@10 against exact filtered search (numpy), ANN index build time, and
ingest rate one image per write vs batched (with the rate over successive
thousands of single writes, to show whether it degrades).

    python bench/search.py [--sizes 10000 100000 1000000] [--queries 200] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
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

import lancedb  # noqa: E402

from gallery.index import IndexRow, LanceIndex, VectorFilters  # noqa: E402

DIM = 512
GUILDS = [f"guild-{i}" for i in range(10)]


def unit(rng: np.random.Generator, n: int) -> np.ndarray:
    v = rng.standard_normal((n, DIM), dtype=np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def clustered(rng: np.random.Generator, n: int, centres: np.ndarray) -> np.ndarray:
    # Real CLIP vectors cluster by concept; uniform noise would make every ANN index look bad.
    picks = rng.integers(len(centres), size=n)
    v = centres[picks] + 0.6 * unit(rng, n) / np.sqrt(1.0)
    return (v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float32)


def arrow(ids: np.ndarray, vecs: np.ndarray, guilds: np.ndarray) -> pa.Table:
    now = datetime.now(UTC).replace(tzinfo=None)
    return pa.table({
        "image_id": pa.array(ids, pa.int64()),
        "vector": pa.FixedSizeListArray.from_arrays(pa.array(vecs.reshape(-1)), DIM),
        "guild": pa.array(guilds.tolist()), "user": pa.array(["u"] * len(ids)),
        "source": pa.array(["discord"] * len(ids)), "model": pa.array(["m"] * len(ids)),
        "created_at": pa.array([now] * len(ids), pa.timestamp("us")),
    })  # fmt: skip


def bench_size(n: int, queries: int, rng: np.random.Generator, root: Path) -> dict:
    centres = unit(rng, 2000)
    vecs = clustered(rng, n, centres)
    guilds = np.array(GUILDS)[rng.integers(len(GUILDS), size=n)]
    index = LanceIndex(root / f"n{n}", model_id=f"bench-{n}", dim=DIM, optimize_every=10**9, ann_threshold=10**12)
    t = time.perf_counter()
    for start in range(0, n, 100_000):
        index.add_arrow(arrow(np.arange(start, min(n, start + 100_000)), vecs[start : start + 100_000],
                              guilds[start : start + 100_000]))  # fmt: skip
    load_s = time.perf_counter() - t
    build_s = None
    if n >= 20_000:
        t = time.perf_counter()
        index.build_ann_index()
        build_s = time.perf_counter() - t
    index.table.optimize()
    out = {"rows": n, "bulk_load_s": round(load_s, 2), "index_build_s": build_s and round(build_s, 1),
           "ann": index.has_ann_index()}  # fmt: skip
    for kind in ("image", "text"):
        qs = clustered(rng, queries, centres) if kind == "image" else unit(rng, queries)
        qguilds = np.array(GUILDS)[rng.integers(len(GUILDS), size=queries)]
        latencies, recalls = [], []
        for q, g in zip(qs, qguilds):
            t = time.perf_counter()
            hits = index.search(q, k=10, filters=VectorFilters(guild=str(g)))
            latencies.append((time.perf_counter() - t) * 1000)
            mask = np.nonzero(guilds == g)[0]
            exact = mask[np.argsort(-(vecs[mask] @ q))[:10]]
            recalls.append(len({h.image_id for h in hits} & set(exact.tolist())) / 10)
            assert all(guilds[h.image_id] == g for h in hits), "a hit from another guild"
        latencies.sort()
        out[f"{kind}_p50_ms"] = round(statistics.median(latencies), 2)
        out[f"{kind}_p99_ms"] = round(latencies[int(0.99 * (len(latencies) - 1))], 2)
        out[f"{kind}_recall_at_10"] = round(float(np.mean(recalls)), 4)
    return out


def bench_ingest(root: Path, rng: np.random.Generator, singles: int, batch: int) -> dict:
    vecs = unit(rng, singles + 20 * batch)
    index = LanceIndex(root / "ingest", model_id="bench-ingest", dim=DIM, optimize_every=100)
    now = datetime.now(UTC)

    def row(i: int) -> IndexRow:
        return IndexRow(image_id=i, vector=vecs[i].tolist(), guild=GUILDS[i % 10], created_at=now)

    rates, t0 = [], time.perf_counter()
    t = t0
    for i in range(singles):
        index.add([row(i)])
        if (i + 1) % 1000 == 0:
            rates.append(round(1000 / (time.perf_counter() - t), 1))
            t = time.perf_counter()
    single_rate = singles / (time.perf_counter() - t0)
    t = time.perf_counter()
    for b in range(20):
        index.add([row(singles + b * batch + j) for j in range(batch)])
    batched_rate = 20 * batch / (time.perf_counter() - t)
    size_mb = sum(f.stat().st_size for f in (root / "ingest").rglob("*") if f.is_file()) / 1e6
    return {"single_per_s": round(single_rate, 1), "single_per_s_by_thousand": rates,
            "batched_per_s": round(batched_rate, 1), "batch": batch, "versions_after": index.versions(),
            "disk_mb": round(size_mb, 1), "rows": index.count()}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--singles", type=int, default=10_000, help="single-image writes in the ingest test")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    say = (lambda *a: print(*a, file=sys.stderr)) if args.json else print
    say(f"lancedb {lancedb.__version__}, numpy {np.__version__}, python {platform.python_version()}, "
        f"{os.cpu_count()} CPUs, dim {DIM}, {len(GUILDS)} guilds, {args.queries} queries per kind")  # fmt: skip
    rng = np.random.default_rng(0)
    root = Path(tempfile.mkdtemp(prefix="dh-search-bench-"))
    results: dict = {"sizes": []}
    try:
        for n in args.sizes:
            r = bench_size(n, args.queries, rng, root)
            results["sizes"].append(r)
            say(f"{n:>9,} rows: load {r['bulk_load_s']} s, ANN build {r['index_build_s']} s | "
                f"image query p50 {r['image_p50_ms']} ms p99 {r['image_p99_ms']} ms recall@10 "
                f"{r['image_recall_at_10']} | text query p50 {r['text_p50_ms']} ms p99 {r['text_p99_ms']} ms "
                f"recall@10 {r['text_recall_at_10']}")  # fmt: skip
            shutil.rmtree(root / f"n{n}", ignore_errors=True)
        ing = bench_ingest(root, rng, args.singles, batch=64)
        results["ingest"] = ing
        say(f"ingest: one image per write {ing['single_per_s']}/s (per 1000: {ing['single_per_s_by_thousand']}), "
            f"batches of {ing['batch']} {ing['batched_per_s']}/s; {ing['versions_after']} versions, "
            f"{ing['disk_mb']} MB on disk for {ing['rows']} vectors")  # fmt: skip
    finally:
        shutil.rmtree(root, ignore_errors=True)
    if args.json:
        print(json.dumps(results))


if __name__ == "__main__":
    main()
