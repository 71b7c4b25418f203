"""A local stand-in of Discord's REST API and gateway, for the real discord.py client.

Serves on 127.0.0.1 only. Point the client at it with `FakeDiscord.patch_client()`
(sets `discord.http.Route.BASE` and `DiscordWebSocket.DEFAULT_GATEWAY`). It
records every request, keeps the messages the bot posts (including uploaded
files), and lets a test play users: messages, slash commands, button clicks.
"""

from __future__ import annotations

import asyncio
import itertools
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import discord
import yarl
from aiohttp import WSMsgType, web

_ids = itertools.count(1_200_000_000_000_000_000)


def snowflake() -> str:
    return str(next(_ids))


def json_response(data: Any, status: int = 200) -> web.Response:
    # discord.py wants exactly `application/json` (aiohttp's json_response adds a charset).
    return web.Response(body=json.dumps(data).encode(), status=status, headers={"Content-Type": "application/json"})


def message_object(mid: str, channel_id: str, author: dict, content: str, attachments: list[dict],
                   **extra: object) -> dict:  # fmt: skip
    """A message as Discord's API and gateway describe it."""
    return {
        "id": mid, "channel_id": channel_id, "author": author, "content": content,
        "timestamp": "2026-11-21T00:00:00+00:00", "edited_timestamp": None, "tts": False,
        "mention_everyone": False, "mentions": [], "mention_roles": [], "attachments": attachments,
        "embeds": [], "components": [], "pinned": False, "type": 0, "flags": 0, **extra,
    }  # fmt: skip


ALL_PERMISSIONS = str((1 << 50) - 1)
MEMBER_PERMISSIONS = str(discord.Permissions(send_messages=True, attach_files=True, read_messages=True).value)


@dataclass
class Posted:
    """A message the bot created (or an interaction answer), with its files. A waiting job's status may carry the
    "while you wait" grid: kept in `waiting`, apart from `files` (which tests read as "the result")."""

    id: str
    channel_id: str
    payload: dict
    files: dict[str, bytes] = field(default_factory=dict)
    waiting: dict[str, bytes] = field(default_factory=dict)
    edits: list[dict] = field(default_factory=list)
    deleted: bool = False
    via: str = "channel"  # channel, interaction, followup
    interaction: str | None = None  # for follow-ups: the interaction they answer

    @property
    def content(self) -> str:
        return (self.edits[-1] if self.edits else self.payload).get("content") or self.payload.get("content") or ""

    @property
    def custom_ids(self) -> list[str]:
        rows = (self.edits[-1] if self.edits and "components" in self.edits[-1] else self.payload).get("components")
        return [c["custom_id"] for row in rows or [] for c in row.get("components", []) if "custom_id" in c]


