"""Vector search at gallery scale, through the production LanceIndex.

Synthetic L2-normalised 512-d vectors with metadata (10 guilds) at each size:
p50/p99 latency of guild-filtered queries, recall@10 against exact filtered
search (numpy), and the cost of that exact numpy search itself (a mask over
every row, then a product over the guild's); ANN index build time; peak memory
of the process (the bench's own vectors included); ingest rate one image per
write vs batched (with the rate over successive thousands of single writes).

Query kinds: "image" (near an existing image: reverse search), "text" (a
concept direction plus noise, as CLIP text embeddings sit near their concept),
and "random" (a random direction; reported only).

    python bench/search.py [--sizes 10000 100000 1000000] [--queries 200] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import statistics
import sys
import tempfile
import threading
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
    out = np.empty((n, DIM), dtype=np.float32)
    for start in range(0, n, 100_000):  # in slices: the bench's own data stays ~2 GB at a million
        m = min(n, start + 100_000) - start
        v = centres[rng.integers(len(centres), size=m)] + 0.6 * unit(rng, m)
        out[start : start + m] = v / np.linalg.norm(v, axis=1, keepdims=True)
    return out


class PeakRss:
    """The process's peak resident memory over a stretch of the bench, sampled every 50 ms."""

    def __init__(self) -> None:
        self.peak, self._stop = 0, threading.Event()

    @staticmethod
    def now() -> int:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS:"))

    def __enter__(self) -> PeakRss:
        self.start = self.now()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.05):
            self.peak = max(self.peak, self.now())

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.now())


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
    data_gb = PeakRss.now() / 2**30  # the bench's own vectors and ground truth
    with PeakRss() as rss:
        index = LanceIndex(root / f"n{n}", model_id=f"bench-{n}", dim=DIM, optimize_every=10**9)
        t = time.perf_counter()
        for start in range(0, n, 100_000):
            index.add_arrow(arrow(np.arange(start, min(n, start + 100_000)), vecs[start : start + 100_000],
                                  guilds[start : start + 100_000]))  # fmt: skip
        load_s = time.perf_counter() - t
        t = time.perf_counter()
        index.build_ann_index()  # the shards past the index's ann_threshold, as the engine would
        build_s = time.perf_counter() - t
        index.optimize()
        # A shard's first query after a start reads its index or its vectors into memory: reported apart.
        cold = []
        for g in GUILDS:
            t = time.perf_counter()
            index.search(unit(rng, 1)[0], k=10, filters=VectorFilters(guild=g))
            cold.append((time.perf_counter() - t) * 1000)
    out = {"rows": n, "bulk_load_s": round(load_s, 2), "index_build_s": round(build_s, 1),
           "ann": index.has_ann_index(), "first_query_ms": round(max(cold), 1),
           "bench_data_gb": round(data_gb, 2), "index_peak_gb": round((rss.peak - rss.start) / 2**30, 2)}  # fmt: skip
    for kind in ("image", "text", "random"):
        if kind == "image":
            qs = clustered(rng, queries, centres)
        elif kind == "text":
            qs = centres[rng.integers(len(centres), size=queries)] + 0.9 * unit(rng, queries)
            qs = (qs / np.linalg.norm(qs, axis=1, keepdims=True)).astype(np.float32)
        else:
            qs = unit(rng, queries)
        qguilds = np.array(GUILDS)[rng.integers(len(GUILDS), size=queries)]
        latencies, recalls, exact_ms = [], [], []
        for q, g in zip(qs, qguilds):
            t = time.perf_counter()
            hits = index.search(q, k=10, filters=VectorFilters(guild=str(g)))
            latencies.append((time.perf_counter() - t) * 1000)
            t = time.perf_counter()
            mask = np.nonzero(guilds == g)[0]
            exact = mask[np.argsort(-(vecs[mask] @ q))[:10]]
            exact_ms.append((time.perf_counter() - t) * 1000)
            recalls.append(len({h.image_id for h in hits} & set(exact.tolist())) / 10)
            assert all(guilds[h.image_id] == g for h in hits), "a hit from another guild"
        latencies.sort()
        out[f"{kind}_p50_ms"] = round(statistics.median(latencies), 2)
        out[f"{kind}_p99_ms"] = round(latencies[int(0.99 * (len(latencies) - 1))], 2)
        out[f"{kind}_recall_at_10"] = round(float(np.mean(recalls)), 4)
        out[f"{kind}_numpy_p50_ms"] = round(statistics.median(exact_ms), 2)
    out["peak_rss_gb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)  # everything
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
            say(f"{n:>9,} rows: load {r['bulk_load_s']} s, ANN build {r['index_build_s']} s, slowest first "
                f"query on a guild {r['first_query_ms']} ms; memory: the index's peak {r['index_peak_gb']} GB over "
                f"the bench's own data {r['bench_data_gb']} GB (process peak {r['peak_rss_gb']} GB)")  # fmt: skip
            for kind in ("image", "text", "random"):
                say(f"    {kind:>6} query: p50 {r[f'{kind}_p50_ms']} ms p99 {r[f'{kind}_p99_ms']} ms, recall@10 "
                    f"{r[f'{kind}_recall_at_10']} (exact numpy over the guild's rows: p50 "
                    f"{r[f'{kind}_numpy_p50_ms']} ms)")  # fmt: skip
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
