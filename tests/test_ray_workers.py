"""The engine with `backend = "ray"`: a real local Ray instance, two CPU workers (one torch thread each), the
built-in model, a real engine process on a real socket. Kept few: Ray's start-up costs seconds."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from PySide6.QtCore import Qt

from engine.client.answers import Health
from engine.client.clients import EngineClient
from engine.client.schema import DreamRequest, Requester
from tests.conftest import ROOT, EngineProcess, batch_calls
from tests.test_desktop import WAIT, generate, open_window
from tests.test_discord_bot import bot_world, follow_up_result, png_sizes

pytestmark = pytest.mark.slow

LONG = {"steps": 150, "width": 128, "height": 128, "n": 4}  # seconds of steps: time to cancel or kill mid-job


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EngineProcess]:
    proc = EngineProcess(
        tmp_path_factory.mktemp("home"),
        None,  # the built-in model
        DREAMHALL_BACKEND="ray",
        DREAMHALL_WORKERS="2",
        DREAMHALL_BATCH_MAX="2",  # each worker batches as the local one does: two images a call at most
        DREAMHALL_WORKER_THREADS="1",
        DREAMHALL_JOB_RETRIES="1",
        DREAMHALL_MAX_QUEUED_PER_USER="8",
    ).start(timeout=300)
    yield proc
    assert proc.stop() == 0


@pytest.fixture
def client(engine: EngineProcess) -> Iterator[EngineClient]:
    with engine.client() as c:
        yield c


def dream(user: str, **kw) -> DreamRequest:
    return DreamRequest(**{"prompt": "a red circle", "steps": 6, "width": 64, "height": 64, **kw},
                        requester=Requester(source="api", user=user))  # fmt: skip


def pixels(path: str) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"), dtype=np.int16)


def wait_until(what: Callable[[], object], timeout: float = 120.0, every: float = 0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = what()
        if found:
            return found
        time.sleep(every)
    raise TimeoutError("condition not reached")


def worker_running(client: EngineClient, job_id: str, min_step: int = 1):
    """The worker that runs `job_id`, once it has made `min_step` steps."""

    def found():
        job = client.job(job_id)
        if job.status == "running" and job.progress.step >= min_step:
            return next((w for w in client.health().workers if w.job == job_id), None)
        return None

    return wait_until(found)


def all_back(client: EngineClient) -> Health:
    return wait_until(lambda: (h := client.health()).workers and all(w.alive for w in h.workers) and h)


def test_health_and_status_show_the_workers(engine: EngineProcess, client: EngineClient) -> None:
    health = client.health()
    assert health.device.startswith("ray: 2 worker(s)")
    assert sorted(w.id for w in health.workers) == ["ray-0", "ray-1"]
    assert all(w.alive and w.loaded == ["dreamhall-toy-sd"] and w.pid != engine.proc.pid for w in health.workers)
    assert [w.id for w in client.queue().workers] == [w.id for w in health.workers]
    status = subprocess.run([sys.executable, "-m", "cli", "engine", "status"], env=engine.env, cwd=ROOT,
                            capture_output=True, text=True, timeout=60)  # fmt: skip
    assert "device ray: 2 worker(s)" in status.stdout and "worker ray-1 on" in status.stdout, status.stdout


def test_annotators_run_on_the_workers_for_previews_and_jobs(engine: EngineProcess, client: EngineClient) -> None:
    """A weight annotator runs on a Ray worker (the front loads no torch model): its map equals the local
    annotator's from the same file, a worker's "found no person" reaches the user as one sentence, and a job
    steered through it is made."""
    import io

    import httpx
    import torch
    from controlnet_aux.lineart import Generator
    from controlnet_aux.open_pose.model import bodypose_model

    from engine.device.annotators import Annotators
    from tests.test_image_guidance import picture

    shelf = engine.home / "models" / "annotators"
    shelf.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    torch.save({k: v.half() for k, v in Generator(3, 1, 3).state_dict().items()}, shelf / "sk_model.pth")
    body = bodypose_model().state_dict()  # the original file's names, as tests/test_image_guidance writes them
    torch.save({k.split(".", 1)[1]: v.half() for k, v in body.items()}, shelf / "body_pose_model.pth")
    expected = np.asarray(Annotators(shelf, torch.device("cpu")).annotate(picture(), "lineart"), np.int16)
    buf = io.BytesIO()
    picture().save(buf, format="PNG")
    ref = client.upload(buf.getvalue()).ref
    with httpx.Client(transport=httpx.HTTPTransport(uds=str(engine.socket)), base_url="http://engine") as http:
        for _ in range(2):  # the actors take turns: both make the same map
            shown = http.post("/v1/controls/preview", json={"control": {"image": ref, "type": "lineart"}}, timeout=120)
            assert shown.status_code == 200, shown.text
            got = np.asarray(Image.open(io.BytesIO(shown.content)).convert("RGB"), np.int16)
            assert np.abs(got - expected).max() <= 1
        nobody = http.post("/v1/controls/preview", json={"control": {"image": ref, "type": "openpose"}}, timeout=120)
    assert nobody.status_code == 422 and "found no person" in nobody.json()["error"], nobody.text
    job = client.wait(client.submit(dream("gus", seed=3, controls=[{"image": ref, "type": "lineart"}])).id)
    assert job.status == "done", job.error
    assert client.image(job.images[0].id).params["controls"][0]["type"] == "lineart"


def test_seeds_give_the_same_image_on_either_worker(client: EngineClient) -> None:
    # Two workers idle: two requests sent together run one on each.
    jobs = [client.submit(dream(user, seed=100, steps=40)).id for user in ("ann", "bob")]
    ann, bob = (client.wait(j) for j in jobs)
    made_by = [client.image(j.images[0].id).worker for j in (ann, bob)]
    assert sorted(made_by) == ["ray-0", "ray-1"]
    assert (pixels(ann.images[0].path) == pixels(bob.images[0].path)).all()
    # Image i of a request is seed + i alone, whichever worker makes it.
    pair = client.wait(client.submit(dream("cy", seed=99, n=2, steps=40)).id)
    assert (pixels(pair.images[1].path) == pixels(ann.images[0].path)).all()
    record = client.image(pair.images[0].id)
    assert record.params["worker"] == record.worker


def test_two_users_share_both_workers_fairly(client: EngineClient) -> None:
    # both workers busy (120 and 121 steps: two calls, one each)...
    busy = [client.submit(dream("zed", seed=i, steps=120 + i)).id for i in range(2)]
    wait_until(lambda: all(client.job(j).status == "running" for j in busy))
    calls, jobs_run = batch_calls(client)
    a = [client.submit(dream("ann", seed=200 + i)).id for i in range(4)]  # ...while a burst of four queues
    b = [client.submit(dream("bob", seed=200 + i)).id for i in range(2)]  # and then two from someone else
    jobs = [client.wait(j) for j in a + b]
    assert all(j.status == "done" for j in jobs), [j.error for j in jobs]
    by_start = sorted(jobs, key=lambda j: j.started_at)
    assert [j.request.requester.user for j in by_start] == ["ann", "bob", "ann", "bob", "ann", "ann"]
    assert {client.image(j.images[0].id).worker for j in jobs} == {"ray-0", "ray-1"}, "both workers ran them"
    # in calls of two (batch_max 2: ann's and bob's first, their second, ann's last two), each job its own images
    assert batch_calls(client) == (calls + 3, jobs_run + 6)
    assert [len(j.images) for j in jobs] == [1] * 6


def test_cancel_reaches_the_worker_running_the_job(client: EngineClient) -> None:
    job = client.submit(dream("dee", seed=7, **LONG)).id
    worker = worker_running(client, job)
    assert client.cancel(job).status == "cancelled"
    # The worker stops at its next step and takes the next job; nothing of the cancelled job is stored.
    wait_until(lambda: all(w.job != job for w in client.health().workers))
    assert client.job(job).images == [] and client.images(user="dee").total == 0
    after = client.wait(client.submit(dream("dee", seed=8)).id)
    assert after.status == "done" and worker.id in {w.id for w in client.health().workers}


def test_a_killed_worker_s_job_runs_again_once_and_the_worker_comes_back(client: EngineClient) -> None:
    request = {**LONG, "steps": 30}  # it runs to the end twice: ~15 s of steps, still ample to kill at step 1
    job = client.submit(dream("eve", seed=11, **request)).id
    victim = worker_running(client, job)
    os.kill(victim.pid, signal.SIGKILL)
    done = client.wait(job)
    assert done.status == "done", done.error
    images = client.images(user="eve").images
    assert len(images) == LONG["n"] and sorted(i.index for i in images) == [0, 1, 2, 3], "stored once"
    back = all_back(client)
    assert next(w for w in back.workers if w.id == victim.id).pid != victim.pid, "Ray restarted the worker"
    # Same pixels as an undisturbed run of the same request.
    again = client.wait(client.submit(dream("eve2", seed=11, **request)).id)
    assert all((pixels(x.path) == pixels(y.path)).all() for x, y in zip(done.images, again.images))


def test_a_job_that_kills_its_workers_fails_after_the_retries(client: EngineClient) -> None:
    job = client.submit(dream("fay", seed=12, **LONG)).id
    first = worker_running(client, job)
    os.kill(first.pid, signal.SIGKILL)
    second = wait_until(lambda: (w := worker_running(client, job)).pid != first.pid and w)
    os.kill(second.pid, signal.SIGKILL)
    failed = client.wait(job)
    assert failed.status == "failed" and "died 2 times" in (failed.error or ""), failed.error
    assert client.images(user="fay").total == 0
    all_back(client)
    assert client.wait(client.submit(dream("fay", seed=13)).id).status == "done", "the engine serves on"


def test_the_cli_works_unchanged_against_ray_workers(engine: EngineProcess, tmp_path: Path) -> None:
    out = subprocess.run([sys.executable, "-m", "cli", "dream", "a blue square", "-n", "2", "-S", "5", "-s", "6",
                          "-W", "64", "-H", "64"], env=engine.env, cwd=ROOT, capture_output=True, text=True,
                         timeout=120)  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert "seed 5" in out.stdout and "seed 6" in out.stdout
    found = subprocess.run([sys.executable, "-m", "cli", "search", "blue square"], env=engine.env, cwd=ROOT,
                           capture_output=True, text=True, timeout=120)  # fmt: skip
    assert found.returncode == 0 and "a blue square" in found.stdout, found.stdout + found.stderr


async def test_the_bot_works_unchanged_against_ray_workers(engine: EngineProcess) -> None:
    async with bot_world(engine) as world:
        mid = await world.fake.say("111", "7", '!dream "a green triangle" -n 4 -S 31 -s 6')
        result = await world.result_for(mid)
        assert png_sizes(result) == [(128, 128)] and "31, 32, 33, 34" in result.content
        ids = [int(c.rsplit(":", 1)[1]) for c in result.custom_ids if c.startswith("dreamhall:variation:")]
        click = await world.fake.click("111", "7", result, f"dreamhall:variation:{ids[0]}")
        v1 = await follow_up_result(world, click)
        assert f"variations of #{ids[0]}" in v1.content and png_sizes(v1) == [(128, 128)]
        made_by = {(await world.client.image(i)).worker for i in ids}
        assert made_by <= {"ray-0", "ray-1"} and made_by


def test_the_desktop_works_unchanged_against_ray_workers(qtbot, engine: EngineProcess, tmp_path: Path) -> None:
    window = open_window(qtbot, engine.home, tmp_path)
    try:
        qtbot.waitUntil(lambda: window.link.health is not None, timeout=WAIT)
        ids = generate(qtbot, window, '"a yellow star" -n 2 -S 41 -s 6', 2)
        images = [window.link.client().image(i) for i in ids]
        assert [i.seed for i in images] == [41, 42] and {i.worker for i in images} <= {"ray-0", "ray-1"}
        gallery = window.gallery
        window.show_view("gallery")
        gallery.search.setText("yellow star")
        qtbot.keyClick(gallery.search, Qt.Key.Key_Return)
        qtbot.waitUntil(lambda: gallery.model.total > 0 and "yellow star" in gallery.model.record(0).prompt,
                        timeout=WAIT)  # fmt: skip
    finally:
        window.close()


def test_a_workers_jobs_and_embeddings_share_one_long_lived_torch_thread(tmp_path: Path) -> None:
    """torch's intra-op pool belongs to a thread: every job of a worker runs on the same one (the actor class, in
    this process; Ray only hosts it)."""
    import threading

    from engine.client.settings import Settings
    from engine.device.ray_workers import MakerActor
    from engine.device.runner import JobRecord, Resolved

    actor = MakerActor(Settings(home=tmp_path), "w-test", 1)
    seen: list[str] = []
    real_run = actor.maker.run_batch

    def run(jobs, inputs, reports):
        seen.append(threading.current_thread().name)
        return real_run(jobs, inputs, reports)

    actor.maker.run_batch = run  # type: ignore[method-assign]
    for k in range(2):
        request = DreamRequest(prompt="a red circle", steps=2, seed=k, requester=Requester(user="u"))
        job = JobRecord.model_validate({"id": f"job{k}", "status": "running", "request": request, "seed": k,
                                        "queue_key": "u", "priority": 0,
                                        "created_at": "2026-12-04T00:00:00Z"})  # fmt: skip
        kind, outcomes = list(actor.make([job], [Resolved()]))[-1]
        assert kind == "made" and [what for what, _ in outcomes] == ["made"]
    actor.embed_images([Image.new("RGB", (32, 32))])
    assert len(seen) == 2 and seen[0] == seen[1] and seen[0].startswith("torch-w-test")
