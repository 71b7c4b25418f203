"""Import of other tools' PNGs, and check/repair after a real crash mid-ingest."""

from __future__ import annotations

import io
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image, PngImagePlugin

from gallery.db import open_gallery_db
from gallery.embeddings import OpenClipEmbedder
from gallery.importers import parse_a1111, read_metadata
from gallery.index import LanceIndex
from gallery.indexer import Indexer
from gallery.store import SqliteImageStore
from gallery.upkeep import Upkeep
from models import toyworld
from tests.conftest import ROOT

A1111 = (
    "a red fox in snow, highly detailed\nNegative prompt: blurry, lowres\n"
    "Steps: 28, Sampler: DPM++ 2M Karras, CFG scale: 6.5, Seed: 3220803958, Size: 512x768, Model hash: 6ce0161689, "
    'Model: v1-5-pruned-emaonly, Lora hashes: "a: 1, b: 2", Version: v1.10.1'
)
COMFY = {
    "3": {
        "class_type": "KSampler",
        "inputs": {
            "seed": 42,
            "steps": 20,
            "cfg": 8.0,
            "sampler_name": "euler",
            "positive": ["6", 0],
            "negative": ["7", 0],
            "model": ["4", 0],
        },
    },
    "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "sd_xl_base_1.0.safetensors"}},
    "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "a castle on a hill at dusk"}},
    "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "text, watermark"}},
}
INVOKE = {
    "positive_prompt": "an astronaut riding a horse",
    "negative_prompt": "",
    "seed": 7,
    "steps": 30,
    "cfg_scale": 7.5,
    "scheduler": "euler_a",
    "model": {"name": "stable-diffusion-v1-5"},
}


def png_with(chunks: dict[str, str], colour: tuple[int, int, int] = (200, 30, 30)) -> bytes:
    meta = PngImagePlugin.PngInfo()
    for k, v in chunks.items():
        meta.add_text(k, v)
    buf = io.BytesIO()
    Image.new("RGB", (64, 64), colour).save(buf, format="PNG", pnginfo=meta)
    return buf.getvalue()


def test_a1111_text_is_parsed_field_by_field() -> None:
    fields = parse_a1111(A1111)
    assert fields == {
        "prompt": "a red fox in snow, highly detailed",
        "negative_prompt": "blurry, lowres",
        "steps": 28,
        "cfg_scale": 6.5,
        "seed": 3220803958,
        "sampler": "DPM++ 2M Karras",
        "model": "v1-5-pruned-emaonly",
        "width": 512,
        "height": 768,
    }


def test_each_tools_metadata_is_recognised() -> None:
    assert read_metadata({"parameters": A1111})[0] == "a1111"
    tool, fields, _ = read_metadata({"prompt": json.dumps(COMFY), "workflow": "{}"})
    assert tool == "comfyui"
    assert fields == {
        "prompt": "a castle on a hill at dusk",
        "negative_prompt": "text, watermark",
        "seed": 42,
        "steps": 20,
        "cfg_scale": 8.0,
        "sampler": "euler",
        "model": "sd_xl_base_1.0.safetensors",
    }
    tool, fields, _ = read_metadata({"invokeai_metadata": json.dumps(INVOKE)})
    assert (tool, fields["prompt"], fields["model"], fields["seed"]) == (
        "invokeai",
        "an astronaut riding a horse",
        "stable-diffusion-v1-5",
        7,
    )
    assert read_metadata({"prompt": "{not json"}) == ("none", {}, {})
    assert read_metadata({}) == ("none", {}, {})


@pytest.fixture
def upkeep(tmp_path: Path) -> Upkeep:
    db = open_gallery_db(tmp_path / "gallery.db")
    store = SqliteImageStore(db, tmp_path / "images")
    embedder = OpenClipEmbedder()
    index = LanceIndex(tmp_path / "lancedb", model_id=embedder.model_id, dim=embedder.dim)
    return Upkeep(store=store, indexer=Indexer(engine=db, store=store, embedder=embedder, index=index))


def test_import_keeps_parameters_and_is_idempotent(upkeep: Upkeep) -> None:
    files = {
        "a1111.png": png_with({"parameters": A1111}, (200, 30, 30)),
        "comfy.png": png_with({"prompt": json.dumps(COMFY)}, (30, 200, 30)),
        "invoke.png": png_with({"invokeai_metadata": json.dumps(INVOKE)}, (30, 30, 200)),
    }
    results = {name: upkeep.import_image(data, filename=name) for name, data in files.items()}
    assert {n: (r.status, r.tool) for n, r in results.items()} == {
        "a1111.png": ("added", "a1111"),
        "comfy.png": ("added", "comfyui"),
        "invoke.png": ("added", "invokeai"),
    }
    fox = upkeep.store.get(results["a1111.png"].id)
    assert (fox.prompt, fox.seed, fox.steps, fox.sampler, fox.source) == (
        "a red fox in snow, highly detailed",
        3220803958,
        28,
        "DPM++ 2M Karras",
        "import",
    )
    # The file is kept byte for byte, so other tools still read it.
    assert upkeep.store.file_path(fox).read_bytes() == files["a1111.png"]
    again = upkeep.import_image(files["a1111.png"], filename="copy.png")
    assert (again.status, again.id) == ("duplicate", fox.id)
    assert len(upkeep.indexer.vector_ids()) == 3
    jpeg = io.BytesIO()
    Image.new("RGB", (40, 30), (9, 9, 9)).save(jpeg, format="JPEG")
    assert upkeep.import_image(jpeg.getvalue(), filename="x.jpg").tool == "none"
    assert upkeep.import_image(jpeg.getvalue(), filename="x.jpg").status == "duplicate"


