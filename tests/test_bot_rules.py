"""The bot's guild rules and Discord-limit rendering, as plain functions."""

from __future__ import annotations

import io
from datetime import UTC, datetime

import numpy as np
from PIL import Image

from bots import render, rules
from engine.client.answers import ImageInfo, Job
from engine.client.dream_args import parse
from engine.client.schema import Requester
from engine.client.settings import BotSettings


def test_guild_limits_channels_and_banned_words() -> None:
    r = BotSettings(max_n=4, max_steps=30, max_size=512, allowed_channels=[10], banned_words=["gore"])
    ok = parse("a red circle -n 4 -s 30 -W 512")
    assert rules.check(ok, r, channel_id=10, nsfw=False) is None
    assert "dream channels" in rules.check(ok, r, channel_id=11, nsfw=False)
    assert "at most 4 images" in rules.check(parse("x -n 5"), r, channel_id=10, nsfw=False)
    assert "at most 30 steps" in rules.check(parse("x -s 31"), r, channel_id=10, nsfw=False)
    assert "at most 512 pixels" in rules.check(parse("x -H 520"), r, channel_id=10, nsfw=False)
    gory = parse("a scene full of GORE")
    assert "NSFW channels" in rules.check(gory, r, channel_id=10, nsfw=False)
    assert rules.check(gory, r, channel_id=10, nsfw=True) is None
    assert rules.check(parse("a gorey-free word: gorgeous"), r, channel_id=10, nsfw=False) is None


def test_servers_may_be_limited_to_some_models() -> None:
    r = BotSettings(allowed_models=["toy", "anime"], guild_models={42: ["photo"]})
    here, there = Requester(source="discord", user="1", guild="7"), Requester(source="discord", user="1", guild="42")
    assert rules.check(parse("x -m anime", requester=here), r, channel_id=1, nsfw=False) is None
    assert rules.check(parse("x", requester=here), r, channel_id=1, nsfw=False) is None  # the engine's default
    refused = rules.check(parse("x -m photo", requester=here), r, channel_id=1, nsfw=False)
    assert refused == "-m/--model: this server allows toy, anime (got photo)."
    assert rules.check(parse("x -m photo", requester=there), r, channel_id=1, nsfw=False) is None
    assert "allows photo" in rules.check(parse("x -m toy", requester=there), r, channel_id=1, nsfw=False)
    assert rules.allowed_models(BotSettings(), "7") == []  # no rule: whatever the engine has


def test_cooldown() -> None:
    cooldown = rules.Cooldown(60)
    assert cooldown.wait_left(1, 2) == 0
    cooldown.mark(1, 2)
    assert 59 < cooldown.wait_left(1, 2) <= 60
    assert cooldown.wait_left(1, 3) == 0 and rules.Cooldown(0).wait_left(1, 2) == 0


def test_messages_stay_within_discord_limits() -> None:
    request = parse("x" * 1990 + " -N " + "y" * 1990 + " -n 2")
    images = [ImageInfo(id=i, index=i, seed=i, width=64, height=64, path="p", sha256="s") for i in range(2)]
    job = Job(id="j", status="done", seed=0, images=images, request=request, created_at=datetime.now(UTC))
    text = render.describe(job)
    assert len(text) <= render.MESSAGE_LIMIT and "seed 0, 1" in text
    assert len(render.queued_text(request, 3, 42)) <= render.MESSAGE_LIMIT


def test_images_over_the_upload_limit_are_re_encoded() -> None:
    noise = np.random.default_rng(0).integers(0, 256, (512, 512, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(noise).save(buf, format="PNG")
    png = buf.getvalue()
    assert render.fit_upload(png, len(png), "a.png") == (png, "a.png")
    small, name = render.fit_upload(png, 100_000, "a.png")
    assert len(small) <= 100_000 and name == "a.jpg"
    assert Image.open(io.BytesIO(small)).format == "JPEG"
