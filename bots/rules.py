"""What a guild allows: the bot's rules, checked before anything reaches the engine.

Pure functions over the request and the bot's settings, so they are the same
for `!dream`, `/dream` and the buttons.
"""

from __future__ import annotations

import re
import time

from engine.client.schema import DreamRequest
from engine.client.settings import BotSettings


def check(request: DreamRequest, rules: BotSettings, *, channel_id: int, nsfw: bool) -> str | None:
    """Why `request` may not run here (one sentence for the user), or None."""
    if rules.allowed_channels and channel_id not in rules.allowed_channels:
        return "I only dream in this server's dream channels."
    allowed = allowed_models(rules, request.requester.guild)
    if request.model is not None and allowed and request.model not in allowed:
        return f"-m/--model: this server allows {', '.join(allowed)} (got {request.model})."
    if request.n > rules.max_n:
        return f"-n/--iterations: at most {rules.max_n} images per request in this server (got {request.n})."
    if request.steps > rules.max_steps:
        return f"-s/--steps: at most {rules.max_steps} steps in this server (got {request.steps})."
    for name, value in (("-W/--width", request.width), ("-H/--height", request.height)):
        if value is not None and value > rules.max_size:
            return f"{name}: at most {rules.max_size} pixels in this server (got {value})."
    if not nsfw:
        text = f"{request.prompt} {request.negative_prompt}".lower()
        for word in rules.banned_words:
            if re.search(rf"\b{re.escape(word.lower())}\b", text):
                return "That prompt uses a word this server allows only in NSFW channels."
    return None


def allowed_models(rules: BotSettings, guild: str | None) -> list[str]:
    """The checkpoints this server may use (empty: any the engine has); DMs follow the bot-wide rule."""
    if guild is not None and guild.isdigit() and int(guild) in rules.guild_models:
        return rules.guild_models[int(guild)]
    return rules.allowed_models


def nsfw_allowed(channel: object) -> bool:
    """Whether the channel is marked NSFW (threads follow their parent); DMs are not."""
    parent = getattr(channel, "parent", None)
    return bool(getattr(channel, "nsfw", False) or getattr(parent, "nsfw", False))


def flagged_text(flagged: int, total: int) -> str:
    return (f"⚠️ The safety check flagged {flagged} of {total} image(s), so nothing is posted here: "
            "flagged images are shown only in NSFW channels. They are kept in the gallery.")  # fmt: skip


class Cooldown:
    """Seconds a user must wait between requests (0: no cooldown)."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self._last: dict[tuple[int, int], float] = {}

    def wait_left(self, guild_id: int, user_id: int) -> float:
        if self.seconds <= 0:
            return 0.0
        last = self._last.get((guild_id, user_id))
        left = 0.0 if last is None else self.seconds - (time.monotonic() - last)
        return max(0.0, left)

    def mark(self, guild_id: int, user_id: int) -> None:
        self._last[(guild_id, user_id)] = time.monotonic()
