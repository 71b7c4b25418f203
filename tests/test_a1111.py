"""AUTOMATIC1111's /sdapi/v1 driven by `webuiapi` (the real Python client) over TCP, against a real engine."""

from __future__ import annotations

import base64
import io
import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import httpx
import pytest
import webuiapi
from PIL import Image

from models.checker import judge
from tests.conftest import ROOT, EngineProcess, free_port

TOKEN = "s3cret-token"
RED = "a red circle on a blue background"


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EngineProcess]:
    port = free_port()
    proc = EngineProcess(tmp_path_factory.mktemp("a1111-home"), None, DREAMHALL_TCP_PORT=str(port),
                         DREAMHALL_TOKEN=TOKEN).start()  # fmt: skip
    proc.port = port  # type: ignore[attr-defined]
    yield proc
    proc.stop()


@pytest.fixture
def api(engine: EngineProcess) -> webuiapi.WebUIApi:
    return webuiapi.WebUIApi(host="127.0.0.1", port=engine.port, username="alice", password=TOKEN)  # type: ignore[attr-defined]


def b64_png(image: Image.Image) -> str:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def test_txt2img_with_a_seed_is_the_cli_image_and_batches_count(engine: EngineProcess, api) -> None:
    result = api.txt2img(prompt=RED, seed=3220803958, steps=8, width=64, height=64, sampler_name="Euler a",
                         cfg_scale=7.5, batch_size=2, n_iter=2)  # fmt: skip
    assert len(result.images) == 4
    assert result.info["all_seeds"] == [3220803958, 3220803959, 3220803960, 3220803961]
    assert result.info["seed"] == 3220803958 and "Seed: 3220803958" in result.info["infotexts"][0]
    assert [judge(im).colour for im in result.images].count("red") >= 3
    cli = subprocess.run([sys.executable, "-m", "engine", "--home", str(engine.home), "dream", RED, "-S", "3220803958",
                          "-s", "8", "-A", "k_euler_a", "-C", "7.5", "-W", "64", "-H", "64", "-n", "4", "-i", "--json"],
                         capture_output=True, text=True, cwd=ROOT, timeout=120)  # fmt: skip
    assert cli.returncode == 0, cli.stderr
    made = [Image.open(i["path"]) for i in json.loads(cli.stdout)["images"]]
    # One request schema, one seed convention: the same four images, byte for byte.
    assert [m.tobytes() for m in made] == [r.tobytes() for r in result.images]
    # The jobs are ordinary gallery images, from source a1111, for this client.
    with engine.client() as client:
        page = client.images(source="a1111")
    assert page.total == 4 and {i.user for i in page.images} == {"alice"}


def test_img2img_inpaint_upscale_and_png_info(api) -> None:
    blue = Image.new("RGB", (64, 64), (30, 60, 200))
    out = api.img2img(images=[blue], prompt=RED, denoising_strength=0.9, seed=5, steps=8, width=64, height=64)
    assert out.images[0].size == (64, 64) and out.info["all_seeds"] == [5]
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (0, 0, 32, 64))
    painted = api.img2img(images=[blue], mask_image=mask, prompt=RED, denoising_strength=1.0, seed=5, steps=8,
                          width=64, height=64)  # fmt: skip
    right = painted.images[0].convert("RGB").crop((32, 0, 64, 64))
    assert right.tobytes() == blue.crop((32, 0, 64, 64)).tobytes()  # the black half of the mask is kept
    inverted = api.img2img(images=[blue], mask_image=mask, inpainting_mask_invert=1, prompt=RED,
                           denoising_strength=1.0, seed=5, steps=8, width=64, height=64)  # fmt: skip
    assert inverted.images[0].convert("RGB").crop((0, 0, 32, 64)).tobytes() == blue.crop((0, 0, 32, 64)).tobytes()
    big = api.extra_single_image(image=out.images[0], upscaling_resize=2)
    assert big.image.size == (128, 128)
    info = api.png_info(out.images[0])
    assert info.info.startswith(RED) and "Seed: 5" in info.info


