"""Cross-user batching: queued jobs that share a model, size and steps run in one pipeline call, in fair order, and
each image is the image its job makes alone; cancel, a crash and the queue's order hold as without batching."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from engine.client.clients import EngineClient
from engine.client.schema import DreamRequest, Requester
from engine.client.settings import Settings
from engine.device.runner import batch_key, images_per_call
from tests.conftest import EngineProcess, batch_calls

pytestmark = pytest.mark.slow

SHARED = dict(steps=6, cfg_scale=5.0, sampler="k_euler_a", width=64, height=64)


def _pixels(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), dtype=np.int16)


# --- what may share a call ------------------------------------------------------------------------------------
def test_the_batch_key_joins_what_can_share_a_call_and_nothing_else():
    base = DreamRequest(prompt="a red circle", seed=1, **SHARED)
    other_user = base.model_copy(update={"prompt": "a blue square", "seed": 9, "n": 3,
                                         "requester": Requester(source="discord", user="b")})  # fmt: skip
    assert batch_key(base) is not None and batch_key(base) == batch_key(other_user)
    for change in [{"steps": 7}, {"width": 128}, {"sampler": "ddim"}, {"cfg_scale": 6.0}, {"model": "other"},
                   {"negative_prompt": "blurry"}, {"clip_skip": 2}, {"tiling": True}]:  # fmt: skip
        assert batch_key(base.model_copy(update=change)) != batch_key(base), change
    for alone in [{"mode": "variation", "variation_amount": 0.3}, {"requester": Requester(source="a1111")},
                  {"seed_resize_from": (64, 64)}]:  # fmt: skip
        assert batch_key(base.model_copy(update=alone)) is None, alone
    # images per call: batch_max, within the pixel budget at the job's size (the model's when it names none)
    assert images_per_call(base, batch_max=8, batch_pixels=None, native_size=None) == 8
    assert images_per_call(base, batch_max=8, batch_pixels=3 * 64 * 64, native_size=None) == 3
    assert images_per_call(base, batch_max=1, batch_pixels=None, native_size=None) == 1
    sized_by_model = base.model_copy(update={"width": None, "height": None})
    assert images_per_call(sized_by_model, batch_max=8, batch_pixels=2 * 512 * 512, native_size=512) == 2


# --- the queue: fair order, whole jobs --------------------------------------------------------------------------
def _put(queue, user: str, n: int = 1, **change) -> str:
    request = DreamRequest(prompt=f"job of {user}", n=n, seed=1, requester=Requester(source="discord", user=user),
                           **{**SHARED, **change})  # fmt: skip
    return queue.put(request, seed=1)[0].id


def _users(jobs) -> list[str]:
    return [job.request.requester.user for job in jobs]


def test_the_queue_adds_the_next_jobs_in_fair_order_while_they_share_the_call_and_splits_none(tmp_path):
    from engine.server.queue import SqliteJobQueue
    from gallery.db import open_gallery_db

    queue = SqliteJobQueue(open_gallery_db(tmp_path / "gallery.db"), max_queued_per_user=50)
    _put(queue, "a")
    _put(queue, "d", n=2)
    _put(queue, "c", n=4)  # does not fit the room left: never split, it starts the next call
    _put(queue, "e")
    _put(queue, "b", steps=30)  # another step count: the call ends before it, nobody passes it
    _put(queue, "f")
    assert _users(queue.claim_batch(None, lambda first: 4)) == ["a", "d"]
    assert _users(queue.claim_batch(None, lambda first: 8)) == ["c", "e"]
    assert _users(queue.claim_batch(None, lambda first: 8)) == ["b"]
    assert _users(queue.claim_batch(None, lambda first: 1)) == ["f"]  # batch_max 1 (room 1): one job per call

    # in fair order: a user's second job comes after everyone's first, and a job on another model ends the call
    for user in ["x", "x", "y", "z"]:
        _put(queue, user)
    _put(queue, "w", model="other")
    _put(queue, "v")
    assert _users(queue.claim_batch(None, lambda first: 8)) == ["x", "y", "z"]
    assert _users(queue.claim_batch(None, lambda first: 8)) == ["w"]
    assert _users(queue.claim_batch(None, lambda first: 8)) == ["v", "x"]


def test_jobs_keep_their_batch_key_when_requeued_and_after_a_restart(tmp_path):
    from engine.server.queue import SqliteJobQueue
    from gallery.db import open_gallery_db

    db = open_gallery_db(tmp_path / "gallery.db")
    queue = SqliteJobQueue(db, max_queued_per_user=50)
    first, second = _put(queue, "a"), _put(queue, "b")
    call = queue.claim_batch(None, lambda job: 8)
    assert [job.id for job in call] == [first, second]
    for job in call:
        queue.requeue(job.id)  # the worker died: both go back, and still share a call
    assert [job.id for job in queue.claim_batch(None, lambda job: 8)] == [first, second]
    assert queue.requeue(first) and queue.requeue(second)
    restarted = SqliteJobQueue(db, max_queued_per_user=50)
    assert {job.id for job in restarted.claim_batch(None, lambda job: 8)} == {first, second}


def test_batch_max_is_a_setting(monkeypatch):
    monkeypatch.setenv("DREAMHALL_BATCH_MAX", "1")
    assert Settings().batch_max == 1
    monkeypatch.delenv("DREAMHALL_BATCH_MAX")
    assert Settings().batch_max == 8


# --- one call, image for image ----------------------------------------------------------------------------------
@pytest.mark.parametrize("family", ["sd1", "sdxl", "sd3", "flux"])
def test_each_image_of_a_shared_call_is_the_image_of_its_job_alone(family, tmp_path, monkeypatch):
    from engine.device.device import Device
    from engine.device.pipelines import load_model
    from tests.tiny_pipeline import family_pipeline

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    family_pipeline(tmp_path, family).save_pretrained(tmp_path / family)
    model = load_model(str(tmp_path / family), Device("cpu"))
    common = dict(width=64, height=64, steps=3, cfg_scale=4.0, sampler="k_euler")
    negative = "blurry" if family != "flux" else ""
    jobs = [("a red circle", 11), ("a blue square on a green star", 12), ("purple", 13)]
    together = model.txt2img(prompt=[p for p, _ in jobs], negative_prompt=[negative] * 3,
                             seeds=[s for _, s in jobs], **common)  # fmt: skip
    for (prompt, seed), shared in zip(jobs, together, strict=True):
        alone = model.txt2img(prompt=prompt, negative_prompt=negative, seeds=[seed], **common)[0]
        difference = np.abs(np.asarray(shared, np.int16) - np.asarray(alone, np.int16)).max()
        assert difference <= 1, (family, prompt, difference)
    # and the images differ from each other: each row had its own prompt and seed
    assert len({im.tobytes() for im in together}) == 3


# --- through the engine -----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def batching(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path) -> Iterator[EngineProcess]:
    proc = EngineProcess(tmp_path_factory.mktemp("batching"), tiny_model, DREAMHALL_BATCH_MAX="8").start()
    yield proc
    proc.stop()


def _who(i: int) -> Requester:
    return Requester(source="discord", user=f"user{i}", guild="g")


def _queued_behind_a_blocker(client: EngineClient, requests: list[DreamRequest]) -> tuple[str, list[str]]:
    """Submit a long job, then `requests` (they queue behind it); returns the blocker's id and theirs."""
    blocker = client.submit(DreamRequest(prompt="blocker", steps=150, seed=5, width=64, height=64,
                                         requester=_who(99))).id  # fmt: skip
    ids = [client.submit(r).id for r in requests]
    return blocker, ids


