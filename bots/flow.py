"""The dream flow, shared by `!dream`, `/dream` and the result buttons: rules, queue, progress, result."""

from __future__ import annotations

import contextlib
import io
import logging
import time

import discord

from bots import render, rules
from bots.replies import Reply, replying_errors
from bots.views import result_view
from engine.client.answers import Job
from engine.client.clients import AsyncEngineClient
from engine.client.errors import EngineError
from engine.client.grid import tile
from engine.client.schema import DreamRequest, Scope
from engine.client.settings import BotSettings
from engine.client.waiting import nearest_query, worth_showing

log = logging.getLogger(__name__)


class DreamFlow:
    """From a request to a posted result, keeping one status message current on the way."""

    def __init__(self, engine: AsyncEngineClient, bot_rules: BotSettings) -> None:
        self.engine = engine
        self.rules = bot_rules
        self.cooldown = rules.Cooldown(bot_rules.cooldown_s)

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
        accepted = None
        scope = Scope.of(request.requester)
        async with replying_errors(reply.send):
            if reason is None:
                state = await self.engine.queue(scope=scope)
                mine = [j for j in state.queued if j.request.requester.queue_key == request.requester.queue_key]
                if len(mine) >= self.rules.max_queued_per_user:
                    reason = f"You already have {len(mine)} dreams queued here; wait for one to finish."
            if reason is not None:
                await reply.send(f"⚠️ {reason}")
                return
            self.cooldown.mark(gid, user.id)
            accepted = await self.engine.submit(request)
        if accepted is None:
            return
        text, nearest = render.queued_text(request, accepted.position, accepted.seed), None
        if worth_showing(accepted):
            nearest = await self._while_you_wait(request, channel)
        if nearest is not None:
            text, file = render.clip(text + "\n" + nearest[0], render.MESSAGE_LIMIT), nearest[1]
            status = await reply.send(text, file=file)
        else:
            status = await reply.send(text)
        status = await self._follow(accepted.id, status)
        job = await self.engine.job(accepted.id, scope=scope)
        if job.status != "done":
            text = f"⚠️ The dream {job.status}" + (f": {render.clip(job.error, 1500)}" if job.error else ".")
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

    async def _while_you_wait(self, request: DreamRequest, channel: object) -> tuple[str, discord.File] | None:
        """A waiting job's status shows the nearest images of this server's gallery (a grid under the text)."""
        query = nearest_query(request)
        if query is None:
            return None
        scope = Scope.of(request.requester)
        try:
            found = await self.engine.search(**query)
            shown = [r.image for r in found.results if not r.image.nsfw or rules.nsfw_allowed(channel)]
            if not shown:
                return None
            blobs = [await self.engine.image_file(i.id, scope=scope) for i in shown]
        except EngineError as e:  # a nicety: the dream goes on without it
            log.info("no 'while you wait' images: %s", e)
            return None
        text = "While you wait, from this gallery: " + ", ".join(f"#{i.id}" for i in shown)
        return text, discord.File(io.BytesIO(tile(blobs, size=192, max_cols=4)), "while-you-wait.png")

    async def _follow(self, job_id: str, status: discord.Message | None) -> discord.Message | None:
        """Edit the status message as the job moves, at most every `progress_every_s`."""
        last = 0.0
        async for event in self.engine.events(job_id):
            if event.type not in {"queued", "started", "loading", "step"} or status is None:
                continue
            now = time.monotonic()
            if now - last < self.rules.progress_every_s and event.type == "step":
                continue
            last = now
            if event.type == "queued":
                text = f"Waiting: position {(event.position or 0) + 1} in the queue"
            elif event.type == "loading":
                text = f"Loading the model {event.model}…"
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
            scope = Scope.of(job.request.requester)
            blobs = [(await self.engine.image_file(i.id, scope=scope), f"dream-{i.seed}.png") for i in job.images]
        else:
            blobs = [(await self.engine.grid(job.id), f"dream-{job.images[0].seed}-grid.png")]
        files = [discord.File(*_as_file(data, name, limit)) for data, name in blobs]
        await reply.send(render.describe(job), files=files, view=result_view(job))


def _as_file(data: bytes, name: str, limit: int) -> tuple:
    fitted, fitted_name = render.fit_upload(data, limit, name)
    return io.BytesIO(fitted), fitted_name
