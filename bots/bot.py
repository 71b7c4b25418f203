"""`dreamhall-bot`: the Discord bot, a client of a running Dreamhall engine.

DISCORD_TOKEN=... dreamhall-bot          # talks to the engine on $DREAMHALL_HOME/engine.sock
"""

from __future__ import annotations

import asyncio
import logging
import sys

import aiohttp
import discord
from discord import app_commands
from discord.ext import commands

from bots.flow import DreamFlow
from bots.views import DreamPrompt, ImageAction
from engine.client.clients import AsyncEngineClient, EngineUnavailable
from engine.client.settings import Settings

log = logging.getLogger(__name__)

OOPS = "Something went wrong on my side; it has been logged. Try again in a moment."
# What the bot needs where it dreams: read and answer, attach results, tidy its status messages.
INVITE_PERMISSIONS = discord.Permissions(
    view_channel=True, send_messages=True, send_messages_in_threads=True, attach_files=True, embed_links=True,
    read_message_history=True, manage_messages=True, use_application_commands=True,
)  # fmt: skip


class DreamBot(commands.Bot):
    """A `commands.Bot` with the engine client and settings passed in, never global."""

    def __init__(self, *, engine: AsyncEngineClient, settings: Settings, **options) -> None:
        intents = discord.Intents.default()
        intents.message_content = True  # `!dream` reads message text (a privileged intent)
        super().__init__(command_prefix=settings.bot.prefix, intents=intents, chunk_guilds_at_startup=False, **options)
        self.engine = engine
        self.settings = settings
        self.flow = DreamFlow(engine, settings.bot)  # one, shared by the commands and the buttons
        self.tree.on_error = self.on_app_command_error  # discord.py documents assigning it

    async def setup_hook(self) -> None:
        try:
            health = await self.engine.health()
            log.info("engine %s answers: %s, model %s", health.version, health.device, health.model)
        except EngineUnavailable:
            log.warning("no engine answers at %s yet: start one with `dreamhall engine` (each command will say "
                        "so until it does)", self.engine.where)  # fmt: skip
        await self.load_extension("bots.cogs.dream")
        await self.load_extension("bots.cogs.search")
        await self.load_extension("bots.cogs.organise")
        self.add_dynamic_items(ImageAction, DreamPrompt)  # persistent buttons: they work across restarts
        dev_guild = self.settings.bot.dev_guild
        if dev_guild is not None:
            # Guild commands appear at once; global ones can take an hour to propagate.
            guild = discord.Object(dev_guild)
            self.tree.copy_global_to(guild=guild)
            await self.tree.sync(guild=guild)
        else:
            await self.tree.sync()

    async def on_ready(self) -> None:
        assert self.user is not None
        invite = discord.utils.oauth_url(self.user.id, permissions=INVITE_PERMISSIONS,
                                         scopes=("bot", "applications.commands"))  # fmt: skip
        log.info("logged in as %s; invite me to a server with %s", self.user, invite)

    async def on_command_error(self, ctx: commands.Context, error: commands.CommandError) -> None:
        if isinstance(error, commands.CommandNotFound):
            return
        if isinstance(error, commands.UserInputError):
            await ctx.reply(f"⚠️ {error}", mention_author=False)
            return
        log.error("command %s failed", ctx.command, exc_info=error)
        await ctx.reply(OOPS, mention_author=False)

    async def on_app_command_error(self, interaction: discord.Interaction, error: app_commands.AppCommandError) -> None:
        log.error("app command failed", exc_info=error)
        if interaction.response.is_done():
            await interaction.followup.send(OOPS, ephemeral=True)
        else:
            await interaction.response.send_message(OOPS, ephemeral=True)


async def run(settings: Settings) -> None:
    assert settings.discord_token is not None
    async with AsyncEngineClient(settings.socket_path) as engine, DreamBot(engine=engine, settings=settings) as bot:
        await bot.start(settings.discord_token.get_secret_value())


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = Settings()
    if settings.discord_token is None:
        print("dreamhall-bot: set DISCORD_TOKEN (or discord_token in config.toml) to the bot's token", file=sys.stderr)
        return 2
    try:
        asyncio.run(run(settings))
    except discord.LoginFailure:
        print("dreamhall-bot: Discord refused the token; check DISCORD_TOKEN", file=sys.stderr)
        return 1
    except discord.PrivilegedIntentsRequired:
        print("dreamhall-bot: turn on the Message Content intent for this bot in Discord's developer portal "
              "(Bot > Privileged Gateway Intents); !dream reads message text", file=sys.stderr)  # fmt: skip
        return 1
    except (aiohttp.ClientConnectionError, OSError) as e:
        print(f"dreamhall-bot: cannot reach Discord ({type(e).__name__}: {str(e)[:200]}); "
              "check the network, then start the bot again", file=sys.stderr)  # fmt: skip
        return 1
    except KeyboardInterrupt:
        pass
    return 0
