"""`!dream` and `/dream`: one flow from request to result grid, plus the result buttons, `!queue` and `!cancel`."""

from __future__ import annotations

import contextlib
import io
import logging
import time
from typing import TYPE_CHECKING, Protocol

import discord
from discord import app_commands
from discord.ext import commands

from bots import render, rules
from bots.views import result_view
from engine.client import EngineUnavailable, RequestRejected
from engine.dream_args import DreamArgsError, parse_argv, split
from engine.schema import SAMPLERS, DreamRequest, Job, Requester, upscale_of, variation_of

if TYPE_CHECKING:
    from bots.bot import DreamBot

log = logging.getLogger(__name__)


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


class DreamCog(commands.Cog, name="DreamCog"):
    """Dreaming in Discord."""

    def __init__(self, bot: DreamBot) -> None:
        self.bot = bot
        self.rules = bot.settings.bot
        self.cooldown = rules.Cooldown(self.rules.cooldown_s)

    # --- commands ----------------------------------------------------------------------
    @commands.command(name="dream", help='!dream "a red circle on a blue background" -n 4 -S 3220803958')
    async def dream_command(self, ctx: commands.Context, *, args: str = "") -> None:
        who = requester_of(ctx.guild, ctx.channel, ctx.author)  # type: ignore[arg-type]
        try:
            argv = split(args)
            if ctx.message.attachments and not {"-I", "--init_img"} & set(argv):
                # An attached picture is the init image: img2img, or inpaint/outpaint with their flags.
                argv += ["-I", await self._upload(ctx.message.attachments[0])]
            request = parse_argv(argv, requester=who)
        except DreamArgsError as e:
            await ctx.reply(f"⚠️ {e}", mention_author=False)
            return
        except EngineUnavailable:
            await ctx.reply(render.ENGINE_DOWN, mention_author=False)
            return
        await self.run(request, MessageReply(ctx.message), ctx.channel, ctx.author)

    async def _upload(self, attachment: discord.Attachment) -> str:
        """Send an attachment to the engine; its reference, or a DreamArgsError saying what is wrong."""
        if attachment.size > self.bot.settings.max_body_bytes:
            raise DreamArgsError(f"the attached file is too large ({attachment.size // 1024} KiB)")
        try:
            return (await self.bot.engine.upload(await attachment.read())).ref
        except RequestRejected as e:
            raise DreamArgsError(f"the attached file {attachment.filename}: {e}") from None
        except discord.HTTPException as e:
            raise DreamArgsError(f"could not download the attached file ({e.status})") from None

    @app_commands.command(name="dream", description="Make images from a prompt (same flags as !dream)")
    @app_commands.describe(
        prompt="what to draw",
        n="how many images (-n)",
        seed="seed of the first image (-S)",
        width="-W",
        height="-H",
        steps="-s",
        cfg="guidance (-C)",
        sampler="-A",
        negative="what to avoid (-N)",
        individual="separate images instead of a grid (-i)",
        flags="any other !dream flags, e.g. --ar 16:9",
    )
    @app_commands.choices(sampler=[app_commands.Choice(name=s, value=s) for s in SAMPLERS])
    async def dream_slash(
        self,
        interaction: discord.Interaction,
        prompt: str,
        n: int | None = None,
        seed: int | None = None,
        width: int | None = None,
        height: int | None = None,
        steps: int | None = None,
        cfg: float | None = None,
        sampler: str | None = None,
        negative: str | None = None,
        individual: bool = False,
        flags: str = "",
    ) -> None:
        await interaction.response.defer(thinking=True)
        argv = [prompt]
        for flag, value in (
            ("-n", n),
            ("-S", seed),
            ("-W", width),
            ("-H", height),
            ("-s", steps),
            ("-C", cfg),
            ("-A", sampler),
            ("-N", negative),
        ):
            if value is not None:
                argv += [flag, str(value)]
        if individual:
            argv.append("-i")
        reply = InteractionReply(interaction)
        try:
            request = parse_argv(
                argv + split(flags), requester=requester_of(interaction.guild, interaction.channel, interaction.user)
            )  # type: ignore[arg-type]
        except DreamArgsError as e:
            await reply.send(f"⚠️ {e}")
            return
        await self.run(request, reply, interaction.channel, interaction.user)  # type: ignore[arg-type]

    @commands.command(name="queue", help="your queued jobs and this server's")
    async def queue_command(self, ctx: commands.Context) -> None:
        try:
            state = await self.bot.engine.queue()
        except EngineUnavailable:
            await ctx.reply(render.ENGINE_DOWN, mention_author=False)
            return
        guild = str(ctx.guild.id) if ctx.guild else None
        here = [j for j in state.running + state.queued if j.request.requester.guild == guild]
        mine = [j for j in here if j.request.requester.user == str(ctx.author.id)]
        lines = [
            f"This server: {len([j for j in here if j.status == 'running'])} running, "
            f"{len([j for j in here if j.status == 'queued'])} queued."
        ]
        for j in mine:
            where = "running" if j.status == "running" else f"position {(j.position or 0) + 1}"
            lines.append(f"• `{j.id[:8]}` {render.clip(j.request.prompt, 80)} — {where}")
        if not mine:
            lines.append("You have nothing queued.")
        await ctx.reply(render.clip("\n".join(lines), render.MESSAGE_LIMIT), mention_author=False)

    @commands.command(name="cancel", help="cancel your latest job (or !cancel <job id>)")
    async def cancel_command(self, ctx: commands.Context, job_id: str = "") -> None:
        try:
            state = await self.bot.engine.queue()
            guild, user = (str(ctx.guild.id) if ctx.guild else None), str(ctx.author.id)
            mine = [
                j
                for j in state.running + state.queued
                if j.request.requester.guild == guild and j.request.requester.user == user and j.id.startswith(job_id)
            ]
            if not mine:
                await ctx.reply("You have no job to cancel here.", mention_author=False)
                return
            target = max(mine, key=lambda j: j.created_at)
            await self.bot.engine.cancel(target.id)
        except EngineUnavailable:
            await ctx.reply(render.ENGINE_DOWN, mention_author=False)
            return
        await ctx.reply(f"Cancelled `{target.id[:8]}`.", mention_author=False)

    # --- the flow ------------------------------------------------------------------------
    async def run(
        self, request: DreamRequest, reply: Reply, channel: discord.abc.Messageable, user: discord.abc.User
    ) -> None:
        """Check the rules, queue the job, keep one status message current, post the result."""
        guild = getattr(channel, "guild", None)
        gid = guild.id if guild else 0
        nsfw = rules.nsfw_allowed(channel)
        reason = rules.check(request, self.rules, channel_id=getattr(channel, "id", 0), nsfw=nsfw)
        if reason is None and (left := self.cooldown.wait_left(gid, user.id)) > 0:
            reason = f"Slow down: you can dream again in {left:.0f} s."
        engine = self.bot.engine
        try:
            if reason is None:
                state = await engine.queue()
                mine = [j for j in state.queued if j.request.requester.queue_key == request.requester.queue_key]
                if len(mine) >= self.rules.max_queued_per_user:
                    reason = f"You already have {len(mine)} dreams queued here; wait for one to finish."
            if reason is not None:
                await reply.send(f"⚠️ {reason}")
                return
            self.cooldown.mark(gid, user.id)
            accepted = await engine.submit(request)
        except RequestRejected as e:
            await reply.send(f"⚠️ {e}")
            return
        except EngineUnavailable:
            await reply.send(render.ENGINE_DOWN)
            return
        status = await reply.send(render.queued_text(request, accepted.position, accepted.seed))
        status = await self._follow(accepted.id, status)
        job = await engine.job(accepted.id)
        if job.status != "done":
            text = f"⚠️ The dream {job.status}" + (f": {job.error}" if job.error else ".")
            if not await self._edit(status, text):
                await reply.send(text)
            return
        flagged = sum(i.nsfw for i in job.images)
        if flagged and not nsfw:
            text = rules.flagged_text(flagged, len(job.images))
            if not await self._edit(status, text):
                await reply.send(text)
            return
        await self._post_result(job, reply, guild)
        if status is not None:
            with contextlib.suppress(discord.HTTPException):  # already gone: nothing to tidy
                await status.delete()

    async def _follow(self, job_id: str, status: discord.Message | None) -> discord.Message | None:
        """Edit the status message as the job moves, at most every `progress_every_s`."""
        last = 0.0
        async for event in self.bot.engine.events(job_id):
            if event.type not in {"queued", "started", "step"} or status is None:
                continue
            now = time.monotonic()
            if now - last < self.rules.progress_every_s and event.type == "step":
                continue
            last = now
            if event.type == "queued":
                text = f"Waiting: position {(event.position or 0) + 1} in the queue"
            else:
                text = f"Dreaming… step {event.step or 0}/{event.total or 0}"
            if not await self._edit(status, text):
                status = None  # deleted by someone (10008) or the token expired: carry on without it
        return status

    @staticmethod
    async def _edit(message: discord.Message | None, text: str) -> bool:
        if message is None:
            return False
        try:
            await message.edit(content=text)
            return True
        except discord.HTTPException:
            return False

    async def _post_result(self, job: Job, reply: Reply, guild: discord.Guild | None) -> None:
        limit = guild.filesize_limit if guild else 10 * 1024 * 1024
        if job.request.layout == "individual":
            blobs = [(await self.bot.engine.image_file(i.id), f"dream-{i.seed}.png") for i in job.images]
        else:
            blobs = [(await self.bot.engine.grid(job.id), f"dream-{job.images[0].seed}-grid.png")]
        files = [discord.File(*_as_file(data, name, limit)) for data, name in blobs]
        await reply.send(render.describe(job), files=files, view=result_view(job))

    # --- buttons -------------------------------------------------------------------------
    async def on_action(self, interaction: discord.Interaction, action: str, image_id: int) -> None:
        engine = self.bot.engine
        try:
            image = await engine.image(image_id)
        except (RequestRejected, EngineUnavailable) as e:
            await interaction.response.send_message(f"⚠️ {e}", ephemeral=True)
            return
        if interaction.guild is not None and image.guild != str(interaction.guild.id):
            await interaction.response.send_message("⚠️ That image is not in this server's gallery.", ephemeral=True)
            return
        who = requester_of(interaction.guild, interaction.channel, interaction.user)  # type: ignore[arg-type]
        if action == "delete":
            await self._delete(interaction, image)
            return
        try:
            if action == "reroll":  # the same job again with new seeds
                original = (await engine.job(image.job_id)).request if image.job_id else None
                if original is None:
                    raise ValueError(f"image #{image.id} was imported, not dreamed here: nothing to reroll")
                request = original.model_copy(update={"seed": None, "variation_seed": None, "requester": who})
            elif action == "upscale":
                request = upscale_of(image, factor=2, requester=who)
            else:
                n = min(4, self.rules.max_n)
                request = variation_of(image, amount=self.rules.variation_amount, n=n, requester=who)
        except (ValueError, RequestRejected) as e:
            await interaction.response.send_message(f"⚠️ {e}", ephemeral=True)
            return
        except EngineUnavailable:
            await interaction.response.send_message(render.ENGINE_DOWN, ephemeral=True)
            return
        await interaction.response.defer(thinking=True)
        await self.run(request, InteractionReply(interaction), interaction.channel, interaction.user)  # type: ignore[arg-type]

    async def _delete(self, interaction: discord.Interaction, image) -> None:
        is_owner = image.user == str(interaction.user.id)
        perms = interaction.permissions
        if not (is_owner or perms.manage_messages):
            await interaction.response.send_message(
                "Only the person who asked for these images, or a moderator, can delete them.", ephemeral=True
            )
            return
        ids = [i.id for i in (await self.bot.engine.job(image.job_id)).images] if image.job_id else [image.id]
        for i in ids:
            with contextlib.suppress(RequestRejected):  # already deleted
                await self.bot.engine.delete_image(i)
        await interaction.response.send_message(f"Deleted {len(ids)} image(s).", ephemeral=True)
        if interaction.message is not None:
            with contextlib.suppress(discord.HTTPException):
                await interaction.message.delete()


def _as_file(data: bytes, name: str, limit: int) -> tuple:
    fitted, fitted_name = render.fit_upload(data, limit, name)
    return io.BytesIO(fitted), fitted_name


async def setup(bot: DreamBot) -> None:
    await bot.add_cog(DreamCog(bot))
