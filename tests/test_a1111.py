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
import numpy as np
import pytest
import webuiapi
from PIL import Image

from models.checker import judge
from tests.conftest import ROOT, TOKEN, EngineProcess, free_port, start_tcp_engine

RED = "a red circle on a blue background"


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EngineProcess]:
    proc = start_tcp_engine(tmp_path_factory.mktemp("a1111-home"))
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
    cli = subprocess.run([sys.executable, "-m", "cli", "--home", str(engine.home), "dream", RED, "-S", "3220803958",
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
                          width=64, height=64, mask_blur=0)  # fmt: skip
    right = painted.images[0].convert("RGB").crop((32, 0, 64, 64))
    assert right.tobytes() == blue.crop((32, 0, 64, 64)).tobytes()  # the black half of the mask is kept
    inverted = api.img2img(images=[blue], mask_image=mask, inpainting_mask_invert=1, prompt=RED, mask_blur=0,
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
    assert api.get_options()["sd_model_checkpoint"] == models[0]["title"]
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
    # A1111's interrupt: the images as far as they got (aiyabot's ❌ expects them), and info says so
    assert not slow.is_alive() and answer["r"].info["interrupted"]
    assert answer["r"].images and all(im.size == (256, 256) for im in answer["r"].images)
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


def basic(user_and_token: str) -> dict[str, str]:
    """The header both Open WebUI and SillyTavern build from their "user:password" setting."""
    return {"authorization": "Basic " + base64.b64encode(user_and_token.encode()).decode()}


def test_open_webui_sequence_under_a_path_prefix(tmp_path) -> None:
    """What Open WebUI (backend/open_webui/routers/images.py) sends, in its order, with its base URL
    pointing at a prefix, so the native API and /sdapi/v1 share the port."""
    port = free_port()
    proc = EngineProcess(tmp_path / "home", None, DREAMHALL_TCP_PORT=str(port), DREAMHALL_TOKEN=TOKEN,
                         DREAMHALL_A1111_PREFIX="/a1111").start()  # fmt: skip
    try:
        base, auth = f"http://127.0.0.1:{port}/a1111", basic(f"webui:{TOKEN}")
        with httpx.Client(headers=auth, timeout=120) as http:
            assert http.get(f"{base}/sdapi/v1/options").status_code == 200  # "verify URL"
            assert http.get(f"http://127.0.0.1:{port}/sdapi/v1/options").status_code == 404  # only under the prefix
            assert http.get(
                f"http://127.0.0.1:{port}/v1/health", headers={"authorization": f"Bearer {TOKEN}"}
            ).is_success
            models = [
                {"id": m["title"], "name": m["model_name"]} for m in http.get(f"{base}/sdapi/v1/sd-models").json()
            ]
            assert [m["name"] for m in models] == ["dreamhall-toy-sd"]
            # set_image_model: read the options, change the checkpoint, post the whole dict back
            options = http.get(f"{base}/sdapi/v1/options").json()
            options["sd_model_checkpoint"] = models[0]["id"]
            http.post(f"{base}/sdapi/v1/options", json=options).raise_for_status()
            assert http.get(f"{base}/sdapi/v1/options").json()["sd_model_checkpoint"] == models[0]["id"]
            data = {"prompt": RED, "batch_size": 2, "width": 64, "height": 64, "steps": 6, "negative_prompt": "text"}
            res = http.post(f"{base}/sdapi/v1/txt2img", json=data).json()
            assert len(res["images"]) == 2 and json.loads(res["info"])["negative_prompt"] == "text"
            assert {Image.open(io.BytesIO(base64.b64decode(i))).size for i in res["images"]} == {(64, 64)}
            # errors under the prefix are A1111's; no auth header (Open WebUI sends '' when unset) is refused
            bad = http.post(f"{base}/sdapi/v1/txt2img", json={"prompt": "x", "sampler_name": "Nope"})
            assert bad.status_code == 422 and set(bad.json()) == {"error", "detail", "body", "errors"}
            assert httpx.get(f"{base}/sdapi/v1/options", headers={"authorization": ""}).status_code == 401
        with proc.client() as client:
            assert {i.user for i in client.images(source="a1111").images} == {"webui"}
    finally:
        proc.stop()


def test_sillytavern_sequence(engine: EngineProcess) -> None:
    """What SillyTavern's server (src/endpoints/stable-diffusion.js) sends for its Stable Diffusion
    extension with source "AUTOMATIC1111": it replaces the URL's path, so the routes sit at the root."""
    url, auth = f"http://127.0.0.1:{engine.port}", f"dave:{TOKEN}"  # type: ignore[attr-defined]
    with httpx.Client(base_url=url, headers=basic(auth), timeout=120) as http:
        assert http.get("/sdapi/v1/options").is_success  # ping
        upscalers = [x["name"] for x in http.get("/sdapi/v1/upscalers").json()]
        latent = [x["name"] for x in http.get("/sdapi/v1/latent-upscale-modes").json()]
        assert upscalers and isinstance(latent, list)
        vaes = [r for r in (http.get("/sdapi/v1/sd-vae"), http.get("/sdapi/v1/sd-modules")) if r.is_success]
        assert vaes and isinstance(vaes[0].json(), list)
        samplers = [x["name"] for x in http.get("/sdapi/v1/samplers").json()]
        schedulers = [x["name"] for x in http.get("/sdapi/v1/schedulers").json()]
        assert "DDIM" in samplers and "normal" in schedulers  # the extension's defaults
        titles = [x["title"] for x in http.get("/sdapi/v1/sd-models").json()]
        current = http.get("/sdapi/v1/options").json()["sd_model_checkpoint"]
        assert current in titles
        # set-model: post only the checkpoint, then poll progress until idle
        http.post("/sdapi/v1/options", json={"sd_model_checkpoint": titles[0]}).raise_for_status()
        progress = http.get("/sdapi/v1/progress").json()
        assert {"progress", "state"} <= set(progress) and "job_count" in progress["state"]
        # generate: options first (Forge check), then txt2img with the extension's body, url and auth included
        assert "forge_preset" not in http.get("/sdapi/v1/options").json()
        body = {
            "url": url, "auth": auth, "prompt": RED, "negative_prompt": "lowres", "sampler_name": "DDIM",
            "scheduler": "normal", "steps": 6, "cfg_scale": 7, "width": 64, "height": 64, "restore_faces": False,
            "enable_hr": False, "hr_upscaler": "Latent", "hr_scale": 2.0, "denoising_strength": 0.7,
            "hr_second_pass_steps": 0, "seed": 77,
            "override_settings": {"CLIP_stop_at_last_layers": 1, "sd_model_checkpoint": titles[0]},
            "override_settings_restore_afterwards": True, "clip_skip": 1, "save_images": True,
            "send_images": True, "do_not_save_grid": False, "do_not_save_samples": False,
        }  # fmt: skip
        data = http.post("/sdapi/v1/txt2img", json=body).json()
        image = Image.open(io.BytesIO(base64.b64decode(data["images"][0])))
        assert image.format == "PNG" and "Sampler: DDIM" in image.info["parameters"]
        assert json.loads(data["info"])["all_seeds"] == [77]
        again = http.post("/sdapi/v1/txt2img", json=body).json()
        assert again["images"] == data["images"]  # same seed and settings: the same picture
        # a scheduler we do not have is a sentence naming the ones we do
        wrong = http.post("/sdapi/v1/txt2img", json=body | {"scheduler": "exponential"})
        assert wrong.status_code == 422 and "automatic, normal, karras" in wrong.json()["detail"]


def test_resize_modes_and_subseeds(api) -> None:
    """img2img's resize_mode as A1111 has it, and each variation's own subseed in `info`."""
    wide = Image.new("RGB", (128, 64), (30, 60, 200))
    wide.paste((200, 30, 30), (0, 0, 32, 64))  # a red band on the left quarter
    for mode in (0, 1, 2):
        out = api.img2img(images=[wide], prompt="x", denoising_strength=0.0001, seed=3, steps=2, width=64,
                          height=64, resize_mode=mode)  # fmt: skip
        assert out.images[0].size == (64, 64), mode
        left = out.images[0].convert("RGB").getpixel((2, 32))
        top = out.images[0].convert("RGB").getpixel((48, 2))
        if mode == 0:  # squeezed: the band is a quarter of the width
            assert left[0] > left[2]
        if mode == 1:  # cropped to the centre: the band is gone
            assert left[2] > left[0]
        if mode == 2:  # fitted inside, bars filled from the edge rows: still blue at the top right
            assert left[0] > left[2] and top[2] > top[0]
    varied = api.txt2img(prompt=RED, seed=9, subseed=100, subseed_strength=0.3, batch_size=2, steps=4, width=64,
                         height=64)  # fmt: skip
    assert varied.info["all_seeds"] == [9, 9] and varied.info["all_subseeds"] == [100, 101]


def test_hires_fix_styles_clip_skip_and_what_is_not_honoured(engine: EngineProcess, api) -> None:
    """Nothing accepted and ignored: the hires fix draws at twice the size, a style changes the prompt as A1111's
    styles.csv does, clip skip changes the picture, and what cannot be honoured is said in `info.warnings`."""
    hires = api.txt2img(prompt=RED, seed=11, steps=4, width=64, height=64, enable_hr=True, hr_scale=2,
                        hr_upscaler="Lanczos", hr_second_pass_steps=3, denoising_strength=0.5)  # fmt: skip
    assert hires.images[0].size == (128, 128)
    text = hires.info["infotexts"][0]
    for words in ("Hires upscale: 2", "Hires steps: 3", "Hires upscaler: Lanczos", "Denoising strength: 0.5",
                  "Size: 64x64"):  # fmt: skip
        assert words in text, (words, text)
    resized = api.txt2img(prompt=RED, seed=11, steps=2, width=64, height=64, enable_hr=True, hr_resize_x=96)
    assert resized.images[0].size == (96, 96) and "Hires resize: 96x0" in resized.info["infotexts"][0]
    plain = api.txt2img(prompt=RED, seed=11, steps=4, width=64, height=64)
    assert plain.images[0].size == (64, 64) and not plain.info["warnings"]

    (engine.home / "styles.csv").write_text(
        'name,prompt,negative_prompt\nframed,"{prompt}, framed","blurry"\nsuffix,on paper,\n'
    )  # fmt: skip
    assert api.get_prompt_styles()[0] == {"name": "framed", "prompt": "{prompt}, framed", "negative_prompt": "blurry"}
    styled = api.txt2img(prompt=RED, styles=["framed", "suffix"], seed=11, steps=4, width=64, height=64)
    info = styled.info
    assert info["prompt"] == f"{RED}, framed, on paper" and info["negative_prompt"] == "blurry"
    assert info["styles"] == ["framed", "suffix"] and styled.images[0].tobytes() != plain.images[0].tobytes()
    unknown = httpx.post(f"http://127.0.0.1:{engine.port}/sdapi/v1/txt2img", auth=("alice", TOKEN),  # type: ignore[attr-defined]
                         json={"prompt": RED, "styles": ["nope"], "steps": 2, "width": 64, "height": 64})  # fmt: skip
    assert unknown.status_code == 422 and "no style named 'nope'" in unknown.json()["detail"]

    skipped = api.txt2img(prompt=RED, seed=11, steps=4, width=64, height=64,
                          override_settings={"CLIP_stop_at_last_layers": 2})  # fmt: skip
    assert skipped.info["clip_skip"] == 2 and "Clip skip: 2" in skipped.info["infotexts"][0]
    assert skipped.images[0].tobytes() != plain.images[0].tobytes()

    faces = api.txt2img(prompt=RED, seed=11, steps=2, width=64, height=64, restore_faces=True, s_churn=0.5,
                        override_settings={"sd_vae": "x.pt"})  # fmt: skip
    said = " ".join(faces.info["warnings"])
    assert "no face restorer" in said and "s_churn" in said and "override_settings.sd_vae" in said


def test_soft_mask_any_upscale_factor_and_a1111_lists(engine: EngineProcess, api) -> None:
    blue = Image.new("RGB", (64, 64), (30, 60, 200))
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (0, 0, 32, 64))

    def seam(blur: int) -> int:
        """The largest step between neighbouring columns across the mask's edge (x 24..40), as grey levels."""
        out = api.img2img(images=[blue], mask_image=mask, prompt="a white background", denoising_strength=1.0,
                          seed=5, steps=6, width=64, height=64, mask_blur=blur, inpaint_full_res=False,
                          inpainting_fill=1)  # fmt: skip
        cols = np.asarray(out.images[0].convert("RGB"), dtype=float).mean(axis=0)
        jumps = np.abs(np.diff(cols[24:41], axis=0)).sum(axis=1)
        return int(jumps.max())

    hard, soft = seam(0), seam(8)
    assert soft < hard / 2, (hard, soft)  # mask_blur=8 feathers the seam instead of a cut

    for factor, size in ((3, (192, 192)), (1.5, (96, 96)), (1, (64, 64))):
        made = api.extra_single_image(image=blue, upscaling_resize=factor, upscaler_1="Lanczos")
        assert made.image.size == size, factor
    same = api.extra_single_image(image=blue, upscaling_resize=1)
    assert same.image.convert("RGB").tobytes() == blue.tobytes()  # x1: the image as it is
    plain = api.extra_single_image(image=blue, upscaling_resize=2, upscaler_1="Nearest").image.convert("RGB")
    assert plain.tobytes() == blue.resize((128, 128), Image.Resampling.NEAREST).tobytes()  # a resample, not a pass
    named = httpx.post(f"http://127.0.0.1:{engine.port}/sdapi/v1/extra-single-image", auth=("alice", TOKEN),  # type: ignore[attr-defined]
                       json={"image": b64_png(blue), "upscaling_resize": 2, "upscaler_1": "ESRGAN_4x"},
                       timeout=120)  # fmt: skip
    assert named.status_code == 200 and "ESRGAN_4x is not on this engine" in named.json()["html_info"]
    too_big = httpx.post(f"http://127.0.0.1:{engine.port}/sdapi/v1/extra-single-image", auth=("alice", TOKEN),  # type: ignore[attr-defined]
                         json={"image": b64_png(blue), "upscaling_resize": 5})  # fmt: skip
    assert too_big.status_code == 422 and "1 to 4" in too_big.json()["detail"]

    assert {"Lanczos", "Nearest", "None"} <= {u["name"] for u in api.get_upscalers()}
    embedding = api.get_embeddings()["loaded"]["toy-logo"]
    assert embedding["shape"] == 64 and embedding["vectors"] == 2
