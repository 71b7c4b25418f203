"""The real discord.py client, running DreamBot against a local stand-in of Discord and a real engine process."""

from __future__ import annotations

import asyncio
import contextlib
import io
from collections.abc import AsyncIterator, Iterator

import discord
import numpy as np
import pytest
from PIL import Image

from bots.bot import DreamBot
from engine.client.clients import AsyncEngineClient
from engine.client.settings import BotSettings, Settings
from engine.server.control_maps import preprocess
from models import toyworld
from models.checker import judge
from models.toyworld import control_disc
from tests.conftest import EngineProcess
from tests.fake_discord import FakeDiscord, Posted

pytestmark = pytest.mark.slow
A, B = "111", "222"
RED = "a red circle on a blue background"


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EngineProcess]:
    proc = EngineProcess(tmp_path_factory.mktemp("home"), None).start()  # the built-in offline models
    yield proc
    proc.stop()


class World:
    def __init__(self, fake: FakeDiscord, engine: EngineProcess) -> None:
        self.fake = fake
        self.engine = engine
        self.bot: DreamBot | None = None

    async def start_bot(self, **rules) -> DreamBot:
        rules = {"dev_guild": int(A), "progress_every_s": 0.5, "max_queued_per_user": 5, **rules}
        settings = Settings(home=self.engine.home, bot=BotSettings(**rules))
        self.client = AsyncEngineClient(self.engine.socket)
        self.bot = DreamBot(engine=self.client, settings=settings)
        self.fake.identified.clear()
        self.task = asyncio.create_task(self.bot.start("fake-token"))
        await asyncio.wait_for(self.fake.identified.wait(), 30)
        await asyncio.wait_for(self.bot.wait_until_ready(), 30)
        return self.bot

    async def stop_bot(self) -> None:
        assert self.bot is not None
        await self.bot.close()
        await asyncio.wait_for(self.task, 10)
        await self.client.aclose()

    def replies_to(self, message_id: str) -> list[Posted]:
        return [
            p
            for p in self.fake.posted.values()
            if str((p.payload.get("message_reference") or {}).get("message_id")) == message_id
        ]

    async def result_for(self, message_id: str, timeout: float = 90) -> Posted:
        """The bot's answer with files (the result) to a user's message."""
        return await self.fake.wait_for(
            lambda: next((p for p in self.replies_to(message_id) if p.files), None), timeout
        )

    async def text_reply(self, message_id: str, timeout: float = 30) -> Posted:
        return await self.fake.wait_for(lambda: next(iter(self.replies_to(message_id)), None), timeout)


@contextlib.asynccontextmanager
async def bot_world(engine: EngineProcess) -> AsyncIterator[World]:
    """The Discord stand-in and a running bot on `engine`; discord.py's endpoints are put back after."""
    saved = discord.http.Route.BASE, discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY
    fake = await FakeDiscord().start()
    fake.patch_client()
    w = World(fake, engine)
    await w.start_bot()
    try:
        yield w
    finally:
        await w.stop_bot()
        await fake.stop()
        discord.http.Route.BASE, discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = saved


@pytest.fixture
async def world(engine: EngineProcess) -> AsyncIterator[World]:
    async with bot_world(engine) as w:
        yield w


def png_sizes(posted: Posted) -> list[tuple[int, int]]:
    return [Image.open(io.BytesIO(data)).size for data in posted.files.values()]


async def test_dream_posts_a_grid_with_seeds_and_buttons(world: World) -> None:
    mid = await world.fake.say(A, "7", '!dream "a red circle on a blue background" -n 4 -S 3220803958 -s 4')
    result = await world.result_for(mid)
    assert png_sizes(result) == [(128, 128)]  # one 2x2 grid of the built-in model's 64 px images
    assert "3220803958, 3220803959, 3220803960, 3220803961" in result.content
    assert "a red circle on a blue background" in result.content
    actions = [c.split(":")[1] for c in result.custom_ids]
    assert actions == ["upscale"] * 4 + ["variation"] * 4 + ["reroll", "remix", "delete"]
    # Progress went through one status message, which is removed once the result is up.
    status = [p for p in world.replies_to(mid) if not p.files]
    assert len(status) == 1
    await world.fake.wait_for(lambda: status[0].deleted)


async def follow_up_result(world: World, iid: str) -> Posted:
    deferred = await world.fake.wait_for(lambda: world.fake.answer_to(iid))
    assert deferred.payload["type"] == 5
    return await world.fake.wait_for(
        lambda: next((p for p in world.fake.posted.values() if p.via == "followup" and p.files
                      and p.interaction == iid), None), 90)  # fmt: skip


