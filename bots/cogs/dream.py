"""`!dream`, `/dream`, `!queue` and `!cancel`: commands only; the flow is `bots.flow`, the buttons `bots.views`."""

from __future__ import annotations

import io
import re
from typing import TYPE_CHECKING

import discord
from discord import app_commands
from discord.ext import commands

from bots import render, rules
from bots.replies import InteractionReply, MessageReply, Reply, replying_errors, requester_of, scope_of
from engine.client.answers import ModelList
from engine.client.clients import EngineError, RequestRejected
from engine.client.controls import CONTROL_TYPES, control_type_named
from engine.client.dream_args import DreamArgsError, parse_argv, split
from engine.client.samplers import SAMPLERS
from engine.client.schema import ControlUnit, Requester

if TYPE_CHECKING:
    from bots.bot import DreamBot

LIST_FLAGS = {"--sref"}  # flags with several pictures
IMAGE_FLAGS = {"-I", "--init_img", "-M", "--init_mask", "--control", *LIST_FLAGS}  # values may be `att1`, `att2`...


class DreamCog(commands.Cog, name="Dream"):
    """Dreaming in Discord."""

    def __init__(self, bot: DreamBot) -> None:
        self.bot = bot

    # --- commands ----------------------------------------------------------------------
    @commands.command(name="dream", help='!dream "a red circle on a blue background" -n 4 -S 3220803958')
    async def dream_command(self, ctx: commands.Context, *, args: str = "") -> None:
        who = requester_of(ctx.guild, ctx.channel, ctx.author)
        reply = MessageReply(ctx.message)
        async with replying_errors(reply.send):
            argv = await self._attached(split(args), ctx.message.attachments)
            request = parse_argv(argv, requester=who)
            await self.bot.flow.run(request, reply, ctx.channel, ctx.author)

    async def _attached(self, argv: list[str], attachments: list[discord.Attachment]) -> list[str]:
        """The command with its attachments as image references: `att1`, `att2`... as the value of -I, -M or
        --control, or among --sref's pictures, name them in order; without such names, the first attached picture
        is the init image (img2img, or inpaint/outpaint with their flags)."""
        argv, named = list(argv), False
        flag: str | None = None  # the flag the word at hand may be a value of
        for i, word in enumerate(argv):
            number = re.fullmatch(r"att([0-9]+)", word.strip().lower())
            if number and flag in IMAGE_FLAGS:
                k = int(number[1])
                if not 1 <= k <= len(attachments):
                    raise DreamArgsError(f"{flag} {word}: this message has {len(attachments)} attached file(s)")
                argv[i], named = await self._upload(attachments[k - 1]), True
            if word.startswith("-"):
                flag = word
            elif flag not in LIST_FLAGS:
                flag = None  # one value each, but --sref takes every picture up to the next flag
        if attachments and not named and not {"-I", "--init_img"} & set(argv):
            argv += ["-I", await self._upload(attachments[0])]
        return argv

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
        model="-m (see /models)",
        negative="what to avoid (-N)",
        individual="separate images instead of a grid (-i)",
        style="a style of the engine's styles.csv (--style)",
        hires="the hires fix: draw, upscale by this factor, repaint (--hr)",
        clip_skip="stop the text encoder early (--clip_skip)",
        tiling="a seamless picture that tiles (--tiling)",
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
        model: str | None = None,
        negative: str | None = None,
        individual: bool = False,
        style: str | None = None,
        hires: float | None = None,
        clip_skip: int | None = None,
        tiling: bool = False,
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
            ("-m", model),
            ("-N", negative),
            ("--style", style),
            ("--hr", hires),
            ("--clip_skip", clip_skip),
        ):
            if value is not None:
                argv += [flag, str(value)]
        if individual:
            argv.append("-i")
        if tiling:
            argv.append("--tiling")
        reply = InteractionReply(interaction)
        who = requester_of(interaction.guild, interaction.channel, interaction.user)
        async with replying_errors(reply.send):
            request = parse_argv(argv + split(flags), requester=who)
            await self.bot.flow.run(request, reply, interaction.channel, interaction.user)

    @app_commands.command(name="blend", description="Blend 2-5 pictures into new images (Midjourney's /blend)")
    @app_commands.describe(
        image1="a picture", image2="another picture", image3="(optional)", image4="(optional)", image5="(optional)",
        prompt="words to add (optional: the pictures alone are the prompt)", flags="any other !dream flags",
    )  # fmt: skip
    async def blend_slash(
        self, interaction: discord.Interaction, image1: discord.Attachment, image2: discord.Attachment,
        image3: discord.Attachment | None = None, image4: discord.Attachment | None = None,
        image5: discord.Attachment | None = None, prompt: str = "", flags: str = "",
    ) -> None:  # fmt: skip
        await interaction.response.defer(thinking=True)
        reply = InteractionReply(interaction)
        who = requester_of(interaction.guild, interaction.channel, interaction.user)
        async with replying_errors(reply.send):
            pictures = [await self._upload(a) for a in (image1, image2, image3, image4, image5) if a is not None]
            # Midjourney's /blend makes four; the flags may say otherwise.
            argv = [*([prompt] if prompt.strip() else []), "-n", "4", *split(flags), "--sref", *pictures]
            request = parse_argv(argv, requester=who)
            await self.bot.flow.run(request, reply, interaction.channel, interaction.user)

    @app_commands.command(name="controlmap", description="See the map a ControlNet would steer with, before a dream")
    @app_commands.describe(image="a picture", type="how to read it (as --control_type)")
    @app_commands.choices(type=[app_commands.Choice(name=t, value=t) for t in CONTROL_TYPES])
    async def controlmap_slash(self, interaction: discord.Interaction, image: discord.Attachment,
                               type: str = "canny") -> None:  # fmt: skip
        await interaction.response.defer(thinking=True)
        reply = InteractionReply(interaction)
        who = requester_of(interaction.guild, interaction.channel, interaction.user)
        async with replying_errors(reply.send):
            await self._send_map(reply, await self._upload(image), type, who)

    @commands.command(name="controlmap", help="the map a ControlNet would read: !controlmap canny (attach a picture)")
    async def controlmap_command(self, ctx: commands.Context, type: str = "canny") -> None:
        reply = MessageReply(ctx.message)
        async with replying_errors(reply.send):
            if not ctx.message.attachments:
                raise DreamArgsError("attach the picture to read, e.g. !controlmap canny with a photo")
            ref = await self._upload(ctx.message.attachments[0])
            await self._send_map(reply, ref, type, requester_of(ctx.guild, ctx.channel, ctx.author))

    async def _send_map(self, reply: Reply, ref: str, type: str, who: Requester) -> None:
        try:
            unit = ControlUnit(image=ref, type=control_type_named(type))  # as --control_type reads it
        except ValueError as e:
            raise DreamArgsError(str(e)) from None
        png = await self.bot.engine.control_preview(unit, who)
        await reply.send(f"The **{type}** map a ControlNet would steer with (`--control_type {type}`):",
                         file=discord.File(io.BytesIO(png), filename=f"{type}-map.png"))  # fmt: skip

    @dream_slash.autocomplete("style")
    async def _style_choices(self, interaction: discord.Interaction, current: str) -> list[app_commands.Choice[str]]:
        try:
            names = [s.name for s in await self.bot.engine.styles()]
        except EngineError:
            return []
        return [app_commands.Choice(name=n, value=n) for n in names if current.lower() in n.lower()][:25]

    @dream_slash.autocomplete("model")
    async def _model_choices(self, interaction: discord.Interaction, current: str) -> list[app_commands.Choice[str]]:
        try:
            names = await self._model_names(interaction.guild)
        except EngineError:
            return []  # no suggestions; the dream itself will say what is wrong
        return [app_commands.Choice(name=n, value=n) for n in names if current.lower() in n.lower()][:25]

    async def _model_names(self, guild: discord.Guild | None, listing: ModelList | None = None) -> list[str]:
        """The engine's usable checkpoints that this server allows."""
        listing = listing or await self.bot.engine.models()
        allowed = rules.allowed_models(self.bot.settings.bot, str(guild.id) if guild else None)
        return [m.name for m in listing.checkpoints if m.problem is None and (not allowed or m.name in allowed)]

    async def _models_text(self, guild: discord.Guild | None) -> str:
        listing = await self.bot.engine.models()
        families = {m.name: m.family for m in listing.checkpoints}

        def entries(names_and_families: list[tuple[str, str | None]]) -> list[str]:
            return [f"• `{name}`" + (f" — {family}" if family else "") for name, family in names_and_families]

        lines = [f"**Models** — pick one with `-m NAME` (default: {listing.default})"]
        lines += entries([(n, families.get(n)) for n in await self._model_names(guild, listing)])
        if listing.loras:
            lines.append("**LoRAs** — add `<lora:NAME:0.8>` to a prompt")
            lines += entries([(m.name, m.family) for m in listing.loras])
        if listing.embeddings:
            lines.append("**Embeddings** — write `embedding:NAME` in a prompt")
            lines += entries([(m.name, m.family) for m in listing.embeddings])
        if controlnets := [m for m in listing.controlnets if m.problem is None]:
            lines.append("**ControlNets** — steer with a picture: `--control att1 --control_model NAME`")
            lines += entries([(m.name, m.family) for m in controlnets])
        if adapters := [m for m in listing.ip_adapters if m.problem is None]:
            lines.append("**Reference adapters** — carry a picture's look: `--sref att1` or `/blend`")
            lines += entries([(m.name, m.family) for m in adapters])
        return render.clip("\n".join(lines), render.MESSAGE_LIMIT)

    @commands.command(name="models", help="the models, LoRAs and embeddings you can use here")
    async def models_command(self, ctx: commands.Context) -> None:
        async with replying_errors(MessageReply(ctx.message).send):
            await ctx.reply(await self._models_text(ctx.guild), mention_author=False)

    @app_commands.command(name="models", description="The models, LoRAs and embeddings you can use here")
    async def models_slash(self, interaction: discord.Interaction) -> None:
        async with replying_errors(lambda text: interaction.response.send_message(text, ephemeral=True)):
            await interaction.response.send_message(await self._models_text(interaction.guild), ephemeral=True)

    async def _queue_text(self, guild: discord.Guild | None, channel: object, user: discord.abc.User) -> str:
        state = await self.bot.engine.queue(scope=scope_of(guild, channel, user))
        here = state.running + state.queued  # the engine sent only this server's (or this DM's) jobs
        mine = [j for j in here if j.request.requester.user == str(user.id)]
        lines = [
            f"This server: {len([j for j in here if j.status == 'running'])} running, "
            f"{len([j for j in here if j.status == 'queued'])} queued."
        ]
        for j in mine:
            where = "running" if j.status == "running" else f"position {(j.position or 0) + 1}"
            lines.append(f"• `{j.id[:8]}` {render.clip(j.request.prompt, 80)} — {where}")
        if not mine:
            lines.append("You have nothing queued.")
        return render.clip("\n".join(lines), render.MESSAGE_LIMIT)

    async def _cancel_text(self, guild: discord.Guild | None, channel: object, user: discord.abc.User,
                           job_id: str) -> str:  # fmt: skip
        state = await self.bot.engine.queue(scope=scope_of(guild, channel, user))
        mine = [j for j in state.running + state.queued
                if j.request.requester.user == str(user.id) and j.id.startswith(job_id)]  # fmt: skip
        if not mine:
            return "You have no job to cancel here."
        target = max(mine, key=lambda j: j.created_at)
        await self.bot.engine.cancel(target.id)
        return f"Cancelled `{target.id[:8]}`."

    @commands.command(name="queue", help="your queued jobs and this server's")
    async def queue_command(self, ctx: commands.Context) -> None:
        async with replying_errors(MessageReply(ctx.message).send):
            await ctx.reply(await self._queue_text(ctx.guild, ctx.channel, ctx.author), mention_author=False)

    @app_commands.command(name="queue", description="Your queued dreams and this server's")
    async def queue_slash(self, interaction: discord.Interaction) -> None:
        async with replying_errors(lambda text: interaction.response.send_message(text, ephemeral=True)):
            text = await self._queue_text(interaction.guild, interaction.channel, interaction.user)
            await interaction.response.send_message(text, ephemeral=True)

    @commands.command(name="cancel", help="cancel your latest job (or !cancel <job id>)")
    async def cancel_command(self, ctx: commands.Context, job_id: str = "") -> None:
        async with replying_errors(MessageReply(ctx.message).send):
            await ctx.reply(await self._cancel_text(ctx.guild, ctx.channel, ctx.author, job_id), mention_author=False)

    @app_commands.command(name="cancel", description="Cancel your latest dream (or the one whose id starts so)")
    async def cancel_slash(self, interaction: discord.Interaction, job_id: str = "") -> None:
        async with replying_errors(lambda text: interaction.response.send_message(text, ephemeral=True)):
            text = await self._cancel_text(interaction.guild, interaction.channel, interaction.user, job_id)
            await interaction.response.send_message(text, ephemeral=True)


async def setup(bot: DreamBot) -> None:
    await bot.add_cog(DreamCog(bot))