def test_queued_jobs_of_several_users_share_one_call_and_match_their_images_alone(batching):
    requests = [DreamRequest(prompt=p, seed=s, n=n, requester=_who(i), **SHARED)
                for i, (p, s, n) in enumerate([("a red circle", 1, 1), ("a blue square", 2, 2),
                                               ("a green star", 3, 1), ("yellow", 4, 1)])]  # fmt: skip
    with batching.client() as client:
        blocker, ids = _queued_behind_a_blocker(client, requests)
        calls, jobs = batch_calls(client)
        client.cancel(blocker)
        done = [client.wait(job_id) for job_id in ids]
        assert [job.status for job in done] == ["done"] * 4
        after_calls, after_jobs = batch_calls(client)
        # the blocker's call had begun before: then one call for all four
        assert (after_calls - calls, after_jobs - jobs) == (1, 4), batching.read_log()
        shared = {job.id: [client.image_file(image.id) for image in job.images] for job in done}
        assert [len(images) for images in shared.values()] == [1, 2, 1, 1]
        for request, job in zip(requests, done, strict=True):  # each job again, alone (nothing queued beside it)
            again = client.wait(client.submit(request.model_copy(update={"fresh": True})).id)
            for before, alone in zip(shared[job.id], again.images, strict=True):
                difference = np.abs(_pixels(before) - _pixels(client.image_file(alone.id))).max()
                assert difference <= 1, (request.prompt, difference)
            # each job's gallery rows are its own: its prompt, seeds and requester
            records = [client.image(image.id) for image in job.images]
            assert {(r.prompt, r.user, r.job_id) for r in records} == {(request.prompt, request.requester.user,
                                                                         job.id)}  # fmt: skip
            assert [r.seed for r in records] == [request.seed + i for i in range(request.n)]