def test_options_models_and_lists(engine: EngineProcess, api) -> None:
    models = api.get_sd_models()
    assert [m["model_name"] for m in models] == ["dreamhall-toy-sd"]
    assert "/" not in models[0]["filename"]  # no local paths leave the engine
    assert "Euler a" in [s["name"] for s in api.get_samplers()]
    assert [lo["name"] for lo in api.get_loras()] == ["toy-black-bg"]
    assert "toy-logo" in api.get_embeddings()["loaded"]
    api.set_options({"sd_model_checkpoint": models[0]["title"]})
    assert api.get_options()["sd_model_checkpoint"] == "dreamhall-toy-sd"
    wrong = httpx.post(f"http://127.0.0.1:{engine.port}/sdapi/v1/options", auth=("alice", TOKEN),  # type: ignore[attr-defined]
                       json={"sd_model_checkpoint": "no-such-model"})  # fmt: skip
    assert wrong.status_code == 422
    body = wrong.json()
    assert set(body) == {"error", "detail", "body", "errors"} and "unknown model 'no-such-model'" in body["detail"]


def test_errors_have_a1111s_shape_and_auth_is_required(engine: EngineProcess) -> None:
    url = f"http://127.0.0.1:{engine.port}"  # type: ignore[attr-defined]
    assert httpx.get(f"{url}/sdapi/v1/sd-models").status_code == 401
    assert httpx.get(f"{url}/sdapi/v1/sd-models", auth=("bob", "wrong")).status_code == 401
    assert httpx.get(f"{url}/v1/health", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200
    body = {"prompt": "x", "sampler_name": "Nonsense", "steps": 2, "width": 64, "height": 64}
    bad = httpx.post(f"{url}/sdapi/v1/txt2img", auth=("bob", TOKEN), json=body)
    assert bad.status_code == 422 and "sampler 'Nonsense' is not available here; use one of: " in bad.json()["detail"]
    too_many = httpx.post(f"{url}/sdapi/v1/txt2img", auth=("bob", TOKEN),
                          json={"prompt": "x", "batch_size": 8, "n_iter": 8, "width": 64, "height": 64})  # fmt: skip
    assert too_many.status_code == 422 and "batch_size x n_iter" in too_many.json()["detail"]


def test_progress_while_running_then_interrupt(engine: EngineProcess, api) -> None:
    answer: dict = {}
    slow = threading.Thread(target=lambda: answer.update(r=api.txt2img(prompt=RED, steps=150, width=256, height=256,
                                                                       seed=1, batch_size=4)))  # fmt: skip
    slow.start()
    seen = None
    while slow.is_alive():
        progress = api.get_progress()
        if progress["state"]["sampling_step"] > 0 and progress["current_image"]:
            seen = progress
            break
        time.sleep(0.05)  # a poll, as clients do; the loop ends on a condition
    assert seen is not None, "the job ended before any progress was seen"
    assert 0 < seen["progress"] < 1 and seen["state"]["job_count"] >= 1
    assert Image.open(io.BytesIO(base64.b64decode(seen["current_image"]))).size[0] > 0
    api.interrupt()
    slow.join(timeout=120)
    assert not slow.is_alive() and answer["r"].images == [] and answer["r"].info["interrupted"]
    with engine.client() as client:
        cancelled = [j for j in client.queue().running if j.request.requester.user == "alice"]
    assert cancelled == []


def test_bad_images_and_sizes_are_a1111_errors_and_leave_nothing_behind(engine: EngineProcess) -> None:
    url, auth = f"http://127.0.0.1:{engine.port}/sdapi/v1", ("carol", TOKEN)  # type: ignore[attr-defined]
    with engine.client() as client:
        before = client.images().total
    not_png = base64.b64encode(b"this is not a picture").decode()
    for path, body in [
        ("img2img", {"prompt": "x", "init_images": [not_png], "width": 64, "height": 64}),
        ("img2img", {"prompt": "x", "init_images": ["%%% not base64 %%%"]}),
        ("txt2img", {"prompt": "x", "width": 100_000, "height": 64}),
        ("extra-single-image", {"image": not_png}),
        ("png-info", {"image": not_png}),
    ]:
        answer = httpx.post(f"{url}/{path}", auth=auth, json=body)
        assert answer.status_code == 422, (path, answer.text)
        assert set(answer.json()) == {"error", "detail", "body", "errors"} and answer.json()["detail"], path
    with engine.client() as client:
        assert client.images().total == before and client.queue().queued == []
        # what the A1111 clients made is in the gallery, and search finds it
        found = client.search("red circle", source="a1111")
    assert found.results and {r.image.source for r in found.results} == {"a1111"}
