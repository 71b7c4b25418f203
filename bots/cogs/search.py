"""Searching this server's gallery from Discord: `!search`, `!similar`, `!info`, their slash forms, and the
message context menu "Find similar" (so all of it works without the Message Content intent).

Every query carries the guild (in a DM: that user's DM images), and the engine enforces it inside the search:
one server never sees another's images.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import TYPE_CHECKING

import discord
from discord import app_commands
from discord.ext import commands

from bots import render, rules
from bots.cogs.organise import FAVOURITES, HIDDEN, own_board
from bots.replies import InteractionReply, MessageReply, replying_errors, requester_of, scope_of
from bots.views import describe_view, image_ids_of
from engine.client.answers import SearchResults
from engine.client.clients import RequestRejected
from engine.client.grid import tile
from engine.client.schema import MAX_ID, Requester, Scope

if TYPE_CHECKING:
    from bots.bot import DreamBot

SHOWN = 4
FETCHED = 8  # a few spare, for results hidden outside NSFW channels


@dataclass(frozen=True)
class SearchOptions:
    """/search's filters."""

    tag: str | None = None
    board: str | None = None
    favourites: bool = False
    mine: bool = False
    stacks: bool = False
    derived_from: int | None = None

    def said(self) -> str:
        """The filters in the results' title, so a person sees what was narrowed."""
        parts = [f"tag:{self.tag}" if self.tag else "", f"board {self.board}" if self.board else "",
                 "your favourites" if self.favourites else "", "yours" if self.mine else "",
                 f"made from #{self.derived_from}" if self.derived_from else "",
                 "one per stack" if self.stacks else ""]  # fmt: skip
        kept = [p for p in parts if p]
        return f" ({', '.join(kept)})" if kept else ""