async def test_individual_images_then_v2_and_u3_act_on_the_right_image(world: World) -> None:
    mid = await world.fake.say(A, "7", '!dream "a red circle on a blue background" -n 4 -i -S 5 -s 6')
    result = await world.result_for(mid)
    assert len(result.files) == 4
    ids = [int(c.rsplit(":", 1)[1]) for c in result.custom_ids if c.startswith("dreamhall:variation:")]
    assert len(ids) == 4
    v2 = await follow_up_result(world, await world.fake.click(A, "7", result, f"dreamhall:variation:{ids[1]}"))
    assert f"variations of #{ids[1]} (amount 0.25)" in v2.content
    assert png_sizes(v2) == [(128, 128)]  # four variations, as a grid
    parent = await world.client.image(ids[1])
    children = [int(c.rsplit(":", 1)[1]) for c in v2.custom_ids if c.startswith("dreamhall:upscale:")]
    for child in [await world.client.image(i) for i in children]:
        assert child.parent_id == ids[1] and child.seed == parent.seed and child.relation == "variation"
    u3 = await follow_up_result(world, await world.fake.click(A, "7", result, f"dreamhall:upscale:{ids[2]}"))
    assert f"x2 upscale of #{ids[2]}" in u3.content and png_sizes(u3) == [(128, 128)]
    # An upscale has no seed noise of its own to vary: no V buttons under it.
    assert not [c for c in u3.custom_ids if ":variation:" in c]


async def test_slash_dream_defers_then_follows_up_with_files(world: World) -> None:
    iid = await world.fake.slash(A, "8", "dream", prompt="a blue square", n=2, seed=11, steps=3)
    deferred = await world.fake.wait_for(lambda: world.fake.answer_to(iid))
    assert deferred.payload["type"] == 5  # deferred channel message, within Discord's 3 s
    result = await world.fake.wait_for(
        lambda: next((p for p in world.fake.posted.values() if p.via == "followup" and p.files), None), 90
    )
    assert "seed 11, 12" in result.content


async def test_flag_errors_are_one_helpful_line(world: World) -> None:
    mid = await world.fake.say(A, "7", "!dream a red circle -n 40")
    reply = await world.text_reply(mid)
    assert reply.content == "⚠️ -n/--iterations (n): must be between 1 and 16 (got 40)"
    mid = await world.fake.say(A, "7", "!dream a red circle -n 9")  # the server's own limit
    reply = await world.text_reply(mid)
    assert "at most 4 images per request in this server" in reply.content
    mid = await world.fake.say(A, "7", '!dream "unclosed -n 2')
    assert "unbalanced quotes" in (await world.text_reply(mid)).content


async def test_a_deleted_status_message_does_not_break_the_job(world: World) -> None:
    mid = await world.fake.say(A, "9", "!dream a yellow triangle -n 2 -s 40 -W 128 -H 128")
    status = await world.text_reply(mid)
    status.deleted = True  # a moderator removed it: further edits get 10008 Unknown Message
    result = await world.result_for(mid)
    assert result.files and "a yellow triangle" in result.content


async def test_a_guild_never_finds_another_guilds_images(world: World) -> None:
    mid_a = await world.fake.say(A, "7", "!dream an octagon made of glass -n 1 -s 2")
    result_a = await world.result_for(mid_a)
    mid_b = await world.fake.say(B, "5", "!dream a cube made of wood -n 1 -s 2")
    await world.result_for(mid_b)
    a_ids = {c.rsplit(":", 1)[1] for c in result_a.custom_ids}
    search = await world.fake.say(B, "5", '!search "octagon made of glass"')
    answer = await world.text_reply(search)
    assert not any(f"#{i} " in answer.content for i in a_ids)
    search = await world.fake.say(A, "7", '!search "octagon made of glass"')
    answer = await world.text_reply(search)
    assert any(f"#{i} " in answer.content for i in a_ids) and answer.files


async def test_a_burst_does_not_starve_a_second_user(world: World) -> None:
    # steps differ: A's jobs cannot share one call (a user's jobs next in fair order would), so each takes its turn
    burst = [await world.fake.say(A, "1", f"!dream burst {k} -n 2 -s {30 + k} -W 128 -H 128") for k in range(3)]
    await world.fake.wait_for(lambda: all(world.replies_to(m) for m in burst))  # all three are queued
    other = await world.fake.say(A, "2", "!dream just one -n 1 -s 3")
    results = [await world.result_for(m, timeout=300) for m in [*burst, other]]
    order = list(world.fake.posted)
    # The bot handles each message in its own task, so A's three jobs reach the engine in any
    # order; what round robin promises is that B's job runs after A's first and before the rest.
    a_first, a_second, a_third = sorted(order.index(r.id) for r in results[:3])
    assert a_first < order.index(results[3].id) < a_second < a_third