def test_a_job_cancelled_in_a_shared_call_keeps_nothing_and_the_others_finish(batching):
    requests = [DreamRequest(prompt=f"a red circle {i}", seed=i, requester=_who(i), **{**SHARED, "steps": 60})
                for i in range(3)]  # fmt: skip
    with batching.client() as client:
        before = client.images(limit=1).total
        blocker, ids = _queued_behind_a_blocker(client, requests)
        client.cancel(blocker)
        for event in client.events(ids[1]):  # it runs (with the others): cancel it between two steps
            if event.type == "step":
                client.cancel(ids[1])
                break
        done = [client.wait(job_id) for job_id in ids]
        assert [job.status for job in done] == ["done", "cancelled", "done"]
        assert done[1].images == []
        assert client.images(limit=1).total - before == 2  # the cancelled job's image was discarded, not stored
        assert [len(job.images) for job in (done[0], done[2])] == [1, 1]


def test_a_crash_mid_call_requeues_every_job_of_it_and_stores_each_once(batching):
    # last in the module: it kills the module's engine, then starts it again on the same home
    requests = [DreamRequest(prompt=f"a blue square {i}", seed=i, n=1 + i % 2, requester=_who(i),
                             **{**SHARED, "steps": 40}) for i in range(4)]  # fmt: skip
    with batching.client() as client:
        before = client.images(limit=1).total
        blocker, ids = _queued_behind_a_blocker(client, requests)
        client.cancel(blocker)
        for event in client.events(ids[-1]):  # the last one runs: all four share the call
            if event.type == "step":
                break
        assert {job.id for job in client.queue().running} == set(ids)
        batching.kill9()
    batching.start()
    with batching.client() as client:
        done = [client.wait(job_id) for job_id in ids]
        assert [job.status for job in done] == ["done"] * 4
        assert [len(job.images) for job in done] == [r.n for r in requests]
        assert client.images(limit=1).total - before == sum(r.n for r in requests)  # each stored once


def test_jobs_over_the_pixel_budget_take_calls_of_their_own_and_a_cancel_ends_only_its_own(tmp_path):
    # The worker had not loaded the model when it claimed them (the room could not see the size): the maker packs
    # whole jobs into calls within batch_pixels, here one 64 px image each on the built-in model.
    from engine.client.settings import Settings
    from engine.device.device import Device
    from engine.device.maker import build_maker
    from engine.device.runner import Cancelled, JobRecord, Made, Resolved
    from engine.device.shelf import Shelf

    settings = Settings(home=tmp_path, batch_pixels=64 * 64, batch_max=8)
    maker = build_maker(settings, device=Device("cpu"), shelf=Shelf(settings.shelf_dir), worker_id="t")
    jobs = [JobRecord.model_validate({"id": f"job{i}", "status": "running", "seed": i, "queue_key": f"u{i}",
                                      "priority": 0, "created_at": "2026-12-05T00:00:00Z",
                                      "request": DreamRequest(prompt=f"a red circle {i}", seed=i, steps=4,
                                                              requester=_who(i))})
            for i in range(3)]  # fmt: skip
    steps: dict[str, int] = {}

    def report(event) -> None:
        if event.type == "step":
            steps[event.job] = steps.get(event.job, 0) + 1
            if event.job == "job0":
                maker.cancel("job0")  # the first call's only job: that call ends, the others run

    outcomes = maker.run_batch(jobs, [Resolved()] * 3, [report] * 3)
    assert isinstance(outcomes[0], Cancelled)
    assert all(isinstance(o, Made) and len(o.items) == 1 for o in outcomes[1:])
    assert steps["job0"] == 1 and steps["job1"] >= 1 and steps["job2"] >= 1  # three calls, one after another
