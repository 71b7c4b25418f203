"""The buttons under a result: U1-U4, V1-V4, reroll, remix and delete; under a single image, Midjourney's edit
loop too: Vary (Subtle), Vary (Strong), Vary (Region), Zoom Out 2x and 1.5x, and Pan in four directions.

Each button is a `DynamicItem` whose custom id carries the action and the
image id (`dreamhall:<action>:<image id>`), so buttons keep working after the
bot restarts: nothing is kept in memory. A button checks who may press it
(`interaction_check`) and builds its own derived request; it needs no cog.
"""

from __future__ import annotations

import contextlib
import re
from typing import Any, Protocol, cast

import discord

from bots import render
from bots.replies import InteractionReply, Reply, requester_of
from engine.client.answers import ImageRecord, Job
from engine.client.clients import AsyncEngineClient, EngineUnavailable, RequestRejected
from engine.client.derived import (
    VARIABLE_MODES,
    box_mask,
    pan_of,
    region_of,
    upscale_of,
    variation_of,
    vary_of,
    zoom_out_of,
)
from engine.client.dream_args import DreamArgsError, format_request, parse, parse_argv
from engine.client.schema import DreamRequest, Scope
from engine.client.settings import Settings


class _Flow(Protocol):
    async def run(
        self, request: DreamRequest, reply: Reply, channel: discord.abc.Messageable, user: discord.abc.User
    ) -> None: ...


class DreamBot(Protocol):
    """What the buttons need of the bot (bots.bot.DreamBot), named here: the bot imports these views."""

    engine: AsyncEngineClient
    settings: Settings
    flow: _Flow


def _bot(interaction: discord.Interaction) -> DreamBot:
    return cast(DreamBot, interaction.client)  # the client that runs these views is a bots.bot.DreamBot


