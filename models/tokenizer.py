"""Build the toy text encoder's tokenizer: CLIP's BPE with a reduced vocabulary.

The full CLIP vocabulary has 49,408 tokens; at the toy text encoder's width its
embedding would be 80 % of the checkpoint. We keep CLIP's own BPE merges (from
the file that ships inside open_clip), but only the first `first_merges` of them
plus every merge needed to spell the toy world's words as whole tokens. Because
BPE applies merges in rank order, a rank-ordered subset spells those words
exactly as the full tokenizer does; other words fall back to shorter pieces.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

from open_clip.tokenizer import bytes_to_unicode, default_bpe

from models.toyworld import BACKGROUNDS, SHAPE_COLOURS, SHAPES, TEMPLATES

BOS, EOS = "<|startoftext|>", "<|endoftext|>"


def _clip_merges() -> list[tuple[str, str]]:
    with gzip.open(default_bpe()) as f:
        lines = f.read().decode("utf-8").split("\n")
    # Same slice as open_clip's SimpleTokenizer: 49152 - 256 - 2 merges.
    return [tuple(line.split()) for line in lines[1 : 49152 - 256 - 2 + 1]]


def _merges_used(word: str, rank: dict[tuple[str, str], int]) -> set[int]:
    parts = list(word[:-1]) + [word[-1] + "</w>"]
    used: set[int] = set()
    while len(parts) > 1:
        pairs = {(parts[i], parts[i + 1]) for i in range(len(parts) - 1)}
        best = min(pairs, key=lambda p: rank.get(p, 1 << 30))
        if best not in rank:
            break
        used.add(rank[best])
        merged, i = [], 0
        while i < len(parts):
            if i < len(parts) - 1 and (parts[i], parts[i + 1]) == best:
                merged.append(parts[i] + parts[i + 1])
                i += 2
            else:
                merged.append(parts[i])
                i += 1
        parts = merged
    return used


def toy_words() -> set[str]:
    words = set(SHAPES) | set(SHAPE_COLOURS) | set(BACKGROUNDS)
    for template in TEMPLATES:
        words |= {w.strip(",") for w in template.split() if not w.startswith("{")}
    return words | {",", "of", "the", "and", "an", "in", "with", "on", "shape", "image", "photo"}


def build(out_dir: Path, *, first_merges: int | None = 1000, model_max_length: int = 32, pad_token: str = EOS) -> int:
    """Write vocab.json, merges.txt and tokenizer_config.json; return the vocabulary size.

    `first_merges=None` keeps every merge: CLIP's own tokenizer, as SD 1.x/2.x/SDXL use it
    (with `pad_token` "!" for the OpenCLIP text encoders of SD 2.x and SDXL).
    """
    merges = _clip_merges()
    rank = {m: i for i, m in enumerate(merges)}
    keep = set(range(len(merges) if first_merges is None else first_merges))
    for word in toy_words():
        keep |= _merges_used(word, rank)
    kept = [merges[i] for i in sorted(keep)]
    byte_chars = list(bytes_to_unicode().values())
    tokens = byte_chars + [c + "</w>" for c in byte_chars] + ["".join(m) for m in kept] + [BOS, EOS]
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(tokens)}, ensure_ascii=False))
    (out_dir / "merges.txt").write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in kept) + "\n")
    config = {
        "tokenizer_class": "CLIPTokenizer",
        "model_max_length": model_max_length,
        "bos_token": BOS,
        "eos_token": EOS,
        "unk_token": EOS,
        "pad_token": pad_token,
        "do_lower_case": True,
    }
    (out_dir / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    (out_dir / "special_tokens_map.json").write_text(
        json.dumps({"bos_token": BOS, "eos_token": EOS, "unk_token": EOS, "pad_token": pad_token}, indent=2)
    )
    return len(tokens)