class FakeDiscord:
    """One bot user, a few guilds with one text channel each, and users to play."""

    def __init__(self, guilds: dict[str, str] | None = None, *, nsfw: frozenset[str] = frozenset()) -> None:
        """`nsfw`: the guilds whose channel is marked NSFW."""
        self.app_id = snowflake()
        self.bot_user = {"id": self.app_id, "username": "dreamhall", "discriminator": "0", "avatar": None, "bot": True}
        self.guilds: dict[str, dict] = {}
        for gid, name in (guilds or {"111": "guild-a", "222": "guild-b"}).items():
            self.guilds[gid] = self._guild(gid, name)
            self.guilds[gid]["channels"][0]["nsfw"] = gid in nsfw
        self.requests: list[tuple[str, str]] = []
        self.posted: dict[str, Posted] = {}
        self.attachments: dict[str, bytes] = {}
        self.said: dict[str, dict] = {}  # users' messages, by id
        self.dm_channels: dict[str, str] = {}  # user id -> their DM channel with the bot
        self.refuse_intents = False  # close IDENTIFY with 4014, as Discord does when Message Content is off
        self.commands: list[dict] = []
        self.ws: web.WebSocketResponse | None = None
        self.seq = 0
        self.identified = asyncio.Event()
        self.changed = asyncio.Condition()
        self._interactions: dict[str, dict] = {}
        self.base = ""

    # --- world -----------------------------------------------------------------------
    def _guild(self, gid: str, name: str) -> dict:
        channel = {
            "id": f"{gid}0",
            "type": 0,
            "name": "dreams",
            "position": 0,
            "guild_id": gid,
            "nsfw": False,
            "permission_overwrites": [],
        }
        everyone = {
            "id": gid,
            "name": "@everyone",
            "permissions": MEMBER_PERMISSIONS,
            "position": 0,
            "color": 0,
            "hoist": False,
            "managed": False,
            "mentionable": False,
        }
        bot_member = {
            "user": self.bot_user,
            "roles": [],
            "joined_at": "2026-01-01T00:00:00+00:00",
            "deaf": False,
            "mute": False,
            "flags": 0,
        }
        return {
            "id": gid,
            "name": name,
            "channels": [channel],
            "roles": [everyone],
            "members": [bot_member],
            "member_count": 2,
            "owner_id": "1",
            "features": [],
            "emojis": [],
            "stickers": [],
            "threads": [],
            "premium_tier": 0,
            "large": False,
            "unavailable": False,
        }

    def channel_of(self, guild_id: str) -> str:
        return self.guilds[guild_id]["channels"][0]["id"]

    @staticmethod
    def user(uid: str) -> dict:
        return {"id": uid, "username": f"user{uid}", "discriminator": "0", "avatar": None, "global_name": None}

    # --- server ----------------------------------------------------------------------
    async def start(self) -> FakeDiscord:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_get("/gateway", self._gateway)
        app.router.add_get("/attachments/{id}/{name}", self._attachment)
        app.router.add_route("*", "/api/v10/{tail:.*}", self._rest)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.base = f"http://127.0.0.1:{port}"
        return self

    def patch_client(self) -> None:
        discord.http.Route.BASE = f"{self.base}/api/v10"
        discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(
            f"ws://127.0.0.1:{self.base.rsplit(':', 1)[1]}/gateway"
        )

    async def stop(self) -> None:
        if self.ws is not None:
            await self.ws.close()
        await self.runner.cleanup()

    async def _attachment(self, request: web.Request) -> web.Response:
        return web.Response(body=self.attachments[request.match_info["id"]], content_type="image/png")

    # --- gateway ---------------------------------------------------------------------
    async def _gateway(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        self.ws = ws
        await ws.send_json({"op": 10, "d": {"heartbeat_interval": 45000}})
        async for msg in ws:
            if msg.type != WSMsgType.TEXT:
                continue
            data = json.loads(msg.data)
            if data["op"] == 1:
                await ws.send_json({"op": 11})
            elif data["op"] == 2 and self.refuse_intents:
                await ws.close(code=4014, message=b"Disallowed intent(s).")  # as Discord does without the intent
                return ws
            elif data["op"] == 2:
                await self.dispatch(
                    "READY",
                    {
                        "v": 10,
                        "user": self.bot_user,
                        "session_id": "fake-session",
                        "guilds": [{"id": g, "unavailable": True} for g in self.guilds],
                        "resume_gateway_url": f"{self.base}/gateway",
                        "application": {"id": self.app_id, "flags": 0},
                        "private_channels": [],
                        "relationships": [],
                    },
                )
                for guild in self.guilds.values():
                    await self.dispatch("GUILD_CREATE", guild)
                self.identified.set()
        return ws

    async def dispatch(self, event: str, data: dict) -> None:
        self.seq += 1
        assert self.ws is not None, "the bot has not connected"
        await self.ws.send_json({"op": 0, "t": event, "s": self.seq, "d": data})

    # --- REST ------------------------------------------------------------------------
    async def _rest(self, request: web.Request) -> web.Response:
        path = "/" + request.match_info["tail"]
        self.requests.append((request.method, path))
        payload, files = await self._body(request)
        parts = path.strip("/").split("/")
        try:
            response = await self._route(request.method, parts, payload, files)
        finally:
            async with self.changed:
                self.changed.notify_all()
        return response

    async def _body(self, request: web.Request) -> tuple[dict, dict[str, bytes]]:
        if request.content_type.startswith("multipart/"):
            payload, files = {}, {}
            reader = await request.multipart()
            async for part in reader:
                if part.name == "payload_json":
                    payload = json.loads(await part.text())
                else:
                    files[part.filename or part.name or "file"] = await part.read()
            return payload, files
        if request.can_read_body:
            raw = await request.read()
            return (json.loads(raw) if raw else {}), {}
        return {}, {}

    def _message(self, posted: Posted) -> dict:
        payload = posted.edits[-1] if posted.edits else posted.payload
        attachments = [
            {
                "id": snowflake(),
                "filename": n,
                "size": len(b),
                "url": f"{self.base}/x/{n}",
                "proxy_url": f"{self.base}/x/{n}",
            }
            for n, b in posted.files.items()
        ]
        return message_object(
            posted.id, posted.channel_id, self.bot_user, posted.content, attachments,
            embeds=payload.get("embeds") or [], components=payload.get("components") or [],
            flags=payload.get("flags", 0),
        )  # fmt: skip

    def _post(self, channel_id: str, payload: dict, files: dict[str, bytes], via: str) -> Posted:
        waiting = {n: b for n, b in files.items() if n == "while-you-wait.png"}
        files = {n: b for n, b in files.items() if n not in waiting}
        posted = Posted(id=snowflake(), channel_id=channel_id, payload=payload, files=files, waiting=waiting, via=via)
        self.posted[posted.id] = posted
        return posted

    async def _route(self, method: str, p: list[str], payload: dict, files: dict[str, bytes]) -> web.Response:
        if p == ["users", "@me"]:
            return json_response(self.bot_user)
        if p == ["oauth2", "applications", "@me"]:
            return json_response(
                {
                    "id": self.app_id,
                    "name": "dreamhall",
                    "icon": None,
                    "description": "",
                    "bot_public": True,
                    "bot_require_code_grant": False,
                    "verify_key": "0" * 64,
                    "owner": self.user("1"),
                    "flags": 0,
                    "team": None,
                    "summary": "",
                }
            )
        if p[0] == "applications" and p[-1] == "commands":
            self.commands = [{"description": "", **c, "id": snowflake(), "application_id": self.app_id, "version": "1"}
                             for c in payload]  # fmt: skip
            return json_response(self.commands)
        if p[0] == "channels" and p[2:3] == ["messages"]:
            if method == "POST" and len(p) == 3:
                return json_response(self._message(self._post(p[1], payload, files, "channel")))
            posted = self.posted.get(p[3]) if len(p) > 3 else None
            if posted is None or posted.deleted:
                return json_response({"message": "Unknown Message", "code": 10008}, status=404)
            if method == "PATCH":
                posted.edits.append(payload)
                posted.files.update(files)
                return json_response(self._message(posted))
            if method == "DELETE":
                posted.deleted = True
                return web.Response(status=204)
            return json_response(self._message(posted))
        if p[0] == "channels" and p[2:3] == ["typing"]:
            return web.Response(status=204)
        if p[0] == "interactions" and p[-1] == "callback":
            data = payload.get("data") or {}
            posted = self._post(
                self._interactions[p[1]]["channel_id"], {**data, "type": payload["type"]}, files, "interaction"
            )
            self._interactions[p[1]]["answer"] = posted
            return json_response(
                {
                    "interaction": {"id": p[1], "type": self._interactions[p[1]]["type"]},
                    "resource": {"type": payload["type"], "message": self._message(posted)},
                }
            )
        if p[0] == "webhooks":
            token = p[2]
            iid, interaction = next((k, i) for k, i in self._interactions.items() if i["token"] == token)
            if interaction.get("expired"):
                return json_response({"message": "Invalid Webhook Token", "code": 50027}, status=401)
            if method == "POST" and len(p) == 3:
                posted = self._post(interaction["channel_id"], payload, files, "followup")
                posted.interaction = iid
                return json_response(self._message(posted))
            target = interaction.get("answer") if p[4] == "@original" else self.posted.get(p[4])
            if target is None or target.deleted:
                return json_response({"message": "Unknown Message", "code": 10008}, status=404)
            if method == "DELETE":
                target.deleted = True
                return web.Response(status=204)
            target.edits.append(payload)
            target.files.update(files)
            return json_response(self._message(target))
        return json_response({"message": f"not in the fake: {method} /{'/'.join(p)}", "code": 0}, status=404)

    # --- playing users -----------------------------------------------------------------
    def _member(self, uid: str, admin: bool = False) -> dict:
        return {
            "user": self.user(uid),
            "roles": [],
            "joined_at": "2026-01-01T00:00:00+00:00",
            "deaf": False,
            "mute": False,
            "flags": 0,
            "permissions": ALL_PERMISSIONS if admin else MEMBER_PERMISSIONS,
        }

    async def say(
        self, guild_id: str, uid: str, content: str, *, attachment: bytes | None = None, reply_to: str | None = None,
        attachments: Sequence[bytes] = (),
    ) -> str:  # fmt: skip
        """A user posts `content` in the guild's channel, with `attachment` or several `attachments`; returns the
        message id."""
        mid = snowflake()
        files = [self._attachment_object(snowflake(), data)
                 for data in ([attachment] if attachment is not None else list(attachments))]  # fmt: skip
        data = message_object(mid, self.channel_of(guild_id), self.user(uid), content, files)
        data |= {"guild_id": guild_id, "member": self._member(uid)}
        if reply_to is not None:
            data["message_reference"] = {"message_id": reply_to, "channel_id": self.channel_of(guild_id)}
            referenced = self.said.get(reply_to) or self._message(self.posted[reply_to])
            data["referenced_message"] = referenced
            data["type"] = 19
        self.said[mid] = data
        await self.dispatch("MESSAGE_CREATE", data)
        return mid

    async def react(self, guild_id: str, uid: str, message: Posted, emoji: str, *, remove: bool = False) -> None:
        """A user adds (or takes back) a reaction on a message the bot posted."""
        data = {"user_id": uid, "channel_id": message.channel_id, "message_id": message.id, "guild_id": guild_id,
                "emoji": {"id": None, "name": emoji}, "type": 0, "burst": False}  # fmt: skip
        if not remove:
            data["member"] = self._member(uid)
        await self.dispatch("MESSAGE_REACTION_REMOVE" if remove else "MESSAGE_REACTION_ADD", data)

    async def say_dm(self, uid: str, content: str) -> str:
        """A user writes to the bot in a direct message (no guild); returns the message id."""
        mid = snowflake()
        data = message_object(mid, self.dm_channel_of(uid), self.user(uid), content, [])
        self.said[mid] = data
        await self.dispatch("MESSAGE_CREATE", data)
        return mid

    def dm_channel_of(self, uid: str) -> str:
        return self.dm_channels.setdefault(uid, snowflake())

    async def interact(
        self, guild_id: str, uid: str, itype: int, data: dict, *, message: Posted | None = None, admin: bool = False
    ) -> str:
        iid, token = snowflake(), f"token-{snowflake()}"
        payload = {
            "id": iid,
            "application_id": self.app_id,
            "type": itype,
            "data": data,
            "guild_id": guild_id,
            "channel_id": self.channel_of(guild_id),
            "channel": self.guilds[guild_id]["channels"][0],
            "member": self._member(uid, admin),
            "token": token,
            "version": 1,
            "locale": "en-US",
            "guild_locale": "en-US",
            "app_permissions": ALL_PERMISSIONS,
            "entitlements": [],
            "attachment_size_limit": 10 * 1024 * 1024,
            "authorizing_integration_owners": {},
            "context": 0,
        }
        if message is not None:
            payload["message"] = self._message(message)
        self._interactions[iid] = {"token": token, "channel_id": payload["channel_id"], "type": itype}
        await self.dispatch("INTERACTION_CREATE", payload)
        return iid

    async def slash(self, guild_id: str, uid: str, name: str, **options: Any) -> str:
        """A user runs slash command `name`; an option given as bytes is an attached file (type 11)."""
        command = next(c for c in self.commands if c["name"] == name)
        types = {str: 3, int: 4, bool: 5, float: 10}
        opts, files = [], {}
        for k, v in options.items():
            if isinstance(v, bytes):
                aid = snowflake()
                files[aid] = self._attachment_object(aid, v)
                opts.append({"name": k, "type": 11, "value": aid})
            else:
                opts.append({"name": k, "type": types[type(v)], "value": v})
        data = {"id": command["id"], "name": name, "type": 1, "options": opts}
        if files:
            data["resolved"] = {"attachments": files}
        return await self.interact(guild_id, uid, 2, data)

    def _attachment_object(self, aid: str, data: bytes) -> dict:
        self.attachments[aid] = data
        return {"id": aid, "filename": "image.png", "size": len(data), "content_type": "image/png",
                "url": f"{self.base}/attachments/{aid}/image.png",
                "proxy_url": f"{self.base}/attachments/{aid}/image.png"}  # fmt: skip

    async def autocomplete(self, guild_id: str, uid: str, name: str, focused: str, **options: Any) -> str:
        """A user types in option `focused` of command `name` (its text is in `options`); type 4."""
        command = next(c for c in self.commands if c["name"] == name)
        opts = [{"name": k, "type": 3, "value": v, **({"focused": True} if k == focused else {})}
                for k, v in options.items()]  # fmt: skip
        return await self.interact(guild_id, uid, 4, {"id": command["id"], "name": name, "type": 1, "options": opts})

    async def click(self, guild_id: str, uid: str, message: Posted, custom_id: str, *, admin: bool = False) -> str:
        return await self.interact(
            guild_id, uid, 3, {"custom_id": custom_id, "component_type": 2}, message=message, admin=admin
        )

    async def context_menu(self, guild_id: str, uid: str, name: str, message: Posted) -> str:
        """A user picks the message command `name` (Apps ▸ name) on `message`."""
        command = next(c for c in self.commands if c["name"] == name and c.get("type") == 3)
        data = {"id": command["id"], "name": name, "type": 3, "target_id": message.id,
                "resolved": {"messages": {message.id: self._message(message)}}}  # fmt: skip
        return await self.interact(guild_id, uid, 2, data)

    async def submit_modal(self, guild_id: str, uid: str, modal: Posted, values: dict[str, str]) -> str:
        """A user sends the modal the bot opened (`modal`: its type 9 answer), text inputs set by custom id."""

        def filled(component: dict) -> dict:
            if component.get("type") == 4:
                return {"type": 4, "custom_id": component["custom_id"],
                        "value": values.get(component["custom_id"], component.get("value", ""))}  # fmt: skip
            if "components" in component:
                return {**component, "components": [filled(c) for c in component["components"]]}
            if "component" in component:
                return {**component, "component": filled(component["component"])}
            return component

        data = {"custom_id": modal.payload["custom_id"], "components": [filled(c) for c in modal.payload["components"]]}
        return await self.interact(guild_id, uid, 5, data)

    def expire(self, interaction_id: str) -> None:
        """From now on, the interaction's token is refused (as Discord does after 15 minutes)."""
        self._interactions[interaction_id]["expired"] = True

    def answer_to(self, interaction_id: str) -> Posted | None:
        return self._interactions[interaction_id].get("answer")

    async def wait_for(self, predicate: Callable[[], Any], timeout: float = 60.0) -> Any:
        """Wait until `predicate()` is truthy (checked after every request the bot makes)."""

        async def check() -> Any:
            async with self.changed:
                while not (result := predicate()):
                    await self.changed.wait()
                return result

        return await asyncio.wait_for(check(), timeout)

    def in_channel(self, guild_id: str) -> list[Posted]:
        return [m for m in self.posted.values() if m.channel_id == self.channel_of(guild_id)]