EDITS = {  # Midjourney's edit buttons: action -> label
    "subtle": "Vary (Subtle)", "strong": "Vary (Strong)", "region": "Vary (Region)",
    "zoom2": "Zoom Out 2x", "zoom15": "Zoom Out 1.5x",
    "pan_left": "⬅️", "pan_right": "➡️", "pan_top": "⬆️", "pan_bottom": "⬇️",
}  # fmt: skip
ZOOM_FACTORS = {"zoom2": 2.0, "zoom15": 1.5}
ACTIONS = ("upscale", "variation", "reroll", "remix", "delete", *EDITS)
CUSTOM_ID = re.compile(rf"dreamhall:(?P<action>{'|'.join(ACTIONS)}):(?P<image_id>[0-9]+)")


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
        self.image: ImageRecord | None = None  # fetched by interaction_check

    @classmethod
    async def from_custom_id(
        cls, interaction: discord.Interaction, item: discord.ui.Item[Any], match: re.Match[str], /
    ) -> ImageAction:
        label = item.label if isinstance(item, discord.ui.Button) else None
        return cls(match["action"], int(match["image_id"]), label=label or "", row=item.row or 0)

    async def interaction_check(self, interaction: discord.Interaction) -> bool:
        """The image must be in this server's gallery (a DM's: one made in DMs); its buttons are its owner's or a
        moderator's (as Midjourney's): a job another user starts from them is theirs to start."""
        bot = _bot(interaction)
        who = requester_of(interaction.guild, interaction.channel, interaction.user)
        try:
            # The engine answers 404 for an image outside this server (or, in a DM, outside this user's DMs).
            self.image = await bot.engine.image(self.image_id, scope=Scope.of(who))
        except RequestRejected as e:
            text = "That image is not in this server's gallery." if e.status == 404 else str(e)
            await interaction.response.send_message(f"⚠️ {text}", ephemeral=True)
            return False
        except EngineUnavailable:
            await interaction.response.send_message(render.ENGINE_DOWN, ephemeral=True)
            return False
        if not (self.image.user == str(interaction.user.id) or interaction.permissions.manage_messages):
            what = "delete them" if self.action == "delete" else "use their buttons"
            await interaction.response.send_message(
                f"Only the person who asked for these images, or a moderator, can {what}.", ephemeral=True
            )
            return False
        return True

    async def callback(self, interaction: discord.Interaction) -> None:
        assert self.image is not None
        bot = _bot(interaction)
        if self.action == "delete":
            await self._delete(interaction, bot, self.image)
            return
        if self.action == "remix":
            await self._remix(interaction, bot, self.image)
            return
        if self.action == "region":
            await interaction.response.send_modal(RegionModal(self.image))
            return
        who = requester_of(interaction.guild, interaction.channel, interaction.user)
        try:
            request = await self._derived(bot, self.image, who)
        except (ValueError, RequestRejected) as e:
            await interaction.response.send_message(f"⚠️ {e}", ephemeral=True)
            return
        except EngineUnavailable:
            await interaction.response.send_message(render.ENGINE_DOWN, ephemeral=True)
            return
        await interaction.response.defer(thinking=True)
        await bot.flow.run(request, InteractionReply(interaction), interaction.channel, interaction.user)

    async def _derived(self, bot: DreamBot, image: ImageRecord, who) -> DreamRequest:
        """The request this button makes from its image."""
        if self.action == "reroll":  # the same job again with new seeds
            if image.job_id is None:
                raise ValueError(f"image #{image.id} was imported, not dreamed here: nothing to reroll")
            original = (await bot.engine.job(image.job_id, scope=Scope.of(who))).request
            return original.model_copy(update={"seed": None, "variation_seed": None, "requester": who})
        if self.action == "upscale":
            return upscale_of(image, factor=2, requester=who)
        rules = bot.settings.bot
        if self.action in ("subtle", "strong"):
            return vary_of(image, how=self.action, n=min(4, rules.max_n), requester=who)
        if self.action in ZOOM_FACTORS:
            return zoom_out_of(image, factor=ZOOM_FACTORS[self.action], requester=who)
        if self.action.startswith("pan_"):
            return pan_of(image, side=self.action.removeprefix("pan_"), requester=who)
        return variation_of(image, amount=rules.variation_amount, n=min(4, rules.max_n), requester=who)

    @staticmethod
    async def _remix(interaction: discord.Interaction, bot: DreamBot, image: ImageRecord) -> None:
        """Midjourney's Remix: the job's whole command in a form, to edit and dream again."""
        who = requester_of(interaction.guild, interaction.channel, interaction.user)
        try:
            original = (await bot.engine.job(image.job_id, scope=Scope.of(who))).request if image.job_id else None
        except (RequestRejected, EngineUnavailable):
            original = None
        if original is None:
            await interaction.response.send_message("⚠️ Only images dreamed here can be remixed.", ephemeral=True)
            return
        command = format_request(original.model_copy(update={"seed": None, "variation_seed": None}))
        await interaction.response.send_modal(RemixModal(command))

    @staticmethod
    async def _delete(interaction: discord.Interaction, bot: DreamBot, image: ImageRecord) -> None:
        ids = [i.id for i in (await bot.engine.job(image.job_id)).images] if image.job_id else [image.id]
        for i in ids:
            with contextlib.suppress(RequestRejected):  # already deleted
                await bot.engine.delete_image(i)
        await interaction.response.send_message(f"Deleted {len(ids)} image(s).", ephemeral=True)
        if interaction.message is not None:
            with contextlib.suppress(discord.HTTPException):
                await interaction.message.delete()


class RemixModal(discord.ui.Modal, title="Remix"):
    """The command that made a result, pre-filled; what the user sends is dreamed with the same flow."""

    def __init__(self, command: str) -> None:
        super().__init__(timeout=600)
        self.command: discord.ui.TextInput[RemixModal] = discord.ui.TextInput(
            label="Prompt and flags", style=discord.TextStyle.paragraph, default=command[:4000], max_length=4000
        )
        self.add_item(self.command)

    async def on_submit(self, interaction: discord.Interaction) -> None:
        bot = _bot(interaction)
        who = requester_of(interaction.guild, interaction.channel, interaction.user)
        try:
            request = parse(self.command.value, requester=who)
        except DreamArgsError as e:
            await interaction.response.send_message(f"⚠️ {e}", ephemeral=True)
            return
        await interaction.response.defer(thinking=True)
        await bot.flow.run(request, InteractionReply(interaction), interaction.channel, interaction.user)