class SearchCog(commands.Cog, name="Search"):
    """Finding past dreams by words or by picture."""

    def __init__(self, bot: DreamBot) -> None:
        self.bot = bot
        # Context menus cannot be declared inside a cog: made here, added to the tree while the cog is loaded.
        self.find_similar = app_commands.ContextMenu(name="Find similar", callback=self.similar_menu)

    async def cog_load(self) -> None:
        self.bot.tree.add_command(self.find_similar)

    async def cog_unload(self) -> None:
        self.bot.tree.remove_command(self.find_similar.name, type=self.find_similar.type)

    async def _answer(
        self, results: SearchResults, title: str, channel: object, scope: Scope
    ) -> tuple[str, discord.File | None]:
        shown = [r for r in results.results if not r.image.nsfw or rules.nsfw_allowed(channel)][:SHOWN]
        hidden = len(results.results) - len(shown) if len(shown) < SHOWN else 0
        note = f"\n({hidden} flagged by the safety check: shown only in NSFW channels)" if hidden else ""
        if not shown:
            return "Nothing in this server's gallery matches." + note, None
        blobs = [await self.bot.engine.image_file(r.image.id, scope=scope) for r in shown]
        lines = [title] + [
            f"{k}. #{r.image.id} · seed {r.image.seed}"
            + (f" · stack of {r.image.stack_size}" if (r.image.stack_size or 0) > 1 else "")
            + f" · {render.clip(r.image.prompt, 200)}"
            for k, r in enumerate(shown, start=1)
        ]
        lines[-1] += note
        return render.clip("\n".join(lines), render.MESSAGE_LIMIT), discord.File(
            io.BytesIO(tile(blobs, size=256, max_cols=4)), "results.png"
        )

    async def _text_search(
        self, scope: Scope, channel: object, text: str, say, who: Requester, narrow: SearchOptions | None = None
    ) -> None:
        text = text.strip().strip('"').strip()
        if not text:
            await say('Give me something to look for: !search "red fox in snow" (or a saved search: !search @name)')
            return
        async with replying_errors(say):
            if text.startswith("@"):  # a saved search ("smart board") of this server's or this member's
                key = " ".join(text[1:].split()).casefold()
                saved = [s for s in await self.bot.engine.saved_searches(who) if s.name.casefold() == key]
                if not saved:
                    await say(f"No saved search named {render.clip(text, 60)} here.")
                    return
                results = await self.bot.engine.run_search(saved[0].id, who, limit=FETCHED)
                title = f"**@{saved[0].name}** ({render.clip(saved[0].query, 200)}), now:"
            else:  # leaving out what this member hid with 👎
                hidden = await own_board(self.bot, who, HIDDEN, create=False)
                filters = await self._filters(narrow, who, say) if narrow is not None else {}
                if filters is None:
                    return
                results = await self.bot.engine.search(text, limit=FETCHED, not_board=hidden, **filters,
                                                       **scope.params())  # fmt: skip
                title = f"Best matches for **{render.clip(text, 200)}**{narrow.said() if narrow else ''}:"
            content, file = await self._answer(results, title, channel, scope)
            await say(content, file=file or discord.utils.MISSING)

    async def _filters(self, narrow: SearchOptions, who: Requester, say) -> dict | None:
        """The slash command's options as the engine's filters (None: one was unknown, and `say` said so)."""
        filters: dict = {"tag": [narrow.tag] if narrow.tag else None, "derived_from": narrow.derived_from,
                         "stacks": narrow.stacks or None, "user": who.user if narrow.mine else None}  # fmt: skip
        if narrow.board:
            key = " ".join(narrow.board.split()).casefold()
            boards = [b for b in await self.bot.engine.boards(who) if b.name.casefold() == key]
            if not boards:
                await say(f"No board named {render.clip(narrow.board, 60)} here: see /board list.")
                return None
            filters["board"] = boards[0].id
        if narrow.favourites:
            filters["board"] = await own_board(self.bot, who, FAVOURITES, create=False)
            if filters["board"] is None:
                await say("You have no favourites here yet: react ⭐ to a result.")
                return None
        return filters

    @commands.command(name="search", help='!search "red circle": this server\'s best matches')
    async def search_command(self, ctx: commands.Context, *, text: str = "") -> None:
        who = requester_of(ctx.guild, ctx.channel, ctx.author)
        await self._text_search(scope_of(ctx.guild, ctx.channel, ctx.author), ctx.channel, text,
                                MessageReply(ctx.message).send, who)  # fmt: skip

    @app_commands.command(name="search", description="Find images in this server's gallery by words")
    @app_commands.describe(
        text="what to look for (words, `tag:NAME`, or @saved-search)", tag="only images with this tag",
        board="only images on this board", favourites="only your ⭐ favourites", mine="only images you made",
        stacks="one image per stack (images that differ only by seed)", derived_from="only images made from #id",
    )  # fmt: skip
    async def search_slash(
        self, interaction: discord.Interaction, text: str, tag: str | None = None, board: str | None = None,
        favourites: bool = False, mine: bool = False, stacks: bool = False,
        derived_from: app_commands.Range[int, 1, MAX_ID] | None = None,
    ) -> None:  # fmt: skip
        await interaction.response.defer(thinking=True)
        scope = scope_of(interaction.guild, interaction.channel, interaction.user)
        who = requester_of(interaction.guild, interaction.channel, interaction.user)
        narrow = SearchOptions(tag=tag, board=board, favourites=favourites, mine=mine, stacks=stacks,
                               derived_from=derived_from)  # fmt: skip
        await self._text_search(scope, interaction.channel, text, InteractionReply(interaction).send, who, narrow)

    async def _similar(self, scope: Scope, channel: object, source: discord.Message | int | None) -> tuple:
        """Images like a gallery image (an id, or the first of a result message) or a message's attached picture."""
        where = scope.params()  # every search of a DM is of that user's DM images only
        engine = self.bot.engine
        if isinstance(source, discord.Message) and image_ids_of(source):
            source = image_ids_of(source)[0]
        if isinstance(source, int):
            results = await engine.similar(source, limit=FETCHED, **where)
        elif isinstance(source, discord.Message) and source.attachments:
            results = await engine.search_image(await source.attachments[0].read(), limit=FETCHED, **where)
        else:
            return "Attach an image, reply to one, or give an image id: !similar 42", None
        return await self._answer(results, "Closest in this server's gallery:", channel, scope)

    @commands.command(name="similar", help="attach an image, or reply to one: images like it")
    async def similar_command(self, ctx: commands.Context, image_id: int | None = None) -> None:
        referenced = ctx.message.reference.resolved if ctx.message.reference else None
        source = (
            ctx.message
            if ctx.message.attachments
            else referenced
            if isinstance(referenced, discord.Message)
            else image_id
        )
        async with replying_errors(MessageReply(ctx.message).send):
            content, file = await self._similar(scope_of(ctx.guild, ctx.channel, ctx.author), ctx.channel, source)
            await ctx.reply(content, file=file or discord.utils.MISSING, mention_author=False)

    @app_commands.command(name="similar", description="Images in this server's gallery like image #id")
    async def similar_slash(self, interaction: discord.Interaction, image_id: int) -> None:
        await interaction.response.defer(thinking=True)
        await self._similar_reply(interaction, image_id)

    async def similar_menu(self, interaction: discord.Interaction, message: discord.Message) -> None:
        """The message context menu "Find similar": works on any message with one of our results or a picture."""
        await interaction.response.defer(thinking=True)
        await self._similar_reply(interaction, message)

    async def _similar_reply(self, interaction: discord.Interaction, source: discord.Message | int) -> None:
        reply = InteractionReply(interaction)
        scope = scope_of(interaction.guild, interaction.channel, interaction.user)
        async with replying_errors(reply.send):
            content, file = await self._similar(scope, interaction.channel, source)
            await reply.send(content, file=file or discord.utils.MISSING)

    async def _info(self, scope: Scope, ids: list[int]) -> str:
        lines = []
        for i in ids:
            try:
                image = await self.bot.engine.image(i, scope=scope)
            except RequestRejected:
                lines.append(f"#{i}: not in this server's gallery")
                continue
            lines.append(
                f"#{image.id} · seed {image.seed} · {image.steps} steps · {image.sampler} · cfg "
                f"{image.cfg_scale if image.cfg_scale is not None else '—'} · {image.width}x{image.height} · "
                f"model {image.model}\n> {render.clip(image.prompt, 300)}"
            )
        return render.clip("\n".join(lines), render.MESSAGE_LIMIT)

    async def _describe(self, scope: Scope, source: discord.Message | bytes | int | None, say) -> None:
        """Four prompts for a picture (attached, a result message's first image, or an image id), each with a
        button that dreams it."""
        if isinstance(source, discord.Message) and image_ids_of(source):
            source = image_ids_of(source)[0]
        elif isinstance(source, discord.Message) and source.attachments:
            source = await source.attachments[0].read()
        if not isinstance(source, (bytes, int)):
            await say("Attach an image, reply to one, or give an image id: !describe 42")
            return
        described = await self.bot.engine.describe(source, scope=scope)
        lines = ["Prompts for this picture (press a number to dream it):"]
        lines += [f"{k}. {render.clip(p, 400)}" for k, p in enumerate(described.prompts, start=1)]
        await say(render.clip("\n".join(lines), render.MESSAGE_LIMIT), view=describe_view(len(described.prompts)))

    @commands.command(name="describe", help="attach an image, or reply to one: four prompts for it")
    async def describe_command(self, ctx: commands.Context, image_id: int | None = None) -> None:
        referenced = ctx.message.reference.resolved if ctx.message.reference else None
        source = ctx.message if ctx.message.attachments else referenced if isinstance(referenced, discord.Message) \
            else image_id  # fmt: skip
        say = MessageReply(ctx.message).send
        async with replying_errors(say):
            await self._describe(scope_of(ctx.guild, ctx.channel, ctx.author), source, say)

    @app_commands.command(name="describe", description="Four prompts for a picture (Midjourney's /describe)")
    @app_commands.describe(image="a picture", image_id="or a gallery image id")
    async def describe_slash(self, interaction: discord.Interaction, image: discord.Attachment | None = None,
                             image_id: int | None = None) -> None:  # fmt: skip
        await interaction.response.defer(thinking=True)
        reply = InteractionReply(interaction)
        scope = scope_of(interaction.guild, interaction.channel, interaction.user)
        async with replying_errors(reply.send):
            await self._describe(scope, await image.read() if image is not None else image_id, reply.send)

    @commands.command(name="info", help="reply to a result (or !info <image id>): its prompt, seed and parameters")
    async def info_command(self, ctx: commands.Context, image_id: int | None = None) -> None:
        referenced = ctx.message.reference.resolved if ctx.message.reference else None
        ids = image_ids_of(referenced) if isinstance(referenced, discord.Message) else []
        ids = ids or ([image_id] if image_id is not None else [])
        if not ids:
            await ctx.reply("Reply to one of my results, or give an image id: !info 42", mention_author=False)
            return
        async with replying_errors(MessageReply(ctx.message).send):
            text = await self._info(scope_of(ctx.guild, ctx.channel, ctx.author), ids)
            await ctx.reply(text, mention_author=False)

    @app_commands.command(name="info", description="The prompt, seed and parameters of image #id")
    async def info_slash(self, interaction: discord.Interaction, image_id: int) -> None:
        await interaction.response.defer(thinking=True)
        reply = InteractionReply(interaction)
        async with replying_errors(reply.send):
            await reply.send(await self._info(scope_of(interaction.guild, interaction.channel, interaction.user),
                                              [image_id]))  # fmt: skip


async def setup(bot: DreamBot) -> None:
    await bot.add_cog(SearchCog(bot))
