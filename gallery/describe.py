"""Describe a picture as prompts (Midjourney's /describe, A1111's interrogate "clip"), CLIP-interrogator style.

There is no captioning model here: the words come from vocabularies, one file per category (`subjects.txt`,
`colours.txt`, `backgrounds.txt`, `media.txt`, `styles.txt`, `lighting.txt`, `flavours.txt`...), each line a
term, ranked by the CLIP similarity of its text to the picture. The subject is ranked jointly with its colour
("a red circle") and its background ("on a blue background"), so the words agree with each other; every other
category adds its best terms after a comma. The built-in toy CLIP reads the toy world's words (gallery/vocabulary/
toy); a real CLIP reads gallery/vocabulary/general. Users extend either: the lines of `<home>/vocabulary/NAME.txt`
join category NAME.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from gallery.embeddings import Embedder

VOCABULARY_DIR = Path(__file__).parent / "vocabulary"
JOINT = ("colours", "subjects", "backgrounds")  # ranked together, as one phrase
MAX_JOINT = 5000  # past this many phrases, subjects and backgrounds are ranked on their own
PROMPTS = 4


@dataclass(frozen=True)
class Description:
    """Four candidate prompts, best first, and each category's terms with their similarity to the picture."""

    prompts: list[str]
    terms: dict[str, list[tuple[str, float]]] = field(default_factory=dict)


def read_vocabulary(*folders: Path) -> dict[str, list[str]]:
    """Category -> terms, from every `*.txt` of the folders in turn (later folders add to earlier ones)."""
    out: dict[str, list[str]] = {}
    for folder in folders:
        for path in sorted(folder.glob("*.txt")) if folder.is_dir() else []:
            lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
            terms = out.setdefault(path.stem.lower(), [])
            terms += [t for t in lines if t and not t.startswith("#") and t not in terms]
    return out


class Describer:
    """Ranks a vocabulary's words against pictures with one CLIP embedder (text vectors computed once)."""

    def __init__(self, embedder: Embedder, vocabulary: dict[str, list[str]]) -> None:
        self.embedder = embedder
        self.vocabulary = vocabulary
        colours = vocabulary.get("colours") or [""]
        subjects = vocabulary.get("subjects") or []
        backgrounds = vocabulary.get("backgrounds") or [""]
        phrases = [_phrase(c, s, b) for c, s, b in itertools.product(colours, subjects, backgrounds)]
        self.joint = phrases if 0 < len(phrases) <= MAX_JOINT else []
        self.categories = {k: v for k, v in vocabulary.items() if v and (k not in JOINT or not self.joint)}
        texts = self.joint + [t for terms in self.categories.values() for t in terms]
        self._vectors = embedder.embed_texts(texts) if texts else np.zeros((0, 0), dtype=np.float32)

    def describe(self, image: Image.Image) -> Description:
        vector = self.embedder.embed_images([image.convert("RGB")])[0]
        scores = self._vectors @ vector if len(self._vectors) else np.zeros(0)
        ranked: dict[str, list[tuple[str, float]]] = {}
        offset = 0
        if self.joint:
            ranked["subject"] = _ranked(self.joint, scores[: len(self.joint)])
            offset = len(self.joint)
        for name, terms in self.categories.items():
            ranked[name] = _ranked(terms, scores[offset : offset + len(terms)])
            offset += len(terms)
        return Description(prompts=_prompts(ranked), terms={k: v[:10] for k, v in ranked.items()})


def _phrase(colour: str, subject: str, background: str) -> str:
    """'a red circle on a blue background'; a subject line that is already a phrase ('a cat') stays one."""
    noun = f"{colour} {subject}".strip()
    if colour or noun.split()[0] not in {"a", "an", "the"}:
        noun = f"{'an' if noun[:1] in 'aeiou' else 'a'} {noun}"
    return f"{noun} {background}".strip()


def _ranked(terms: list[str], scores: np.ndarray) -> list[tuple[str, float]]:
    order = np.argsort(-scores, kind="stable")
    return [(terms[i], round(float(scores[i]), 4)) for i in order]


def _prompts(ranked: dict[str, list[tuple[str, float]]]) -> list[str]:
    """Prompt k: the k-th best head (the joint phrase, else the best subject with the k-th best of the rest of the
    joint categories) and, after commas, each other category's k-th best term."""
    heads = [t for t, _ in ranked.get("subject", [])]
    if not heads:
        subjects = [t for t, _ in ranked.get("subjects", [])]
        backgrounds = [t for t, _ in ranked.get("backgrounds", [])] or [""]
        heads = [f"{s} {backgrounds[min(k, len(backgrounds) - 1)]}".strip() for k, s in enumerate(subjects)]
    extras = [[t for t, _ in terms] for name, terms in ranked.items() if name not in {"subject", *JOINT}]
    prompts: list[str] = []
    for k in range(max(len(heads), 1)):
        head = heads[k] if heads else ""
        tail = [terms[min(k, len(terms) - 1)] for terms in extras if terms]
        prompt = ", ".join(p for p in [head, *tail] if p)
        if prompt and prompt not in prompts:
            prompts.append(prompt)
        if len(prompts) == PROMPTS:
            break
    return prompts
