"""The engine as a real subprocess on a temporary Unix socket, driven by the client, raw HTTP and curl."""

from __future__ import annotations

import contextlib
import hashlib
import json
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from engine.client.clients import EngineClient, RequestRejected
from engine.client.schema import DreamRequest, Requester
from gallery.files import read_text_chunks
from tests.conftest import ROOT, EngineProcess

pytestmark = pytest.mark.slow

MAX_BODY = 64 * 1024


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path) -> Iterator[EngineProcess]:
    proc = EngineProcess(
        tmp_path_factory.mktemp("home"),
        tiny_model,
        DREAMHALL_MAX_BODY_BYTES=str(MAX_BODY),
        DREAMHALL_MAX_N=str(8),
        DREAMHALL_MAX_QUEUED_PER_USER=str(4),
    ).start()
    yield proc
    assert proc.stop() == 0
    assert not proc.socket.exists(), "a clean stop removes the socket"


def dream(user: str = "tester", **kw) -> DreamRequest:
    return DreamRequest(**{"prompt": "a red circle", "steps": 4, "width": 64, "height": 64, **kw},
                        requester=Requester(source="api", user=user))  # fmt: skip


def run(client: EngineClient, request: DreamRequest):
    accepted = client.submit(request)
    return client.wait(accepted.id)


def pixels(path: str) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"), dtype=np.int16)


def raw(engine: EngineProcess) -> httpx.Client:
    return httpx.Client(transport=httpx.HTTPTransport(uds=str(engine.socket)), base_url="http://engine")


def test_socket_is_private_and_curl_can_drive_it(engine: EngineProcess) -> None:
    assert engine.socket.stat().st_mode & 0o777 == 0o600
    out = subprocess.run(
        ["curl", "-s", "--unix-socket", str(engine.socket), "http://engine/v1/health"],
        capture_output=True, text=True, check=True, timeout=30,
    )  # fmt: skip
    assert json.loads(out.stdout)["status"] == "ok"
    body = json.dumps({"prompt": "a red circle", "n": 1, "seed": 5, "steps": 2, "width": 64, "height": 64})
    out = subprocess.run(
        ["curl", "-s", "--unix-socket", str(engine.socket), "-H", "Content-Type: application/json",
         "-d", body, "http://engine/v1/dreams"],
        capture_output=True, text=True, check=True, timeout=30,
    )  # fmt: skip
    accepted = json.loads(out.stdout)
    assert accepted["seed"] == 5 and accepted["status"] == "queued"
    schema = httpx.Client(transport=httpx.HTTPTransport(uds=str(engine.socket))).get("http://e/openapi.json").json()
    assert {"/v1/dreams", "/v1/dreams/{job_id}/events", "/v1/queue", "/v1/health"} <= set(schema["paths"])


def test_n_images_use_consecutive_seeds_and_land_in_the_gallery(client: EngineClient) -> None:
    job = run(client, dream(n=3, seed=4294967294))
    assert job.status == "done"
    assert [i.seed for i in job.images] == [4294967294, 4294967295, 0]
    for image in job.images:
        assert Path(image.path).is_file()
        assert hashlib.sha256(Path(image.path).read_bytes()).hexdigest() == image.sha256
        chunks = read_text_chunks(Path(image.path))
        assert f"Seed: {image.seed}" in chunks["parameters"]
        assert json.loads(chunks["dreamhall"])["seed"] == image.seed


def test_no_seed_draws_one_and_reports_it(client: EngineClient) -> None:
    accepted = client.submit(dream())
    job = client.wait(accepted.id)
    assert job.seed == accepted.seed == job.images[0].seed


def test_an_image_reproduces_from_its_own_parameters(client: EngineClient) -> None:
    first = run(client, dream(n=3, seed=500)).images[1]
    params = client.image(first.id).params
    again = run(client, DreamRequest.from_params(params))
    assert again.images[0].seed == first.seed == 501
    assert np.abs(pixels(again.images[0].path) - pixels(first.path)).max() <= 1


def test_same_request_twice_gives_identical_images(client: EngineClient) -> None:
    a = run(client, dream(n=2, seed=1234, sampler="k_euler_a"))
    b = run(client, dream(n=2, seed=1234, sampler="k_euler_a"))
    assert [i.sha256 for i in a.images] == [i.sha256 for i in b.images]


