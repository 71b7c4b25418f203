"""Styles and wildcards: what a prompt becomes before it is drawn, settled at submit from the engine's home.

    styles.csv      AUTOMATIC1111's file (`name,prompt,negative_prompt`): a style's prompt holds `{prompt}` where
                    the user's prompt goes, else it is appended after a comma (A1111's rule); `--style NAME`
                    (several apply in order), A1111's `styles` field, GET /sdapi/v1/prompt-styles
    wildcards/      `__colour__` picks a line of wildcards/colour.txt, `{red|green|blue}` one of the choices
                    (dynamicprompts' syntax, weights `{2::red|blue}` and nesting included)

Each image's choices are drawn from its own seed, so a seed remakes its prompt; the job keeps the user's
template, each image records the prompt it was drawn with (and the template beside it).
"""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass
from pathlib import Path

from dynamicprompts.generators import RandomPromptGenerator
from dynamicprompts.wildcards import WildcardManager

from engine.client.errors import InputError, clip_text
from engine.client.schema import DreamRequest, image_seed

_WILDCARD = re.compile(r"__([^_\s][^\s]*?)__")
_CHOICE = re.compile(r"\{[^{}]*\|[^{}]*\}")


@dataclass(frozen=True)
class Style:
    name: str
    prompt: str
    negative_prompt: str


def merge(style: str, prompt: str) -> str:
    """A1111's merge_prompts: the user's prompt into the style's `{prompt}`, else both joined by a comma."""
    if "{prompt}" in style:
        return style.replace("{prompt}", prompt)
    return ", ".join(part for part in (prompt.strip(), style.strip()) if part)


class Prompting:
    """The engine's styles and wildcards (files in its home, read when used: edit them while it runs)."""

    def __init__(self, home: Path) -> None:
        self.styles_file = home / "styles.csv"
        self.wildcards_dir = home / "wildcards"

    def styles(self) -> list[Style]:
        if not self.styles_file.is_file():
            return []
        with self.styles_file.open(newline="", encoding="utf-8-sig") as f:
            rows = list(csv.DictReader(f))
        return [Style(r["name"].strip(), r.get("prompt") or "", r.get("negative_prompt") or "")
                for r in rows if (r.get("name") or "").strip()]  # fmt: skip

    def style(self, name: str) -> Style:
        styles = {s.name.lower(): s for s in self.styles()}
        if name.strip().lower() not in styles:
            known = ", ".join(sorted(s.name for s in styles.values())) or f"none: {self.styles_file} has no styles"
            raise InputError(f"--style: no style named {clip_text(name, 60)!r} (styles: {clip_text(known, 300)})")
        return styles[name.strip().lower()]

    def settle(self, request: DreamRequest, seed: int) -> DreamRequest:
        """The request with each image's prompt resolved (styles, then wildcards from its seed) and the negative
        styled; unchanged when it has neither."""
        prompt, negative = request.prompt, request.negative_prompt
        for name in request.styles:
            style = self.style(name)
            prompt, negative = merge(style.prompt, prompt), merge(style.negative_prompt, negative)
        prompts: tuple[str, ...] | None = None
        if _WILDCARD.search(prompt) or _CHOICE.search(prompt):
            manager = self._wildcards(prompt)
            # a variation keeps its parent's seed for every image: they share one prompt
            seeds = (
                [seed] * request.n if request.mode == "variation" else [image_seed(seed, i) for i in range(request.n)]
            )
            prompts = tuple(RandomPromptGenerator(manager, seed=s).generate(prompt, 1)[0] for s in seeds)
        elif request.styles:
            prompts = (prompt,) * request.n
        if prompts is None:
            return request
        styled_negative = negative if request.styles else None
        return request.model_copy(update={"prompts": prompts, "styled_negative_prompt": styled_negative})

    def _wildcards(self, prompt: str) -> WildcardManager:
        """The wildcard files, once each `__name__` of the prompt is known to have one with lines."""
        manager = WildcardManager(self.wildcards_dir if self.wildcards_dir.is_dir() else None)
        for name in _WILDCARD.findall(prompt):
            if not list(manager.get_values(name)):
                raise InputError(f"prompt: wildcard __{clip_text(name, 60)}__ has no file "
                                 f"({self.wildcards_dir / name}.txt) or it is empty")  # fmt: skip
        return manager