def test_bad_files_are_refused_before_anything_is_written(upkeep: Upkeep) -> None:
    for bad in (b"", b"not an image", png_with({})[:50]):
        with pytest.raises(ValueError):
            upkeep.import_image(bad)
    assert upkeep.check().rows == 0 and upkeep.check().files == 0


INGEST = """
import sys, time
from pathlib import Path
from tests.test_gallery_upkeep import open_upkeep
upkeep = open_upkeep(Path(sys.argv[1]))
for path in sorted(Path(sys.argv[2]).glob("*.png")):
    upkeep.import_image(path.read_bytes(), filename=path.name)
    print(path.name, flush=True)
"""


def open_upkeep(root: Path) -> Upkeep:
    db = open_gallery_db(root / "gallery.db")
    store = SqliteImageStore(db, root / "images")
    embedder = OpenClipEmbedder()
    index, _ = LanceIndex.open_or_rebuild(root / "lancedb", model_id=embedder.model_id, dim=embedder.dim)
    return Upkeep(store=store, indexer=Indexer(engine=db, store=store, embedder=embedder, index=index))


def test_kill_9_during_an_ingest_then_repair_is_consistent(tmp_path: Path) -> None:
    source = tmp_path / "incoming"
    source.mkdir()
    images, _, captions = toyworld.dataset(400, scenes=toyworld.all_scenes(), seed=11)
    for i, (im, caption) in enumerate(zip(images, captions)):
        meta = PngImagePlugin.PngInfo()
        meta.add_text("parameters", f"{caption}\nSteps: 20, Sampler: Euler a, CFG scale: 7, Seed: {i}, Size: 64x64")
        Image.fromarray(im).save(source / f"{i:04d}.png", pnginfo=meta)
    home = tmp_path / "home"
    child = subprocess.Popen(
        [sys.executable, "-c", INGEST, str(home), str(source)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    done = 0
    deadline = time.monotonic() + 120
    while done < 40 and time.monotonic() < deadline:
        if child.stdout.readline():
            done += 1
    child.send_signal(signal.SIGKILL)  # somewhere between a file, its row and its vector
    child.wait(10)
    assert done >= 40, "the ingest never got going"

    upkeep = open_upkeep(home)
    report = upkeep.check(repair=True)
    after = upkeep.check()
    assert after.missing_files == [] and after.orphan_files == [] and after.temp_files == []
    assert after.missing_vectors == 0 and after.orphan_vectors == 0
    assert after.rows == after.files == after.vectors >= done
    # Repaired exactly when the kill left something inconsistent, and by the rules: orphan files
    # (written, no row yet) are recovered as rows, rows whose file is gone are hidden.
    assert report.repaired == (not report.consistent) and after.consistent
    assert after.rows == report.rows + len(report.orphan_files) - len(report.missing_files)
    # Resuming the ingest adds only what is missing.
    for path in sorted(source.glob("*.png")):
        upkeep.import_image(path.read_bytes(), filename=path.name)
    final = upkeep.check()
    assert final.rows == final.files == final.vectors == 400


def test_a_running_jobs_unindexed_images_are_not_missing_and_plain_imports_are_no_txt2img(upkeep: Upkeep) -> None:
    from sqlalchemy import insert, update

    from gallery.files import encode_png
    from gallery.models import JobRow
    from gallery.schemas import ImageCreate

    store = upkeep.store
    with store.engine.begin() as conn:  # type: ignore[attr-defined]
        conn.execute(insert(JobRow).values(id="j1", status="running", queue_key="k", priority=0, request={}, seed=1,
                                           source="cli"))  # fmt: skip
    info = ImageCreate(job_id="j1", width=8, height=8, seed=1)
    store.add([(info, encode_png(Image.new("RGB", (8, 8)), info))])  # stored; its vector comes when the job ends
    assert upkeep.check().missing_vectors == 0
    with store.engine.begin() as conn:  # type: ignore[attr-defined]
        conn.execute(update(JobRow).where(JobRow.id == "j1").values(status="done"))
    assert upkeep.check().missing_vectors == 1  # a finished job's image without a vector is missing
    plain = io.BytesIO()
    Image.new("RGB", (16, 16), (1, 2, 3)).save(plain, format="PNG")
    imported = store.get(upkeep.import_image(plain.getvalue(), filename="plain.png").id)
    assert (imported.mode, imported.source) == ("import", "import")
