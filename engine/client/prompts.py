"""A1111 prompt syntax: `<lora:NAME:WEIGHT>` tags, `(word:1.3)` / `(word)` / `[word]` weights, `BREAK`.

`parse` splits a prompt into its LoRA tags and its text; `fragments` turns the text into
weighted pieces with AUTOMATIC1111's rules (each `(` multiplies by 1.1, each `[` divides
by 1.1, `(text:w)` sets w, `\\(` is a literal bracket). The text encoders are driven by
compel, which chunks past the 77-token window and applies the weights; we hand it the
pieces directly, so its own syntax never reinterprets a user's `+`, `-` or `.and()`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from engine.client.errors import UserError

LORA_TAG = re.compile(r"<lora:([^:<>]+)(?::([^:<>]*))?>")
EMBEDDING_TAG = re.compile(r"\bembedding:([\w.\-]+)")  # ComfyUI's explicit form
MAX_LORA_WEIGHT = 4.0
_ATTENTION = re.compile(r"\\\(|\\\)|\\\[|\\\]|\\\\|\\|\(|\[|:\s*([+-]?[.\d]+)\s*\)|\)|]|[^\\()\[\]:]+|:")
_BREAK = re.compile(r"\s*\bBREAK\b\s*")


class PromptError(UserError, ValueError):
    """A LoRA tag or weight that cannot be used; the message names it."""


@dataclass(frozen=True)
class LoraUse:
    name: str
    weight: float


def parse(prompt: str) -> tuple[str, list[LoraUse]]:
    """The prompt without its `<lora:...>` tags, and the tags (A1111: removed from the text)."""
    loras = []
    for m in LORA_TAG.finditer(prompt):
        raw = (m.group(2) or "1").strip()
        try:
            weight = float(raw)
        except ValueError:
            raise PromptError(f"<lora:{m.group(1)}:{raw}>: the weight must be a number") from None
        if not -MAX_LORA_WEIGHT <= weight <= MAX_LORA_WEIGHT:
            raise PromptError(f"<lora:{m.group(1)}:{raw}>: the weight must be between "
                              f"-{MAX_LORA_WEIGHT:g} and {MAX_LORA_WEIGHT:g}")  # fmt: skip
        loras.append(LoraUse(m.group(1).strip(), weight))
    return LORA_TAG.sub("", prompt).strip(), loras


def embedding_names(prompt: str, known: set[str]) -> list[str]:
    """The embeddings a prompt uses: `embedding:NAME` (must exist) or a known name as a word (A1111)."""
    used = []
    for name in EMBEDDING_TAG.findall(prompt):
        if name not in known:
            raise PromptError(f"unknown embedding {name!r}; available: {', '.join(sorted(known)) or 'none'}")
        used.append(name)
    for name in sorted(known):
        if name not in used and re.search(rf"(?<![\w\-]){re.escape(name)}(?![\w\-])", prompt):
            used.append(name)
    return used


def without_embedding_prefix(text: str) -> str:
    return EMBEDDING_TAG.sub(r"\1", text)


def segments(text: str) -> list[str]:
    """The prompt split at `BREAK`: each segment starts a new 75-token chunk."""
    return _BREAK.split(text)


@dataclass
class _Piece:
    text: str
    weight: float


def fragments(text: str) -> list[tuple[str, float]]:
    """AUTOMATIC1111's attention parse: `a (red:1.5) [blue] circle` -> [("a ", 1), ("red", 1.5), ...]."""
    out: list[_Piece] = []
    round_open: list[int] = []
    square_open: list[int] = []

    def scale(start: int, factor: float) -> None:
        for piece in out[start:]:
            piece.weight *= factor

    for m in _ATTENTION.finditer(text):
        token, weight = m.group(0), m.group(1)
        if token.startswith("\\") and len(token) > 1:
            out.append(_Piece(token[1:], 1.0))
        elif token == "(":
            round_open.append(len(out))
        elif token == "[":
            square_open.append(len(out))
        elif weight is not None and round_open:
            scale(round_open.pop(), float(weight))
        elif token == ")" and round_open:
            scale(round_open.pop(), 1.1)
        elif token == "]" and square_open:
            scale(square_open.pop(), 1 / 1.1)
        else:
            out.append(_Piece(token, 1.0))
    for start in round_open:
        scale(start, 1.1)
    for start in square_open:
        scale(start, 1 / 1.1)
    merged: list[tuple[str, float]] = []
    for piece in out:  # neighbours with the same weight are one fragment
        if merged and merged[-1][1] == piece.weight:
            merged[-1] = (merged[-1][0] + piece.text, piece.weight)
        else:
            merged.append((piece.text, piece.weight))
    return merged or [("", 1.0)]
