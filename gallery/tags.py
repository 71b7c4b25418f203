"""Tags and names: the one home of what a tag or a board name may be, and of the tags an image gets automatically.

Automatic tags say what made the image, namespaced so they never collide with a person's words:
`model:NAME`, `lora:NAME`, `sampler:euler-a`, `mode:inpaint`, `source:discord`, `style:NAME`, plus its shape
(`square`, `portrait`, `landscape`) and size class (`small` under 512 px on the long side, `medium` under
1024, `large`). People's tags are their own words: `portrait`, `sunset`, `for-the-poster`.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Mapping
from typing import TypeVar

T = TypeVar("T")

MAX_TAG = 64
MAX_NAME = 100
MAX_TAGS_PER_CALL = 32
_TAG = re.compile(r"[^\s,#]+")


class BadName(ValueError):
    """A tag or board name that cannot be one; the message says why."""


def normal(text: str) -> str:
    """Unicode NFKC, whitespace collapsed, trimmed: what names and tags are compared as."""
    return " ".join(unicodedata.normalize("NFKC", text).split())


def tag_of(text: str) -> str:
    """A person's tag: one word (spaces become '-'), lower case, at most 64 characters."""
    tag = normal(text).lower().replace(" ", "-").strip("-")
    if not tag or not _TAG.fullmatch(tag):
        raise BadName(f"{text[:40]!r} is not a tag: use letters, digits, '-', '_' or ':' (no spaces, commas or #)")
    if len(tag) > MAX_TAG:
        raise BadName(f"a tag has at most {MAX_TAG} characters (got {len(tag)})")
    return tag


def board_name(text: str) -> str:
    name = normal(text)
    if not name or any(unicodedata.category(c).startswith("C") for c in name):
        raise BadName("a board needs a name of visible characters")
    if len(name) > MAX_NAME:
        raise BadName(f"a board name has at most {MAX_NAME} characters (got {len(name)})")
    return name


def size_tags(width: int, height: int) -> list[str]:
    if abs(width - height) <= max(width, height) * 0.05:
        shape = "square"
    else:
        shape = "portrait" if height > width else "landscape"
    side = max(width, height)
    return [shape, "small" if side < 512 else "medium" if side < 1024 else "large"]


def _slug(text: str) -> str:
    return normal(text).lower().replace(" ", "-")[:MAX_TAG]


def auto_tags(*, model: str | None, sampler: str | None, mode: str, source: str, width: int, height: int,
              params: Mapping) -> list[str]:  # fmt: skip
    """What made the image, as tags (the image's own columns and parameters)."""
    tags = [f"mode:{mode}", f"source:{source}", *size_tags(width, height)]
    if model:
        tags.append(f"model:{_slug(model)}"[:MAX_TAG])
    if sampler:
        tags.append(f"sampler:{_slug(sampler)}"[:MAX_TAG])
    loras = params.get("loras") or []
    tags += [f"lora:{_slug(str(lo.get('name')))}"[:MAX_TAG] for lo in loras if isinstance(lo, Mapping)]
    tags += [f"style:{_slug(str(s))}"[:MAX_TAG] for s in params.get("styles_applied") or []]
    return list(dict.fromkeys(tags))


def unique(items: Iterable[T]) -> list[T]:
    """In their first order, once each."""
    return list(dict.fromkeys(items))
