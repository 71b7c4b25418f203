"""Likeness: true duplicates (the same pixels, or a perceptual hash within a few bits) told apart from merely
similar images (close CLIP vectors). Immich flagged ~4,000 different photos as duplicates on CLIP distance alone
(immich #31487): here CLIP only ever says "similar", and nothing is merged automatically."""

from __future__ import annotations

import io
from collections import defaultdict
from collections.abc import Iterable

import numpy as np
from PIL import Image

# Bits two 64-bit perceptual hashes may differ by and still be the same picture (a re-encode, a resize, a
# watermark): imagehash's own guidance; different seeds of one prompt differ by far more.
DUPLICATE_BITS = 4
# Cosine similarity of CLIP image vectors above which two pictures are "similar" (same subject and look).
SIMILAR_SCORE = 0.95
# Similar pairs are looked for among the newest images (an all-pairs product: 2,000 images take ~0.1 s).
SIMILAR_WINDOW = 2000


def perceptual_hash(png: bytes) -> str:
    """The image's 64-bit DCT hash (imagehash.phash), as 16 hex digits."""
    import imagehash  # scipy behind it: not on the engine's start-up path, only when an image is stored

    with Image.open(io.BytesIO(png)) as image:
        return str(imagehash.phash(image.convert("RGB")))


class _Groups:
    """Union-find over image ids."""

    def __init__(self) -> None:
        self.parent: dict[int, int] = {}

    def find(self, a: int) -> int:
        self.parent.setdefault(a, a)
        while self.parent[a] != a:
            self.parent[a] = self.parent[self.parent[a]]
            a = self.parent[a]
        return a

    def join(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)

    def groups(self) -> list[list[int]]:
        members: dict[int, list[int]] = defaultdict(list)
        for a in self.parent:
            members[self.find(a)].append(a)
        return sorted((sorted(m) for m in members.values() if len(m) > 1), key=lambda g: g[0])


def duplicate_groups(rows: Iterable[tuple[int, str, str | None]], *, bits: int = DUPLICATE_BITS) -> list[list[int]]:
    """Groups of images that are the same picture: (id, sha256, phash) rows; same bytes, or hashes within `bits`.

    Multi-index hashing: the 64 bits are cut into `bits + 1` bands, and two hashes within `bits` of each other
    agree on at least one band (pigeonhole), so only images sharing a band are compared: near-linear, not
    all pairs."""
    groups = _Groups()
    by_sha: dict[str, int] = {}
    hashes: dict[int, int] = {}
    for image_id, sha, phash in rows:
        if sha in by_sha:
            groups.join(by_sha[sha], image_id)
        else:
            by_sha[sha] = image_id
        if phash:
            hashes[image_id] = int(phash, 16)
    bands = bits + 1
    width = -(-64 // bands)
    for band in range(bands):
        shift, mask = band * width, (1 << width) - 1
        buckets: dict[int, list[int]] = defaultdict(list)
        for image_id, h in hashes.items():
            buckets[(h >> shift) & mask].append(image_id)
        for ids in buckets.values():
            if len(ids) < 2:
                continue
            for n, a in enumerate(ids):
                for b in ids[n + 1 :]:
                    if (hashes[a] ^ hashes[b]).bit_count() <= bits:
                        groups.join(a, b)
    return groups.groups()


def similar_groups(ids: np.ndarray, vectors: np.ndarray, *, score: float = SIMILAR_SCORE,
                   apart_from: Iterable[list[int]] = ()) -> list[list[int]]:  # fmt: skip
    """Groups of different pictures whose CLIP vectors are within `score` (cosine) of each other. A group of
    duplicates (`apart_from`) takes part as its first image: the same picture is not "similar" to itself."""
    twins = {i for group in apart_from for i in group[1:]}
    keep = np.array([int(i) not in twins for i in ids], dtype=bool)
    ids, vectors = ids[keep], vectors[keep]
    if len(ids) < 2:
        return []
    unit = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    groups = _Groups()
    for start in range(0, len(ids), 1024):  # blocks keep the product's memory small
        rows, cols = np.nonzero(unit[start : start + 1024] @ unit.T >= score)
        for r, c in zip(rows.tolist(), cols.tolist()):
            if start + r < c:
                groups.join(int(ids[start + r]), int(ids[c]))
    return groups.groups()
