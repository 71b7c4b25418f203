"""What a fuzzer, crash and load campaign found (issue #16), each checked on a real engine on a real socket."""

from __future__ import annotations

import io
import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from PIL import Image

from engine.client.clients import EngineClient, RequestRejected
from engine.client.schema import DreamRequest, Requester, Scope
from tests.conftest import ROOT, EngineProcess

pytestmark = pytest.mark.slow
GUILD_A, GUILD_B = "1001", "1002"


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path) -> Iterator[EngineProcess]:
    home = tmp_path_factory.mktemp("home")
    home.chmod(0o755)  # an existing home others can read: the engine must close it
    # Two 64 px images per pipeline call: a request of four runs in two batches.
    # HF_HUB_OFFLINE: offline on any machine, so the hub-id test takes the same path everywhere.
    proc = EngineProcess(home, tiny_model, DREAMHALL_BATCH_PIXELS=str(2 * 64 * 64), HF_HUB_OFFLINE="1").start()
    yield proc
    proc.stop()


@pytest.fixture
def client(engine: EngineProcess) -> Iterator[EngineClient]:
    with engine.client() as c:
        yield c


def raw(engine: EngineProcess) -> httpx.Client:
    return httpx.Client(transport=httpx.HTTPTransport(uds=str(engine.socket)), base_url="http://engine")


def who(guild: str | None, user: str = "u1") -> Requester:
    return Requester(source="discord", guild=guild, user=user)


def made(client: EngineClient, requester: Requester, **kw) -> int:
    fields = {"prompt": "a red circle", "steps": 2, "width": 64, "height": 64, **kw}
    job = client.wait(client.submit(DreamRequest(**fields, requester=requester)).id)
    assert job.status == "done", job.error
    return job.images[0].id


def png(width: int, height: int, colour: int | tuple = 255, mode: str = "RGB") -> bytes:
    buf = io.BytesIO()
    Image.new(mode, (width, height), colour).save(buf, format="PNG")
    return buf.getvalue()


# 1. Tenant isolation: a DM is a scope of its own, and every route that returns an image or a job enforces it.
def test_a_dm_can_neither_use_nor_find_a_guilds_images(client: EngineClient) -> None:
    in_a = made(client, who(GUILD_A))
    dm_image = made(client, who(None, "m"), prompt="a dm triangle")
    upscale = DreamRequest(prompt="x", mode="upscale", upscale=2, init_image=in_a, requester=who(None, "m"))
    with pytest.raises(RequestRejected, match="not in this server's gallery") as e:
        client.submit(upscale)
    assert e.value.status == 404
    # Another DM user may not use this DM user's image either.
    other = DreamRequest(prompt="x", mode="img2img", init_image=dm_image, requester=who(None, "someone else"))
    with pytest.raises(RequestRejected, match="not in this server's gallery"):
        client.submit(other)
    # Search from the DM sees only that user's DM images.
    found = {r.image.id for r in client.search("dm triangle", limit=50, dm_of="m").results}
    assert dm_image in found and in_a not in found
    assert not {r.image.id for r in client.search("red circle", limit=50, dm_of="m").results}
    assert not {r.image.id for r in client.search("circle", limit=50, dm_of="nobody").results}
    with pytest.raises(RequestRejected):
        client.similar(in_a, dm_of="m")


def test_single_images_and_jobs_are_scoped_too(client: EngineClient) -> None:
    job = client.wait(client.submit(DreamRequest(prompt="a red circle", steps=2, width=64, height=64,
                                                 requester=who(GUILD_A))).id)  # fmt: skip
    image_id = job.images[0].id
    assert client.image(image_id, scope=Scope(guild=GUILD_A)).id == image_id
    for scope in (Scope(guild=GUILD_B), Scope(dm_of="u1")):
        for call in (client.image, client.image_file):
            with pytest.raises(RequestRejected) as e:
                call(image_id, scope=scope)
            assert e.value.status == 404
        with pytest.raises(RequestRejected):
            client.job(job.id, scope=scope)
    assert client.job(job.id, scope=Scope(guild=GUILD_A)).id == job.id
    assert client.image(image_id).id == image_id  # the owner (no scope) sees everything


# 2. A memory budget: batches that fit, decided before running.
def test_a_request_over_the_pixel_budget_runs_in_batches(client: EngineClient) -> None:
    accepted = client.submit(DreamRequest(prompt="a blue square", n=4, steps=3, width=64, height=64))
    totals = {e.total for e in client.events(accepted.id) if e.type == "step"}
    assert totals == {6}  # two batches of two images, three steps each
    assert len(client.job(accepted.id).images) == 4


