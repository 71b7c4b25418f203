"""Stacks: images of one job, and images that differ only by seed or by variation, share a stack key; listings and
search results can show one image per stack with its size (InvokeAI #1889: "collapse images that differ only by
seed")."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

from gallery.schemas import ImageCreate

# What two images of one stack may differ by; everything else they were made with is the same.
SEED_ONLY = frozenset({"seed", "variation_amount", "variation_seed", "with_variations", "worker", "interrupted",
                       "warnings", "n", "prompt", "prompt_template"})  # fmt: skip


def digest(fields: Mapping[str, Any]) -> str:
    """A stable SHA-256 of JSON-able fields (key order does not matter)."""
    return hashlib.sha256(json.dumps(fields, sort_keys=True, separators=(",", ":"), default=str).encode()).hexdigest()


def stack_key(info: ImageCreate) -> str | None:
    """Its stack: what made it, less the seed and the variation (None: an image imported without parameters,
    which stands alone)."""
    params = info.params or {}
    if info.mode == "import" and not params:
        return None
    kept = {k: v for k, v in params.items() if k not in SEED_ONLY}
    # a job's images share the prompt as written (wildcards resolve per image seed)
    prompt = params.get("prompt_template") or info.prompt
    return digest({"params": kept, "prompt": prompt, "negative": info.negative_prompt, "model": info.model,
                   "mode": info.mode, "size": [info.width, info.height], "steps": info.steps,
                   "cfg": info.cfg_scale, "sampler": info.sampler})  # fmt: skip