async def test_delete_needs_the_requester_or_a_moderator(world: World) -> None:
    mid = await world.fake.say(A, "7", "!dream a doomed rhombus -n 1 -s 2")
    result = await world.result_for(mid)
    delete = next(c for c in result.custom_ids if ":delete:" in c)
    refused = await world.fake.click(A, "99", result, delete)
    answer = await world.fake.wait_for(lambda: world.fake.answer_to(refused))
    assert "Only the person who asked" in answer.payload["content"] and not result.deleted
    allowed = await world.fake.click(A, "7", result, delete)
    await world.fake.wait_for(lambda: world.fake.answer_to(allowed))
    await world.fake.wait_for(lambda: result.deleted)
    search = await world.fake.say(A, "7", '!search "doomed rhombus"')
    image_id = delete.rsplit(":", 1)[1]
    assert f"#{image_id} " not in (await world.text_reply(search)).content


async def test_buttons_survive_a_bot_restart_and_reroll_draws_a_new_seed(world: World) -> None:
    mid = await world.fake.say(A, "7", "!dream a patient circle -n 1 -S 1234 -s 2")
    result = await world.result_for(mid)
    await world.fake.wait_for(lambda: all(p.deleted for p in world.replies_to(mid) if not p.files))
    await world.stop_bot()
    await world.start_bot()
    reroll = next(c for c in result.custom_ids if ":reroll:" in c)
    iid = await world.fake.click(A, "7", result, reroll)
    assert (await world.fake.wait_for(lambda: world.fake.answer_to(iid))).payload["type"] == 5
    again = await world.fake.wait_for(
        lambda: next((p for p in world.fake.posted.values() if p.via == "followup" and p.files
                      and "a patient circle" in p.content), None), 90,
    )  # fmt: skip
    assert "seed 1234 " not in again.content


async def test_info_and_similar(world: World) -> None:
    mid = await world.fake.say(A, "7", "!dream a distinctive pentagon -n 1 -S 77 -s 2")
    result = await world.result_for(mid)
    info = await world.fake.say(A, "7", "!info", reply_to=result.id)
    assert "seed 77" in (await world.text_reply(info)).content
    similar = await world.fake.say(A, "7", "!similar", attachment=next(iter(result.files.values())))
    answer = await world.text_reply(similar)
    assert answer.files and "Closest" in answer.content


async def test_queue_and_cancel(world: World) -> None:
    mid = await world.fake.say(A, "3", "!dream a slow hexagon -n 2 -s 50 -W 256 -H 256")
    await world.text_reply(mid)
    queue = await world.fake.say(A, "3", "!queue")
    answer = (await world.text_reply(queue)).content
    assert "This server:" in answer and "a slow hexagon" in answer
    cancel = await world.fake.say(A, "3", "!cancel")
    assert "Cancelled" in (await world.text_reply(cancel)).content
    status = world.replies_to(mid)[0]
    await world.fake.wait_for(lambda: "cancelled" in status.content)


async def test_an_attachment_is_the_init_image(world: World) -> None:
    mid = await world.fake.say(A, "7", '!dream "a red circle on a blue background" -n 1 -S 3 -s 8')
    red = next(iter((await world.result_for(mid)).files.values()))
    mid = await world.fake.say(A, "7", '!dream "a blue circle on a white background" -f 0.8 -n 2 -S 9', attachment=red)
    result = await world.result_for(mid)
    assert "img2img of the attached image (strength 0.8)" in result.content
    ids = [int(c.rsplit(":", 1)[1]) for c in result.custom_ids if c.startswith("dreamhall:upscale:")]
    images = [Image.open(io.BytesIO(await world.client.image_file(i))) for i in ids]
    assert [judge(im).colour for im in images].count("blue") >= 1
    bad = await world.fake.say(A, "7", "!dream anything", attachment=b"not an image at all")
    assert "the attached file image.png: not a readable image" in (await world.text_reply(bad)).content


async def test_attachments_named_att1_att2_steer_as_controls(world: World) -> None:
    disc = io.BytesIO()
    control_disc(128).save(disc, format="PNG")
    mid = await world.fake.say(A, "7", f'!dream "{RED}" --control att1 --control_type none -n 2 -S 1',
                               attachments=[disc.getvalue()])  # fmt: skip
    result = await world.result_for(mid)
    assert "control: none map of an attached image" in result.content
    assert "img2img" not in result.content  # a named attachment is a control, not the init image
    ids = [int(c.rsplit(":", 1)[1]) for c in result.custom_ids if c.startswith("dreamhall:upscale:")]
    record = await world.client.image(ids[0])
    assert record.params["controls"][0]["model"] == "toy-silhouette"
    missing = await world.fake.say(A, "7", f'!dream "{RED}" --control att2', attachments=[disc.getvalue()])
    assert "--control att2: this message has 1 attached file(s)" in (await world.text_reply(missing)).content
    # --sref names several: a control and two references in one message, none of them the init image
    both = await world.fake.say(A, "7", '!dream "a circle" --control att1 -n 1 -S 2 --sref att2 att3',
                                attachments=[disc.getvalue(), disc.getvalue(), disc.getvalue()])  # fmt: skip
    steered = await world.result_for(both)
    assert "references: 2 picture(s)" in steered.content and "img2img" not in steered.content