# 5. 500s from four causes: each is a 422 with one sentence now.
@pytest.mark.parametrize(
    "method, url, body",
    [
        ("GET", "/v1/images?min_width=0", None),
        ("GET", "/v1/search?q=x&min_height=-1", None),
        ("GET", "/v1/images/9223372036854775808", None),
        ("GET", "/v1/images/99999999999999999999999/file", None),
        ("GET", "/v1/images?offset=1000000000000", None),
        ("GET", "/v1/search?q=x&offset=1000000000000", None),
        ("GET", "/v1/images?after=0999-01-01", None),
        ("GET", "/v1/images?before=0.5", None),
        ("POST", "/v1/dreams", {"prompt": "x", "mode": "img2img", "init_image": "gallery:99999999999999999999"}),
        ("POST", "/v1/dreams", {"prompt": "\u200b\u200b\u2060"}),
        ("POST", "/v1/dreams", {"prompt": "x", "mode": "img2img", "init_image": "١٢"}),
        ("POST", "/v1/dreams", {"prompt": "x", "mode": "img2img", "init_image": 1, "strength": 0}),
    ],
)
def test_bad_values_are_422_not_500(engine: EngineProcess, method: str, url: str, body: object) -> None:
    with raw(engine) as http:
        response = http.request(method, url, json=body)
    assert response.status_code == 422, response.text
    assert list(response.json()) in (["error"], ["error", "detail"]) and "\n" not in response.json()["error"]


def test_a_body_that_is_not_utf8_is_a_422(engine: EngineProcess) -> None:
    with raw(engine) as http:
        response = http.post(
            "/v1/dreams", content=b'{"prompt": "\xff\xfe"}', headers={"Content-Type": "application/json"}
        )
    assert response.status_code == 422 and "JSON" in response.json()["error"]


# 6. Fewer than one effective step runs one step, as A1111 does.
def test_fewer_than_one_effective_step_runs_one(client: EngineClient) -> None:
    parent = made(client, Requester(user="steps"))
    for fields in ({"mode": "img2img", "strength": 0.3, "steps": 2}, {"mode": "upscale", "upscale": 2, "steps": 3}):
        job = client.wait(client.submit(DreamRequest(prompt="a red circle", init_image=parent, **fields)).id)
        assert job.status == "done", job.error


# 7. and 8. Errors quote a short excerpt, never a repr.
def test_errors_quote_an_excerpt_of_the_input(engine: EngineProcess, client: EngineClient) -> None:
    with raw(engine) as http:
        response = http.post("/v1/dreams", json={"prompt": "x" * 100_000})
    assert response.status_code == 422 and len(response.json()["error"]) < 300
    with pytest.raises(RequestRejected) as e:
        client.upload(b"\x89PNG\r\n\x1a\n definitely not a png")
    assert "object at 0x" not in str(e.value) and len(str(e.value)) < 300


# 10. Refusals the README promises up front happen before the 202.
def test_impossible_inputs_are_refused_at_submit(client: EngineClient) -> None:
    wide = client.upload(png(1600, 64)).ref
    with pytest.raises(RequestRejected, match="largest is 2048"):
        client.submit(DreamRequest(prompt="x", mode="outpaint", init_image=wide, outpaint={"left": 512, "right": 512}))
    square = client.upload(png(64, 64)).ref
    black = client.upload(png(64, 64, 0, "L")).ref
    with pytest.raises(RequestRejected, match="all black"):
        client.submit(DreamRequest(prompt="x", mode="inpaint", init_image=square, init_mask=black))
    for size in ((1, 1), (1, 4000)):
        thin = client.upload(png(*size)).ref
        with pytest.raises(RequestRejected, match="at least 64 px") as e:
            client.submit(DreamRequest(prompt="x", mode="img2img", init_image=thin))
        assert e.value.status == 422


# 14. Files readable only by their owner.
def test_the_home_and_the_database_are_private(engine: EngineProcess) -> None:
    assert stat.S_IMODE(engine.home.stat().st_mode) == 0o700
    assert stat.S_IMODE((engine.home / "gallery.db").stat().st_mode) == 0o600
    assert "readable by others" in (engine.home / "engine-test.log").read_text()


# 11. The contract: every error status is documented, with our body.
def test_openapi_documents_our_errors(engine: EngineProcess) -> None:
    with raw(engine) as http:
        spec = http.get("/openapi.json").json()
    submit = spec["paths"]["/v1/dreams"]["post"]["responses"]
    for status in ("404", "413", "422", "429"):
        assert submit[status]["content"]["application/json"]["schema"]["$ref"].endswith("/ErrorBody"), status


