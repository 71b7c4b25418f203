"""Engine processes starting, dying, resuming and refusing; the worker under memory pressure."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch

from engine.client.clients import EngineClient, RequestRejected
from engine.client.schema import DreamRequest, Requester
from engine.device import modes
from engine.device.device import Device
from engine.device.pipelines import PipelineCache
from engine.device.runner import Resolved
from tests.conftest import ROOT, EngineProcess, free_port

pytestmark = pytest.mark.slow


def small(user: str, **kw) -> DreamRequest:
    return DreamRequest(**{"prompt": "a blue square", "steps": 3, "width": 64, "height": 64, "n": 1, **kw},
                        requester=Requester(user=user))  # fmt: skip


def test_kill_9_with_jobs_queued_then_restart_completes_them(tmp_path: Path, tiny_model: Path) -> None:
    engine = EngineProcess(tmp_path / "home", tiny_model).start()
    with engine.client() as client:
        earlier = client.wait(client.submit(small("a", prompt="a green star", seed=7)).id)
        running = client.submit(small("a", steps=60, n=2, seed=1))  # seconds of steps: killed at its first
        queued = [client.submit(small(u, seed=i)) for i, u in enumerate(["a", "b", "c"])]
        for event in client.events(running.id):
            if event.type == "step":
                break
    engine.kill9()
    assert engine.socket.exists(), "kill -9 leaves a stale socket behind"
    shutil.rmtree(engine.home / "lancedb")  # and the index lost: the start's check must embed the gallery again
    engine.start()  # finds the stale socket, replaces it, resumes the jobs
    with engine.client() as client:
        done = []
        for accepted in [running, *queued]:
            job = client.wait(accepted.id)
            assert job.status == "done", job.error
            assert job.seed == accepted.seed and len(job.images) == job.request.n
            done.append(job)
        found = client.search("green star", limit=5).results
        assert [hit.image.id for hit in found] == [image.id for image in earlier.images]
    # the index's check runs when the worker idles after them (search's keyword hits need no vectors: wait for it)
    deadline = time.monotonic() + 120
    while "index reconciled" not in (log := engine.read_log(tail=None)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert "resuming 1 job(s)" in log
    # The jobs waiting at the start ran first, before CLIP and the index had loaded (they load after the first
    # job); the index's check came after them, when the worker was idle: it embedded the image made before the
    # kill, the first job's, and those of any job that finished before the index had loaded.
    restart = log[log.index("resuming 1 job(s)") :]
    found_check = re.search(r"index reconciled: (\d+) embedded", restart)
    assert found_check is not None
    assert 1 + len(done[0].images) <= int(found_check.group(1)) <= 1 + sum(len(job.images) for job in done)
    checked = found_check.start()
    assert all(restart.index(f"job {job.id} stages") < checked for job in [running, *queued])
    assert engine.stop() == 0


def test_cli_starts_an_engine_when_none_answers(tmp_path: Path, tiny_model: Path) -> None:
    home = tmp_path / "home"
    env = {**EngineProcess(home, tiny_model).env}
    cmd = [sys.executable, "-m", "cli", "--home", str(home)]
    other = subprocess.run([*cmd, "dream", "a green star", "-m", "another-model", "-s", "2"],
                           env=env, capture_output=True, text=True, timeout=240, cwd=ROOT)  # fmt: skip
    out = subprocess.run([*cmd, "dream", "a green star", "-s", "2", "-W", "64", "-H", "64"],
                         env=env, capture_output=True, text=True, timeout=240, cwd=ROOT)  # fmt: skip
    try:
        # What starts is named as the request will load it, not as the engine's default.
        assert "started one in the background" in other.stdout and "model another-model" in other.stdout
        assert "dreamhall-toy-sd" not in other.stdout, other.stdout
        assert other.returncode == 2 and "unknown model 'another-model'" in other.stderr
        assert out.returncode == 0, out.stderr
        assert re.fullmatch(r"#\d+  seed \d+  64x64  \S+\.png", out.stdout.strip().splitlines()[-1])
    finally:
        stop = subprocess.run([*cmd, "engine", "stop"], env=env, capture_output=True, text=True, timeout=60)
    assert "stopped" in stop.stdout
    assert not (home / "engine.sock").exists()


def test_tcp_is_opt_in_and_needs_the_token(tmp_path: Path, tiny_model: Path) -> None:
    port = free_port()
    engine = EngineProcess(tmp_path / "home", tiny_model, DREAMHALL_TCP_PORT=str(port), DREAMHALL_TOKEN="s3cret")
    engine.start()
    try:
        url = f"http://127.0.0.1:{port}"
        assert httpx.get(f"{url}/v1/health").status_code == 401
        assert httpx.get(f"{url}/v1/health", headers={"Authorization": "Bearer wrong"}).status_code == 401
        with EngineClient(base_url=url, token="s3cret") as client:
            job = client.wait(client.submit(small("tcp")).id)
            assert job.status == "done"
        # A second engine on the same home refuses instead of stealing the socket.
        second = subprocess.run([sys.executable, "-m", "cli", "engine"], env=engine.env,
                                capture_output=True, text=True, timeout=30, cwd=ROOT)  # fmt: skip
        assert second.returncode == 1 and "already listening" in second.stderr
    finally:
        assert engine.stop() == 0


def test_tcp_without_a_token_refuses_to_start(tmp_path: Path, tiny_model: Path) -> None:
    engine = EngineProcess(tmp_path / "home", tiny_model, DREAMHALL_TCP_PORT=str(free_port()))
    with pytest.raises(RuntimeError, match="requires DREAMHALL_TOKEN"):
        engine.start()


def test_batching_halves_on_out_of_memory_down_to_one() -> None:
    calls: list[list[int]] = []

    def run(indices: list[int], chunk: int, chunks: int) -> list[int]:
        calls.append(indices)
        if len(indices) > 1:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return [i * 10 for i in indices]

    retries: list[int] = []
    out = modes.run_batched(4, run, is_out_of_memory=Device.is_out_of_memory, on_retry=retries.append)
    assert out == [0, 10, 20, 30]
    assert [len(c) for c in calls] == [4, 2, 1, 1, 1, 1] and retries == [2, 1]


def test_a_failure_that_is_not_the_users_reads_as_one_line() -> None:
    from engine.client.errors import InputError
    from engine.device.maker import failure_sentence

    assert failure_sentence(RuntimeError("boom\n  at line 3")) == "RuntimeError: boom"
    assert failure_sentence(RuntimeError("  ")) == "RuntimeError"  # no dangling colon
    assert failure_sentence(InputError("the mask is empty")) == "the mask is empty"
    oom = torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
    assert failure_sentence(oom).startswith("out of memory even for a single image")


def test_batching_respects_a_budget_and_passes_other_errors_through() -> None:
    calls: list[tuple[list[int], int, int]] = []
    out = modes.run_batched(5, lambda ix, c, n: calls.append((ix, c, n)) or ix, max_batch=2,
                            is_out_of_memory=Device.is_out_of_memory)  # fmt: skip
    assert out == [0, 1, 2, 3, 4] and calls == [([0, 1], 0, 3), ([2, 3], 1, 3), ([4], 2, 3)]

    def broken(indices: list[int], chunk: int, chunks: int) -> list[int]:
        raise ValueError("not a memory problem")

    with pytest.raises(ValueError, match="not a memory"):
        modes.run_batched(4, broken, is_out_of_memory=Device.is_out_of_memory)


def test_split_batches_match_the_whole_batch(tiny_model: Path) -> None:
    model = PipelineCache(Device("cpu"), str(tiny_model)).model(None)
    work = modes.plan(small("oom", n=4), Resolved(), job_seed=10, native_size=64)

    def run(indices: list[int], chunk: int, chunks: int):
        return work.run(model, indices, on_step=lambda *_: None)

    whole = modes.run_batched(4, run, is_out_of_memory=Device.is_out_of_memory)
    split = modes.run_batched(4, run, max_batch=1, is_out_of_memory=Device.is_out_of_memory)
    # Batched arithmetic may differ by rounding; the issue allows +-1 grey level per pixel.
    for a, b in zip(split, whole, strict=True):
        diff = np.abs(np.asarray(a, dtype=np.int16) - np.asarray(b, dtype=np.int16)).max()
        assert diff <= 1, f"split and whole batches differ by {diff} grey levels"


def test_the_socket_answers_before_torch_loads_and_jobs_queue_meanwhile(tmp_path: Path) -> None:
    # The API's modules import no torch: the socket is up in about a second, the backend loads behind it.
    heavy = "('torch', 'diffusers', 'lancedb', 'open_clip')"
    # nor does building the API's services (the shelf's scan reads the built-in add-ons' headers)
    code = (f"import sys, engine.server.app as app; from engine.client.settings import Settings; "
            f"app.build_front(Settings(home={str(tmp_path / 'light')!r})); "
            f"print(sorted(m for m in {heavy} if m in sys.modules))")  # fmt: skip
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "[]"
    engine = EngineProcess(tmp_path / "home", None, DREAMHALL_MAX_SIDE="512").start(ready=False)
    try:
        with engine.client() as client:
            health = client.health()
            assert health.status == "starting" and health.loading == "dreamhall-toy-sd"
            accepted = client.submit(DreamRequest(prompt="a red circle on a blue background", seed=7, steps=4,
                                                  width=64, height=64))  # fmt: skip
            assert accepted.status == "queued"
            with pytest.raises(RequestRejected, match=r"-W/--width: this engine makes at most 512 px per side"):
                client.submit(DreamRequest(prompt="too wide", width=1024, height=64))
            with pytest.raises(RequestRejected) as starting:
                client.search("red circle")
            assert starting.value.status == 503 and "starting" in str(starting.value)
            # what A1111's clients poll answers as A1111 always does: progress with the queued count, and the lists
            with httpx.Client(transport=httpx.HTTPTransport(uds=str(engine.socket)), base_url="http://engine") as raw:
                answer = raw.get("/sdapi/v1/progress")
                assert answer.status_code == 200, answer.text
                assert answer.json()["textinfo"] == "engine starting" and answer.json()["state"]["job_count"] == 1
                for route in ("options", "sd-models", "samplers", "schedulers", "upscalers", "loras", "embeddings",
                              "scripts", "prompt-styles", "cmd-flags"):  # fmt: skip
                    assert raw.get(f"/sdapi/v1/{route}").status_code == 200, route
                assert raw.get("/controlnet/model_list").status_code == 200
            assert client.images().total == 0  # the gallery's rows answer at once
            # `dreamhall dream` while it loads: submitted at once, then the job's stream says when it is done.
            cli = subprocess.run([sys.executable, "-m", "cli", "--home", str(engine.home), "dream", "a blue square",
                                  "-s", "2", "-W", "64", "-H", "64", "--json", "--no-autostart"],
                                 capture_output=True, text=True, cwd=ROOT, timeout=300)  # fmt: skip
            assert cli.returncode == 0, cli.stderr
            assert [i["width"] for i in json.loads(cli.stdout)["images"]] == [64]
            job = client.wait(accepted.id)
            assert job.status == "done" and len(job.images) == 1
            # the jobs started before CLIP and the search index loaded (they load after the first job): once they
            # have, search finds the images made before them
            deadline = time.monotonic() + 120
            while client.health().status != "ok" and time.monotonic() < deadline:
                time.sleep(0.1)
            while not client.search("red circle").results and time.monotonic() < deadline:
                time.sleep(0.1)  # the index's check after the first jobs adds their vectors
            assert job.images[0].id in {hit.image.id for hit in client.search("red circle").results}
    finally:
        assert engine.stop() == 0


def test_an_engine_whose_backend_cannot_load_exits_with_a_sentence(tmp_path: Path) -> None:
    home = tmp_path / "home"
    run = subprocess.run([sys.executable, "-m", "cli", "engine"], capture_output=True, text=True, cwd=ROOT,
                         timeout=300, env={**os.environ, "DREAMHALL_HOME": str(home),
                                           "DREAMHALL_CLIP_MODEL": "no-such-clip"})  # fmt: skip
    assert run.returncode == 1
    assert "dreamhall: the engine could not start:" in run.stderr and "no-such-clip" in run.stderr
    assert not (home / "engine.sock").exists() and not (home / "engine.pid").exists()


def test_tcp_connections_send_at_once() -> None:
    """Without TCP_NODELAY a keep-alive client's later requests each waited ~40 ms (Nagle + delayed ACK)."""
    import socket

    from engine.server.app import tcp_listener

    listener = tcp_listener("127.0.0.1", 0)
    with listener, socket.create_connection(listener.getsockname()) as client:
        accepted, _ = listener.accept()
        with accepted:
            assert accepted.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1
        assert client.fileno() >= 0