class RegionModal(discord.ui.Modal, title="Vary (Region)"):
    """Midjourney's Vary (Region): a box of the picture (in percent) repainted, with the prompt as it is or edited."""

    def __init__(self, image: ImageRecord) -> None:
        super().__init__(timeout=600)
        self.image = image
        self.box: discord.ui.TextInput[RegionModal] = discord.ui.TextInput(
            label="Region: left, top, right, bottom in %", default="25, 25, 75, 75", max_length=40
        )
        self.prompt: discord.ui.TextInput[RegionModal] = discord.ui.TextInput(
            label="Prompt for the region", style=discord.TextStyle.paragraph, default=(image.prompt or "")[:1000],
            max_length=2000, required=False,
        )  # fmt: skip
        self.add_item(self.box)
        self.add_item(self.prompt)

    async def on_submit(self, interaction: discord.Interaction) -> None:
        bot = _bot(interaction)
        who = requester_of(interaction.guild, interaction.channel, interaction.user)
        try:
            parts = [float(p) / 100 for p in self.box.value.replace("%", "").split(",")]
            if len(parts) != 4:
                raise ValueError("give four numbers: left, top, right, bottom in percent (e.g. 25, 25, 75, 75)")
            mask = box_mask(self.image.width, self.image.height, (parts[0], parts[1], parts[2], parts[3]))
            ref = (await bot.engine.upload(mask)).ref
            request = region_of(self.image, mask=ref, prompt=self.prompt.value.strip() or None,
                                n=min(4, bot.settings.bot.max_n), requester=who)  # fmt: skip
        except (ValueError, RequestRejected) as e:
            await interaction.response.send_message(f"⚠️ {str(e).removeprefix('could not convert string to float: ')}",
                                                    ephemeral=True)  # fmt: skip
            return
        await interaction.response.defer(thinking=True)
        await bot.flow.run(request, InteractionReply(interaction), interaction.channel, interaction.user)


def result_view(job: Job) -> discord.ui.View:
    """U and V for the first four images (as Midjourney), then reroll, remix and delete; a single image also gets
    Midjourney's edit loop (Vary Subtle/Strong/Region, Zoom Out 2x and 1.5x, Pan), as after Midjourney's U.

    V only where there is seed noise to vary (txt2img and variations)."""
    view = discord.ui.View(timeout=None)
    if len(job.images) == 1:
        only = job.images[0].id
        for row, actions in enumerate((("upscale", "subtle", "strong", "region"), ("zoom2", "zoom15"),
                                       ("pan_left", "pan_right", "pan_top", "pan_bottom"))):  # fmt: skip
            for action in actions:
                label = "Upscale (2x)" if action == "upscale" else EDITS[action]
                view.add_item(ImageAction(action, only, label=label, row=row))
        view.add_item(ImageAction("reroll", only, emoji="🔄", row=3))
        view.add_item(ImageAction("remix", only, emoji="🎨", label="Remix", row=3))
        view.add_item(ImageAction("delete", only, emoji="❌", row=3))
        return view
    for k, image in enumerate(job.images[:4], start=1):
        view.add_item(ImageAction("upscale", image.id, label=f"U{k}", row=0))
    if job.request.mode in VARIABLE_MODES:
        for k, image in enumerate(job.images[:4], start=1):
            view.add_item(ImageAction("variation", image.id, label=f"V{k}", row=1))
    first = job.images[0].id
    view.add_item(ImageAction("reroll", first, emoji="🔄", row=2))
    view.add_item(ImageAction("remix", first, emoji="🎨", label="Remix", row=2))
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


PROMPT_LINE = re.compile(r"^(?P<k>[1-4])\. (?P<prompt>.+)$", re.MULTILINE)


class DreamPrompt(discord.ui.DynamicItem[discord.ui.Button], template=r"dreamhall:prompt:(?P<k>[1-4])"):
    """A /describe answer's button k: dreams the k-th prompt of its own message (so it survives restarts)."""

    def __init__(self, k: int) -> None:
        super().__init__(discord.ui.Button(label=str(k), style=discord.ButtonStyle.primary,
                                           custom_id=f"dreamhall:prompt:{k}"))  # fmt: skip
        self.k = k

    @classmethod
    async def from_custom_id(
        cls, interaction: discord.Interaction, item: discord.ui.Item[Any], match: re.Match[str], /
    ) -> DreamPrompt:
        return cls(int(match["k"]))

    async def callback(self, interaction: discord.Interaction) -> None:
        text = interaction.message.content if interaction.message is not None else ""
        prompt = next((m["prompt"] for m in PROMPT_LINE.finditer(text) if int(m["k"]) == self.k), None)
        if prompt is None:
            await interaction.response.send_message("⚠️ That prompt is no longer in the message.", ephemeral=True)
            return
        bot = _bot(interaction)
        who = requester_of(interaction.guild, interaction.channel, interaction.user)
        try:
            request = parse_argv(["--", prompt.strip("*")], requester=who)
        except DreamArgsError as e:
            await interaction.response.send_message(f"⚠️ {e}", ephemeral=True)
            return
        await interaction.response.defer(thinking=True)
        await bot.flow.run(request, InteractionReply(interaction), interaction.channel, interaction.user)


def describe_view(count: int) -> discord.ui.View:
    view = discord.ui.View(timeout=None)
    for k in range(1, count + 1):
        view.add_item(DreamPrompt(k))
    return view