# 15. The bot without a network: one sentence, exit 1.
def test_the_bot_without_a_network_says_so_in_one_line(tmp_path: Path) -> None:
    code = (
        "import discord, sys; discord.http.Route.BASE = 'http://127.0.0.1:9/api/v10';"
        "from bots.bot import main; sys.exit(main())"
    )
    env = {**os.environ, "DISCORD_TOKEN": "x", "DREAMHALL_HOME": str(tmp_path)}
    done = subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert "cannot reach Discord" in done.stderr and "Traceback" not in done.stderr


# 4. A crash between storing a job's images and marking it done re-runs the job: it must not store them twice.
def test_a_job_rerun_after_a_crash_in_the_window_stores_its_images_once(tmp_path: Path, tiny_model: Path) -> None:
    import sqlite3

    first = EngineProcess(tmp_path / "home", tiny_model).start()
    with first.client() as c:
        job = c.wait(c.submit(DreamRequest(prompt="a red circle", n=3, steps=2, width=64, height=64)).id)
    assert job.status == "done"
    first.kill9()
    # The state a kill -9 leaves in that window: rows committed, the job still `running`.
    with sqlite3.connect(tmp_path / "home" / "gallery.db") as db:
        db.execute("UPDATE jobs SET status = 'running', finished_at = NULL WHERE id = ?", (job.id,))
    second = EngineProcess(tmp_path / "home", tiny_model).start()
    try:
        with second.client() as c:
            rerun = c.wait(job.id)  # resumed on start, ran again
            assert rerun.status == "done"
            assert [i.id for i in rerun.images] == [i.id for i in job.images]
            assert c.images(limit=100).total == 3
            report = c.check_gallery()
            assert report.duplicates == [] and report.rows == 3
    finally:
        second.stop()


# 12. An unknown hub id offline fails at once with a sentence, instead of holding the worker while the hub retries.
def test_an_unknown_hub_id_offline_fails_with_a_sentence(client: EngineClient) -> None:
    request = DreamRequest(prompt="x", steps=2, width=64, height=64, model="nobody/no-such-model")
    job = client.wait(client.submit(request).id)
    assert job.status == "failed"
    assert job.error is not None and "hub cannot be reached" in job.error and len(job.error) < 300
    # ...and the engine goes on with the next job on its own model.
    assert made(client, Requester(user="after")) > 0


# The black-box reliability run's leftovers (issue #27).
def test_ids_are_quoted_short_and_405s_say_what_is_allowed(engine: EngineProcess) -> None:
    with raw(engine) as http:
        answer = http.get("/v1/dreams/" + "j" * 5000)
        assert answer.status_code == 404 and len(answer.content) < 200 and "j" * 61 not in answer.text
        wrong = http.put("/v1/health")
        assert wrong.status_code == 405 and wrong.headers["allow"] == "GET" and wrong.json()["error"]
        assert http.delete("/v1/dreams").headers["allow"] == "POST"


def test_a_client_that_hangs_up_mid_body_is_an_info_line(engine: EngineProcess) -> None:
    import socket
    import time

    before = len(engine.read_log(tail=None))
    for path in ("/v1/uploads", "/v1/search/image", "/v1/gallery/import"):
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.connect(str(engine.socket))
            s.sendall(f"POST {path} HTTP/1.1\r\nHost: engine\r\nContent-Length: 100000\r\n\r\n".encode() + b"x" * 100)
    deadline = time.monotonic() + 60
    while engine.read_log(tail=None)[before:].count("hung up") < 3:  # wait for the condition, not the clock
        assert time.monotonic() < deadline, engine.read_log()
        time.sleep(0.1)
    log = engine.read_log(tail=None)[before:]
    assert "Traceback" not in log and "ClientDisconnect" not in log and " ERROR " not in log


def test_the_schema_says_what_the_engine_refuses(engine: EngineProcess) -> None:
    with raw(engine) as http:
        spec = http.get("/openapi.json").json()
    params = {p["name"]: p["schema"] for p in spec["paths"]["/v1/search"]["get"]["parameters"]}
    assert params["q"]["minLength"] == 1 and params["q"]["pattern"] == r"\S"
    assert params["after"]["pattern"].startswith("^(19|")  # applies to the string branch: from 1900
    dream = spec["components"]["schemas"]["DreamRequest"]
    without_prompt = dream["if"]["anyOf"]  # an upscale, or reference pictures alone, need no prompt
    assert without_prompt[0]["properties"]["mode"] == {"const": "upscale"} and "prompt" in dream["else"]["required"]
    assert without_prompt[1]["properties"]["references"] == {"minItems": 1}
    with raw(engine) as http:
        for bad in ({"q": " "}, {"q": "x", "after": "1899-12-31"}):
            assert http.get("/v1/search", params=bad).status_code == 422
        assert http.post("/v1/dreams", json={"prompt": " \u200b"}).status_code == 422