async def test_the_control_map_is_shown_before_a_dream(world: World) -> None:
    buf = io.BytesIO()
    control_disc(128).save(buf, format="PNG")
    mid = await world.fake.say(A, "7", "!controlmap canny", attachment=buf.getvalue())
    shown = await world.result_for(mid)
    (png,) = shown.files.values()
    shown_map = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))
    assert np.array_equal(shown_map, np.asarray(preprocess(control_disc(128), "canny")))  # the engine's own map
    iid = await world.fake.slash(A, "8", "controlmap", image=buf.getvalue(), type="openpose")
    refused = await world.fake.wait_for(
        lambda: next((p for p in world.fake.posted.values() if p.interaction == iid and p.via == "followup"), None)
    )
    assert "annotators/body_pose_model.pth" in refused.content


async def test_blend_makes_four_images_from_two_to_five_pictures(world: World) -> None:
    buf = io.BytesIO()
    toyworld.render(toyworld.Scene("circle", "green", "gray"), np.random.default_rng(7)).save(buf, format="PNG")
    green = buf.getvalue()
    iid = await world.fake.slash(A, "8", "blend", image1=green, image2=green, prompt="a circle", flags="-S 5")
    result = await world.fake.wait_for(
        lambda: next((p for p in world.fake.posted.values() if p.interaction == iid and p.via == "followup"
                      and p.files), None), 90)  # fmt: skip
    assert "references: 2 picture(s), --sw 100" in result.content and "seed 5, 6, 7, 8" in result.content
    ids = [int(c.rsplit(":", 1)[1]) for c in result.custom_ids if c.startswith("dreamhall:upscale:")]
    images = [Image.open(io.BytesIO(await world.client.image_file(i))) for i in ids]
    assert sum(judge(im).colour == "green" and judge(im).background == "gray" for im in images) >= 3
    alone = await world.fake.slash(A, "8", "blend", image1=green, image2=green, flags="-n 1")  # no words at all
    shown = await world.fake.wait_for(
        lambda: next((p for p in world.fake.posted.values() if p.interaction == alone and p.via == "followup"
                      and p.files), None), 90)  # fmt: skip
    assert "a blend of 2 pictures" in shown.content


async def test_an_expired_interaction_token_falls_back_to_the_channel(world: World) -> None:
    iid = await world.fake.slash(A, "8", "dream", prompt="a late circle", n=1, steps=4)
    # Discord refuses follow-ups once a token is 15 minutes old; the bot's defer does not use it.
    world.fake.expire(iid)
    await world.fake.wait_for(lambda: world.fake.answer_to(iid))
    result = await world.fake.wait_for(
        lambda: next((p for p in world.fake.in_channel(A) if p.files and "a late circle" in p.content), None), 90
    )
    assert result.via == "channel"


async def test_slash_search_and_similar_as_a_reply_to_a_users_image(world: World) -> None:
    mid = await world.fake.say(A, "7", '!dream "a red circle on a blue background" -n 1 -S 21 -s 8')
    red = next(iter((await world.result_for(mid)).files.values()))
    iid = await world.fake.slash(A, "8", "search", text="red circle")
    deferred = await world.fake.wait_for(lambda: world.fake.answer_to(iid))
    assert deferred.payload["type"] == 5
    found = await world.fake.wait_for(
        lambda: next((p for p in world.fake.posted.values() if p.interaction == iid and p.files), None), 60
    )
    assert "Best matches for **red circle**" in found.content and "red circle" in found.content.split("\n")[1]
    # Someone posts a picture; `!similar` as a reply to their message searches with it.
    theirs = await world.fake.say(A, "9", "look what I drew", attachment=red)
    similar = await world.fake.say(A, "7", "!similar", reply_to=theirs)
    answer = await world.text_reply(similar)
    assert answer.files and "Closest in this server's gallery" in answer.content