def test_one_image_of_a_batch_reproduces_alone(client: EngineClient) -> None:
    batch = run(client, dream(n=4, seed=3220803958, sampler="k_euler_a"))
    alone = run(client, dream(n=1, seed=3220803960, sampler="k_euler_a"))
    diff = np.abs(pixels(batch.images[2].path) - pixels(alone.images[0].path)).max()
    assert diff <= 1, f"batched and single differ by {diff} grey levels"


def test_progress_events_arrive_in_order(client: EngineClient) -> None:
    accepted = client.submit(dream(steps=5, n=2))
    events = list(client.events(accepted.id))
    types = [e.type for e in events]
    assert types[-1] == "done"
    assert "started" in types and types.count("image") == 2
    steps = [e.step for e in events if e.type == "step"]
    assert steps == sorted(steps) and steps[-1] == 5


def long_job(user: str) -> DreamRequest:
    return dream(user=user, steps=150, width=128, height=128, n=2)


def test_cancel_a_running_job(client: EngineClient) -> None:
    accepted = client.submit(long_job("canceller"))
    for event in client.events(accepted.id):
        if event.type == "step":
            client.cancel(accepted.id)
        if event.type in {"done", "failed", "cancelled"}:
            break
    assert event.type == "cancelled"
    job = client.job(accepted.id)
    assert job.status == "cancelled" and job.images == []


def test_cancel_a_queued_job(client: EngineClient) -> None:
    running = client.submit(long_job("blocker"))
    queued = client.submit(dream(user="waiter"))
    assert client.cancel(queued.id).status == "cancelled"
    assert [e.type for e in client.events(queued.id)] == ["cancelled"]
    client.cancel(running.id)
    assert client.wait(running.id).status == "cancelled"


def test_a_burst_does_not_starve_another_user(engine: EngineProcess, client: EngineClient) -> None:
    a = [client.submit(dream(user="A", steps=3)) for _ in range(4)]  # one user, up to the per-user limit of 4
    b = client.submit(dream(user="B", steps=3))
    jobs_a = [client.wait(x.id) for x in a]
    job_b = client.wait(b.id)
    assert job_b.started_at < jobs_a[2].started_at


def test_bad_json_types_and_sizes(engine: EngineProcess) -> None:
    with raw(engine) as http:
        r = http.post("/v1/dreams", content=b'{"prompt": "x", ', headers={"Content-Type": "application/json"})
        assert r.status_code == 422 and r.json()["error"].startswith("malformed JSON")
        r = http.post("/v1/dreams", json={"prompt": "x", "n": "four"})
        assert r.status_code == 422 and r.json()["error"].startswith("-n/--iterations (n): ")
        r = http.post("/v1/dreams", json={"prompt": "x", "colour": "red"})
        assert r.status_code == 422 and "colour" in r.json()["error"]
        r = http.post("/v1/dreams", json={"prompt": "   "})
        assert r.status_code == 422 and "prompt" in r.json()["error"]
        r = http.post("/v1/dreams", json={"prompt": "x" * (MAX_BODY + 10)})
        assert r.status_code == 413 and "too large" in r.json()["error"]
        r = http.post("/v1/dreams", json={"prompt": "x", "n": 9})
        assert r.status_code == 422 and "at most 8 images" in r.json()["error"]
        r = http.post("/v1/dreams", json={"prompt": "x", "mode": "img2img", "init_image": "a.png"})
        assert r.status_code == 422 and "expected a gallery image id" in r.json()["error"]
        r = http.get("/v1/dreams/nope")
        assert r.status_code == 404 and r.json()["error"] == "no job nope"
        assert http.get("/v1/dreams/nope/events").status_code == 404
        assert http.get("/v1/health").json()["status"] == "ok"


def test_too_many_queued_is_a_clear_429(client: EngineClient) -> None:
    blocker = client.submit(long_job("hog"))
    accepted = [client.submit(dream(user="flood")) for _ in range(4)]
    with pytest.raises(RequestRejected) as info:
        client.submit(dream(user="flood"))
    assert info.value.status == 429 and "too many queued" in str(info.value)
    for a in [blocker, *accepted]:
        client.cancel(a.id)


