"""Where the bot answers (under a message, or as an interaction's follow-ups), and how errors become answers."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Protocol

import discord

from bots import render
from engine.client.clients import EngineUnavailable, RequestRejected
from engine.client.dream_args import DreamArgsError
from engine.client.schema import Requester, Scope


class Reply(Protocol):
    """Where a flow answers: under a `!dream` message, or as follow-ups of a slash command or button."""

    async def send(self, content: str, **kwargs) -> discord.Message | None: ...


class MessageReply:
    def __init__(self, message: discord.Message) -> None:
        self.message = message

    async def send(self, content: str, **kwargs) -> discord.Message | None:
        return await self.message.reply(content, mention_author=False, **kwargs)


class InteractionReply:
    """Follow-ups of a deferred interaction; past the 15-minute token, falls back to the channel."""

    def __init__(self, interaction: discord.Interaction) -> None:
        self.interaction = interaction

    async def send(self, content: str, **kwargs) -> discord.Message | None:
        try:
            return await self.interaction.followup.send(content, wait=True, **kwargs)
        except (discord.NotFound, discord.Forbidden, discord.HTTPException) as e:
            if isinstance(e, discord.HTTPException) and e.status not in (401, 403, 404):
                raise
            channel = self.interaction.channel
            if isinstance(channel, discord.abc.Messageable):
                return await channel.send(content, **kwargs)
            return None


def requester_of(
    guild: discord.Guild | None, channel: discord.abc.GuildChannel | discord.Thread | None, user: discord.abc.User
) -> Requester:
    return Requester(
        source="discord",
        user=str(user.id),
        guild=str(guild.id) if guild else None,
        channel=str(channel.id) if channel else None,
    )


def scope_of(
    guild: discord.Guild | None, channel: discord.abc.GuildChannel | discord.Thread | None, user: discord.abc.User
) -> Scope:
    """What a Discord user may see from here: this server's gallery, or in a DM their own DM images."""
    scope = Scope.of(requester_of(guild, channel, user))
    assert scope is not None  # a Discord requester always has one
    return scope


@contextlib.asynccontextmanager
async def replying_errors(say: Callable[[str], Awaitable[object]]) -> AsyncIterator[None]:
    """Answer the errors a user can act on with one line, and end the command there.

    A refused request or a bad flag: the engine's (or parser's) sentence; no engine: ENGINE_DOWN.
    Anything else is a bug: it propagates to the bot's error handler, which logs it.
    """
    try:
        yield
    except (DreamArgsError, RequestRejected) as e:
        await say(f"⚠️ {render.clip(str(e), render.MESSAGE_LIMIT - 10)}")
    except EngineUnavailable:
        await say(render.ENGINE_DOWN)