@pytest.fixture
async def checked_world(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[World]:
    """An engine whose model ships a safety checker that flags every image; guild B's channel is NSFW."""
    from tests.tiny_pipeline import build

    model = build(tmp_path_factory.mktemp("checked"), flag_everything=True)
    engine = EngineProcess(tmp_path_factory.mktemp("home"), model).start()
    saved = discord.http.Route.BASE, discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY
    fake = await FakeDiscord(nsfw=frozenset({B})).start()
    fake.patch_client()
    w = World(fake, engine)
    await w.start_bot(dev_guild=None)
    try:
        yield w
    finally:
        await w.stop_bot()
        await fake.stop()
        engine.stop()
        discord.http.Route.BASE, discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = saved


async def test_flagged_images_are_posted_only_in_nsfw_channels(checked_world: World) -> None:
    fake = checked_world.fake
    sfw = await fake.say(A, "7", "!dream a flagged thing -n 2 -s 2")
    reply = await fake.wait_for(lambda: next((p for p in checked_world.replies_to(sfw)
                                              if "safety check flagged 2 of 2" in p.content), None))  # fmt: skip
    assert not [p for p in checked_world.replies_to(sfw) if p.files]
    nsfw = await fake.say(B, "7", "!dream a flagged thing -n 2 -s 2")
    assert (await checked_world.result_for(nsfw)).files
    assert "nothing is posted here" in reply.content
    # Search follows the same rule.
    hidden = await checked_world.text_reply(await fake.say(A, "7", "!search flagged"))
    assert not hidden.files and "flagged by the safety check" in hidden.content
    shown = await checked_world.text_reply(await fake.say(B, "7", "!search flagged"))
    assert shown.files


async def test_a_dm_sees_only_that_users_dm_images(world: World) -> None:
    in_guild = await world.result_for(
        await world.fake.say(A, "7", '!dream "a red circle on a blue background" -S 9 -s 4')
    )
    guild_image = int(in_guild.custom_ids[0].rsplit(":", 1)[1])
    dm = world.fake.dm_channel_of("7")

    async def dm_reply(content: str, *, files: bool = False) -> Posted:
        mid = await world.fake.say_dm("7", content)
        return await world.fake.wait_for(
            lambda: next((p for p in world.replies_to(mid) if p.channel_id == dm and (p.files or not files)), None), 90
        )

    # Nothing of the server is found, used or shown from a DM.
    assert "Nothing in this server's gallery matches" in (await dm_reply('!search "red circle"')).content
    assert "⚠️" in (await dm_reply(f"!similar {guild_image}")).content
    assert "not in this server's gallery" in (await dm_reply(f"!info {guild_image}")).content
    refused = await dm_reply(f'!dream "a blue circle" -I {guild_image} -s 4')
    assert "not in this server's gallery" in refused.content and not refused.files
    # What the user makes in DMs is theirs to find there, and only there.
    made = await dm_reply('!dream "a red circle on a blue background" -S 10 -s 4', files=True)
    dm_image = int(made.custom_ids[0].rsplit(":", 1)[1])
    found = await dm_reply('!search "red circle"', files=True)
    assert f"#{dm_image}" in found.content and f"#{guild_image}" not in found.content
    in_server = await world.fake.say(A, "7", '!search "red circle"')
    assert f"#{dm_image}" not in (await world.text_reply(in_server)).content


async def test_everything_works_without_the_message_content_intent(world: World) -> None:
    result = await world.result_for(
        await world.fake.say(A, "7", '!dream "a red circle on a blue background" -S 4 -s 4')
    )
    image_id = int(result.custom_ids[0].rsplit(":", 1)[1])
    queue = await world.fake.slash(A, "7", "queue")
    assert "This server:" in (await world.fake.wait_for(lambda: world.fake.answer_to(queue))).payload["content"]
    info = await world.fake.slash(A, "7", "info", image_id=image_id)
    shown = await world.fake.wait_for(
        lambda: next((p for p in world.fake.posted.values() if p.interaction == info and p.via == "followup"), None)
    )
    assert f"#{image_id} · seed 4" in shown.content
    # The message context menu on any result: Apps ▸ Find similar.
    menu = await world.fake.context_menu(A, "7", "Find similar", result)
    similar = await follow_up_result(world, menu)
    assert "Closest in this server's gallery" in similar.content


async def test_remix_opens_the_command_in_a_form_and_dreams_the_edit(world: World) -> None:
    result = await world.result_for(
        await world.fake.say(A, "7", '!dream "a red circle on a blue background" -S 4 -s 4')
    )
    remix = next(c for c in result.custom_ids if c.startswith("dreamhall:remix:"))
    iid = await world.fake.click(A, "7", result, remix)
    modal = await world.fake.wait_for(lambda: world.fake.answer_to(iid))
    assert modal.payload["type"] == 9  # a modal, pre-filled with the whole command

    def inputs(component: dict) -> list[dict]:
        if component.get("type") == 4:
            return [component]
        nested = component.get("components") or ([component["component"]] if "component" in component else [])
        return [i for c in nested for i in inputs(c)]

    (field,) = [i for c in modal.payload["components"] for i in inputs(c)]
    assert field["value"].startswith("'a red circle on a blue background'") and "-s 4" in field["value"]
    edited = field["value"].replace("red circle", "green triangle")
    submitted = await world.fake.submit_modal(A, "7", modal, {field["custom_id"]: edited})
    remixed = await follow_up_result(world, submitted)
    assert "a green triangle on a blue background" in remixed.content


async def test_without_the_message_content_intent_the_bot_says_so_in_one_line(tmp_path) -> None:
    import os
    import sys

    fake = await FakeDiscord().start()
    fake.refuse_intents = True
    port = fake.base.rsplit(":", 1)[1]
    code = (
        f"import discord, sys, yarl; discord.http.Route.BASE = '{fake.base}/api/v10';"
        f"discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL('ws://127.0.0.1:{port}/gateway');"
        "from bots.bot import main; sys.exit(main())"
    )
    env = {**os.environ, "DISCORD_TOKEN": "x", "DREAMHALL_HOME": str(tmp_path)}
    try:
        proc = await asyncio.create_subprocess_exec(sys.executable, "-c", code, env=env, stdout=asyncio.subprocess.PIPE,
                                                    stderr=asyncio.subprocess.PIPE)  # fmt: skip
        _, err = await asyncio.wait_for(proc.communicate(), 60)
    finally:
        await fake.stop()
    text = err.decode()
    assert proc.returncode == 1 and "Message Content intent" in text and "Traceback" not in text, text[-2000:]


async def test_models_autocomplete_and_server_model_rules(world: World) -> None:
    listing = (await world.text_reply(await world.fake.say(A, "5", "!models"))).content
    assert "`dreamhall-toy-sd` — SD 1.x" in listing and "(default: dreamhall-toy-sd)" in listing
    assert "`toy-black-bg`" in listing and "`toy-logo`" in listing  # the built-in LoRA and embedding
    iid = await world.fake.autocomplete(A, "5", "dream", "model", prompt="a red circle", model="TOY")
    answer = await world.fake.wait_for(lambda: world.fake.answer_to(iid))
    assert answer.payload["type"] == 8 and answer.payload["choices"] == [
        {"name": "dreamhall-toy-sd", "value": "dreamhall-toy-sd"}]  # fmt: skip
    unknown = await world.text_reply(await world.fake.say(A, "5", "!dream a red circle -m no-such-model"))
    assert "unknown model 'no-such-model'; available: dreamhall-toy-sd" in unknown.content
    assert "/" not in unknown.content.split("available:")[0]  # a Discord user learns no paths

    await world.stop_bot()
    await world.start_bot(guild_models={int(A): ["some-other-model"]})
    refused = await world.text_reply(await world.fake.say(A, "5", "!dream a red circle -m dreamhall-toy-sd"))
    assert refused.content == "⚠️ -m/--model: this server allows some-other-model (got dreamhall-toy-sd)."
    iid = await world.fake.autocomplete(A, "5", "dream", "model", prompt="a red circle", model="")
    answer = await world.fake.wait_for(lambda: world.fake.answer_to(iid))
    assert answer.payload["choices"] == []  # the engine has none of this server's models


async def test_midjourneys_edit_loop_under_a_single_image(world: World) -> None:
    """Under one image: Vary (Subtle/Strong/Region), Zoom Out 2x/1.5x and Pan, each a job of its own linked to it."""
    mid = await world.fake.say(A, "7", '!dream "a red circle on a blue background" -S 8 -s 4')
    result = await world.result_for(mid)
    actions = [c.split(":")[1] for c in result.custom_ids]
    assert actions == ["upscale", "subtle", "strong", "region", "zoom2", "zoom15", "pan_left", "pan_right",
                       "pan_top", "pan_bottom", "reroll", "remix", "delete"]  # fmt: skip
    parent_id = int(result.custom_ids[0].rsplit(":", 1)[1])

    async def press(action: str) -> Posted:
        return await follow_up_result(world, await world.fake.click(A, "7", result, f"dreamhall:{action}:{parent_id}"))

    zoomed = await press("zoom2")
    assert png_sizes(zoomed) == [(64, 64)]  # zoomed out, back at the picture's size
    [child] = [await world.client.image(int(c.rsplit(":", 1)[1])) for c in zoomed.custom_ids if ":upscale:" in c]
    assert child.parent_id == parent_id and child.relation == "outpaint" and child.params["zoom_out"] == 2.0
    panned = await press("pan_left")
    assert png_sizes(panned) == [(96, 64)]  # the canvas grew by half to the left
    [child] = [await world.client.image(int(c.rsplit(":", 1)[1])) for c in panned.custom_ids if ":upscale:" in c]
    assert child.parent_id == parent_id and child.params["outpaint"]["left"] == 32
    subtle = await press("subtle")
    assert "variations of" in subtle.content and "(amount 0.15)" in subtle.content

    iid = await world.fake.click(A, "7", result, f"dreamhall:region:{parent_id}")
    modal = await world.fake.wait_for(lambda: world.fake.answer_to(iid))
    assert modal.payload["type"] == 9
    fields = {f["label"]: f for c in modal.payload["components"] for f in _text_inputs(c)}
    box = fields["Region: left, top, right, bottom in %"]
    submitted = await world.fake.submit_modal(A, "7", modal, {box["custom_id"]: "0, 0, 50, 100"})
    region = await follow_up_result(world, submitted)
    children = [await world.client.image(int(c.rsplit(":", 1)[1])) for c in region.custom_ids if ":upscale:" in c]
    assert children and all(c.parent_id == parent_id and c.relation == "inpaint" for c in children)
    original = Image.open(io.BytesIO(await world.client.image_file(parent_id))).convert("RGB")
    varied = Image.open(io.BytesIO(await world.client.image_file(children[0].id))).convert("RGB")
    right = (48, 0, 64, 64)  # outside the region and its feather (a 4 px blur reaches ~12 px): kept
    assert varied.crop(right).tobytes() == original.crop(right).tobytes()
    other = await world.fake.click(A, "99", result, f"dreamhall:zoom15:{parent_id}")
    assert "Only the person" in (await world.fake.wait_for(lambda: world.fake.answer_to(other))).payload["content"]


def _text_inputs(component: dict) -> list[dict]:
    if component.get("type") == 4:
        return [component]
    nested = component.get("components") or ([component["component"]] if "component" in component else [])
    return [i for c in nested for i in _text_inputs(c)]


async def test_describe_offers_four_prompts_and_each_button_dreams_one(world: World) -> None:
    buf = io.BytesIO()
    toyworld.render(toyworld.Scene("star", "yellow", "black"), np.random.default_rng(3)).save(buf, format="PNG")
    iid = await world.fake.slash(A, "8", "describe", image=buf.getvalue())
    answer = await world.fake.wait_for(
        lambda: next((p for p in world.fake.posted.values() if p.interaction == iid and p.via == "followup"), None)
    )
    lines = answer.content.splitlines()
    assert lines[1] == "1. a yellow star on a black background" and len(lines) == 5, answer.content
    assert answer.custom_ids == [f"dreamhall:prompt:{k}" for k in range(1, 5)]
    dreamed = await follow_up_result(world, await world.fake.click(A, "8", answer, "dreamhall:prompt:1"))
    assert "a yellow star on a black background" in dreamed.content
    text = await world.fake.say(A, "7", "!describe")
    assert "Attach an image, reply to one" in (await world.text_reply(text)).content


async def test_search_at_a_saved_search_runs_it_in_this_server(world: World) -> None:
    from engine.client.schema import Requester

    mid = await world.fake.say(A, "7", '!dream "a cyan star on a black background" -S 41 -s 4')
    result = await world.result_for(mid)
    image_id = int(result.custom_ids[0].rsplit(":", 1)[1])
    await world.client.save_search("Stars", "cyan star", Requester(source="discord", user="7", guild=A), shared=True)
    asked = await world.fake.say(A, "8", "!search @stars")  # another member: a shared saved search
    reply = await world.text_reply(asked)
    assert "**@Stars**" in reply.content and f"#{image_id} " in reply.content
    elsewhere = await world.fake.say(B, "8", "!search @stars")  # another server has no such saved search
    assert "No saved search named @stars here." in (await world.text_reply(elsewhere)).content


async def test_reactions_mark_favourites_and_hide_and_boards_from_discord(world: World) -> None:
    from engine.client.schema import Requester

    mid = await world.fake.say(A, "7", '!dream "a purple triangle on a white background" -S 51 -s 4')
    result = await world.result_for(mid)
    image_id = int(result.custom_ids[0].rsplit(":", 1)[1])
    member = Requester(source="discord", user="8", guild=A)

    async def own(name: str) -> list[int]:
        boards = {b.name: b for b in await world.client.boards(member)}
        if name not in boards:
            return []
        return [i.id for i in (await world.client.images(guild=A, board=boards[name].id)).images]

    await world.fake.react(A, "8", result, "⭐")
    await until(lambda: own("Favourites"), [image_id])
    await world.fake.react(A, "8", result, "⭐", remove=True)
    await until(lambda: own("Favourites"), [])
    # 👎 hides it from this member's searches, not from anyone else's
    await world.fake.react(A, "8", result, "👎")
    await until(lambda: own("Hidden"), [image_id])
    theirs = await world.text_reply(await world.fake.say(A, "8", '!search "purple triangle"'))
    mine = await world.text_reply(await world.fake.say(A, "7", '!search "purple triangle"'))
    assert f"#{image_id} " not in theirs.content and f"#{image_id} " in mine.content
    # a shared board, made and filled from Discord
    made = await world.text_reply(await world.fake.say(A, "7", "!board create Triangles"))
    assert "Board **Triangles** made" in made.content
    added = await world.text_reply(await world.fake.say(A, "8", f"!board add triangles {image_id}"))
    assert "**Triangles** now holds 1 image(s)" in added.content
    listed = await world.text_reply(await world.fake.say(A, "8", "!board list"))
    assert "**Triangles**: 1 image(s)" in listed.content and "Hidden** (yours)" in listed.content
    elsewhere = await world.text_reply(await world.fake.say(B, "8", "!board show Triangles"))
    assert "No board named Triangles here" in elsewhere.content


async def until(fetch, expected, timeout: float = 60.0) -> None:
    """Until the engine's answer is `expected` (the bot acts on a gateway event: nothing to wait on but the state)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while (got := await fetch()) != expected:
        assert asyncio.get_running_loop().time() < deadline, f"still {got!r}, expected {expected!r}"
        await asyncio.sleep(0.05)


async def test_a_waiting_dream_shows_the_nearest_images_while_it_waits(world: World) -> None:
    from engine.client.dream_args import parse
    from engine.client.schema import Requester

    mid = await world.fake.say(A, "7", '!dream "an orange circle on a white background" -S 61 -s 4')
    assert (await world.result_for(mid)).files  # something of this server's gallery to show
    # two other members' slow jobs: one runs, one waits ahead of the next dream (it has never been served; their
    # step counts differ, so they cannot share one call)
    slow = [await world.client.submit(parse(f"a slow hexagon -n 2 -s {steps} -W 256 -H 256",
                                            requester=Requester(source="discord", user=u, guild=A)))
            for u, steps in (("90", 60), ("91", 61))]  # fmt: skip
    try:
        asked = await world.fake.say(A, "7", '!dream "an orange circle on a gray background" -S 62 -s 4')
        status = await world.text_reply(asked)
        content = status.content  # as first posted: the bot edits it when the job starts
        assert "position" in content and "While you wait, from this gallery:" in content
        # the engine's nearest images of this server for the prompt (CLIP text -> image, one per stack)
        nearest = await world.client.search("an orange circle on a gray background", limit=4, stacks=True,
                                            nearest=True, guild=A)  # fmt: skip
        listed = content.split("While you wait, from this gallery:")[1].strip()
        assert listed == ", ".join(f"#{r.image.id}" for r in nearest.results) and len(nearest.results) >= 1
        assert status.waiting and not status.files  # a grid of the nearest images, apart from the result to come
    finally:
        for job in slow:
            await world.client.cancel(job.id)
    assert (await world.result_for(asked, timeout=120)).files


async def test_slash_search_narrows_by_tag_board_favourites_and_stacks(world: World) -> None:
    from engine.client.schema import Requester, Scope

    mid = await world.fake.say(A, "7", '!dream "a pink square on a black background" -n 2 -S 81 -s 4')
    result = await world.result_for(mid)
    ids = sorted({int(c.rsplit(":", 1)[1]) for c in result.custom_ids if c.rsplit(":", 1)[1].isdigit()})
    assert len(ids) == 2
    member = Requester(source="discord", user="7", guild=A)
    await world.client.tag(ids[0], ["pinky"], scope=Scope(guild=A))

    async def search(**options) -> Posted:
        iid = await world.fake.slash(A, "7", "search", text="pink square", **options)
        return await world.fake.wait_for(
            lambda: next((p for p in world.fake.posted.values() if p.interaction == iid and p.via == "followup"),
                         None), 60)  # fmt: skip

    tagged = await search(tag="pinky")
    assert "(tag:pinky)" in tagged.content and f"#{ids[0]} " in tagged.content and f"#{ids[1]} " not in tagged.content
    stacked = await search(stacks=True)
    assert "stack of 2" in stacked.content and stacked.content.count("pink square") == 2  # title + one stack
    assert "No board named Nowhere here" in (await search(board="Nowhere")).content
    await world.fake.react(A, "7", result, "⭐")
    await until(lambda: _favourites(world, member), set(ids))
    favourites = await search(favourites=True)
    assert "your favourites" in favourites.content and all(f"#{i} " in favourites.content for i in ids)


async def _favourites(world: World, member) -> set[int]:
    boards = [b for b in await world.client.boards(member) if b.name == "Favourites"]
    if not boards:
        return set()
    return {i.id for i in (await world.client.images(guild=A, board=boards[0].id)).images}
