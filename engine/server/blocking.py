"""Blocking calls over the queue: the APIs whose clients wait for the images in the answer (AUTOMATIC1111's,
OpenAI's) submit an ordinary job, in the same fair queue, and answer when its stream ends."""

from __future__ import annotations

import asyncio
import functools

from engine.client.answers import Job
from engine.client.schema import DreamRequest
from engine.server.services import Services


async def finished(s: Services, request: DreamRequest) -> Job:
    """Submit `request` and wait for its job's end (done, failed or cancelled)."""
    accepted = await asyncio.to_thread(s.jobs.submit, request)
    async for _ in s.hub.follow(accepted.id, functools.partial(s.jobs.snapshot, accepted.id)):
        pass  # to the job's last event
    return await asyncio.to_thread(s.jobs.get, accepted.id)