def test_junk_bytes_and_vanishing_clients_leave_the_engine_up(engine: EngineProcess, client: EngineClient) -> None:
    for junk in (
        b"\x00\xff" * 500 + b"\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\n",
        b"x" * 100,
    ):
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(5)
            s.connect(str(engine.socket))
            s.sendall(junk)
            s.shutdown(socket.SHUT_WR)
            with contextlib.suppress(TimeoutError):
                s.recv(4096)
    # A client that walks away in the middle of an event stream.
    accepted = client.submit(dream(user="leaver", steps=30, width=128, height=128))
    with raw(engine) as http, http.stream("GET", f"/v1/dreams/{accepted.id}/events") as stream:
        next(stream.iter_lines())
    assert client.wait(accepted.id).status == "done"
    assert client.health().status == "ok"


def test_cli_prints_json_and_writes_the_grid(engine: EngineProcess) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "cli", "--home", str(engine.home), "dream", "a red circle", "-n", "2",
         "-S", "99", "-s", "3", "-W", "64", "-H", "64", "-g", "--json"],
        capture_output=True, text=True, timeout=120, cwd=ROOT,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert [i["seed"] for i in result["images"]] == [99, 100]
    assert all(Path(i["path"]).is_file() and i["width"] == 64 for i in result["images"])
    assert Image.open(result["grid"]).size == (128, 64)


def test_cli_flag_errors_are_one_line(engine: EngineProcess) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "cli", "--home", str(engine.home), "dream", "x", "-n", "99"],
        capture_output=True, text=True, timeout=60, cwd=ROOT,
    )  # fmt: skip
    assert out.returncode == 2
    assert out.stderr.strip() == "dreamhall: -n/--iterations (n): must be between 1 and 16 (got 99)"


def test_queue_endpoint_lists_jobs(client: EngineClient) -> None:
    blocker = client.submit(long_job("q1"))
    waiting = client.submit(dream(user="q2"))
    deadline = time.monotonic() + 30
    while client.job(blocker.id).status != "running" and time.monotonic() < deadline:
        time.sleep(0.05)
    state = client.queue()
    assert [j.id for j in state.running] == [blocker.id]
    assert waiting.id in [j.id for j in state.queued]
    client.cancel(waiting.id)
    client.cancel(blocker.id)
    client.wait(blocker.id)


def test_what_was_just_made_is_found_by_words_and_by_image(engine: EngineProcess, client: EngineClient) -> None:
    job = run(client, dream(prompt="a lonely heptagon in the fog", n=2, seed=77, user="finder"))
    made = {i.id for i in job.images}
    found = client.search("heptagon fog", limit=5)
    assert made <= {r.image.id for r in found.results}
    first = job.images[0]
    by_image = client.search_image(Path(first.path).read_bytes(), limit=3)
    assert by_image.results[0].image.id in made and by_image.results[0].score > 0.99
    assert by_image.results[0].image.prompt == "a lonely heptagon in the fog"
    similar = client.similar(first.id, limit=3)
    assert first.id not in {r.image.id for r in similar.results}
    out = subprocess.run(
        [sys.executable, "-m", "cli", "--home", str(engine.home), "search", "heptagon", "--json", "--limit", "2"],
        capture_output=True, text=True, timeout=60, cwd=ROOT,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    rows = json.loads(out.stdout)["results"]
    assert len(rows) == 2 and set(rows[0]) == {"id", "path", "score", "prompt", "seed", "stack_key", "stack_size"}
    assert rows[0]["score"] >= rows[1]["score"]


def test_bad_search_input(client: EngineClient) -> None:
    for bad in (b"", b"GIF89a nonsense", b"\x89PNG\r\n\x1a\n" + b"\x00" * 40):
        with pytest.raises(RequestRejected) as info:
            client.search_image(bad)
        assert info.value.status == 422
        assert "image" in str(info.value)
    with pytest.raises(RequestRejected, match="empty"):
        client.search("   ")
    with pytest.raises(RequestRejected, match="limit must be at most 200"):
        client.search("x", limit=1000)
    with pytest.raises(RequestRejected, match="no image 999999"):
        client.similar(999999)
    with pytest.raises(RequestRejected, match="unknown search filter 'colour'"):
        client.search("x", colour="red")
