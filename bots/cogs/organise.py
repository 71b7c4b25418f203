"""Organising this server's gallery from Discord: reactions on a result and `!board` / `/board`.

    ⭐ or ❤️ on a result   its images go on the reacting member's own "Favourites" board (taking it off: removed)
    👎 on a result          its images go on the member's own "Hidden" board: their searches leave them out
    !board list | create NAME | add NAME ID… | remove NAME ID… | show NAME    (and /board)

A board made with `!board create` is shared with the whole server (any member adds and removes; only its creator
renames or deletes it); Favourites and Hidden are the member's own.
"""

from __future__ import annotations

import contextlib
import io
from typing import TYPE_CHECKING

import discord
from discord import app_commands
from discord.ext import commands

from bots import render
from bots.replies import InteractionReply, MessageReply, replying_errors, requester_of
from bots.views import image_ids_of
from engine.client.clients import RequestRejected
from engine.client.grid import tile
from engine.client.schema import Requester

if TYPE_CHECKING:
    from bots.bot import DreamBot

FAVOURITES, HIDDEN = "Favourites", "Hidden"
REACTIONS = {"⭐": FAVOURITES, "❤️": FAVOURITES, "❤": FAVOURITES, "👎": HIDDEN}
BOARD_ACTIONS = ("list", "create", "add", "remove", "show")


async def own_board(bot: DreamBot, who: Requester, name: str, *, create: bool) -> int | None:
    """The member's own board `name` (Favourites, Hidden), made on first use when `create`."""
    for board in await bot.engine.boards(who):
        if board.name == name and not board.shared:
            return board.id
    if not create:
        return None
    return (await bot.engine.create_board(name, who)).id


class OrganiseCog(commands.Cog, name="Boards"):
    def __init__(self, bot: DreamBot) -> None:
        self.bot = bot

    # --- reactions ---------------------------------------------------------------------------------
    @commands.Cog.listener()
    async def on_raw_reaction_add(self, payload: discord.RawReactionActionEvent) -> None:
        await self._reacted(payload, add=True)

    @commands.Cog.listener()
    async def on_raw_reaction_remove(self, payload: discord.RawReactionActionEvent) -> None:
        await self._reacted(payload, add=False)

    async def _reacted(self, payload: discord.RawReactionActionEvent, *, add: bool) -> None:
        board_name = REACTIONS.get(str(payload.emoji))
        if board_name is None or self.bot.user is None or payload.user_id == self.bot.user.id:
            return
        channel = self.bot.get_channel(payload.channel_id)
        if not isinstance(channel, discord.abc.Messageable):
            return
        with contextlib.suppress(discord.HTTPException):
            message = await channel.fetch_message(payload.message_id)
            ids = image_ids_of(message)
            if not ids or message.author.id != self.bot.user.id:
                return
            guild = self.bot.get_guild(payload.guild_id) if payload.guild_id else None
            # a removal carries no member: the id is all a requester needs
            who = requester_of(guild, channel, discord.Object(id=payload.user_id))
            with contextlib.suppress(RequestRejected):  # an image deleted since: nothing to mark
                board = await own_board(self.bot, who, board_name, create=add)
                if board is not None and add:
                    await self.bot.engine.board_add(board, ids, who)
                elif board is not None:
                    await self.bot.engine.board_remove(board, ids, who)

    # --- !board and /board -------------------------------------------------------------------------
    async def _board(self, who: Requester, action: str, name: str, ids: list[int]) -> tuple[str, bytes | None]:
        engine = self.bot.engine
        if action == "list":
            boards = await engine.boards(who)
            lines = [f"**{b.name}**{'' if b.shared else ' (yours)'}: {b.count} image(s)" for b in boards]
            return "\n".join(lines) or "No boards here yet: !board create Sunsets", None
        if not name:
            ids_hint = " 42 43" if action in ("add", "remove") else ""
            return f"Give the board's name: !board {action} NAME{ids_hint}", None
        if action == "create":
            board = await engine.create_board(name, who, shared=True)
            return f"Board **{board.name}** made: anyone here can add to it (!board add {board.name} 42).", None
        board = next((b for b in await engine.boards(who) if b.name.casefold() == name.casefold()), None)
        if board is None:
            return f"No board named {render.clip(name, 60)} here (!board list).", None
        if action == "show":
            page = await engine.images(limit=4, board=board.id, **who.model_dump(include={"guild"}))
            blobs = [await engine.image_file(i.id) for i in page.images]
            text = f"**{board.name}**: {page.total} image(s)" + (", the newest:" if blobs else "")
            return text, tile(blobs, size=256, max_cols=4) if blobs else None
        if not ids:
            return f"Give image ids: !board {action} {board.name} 42 43", None
        changed = await (engine.board_add if action == "add" else engine.board_remove)(board.id, ids, who)
        return f"**{changed.name}** now holds {changed.count} image(s).", None

    @commands.command(name="board", help="!board list | create NAME | add NAME ID… | remove NAME ID… | show NAME")
    async def board_command(self, ctx: commands.Context, action: str = "list", *words: str) -> None:
        say = MessageReply(ctx.message).send
        if action not in BOARD_ACTIONS:
            await say(f"!board takes one of: {', '.join(BOARD_ACTIONS)}")
            return
        ids = [int(w) for w in words if w.isascii() and w.isdigit()]
        name = " ".join(w for w in words if not (w.isascii() and w.isdigit()))
        async with replying_errors(say):
            text, picture = await self._board(requester_of(ctx.guild, ctx.channel, ctx.author), action, name, ids)
            await say(text, file=discord.File(io.BytesIO(picture), "board.png") if picture else discord.utils.MISSING)

    @app_commands.command(name="board", description="This server's boards: list, create, add, remove, show")
    @app_commands.choices(action=[app_commands.Choice(name=a, value=a) for a in BOARD_ACTIONS])
    @app_commands.describe(name="the board's name", images="image ids, e.g. 42 43")
    async def board_slash(
        self, interaction: discord.Interaction, action: str, name: str = "", images: str = ""
    ) -> None:
        await interaction.response.defer(thinking=True)
        reply = InteractionReply(interaction)
        ids = [int(w) for w in images.replace(",", " ").split() if w.isascii() and w.isdigit()]
        async with replying_errors(reply.send):
            who = requester_of(interaction.guild, interaction.channel, interaction.user)
            text, picture = await self._board(who, action, name, ids)
            await reply.send(
                text, file=discord.File(io.BytesIO(picture), "board.png") if picture else discord.utils.MISSING
            )


async def setup(bot: DreamBot) -> None:
    await bot.add_cog(OrganiseCog(bot))
