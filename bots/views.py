"""The buttons under a result: U1-U4, V1-V4, reroll and delete.

Each button is a `DynamicItem` whose custom id carries the action and the
image id (`dreamhall:<action>:<image id>`), so buttons keep working after the
bot restarts: nothing is kept in memory.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

import discord

from engine.schema import VARIABLE_MODES, Job

if TYPE_CHECKING:
    from bots.cogs.dream import DreamCog

CUSTOM_ID = re.compile(r"dreamhall:(?P<action>upscale|variation|reroll|delete):(?P<image_id>[0-9]+)")


class ImageAction(discord.ui.DynamicItem[discord.ui.Button], template=CUSTOM_ID.pattern):
    """One button acting on one gallery image."""

    def __init__(self, action: str, image_id: int, *, label: str = "", emoji: str | None = None, row: int = 0) -> None:
        style = discord.ButtonStyle.danger if action == "delete" else discord.ButtonStyle.secondary
        super().__init__(
            discord.ui.Button(
                label=label or None, emoji=emoji, style=style, row=row, custom_id=f"dreamhall:{action}:{image_id}"
            )
        )
        self.action = action
        self.image_id = image_id

    @classmethod
    async def from_custom_id(
        cls, interaction: discord.Interaction, item: discord.ui.Button, match: re.Match[str], /
    ) -> ImageAction:
        return cls(match["action"], int(match["image_id"]), label=item.label or "", row=item.row or 0)

    async def callback(self, interaction: discord.Interaction) -> None:
        cog: DreamCog = interaction.client.get_cog("DreamCog")  # type: ignore[assignment, union-attr]
        await cog.on_action(interaction, self.action, self.image_id)


def result_view(job: Job) -> discord.ui.View:
    """U and V for the first four images (as Midjourney), then reroll and delete.

    V only where there is seed noise to vary (txt2img and variations)."""
    view = discord.ui.View(timeout=None)
    for k, image in enumerate(job.images[:4], start=1):
        view.add_item(ImageAction("upscale", image.id, label=f"U{k}", row=0))
    if job.request.mode in VARIABLE_MODES:
        for k, image in enumerate(job.images[:4], start=1):
            view.add_item(ImageAction("variation", image.id, label=f"V{k}", row=1))
    first = job.images[0].id
    view.add_item(ImageAction("reroll", first, emoji="🔄", row=2))
    view.add_item(ImageAction("delete", first, emoji="❌", row=2))
    return view


def image_ids_of(message: discord.Message | None) -> list[int]:
    """The gallery images a result message shows, read from its buttons."""
    ids: list[int] = []
    for row in message.components if message is not None else []:
        for child in getattr(row, "children", []):
            match = CUSTOM_ID.fullmatch(getattr(child, "custom_id", "") or "")
            if match and match["action"] == "upscale" and int(match["image_id"]) not in ids:
                ids.append(int(match["image_id"]))
    return ids
