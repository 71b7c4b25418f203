"""OpenAI's images API driven by the official `openai` client over TCP, against a real engine on the built-in models."""

from __future__ import annotations

import base64
import io
import json
import subprocess
import sys
from collections.abc import Iterator

import httpx
import numpy as np
import openai
import pytest
from PIL import Image

from engine.client.schema import DreamRequest
from tests.conftest import ROOT, TOKEN, EngineProcess, start_tcp_engine

pytestmark = pytest.mark.slow
RED = "a red circle on a blue background"


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EngineProcess]:
    proc = start_tcp_engine(tmp_path_factory.mktemp("openai-home"))
    yield proc
    proc.stop()


def client_of(engine: EngineProcess, key: str = TOKEN) -> openai.OpenAI:
    # the README's settings: base URL = the TCP listener + /openai/v1, key = the engine's token
    return openai.OpenAI(base_url=f"http://127.0.0.1:{engine.port}/openai/v1", api_key=key, max_retries=0)


def pixels(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def test_generations_give_the_cli_images_for_the_same_seed(engine: EngineProcess) -> None:
    client = client_of(engine)
    result = client.images.generate(model="dreamhall-toy-sd", prompt=RED, n=2, size="1024x1024",
                                    response_format="b64_json", user="wendy",
                                    extra_body={"seed": 3220803958, "steps": 4})  # fmt: skip
    assert len(result.data) == 2 and result.data[0].revised_prompt == RED
    made = [pixels(base64.b64decode(d.b64_json or "")) for d in result.data]
    cli = subprocess.run([sys.executable, "-m", "cli", "--home", str(engine.home), "dream", RED, "-S", "3220803958",
                          "-s", "4", "-n", "2", "-i", "--json"], capture_output=True, text=True, cwd=ROOT,
                         timeout=120)  # fmt: skip
    assert cli.returncode == 0, cli.stderr
    drawn = [np.asarray(Image.open(i["path"]).convert("RGB")) for i in json.loads(cli.stdout)["images"]]
    assert [m.tobytes() for m in made] == [d.tobytes() for d in drawn]  # one request schema, one seed convention
    assert result.size == f"{drawn[0].shape[1]}x{drawn[0].shape[0]}"
    with engine.client() as native:  # ordinary gallery images, from source openai, for the `user`
        page = native.images(source="openai")
        assert page.total == 2 and {i.user for i in page.images} == {"wendy"}
    # OpenAI's model names mean the engine's default; a signed url is fetched without the token, until it expires
    linked = client.images.generate(model="dall-e-3", prompt=RED, response_format="url", output_format="jpeg",
                                    extra_body={"seed": 3220803958, "steps": 4})  # fmt: skip
    url = linked.data[0].url or ""
    fetched = httpx.get(url)
    assert fetched.status_code == 200 and fetched.headers["content-type"] == "image/jpeg"
    assert np.abs(pixels(fetched.content).astype(int) - made[0].astype(int)).mean() < 8  # the same picture, as JPEG
    forged = httpx.get(url.replace("sig=", "sig=0"))
    assert forged.status_code == 403 and forged.json()["error"]["type"] == "invalid_request_error"
    assert "dreamhall-toy-sd" in [m.id for m in client.models.list().data]


def test_a_bad_key_is_401_and_bad_input_400_in_openais_shape_with_nothing_queued(engine: EngineProcess) -> None:
    with pytest.raises(openai.AuthenticationError) as unauthorised:
        client_of(engine, key="wrong").images.generate(prompt=RED)
    assert unauthorised.value.status_code == 401
    with engine.client() as native:
        before = len(native.queue().queued) + len(native.queue().running)
        jobs_before = native.images(limit=1).total
    client = client_of(engine)
    with pytest.raises(openai.BadRequestError) as bad_size:
        client.images.generate(prompt=RED, size="999x3")
    error = bad_size.value.body
    assert isinstance(error, dict) and error["param"] == "size" and error["type"] == "invalid_request_error"
    assert "size: one of auto, 256x256" in error["message"]
    with pytest.raises(openai.NotFoundError) as unknown:
        client.images.generate(prompt=RED, model="no-such-model")
    assert isinstance(unknown.value.body, dict) and unknown.value.body["code"] == "model_not_found"
    with pytest.raises(openai.BadRequestError) as too_many:
        client.images.generate(prompt=RED, n=11)
    assert isinstance(too_many.value.body, dict) and too_many.value.body["param"] == "n"
    with pytest.raises(openai.BadRequestError, match="these models draw opaque pictures"):
        client.images.generate(prompt=RED, background="transparent")
    with engine.client() as native:  # none of them queued anything
        assert len(native.queue().queued) + len(native.queue().running) == before
        assert native.images(limit=1).total == jobs_before


def test_edits_repaint_where_the_mask_is_transparent_as_a_native_inpaint(engine: EngineProcess) -> None:
    client = client_of(engine)
    made = client.images.generate(prompt=RED, extra_body={"seed": 11, "steps": 4})
    picture = base64.b64decode(made.data[0].b64_json or "")
    width, height = Image.open(io.BytesIO(picture)).size
    mask = Image.new("RGBA", (width, height), (0, 0, 0, 255))
    mask.paste((0, 0, 0, 0), (0, 0, width // 2, height))  # the left half: repaint
    buf = io.BytesIO()
    mask.save(buf, format="PNG")
    edited = client.images.edit(
        image=("in.png", picture, "image/png"),
        mask=("mask.png", buf.getvalue(), "image/png"),
        prompt="a green square on a white background",
        extra_body={"seed": 5, "steps": 4},
    )
    got = pixels(base64.b64decode(edited.data[0].b64_json or ""))
    # the same through the native API: the picture, a white-where-repainted mask, strength 1, the same seed
    repaint = Image.new("L", (width, height), 0)
    repaint.paste(255, (0, 0, width // 2, height))
    out = io.BytesIO()
    repaint.save(out, format="PNG")
    with engine.client() as native:
        init, hole = native.upload(picture).ref, native.upload(out.getvalue()).ref
        job = native.wait(native.submit(DreamRequest(prompt="a green square on a white background", mode="inpaint",
                                                     init_image=init, init_mask=hole, strength=1.0, seed=5,
                                                     steps=4)).id)  # fmt: skip
        assert job.status == "done", job.error
        want = np.asarray(Image.open(job.images[0].path).convert("RGB"))
    assert got.tobytes() == want.tobytes()
    varied = client.images.create_variation(image=("in.png", picture, "image/png"), n=1)
    assert len(varied.data) == 1 and varied.data[0].revised_prompt  # described, then redrawn over itself
    with pytest.raises(openai.BadRequestError) as two:
        client.images.edit(image=[("a.png", picture, "image/png"), ("b.png", picture, "image/png")], prompt="x")
    assert isinstance(two.value.body, dict) and two.value.body["param"] == "image"


def test_metrics_parse_and_move_after_a_job(engine: EngineProcess) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    base = f"http://127.0.0.1:{engine.port}"

    def scrape() -> dict[tuple[str, tuple], float]:
        answer = httpx.get(f"{base}/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
        assert answer.status_code == 200 and answer.headers["content-type"].startswith("text/plain")
        return {(s.name, tuple(sorted(s.labels.items()))): s.value
                for family in text_string_to_metric_families(answer.text) for s in family.samples}  # fmt: skip

    assert httpx.get(f"{base}/metrics").status_code == 401  # behind the token on TCP
    before = scrape()
    client_of(engine).images.generate(prompt=RED, n=2, extra_body={"seed": 99, "steps": 4})
    after = scrape()

    def moved(name: str, **labels: str) -> float:
        key = (name, tuple(sorted(labels.items())))
        return after.get(key, 0.0) - before.get(key, 0.0)

    assert moved("dreamhall_jobs_total", source="openai", outcome="done") == 1
    assert moved("dreamhall_images_total", source="openai") == 2
    assert moved("dreamhall_job_stage_seconds_count", stage="steps") == 1
    assert moved("dreamhall_job_stage_seconds_count", stage="queued") == 1
    assert after[("dreamhall_workers", (("state", "alive"),))] == 1
    worker = next(dict(k[1])["worker"] for k in after if k[0] == "dreamhall_model_cache_bytes")
    assert after[("dreamhall_model_cache_bytes", (("worker", worker),))] > 0
    assert after[("dreamhall_model_loads", (("worker", worker),))] >= 1
    with engine.client() as native:  # a search is timed
        native.search("red circle")
    assert scrape()[("dreamhall_search_seconds_count", (("kind", "text"),))] >= 1
    # the Grafana dashboard in docs/ asks only for metrics the engine has
    import re

    answer = httpx.get(f"{base}/metrics", headers={"Authorization": f"Bearer {TOKEN}"}).text
    exposed = set(re.findall(r"^# TYPE (dreamhall_\w+)", answer, re.M)) | set(
        re.findall(r"^(dreamhall_\w+)", answer, re.M)
    )
    dashboard = (ROOT / "docs" / "grafana-dashboard.json").read_text()
    asked = set(re.findall(r"dreamhall_\w+", dashboard)) - {"dreamhall_engine"}
    assert asked and asked <= exposed, asked - exposed


async def test_mcp_over_streamable_http_on_the_tcp_listener_needs_the_token(engine: EngineProcess) -> None:
    import httpx2
    from mcp import Client
    from mcp.client.streamable_http import streamable_http_client

    url = f"http://127.0.0.1:{engine.port}/mcp"
    assert httpx.post(url, json={}).status_code == 401
    http = httpx2.AsyncClient(headers={"Authorization": f"Bearer {TOKEN}"}, timeout=120)
    async with http, Client(streamable_http_client(url, http_client=http)) as client:
        assert "dream" in {t.name for t in (await client.list_tools()).tools}
        listed = await client.call_tool("list_models", {})
        assert "dreamhall-toy-sd" in listed.content[0].text
