"""Every mode through a real engine on the built-in model: uploads, references, lineage, the CLI, and bad input."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image

from engine.client.clients import RequestRejected
from engine.client.derived import upscale_of, variation_of
from engine.client.dream_args import parse
from engine.client.schema import Requester
from models.checker import judge
from tests.conftest import ROOT, EngineProcess

pytestmark = pytest.mark.slow

RED_ON_BLUE = "a red circle on a blue background"


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EngineProcess]:
    proc = EngineProcess(tmp_path_factory.mktemp("home"), None, DREAMHALL_MAX_BODY_BYTES=str(2 * 1024 * 1024)).start()
    yield proc
    assert proc.stop() == 0


@pytest.fixture(scope="module")
def red(engine: EngineProcess) -> int:
    """The id of a red circle on blue, made by txt2img in guild g1."""
    with engine.client() as client:
        request = parse(f'"{RED_ON_BLUE}" -S 3220803958', requester=Requester(source="discord", guild="g1"))
        job = client.wait(client.submit(request).id)
        assert job.status == "done", job.error
        return job.images[0].id


def png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def dreamhall(engine: EngineProcess, *argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cli", "--home", str(engine.home), "dream", *argv, "--json"],
                          capture_output=True, text=True, cwd=ROOT, timeout=120)  # fmt: skip


def test_cli_img2img_from_a_local_file(engine: EngineProcess, red: int, tmp_path: Path) -> None:
    init = tmp_path / "red.png"
    with engine.client() as client:
        init.write_bytes(client.image_file(red))
    out = dreamhall(engine, "a blue circle on a white background", "-I", str(init), "-f", "0.8", "-n", "4", "-S", "7")
    assert out.returncode == 0, out.stderr
    images = json.loads(out.stdout)["images"]
    verdicts = [judge(Image.open(i["path"])) for i in images]
    assert sum(v.colour == "blue" for v in verdicts) >= 3, verdicts
    with engine.client() as client:
        record = client.image(images[0]["id"])
    assert record.mode == "img2img" and record.relation == "img2img" and record.parent_id is None
    assert record.params["init_image"].startswith("upload:") and record.params["strength"] == 0.8
    # The PNG says it as AUTOMATIC1111 does, so other tools read the strength back.
    assert "Denoising strength: 0.8" in Image.open(images[0]["path"]).info["parameters"]


def test_cli_inpaint_with_a_gallery_id_and_a_mask_file(engine: EngineProcess, red: int, tmp_path: Path) -> None:
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (32, 0, 64, 64))
    mask.save(tmp_path / "mask.png")
    out = dreamhall(engine, "a green square on a yellow background", "-I", str(red), "-M", str(tmp_path / "mask.png"))
    assert out.returncode == 0, out.stderr
    made = json.loads(out.stdout)["images"][0]
    with engine.client() as client:
        record = client.image(made["id"])
        original = Image.open(io.BytesIO(client.image_file(red)))
    assert record.parent_id == red and record.relation == "inpaint"
    assert Image.open(made["path"]).crop((0, 0, 32, 64)).tobytes() == original.crop((0, 0, 32, 64)).tobytes()


def test_variation_and_upscale_record_their_parent(engine: EngineProcess, red: int) -> None:
    who = Requester(source="discord", guild="g1", user="u1")
    with engine.client() as client:
        parent = client.image(red)
        job = client.wait(client.submit(variation_of(parent, amount=0.1, n=2, requester=who)).id)
        assert job.status == "done", job.error
        for info in job.images:
            child = client.image(info.id)
            assert child.parent_id == red and child.relation == "variation" and child.seed == parent.seed
            assert child.params["with_variations"][0]["weight"] == 0.1
            assert judge(Image.open(info.path)) == judge(Image.open(parent.path))
        job = client.wait(client.submit(upscale_of(parent, factor=2, requester=who)).id)
        assert job.status == "done", job.error
        big = client.image(job.images[0].id)
        assert (big.width, big.height) == (128, 128) and big.parent_id == red and big.relation == "upscale"
        assert "lanczos x2" in big.params["upscaler"]


def test_outpaint_through_the_api(engine: EngineProcess, red: int) -> None:
    with engine.client() as client:
        request = parse(f'"{RED_ON_BLUE}" -I {red} --outpaint top:16', requester=Requester(guild="g1"))
        job = client.wait(client.submit(request).id)
        assert job.status == "done", job.error
        assert (job.images[0].width, job.images[0].height) == (64, 80)
        assert client.image(job.images[0].id).relation == "outpaint"


def test_bad_inputs_are_clear_errors(engine: EngineProcess, red: int) -> None:
    with engine.client() as client:
        with pytest.raises(RequestRejected, match="not a readable image") as info:
            client.upload(b"this is not a picture")
        assert info.value.status == 422
        with pytest.raises(RequestRejected, match="too large") as info:
            client.upload(b"\x89PNG" + b"\0" * (3 * 1024 * 1024))
        assert info.value.status == 413
        small_mask = client.upload(png(Image.new("L", (32, 32), 255))).ref
        with pytest.raises(RequestRejected, match="the mask is 32x32 but the init image is 64x64"):
            client.submit(parse(f"x -I {red} -M {small_mask}", requester=Requester(guild="g1")))
        with pytest.raises(RequestRejected, match="image 999999 is not in the gallery") as info:
            client.submit(parse("x -v 0.2 -I 999999"))
        assert info.value.status == 404
        with pytest.raises(RequestRejected, match="not in this server's gallery"):
            client.submit(parse(f"x -I {red}", requester=Requester(source="discord", guild="g2")))
        with pytest.raises(RequestRejected, match="no upload"):
            client.submit(parse("x -I upload:" + "ab" * 32))
        assert client.health().status == "ok"


def test_cli_names_a_missing_file_before_starting_anything(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "cli", "--home", str(tmp_path), "dream", "x", "-I", "nope.png", "--no-autostart"],
        capture_output=True, text=True, cwd=ROOT, timeout=60,
    )  # fmt: skip
    assert out.returncode == 2
    assert out.stderr.strip() == "dreamhall: -I/--init_img: 'nope.png' is neither a gallery image id nor a file"


def test_cli_infinite_zoom_chains_outpaints_into_an_animation(engine: EngineProcess, tmp_path: Path) -> None:
    out = tmp_path / "zoom.gif"
    done = subprocess.run(
        [sys.executable, "-m", "cli", "--home", str(engine.home), "zoom", RED_ON_BLUE, "-S", "4", "-s", "8",
         "--frames", "3", "--out", str(out)],
        capture_output=True, text=True, cwd=ROOT, timeout=180,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "PydanticSerializationUnexpectedValue" not in done.stderr  # no library noise in the terminal
    animation = Image.open(out)
    assert animation.n_frames == 2 * 6 + 1 and animation.size == (64, 64)
    with engine.client() as client:
        page = client.images(limit=2)
    # The last two pictures are outpaints of uploads of the shrunk picture before them.
    assert [r.relation for r in page.images] == ["outpaint", "outpaint"]
    assert all(r.params["outpaint"] == {"left": 8, "right": 8, "top": 8, "bottom": 8} for r in page.images)
    bad = subprocess.run([sys.executable, "-m", "cli", "--home", str(engine.home), "zoom", "x", "--frames", "1"],
                         capture_output=True, text=True, cwd=ROOT, timeout=60)  # fmt: skip
    assert bad.returncode == 2 and "--frames: between 2 and 100" in bad.stderr
