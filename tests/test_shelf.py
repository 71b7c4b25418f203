"""The model shelf through a real engine process, and LoRAs, embeddings and long/weighted prompts
on the trained toy model (their effects judged by the toy world's checker)."""

from __future__ import annotations

import io
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from engine.client.clients import RequestRejected
from engine.client.derived import upscale_of, variation_of
from engine.client.dream_args import DreamArgsError
from engine.client.dream_args import parse as parse_dream
from engine.client.prompts import PromptError, fragments, parse
from engine.client.schema import DreamRequest, Requester
from engine.device.device import Device
from engine.device.pipelines import load_model
from engine.device.shelf import Shelf
from models.checker import judge
from tests.conftest import EngineProcess
from tests.ldm_layout import save_config_folder, save_single_file
from tests.tiny_pipeline import family_pipeline

WHITE = "a red circle on a white background"


def test_a1111_prompt_syntax():
    assert parse("a cat <lora:add_detail:0.8> <lora:x>") == ("a cat", parse("<lora:add_detail:0.8><lora:x>")[1])
    assert [(u.name, u.weight) for u in parse("<lora:add_detail:0.8> <lora:x>")[1]] == [("add_detail", 0.8), ("x", 1)]
    with pytest.raises(PromptError, match="between -4 and 4"):
        parse("<lora:x:9>")
    with pytest.raises(PromptError, match="must be a number"):
        parse("<lora:x:lots>")
    pieces = dict(fragments(r"a (red:1.5) [blue] ((big)) \(literal\)"))
    assert pieces["red"] == 1.5 and round(pieces["blue"], 4) == round(1 / 1.1, 4)
    assert round(pieces["big"], 4) == round(1.1 * 1.1, 4) and pieces[" (literal)"] == 1.0


@pytest.fixture(scope="module")
def toy():
    return load_model(None, Device("cpu"))


def _make(model, prompt: str, seed: int) -> Image.Image:
    return model.txt2img(prompt=prompt, negative_prompt="", steps=20, cfg_scale=7.5, sampler="k_euler_a",
                         seeds=[seed], width=64, height=64)[0]  # fmt: skip


def test_words_past_the_token_window_and_weights_change_the_image(toy):
    # The toy encoder's window is 32 tokens: the colour at the end is past it.
    long = f"{WHITE}, " * 4
    assert _make(toy, long + "green", 1).tobytes() != _make(toy, long + "purple", 1).tobytes()
    assert [judge(_make(toy, "a (red:1.6) [green] circle on a white background", s)).colour for s in range(3)] == [
        "red"] * 3  # fmt: skip
    assert [judge(_make(toy, "a [red] (green:1.6) circle on a white background", s)).colour for s in range(3)] == [
        "green"] * 3  # fmt: skip


def test_the_toy_lora_and_embedding_do_what_they_were_trained_for_and_leave_no_trace(toy):
    shelf = Shelf(None)
    before = _make(toy, WHITE, 5)
    lora = shelf.find("lora", "toy-black-bg")
    with toy.addons([(lora, 0.0)], []):
        assert {judge(_make(toy, WHITE, s)).background for s in range(3)} == {"white"}
    with toy.addons([(lora, 1.0)], []):
        assert "white" not in {judge(_make(toy, WHITE, s)).background for s in range(3)}
    with toy.addons([], [shelf.find("embedding", "toy-logo")]):
        verdicts = {judge(_make(toy, "toy-logo", s)) for s in range(3)}
    assert {(v.shape, v.colour, v.background) for v in verdicts} == {("circle", "red", "blue")}
    assert _make(toy, WHITE, 5).tobytes() == before.tobytes()  # byte-identical: nothing stayed loaded


def test_a_kohya_lora_file_works_as_its_diffusers_twin(toy, tmp_path):
    # sd-scripts names modules with underscores and stores an alpha per module (scale = alpha / rank).
    from safetensors.torch import load_file, save_file

    ours = load_file(str(Shelf(None).find("lora", "toy-black-bg").path))
    kohya = {}
    for key, value in ours.items():
        module, kind = key.removeprefix("unet.").rsplit(".lora.", 1)
        name = "lora_unet_" + module.replace(".", "_")
        kohya[f"{name}.lora_{kind}"] = value
        if kind == "down.weight":
            kohya[f"{name}.alpha"] = torch.tensor(float(value.shape[0]))
    (tmp_path / "Lora").mkdir()
    save_file(kohya, str(tmp_path / "Lora" / "toy-kohya.safetensors"))
    shelf = Shelf(tmp_path)
    with toy.addons([(shelf.find("lora", "toy-black-bg"), 1.0)], []):
        diffusers_made = np.asarray(_make(toy, WHITE, 2), dtype=np.int16)
    with toy.addons([(shelf.find("lora", "toy-kohya"), 1.0)], []):
        kohya_made = np.asarray(_make(toy, WHITE, 2), dtype=np.int16)
    assert np.abs(diffusers_made - kohya_made).max() <= 2


@pytest.fixture(scope="module")
def shelf_engine(tmp_path_factory):
    """An engine whose shelf holds tiny SD 1.x and SDXL single files (their tiny architectures in
    configs/) and tiny SD3 and FLUX diffusers folders, started with the hub unreachable."""
    home = tmp_path_factory.mktemp("shelf-home")
    shelf = home / "models"
    (shelf / "Stable-diffusion").mkdir(parents=True)
    for family in ("sd1", "sdxl", "sdxl-refiner"):
        pipe = family_pipeline(tmp_path_factory.mktemp(family), family)
        save_single_file(pipe, shelf / "Stable-diffusion" / f"tiny-{family}.safetensors")
        save_config_folder(pipe, shelf / "configs" / family)
    for family in ("sd3", "flux"):
        family_pipeline(tmp_path_factory.mktemp(family), family).save_pretrained(
            shelf / "Stable-diffusion" / f"tiny-{family}"
        )
    proc = EngineProcess(home, None, HF_HUB_OFFLINE="1", DREAMHALL_MODEL="tiny-sd1").start()
    yield proc
    proc.stop()


def test_the_shelf_lists_and_runs_single_files_offline_with_no_paths_in_files(shelf_engine):
    with shelf_engine.client() as client:
        shelf = client.models()
        families = {m.name: m.family for m in shelf.checkpoints}
        assert families == {"dreamhall-toy-sd": "SD 1.x", "tiny-flux": "FLUX", "tiny-sd1": "SD 1.x",
                            "tiny-sd3": "SD3", "tiny-sdxl": "SDXL", "tiny-sdxl-refiner": "SDXL refiner"}  # fmt: skip
        assert [m.name for m in shelf.loras] == ["toy-black-bg"] and [m.name for m in shelf.embeddings] == ["toy-logo"]
        for name in ("tiny-sd1", "tiny-sdxl"):
            accepted = client.submit(DreamRequest(prompt="a red circle", steps=2, width=64, height=64, seed=7,
                                                  model=name))  # fmt: skip
            job = client.wait(accepted.id)
            assert job.status == "done", job.error
            png = Image.open(io.BytesIO(client.image_file(job.images[0].id)))
            infotext = png.info["parameters"]
            assert re.search(rf"Model hash: [0-9a-f]{{10}}, Model: {name}\b", infotext), infotext
            assert str(shelf_engine.home) not in infotext and "/" not in infotext.split("Model:")[1]
        # Both stay in memory (the CPU's cache budget is a quarter of the RAM): no reload to go back.
        assert client.health().loaded[:2] == ["tiny-sdxl", "tiny-sd1"]
        listed = {m.name: m.hash for m in client.models().checkpoints}
        assert listed["tiny-sd1"] is not None and len(listed["tiny-sd1"]) == 10


@pytest.mark.parametrize("name", ["tiny-sd1", "tiny-sdxl", "tiny-sd3", "tiny-flux"])
def test_every_family_runs_every_mode_through_the_engine(shelf_engine, name):
    who = Requester(source="cli", user="me")

    def run(request: DreamRequest) -> list:
        job = client.wait(client.submit(request).id)
        assert job.status == "done", job.error
        return [client.image(i.id) for i in job.images]

    def pixels(record) -> np.ndarray:
        return np.asarray(Image.open(io.BytesIO(client.image_file(record.id))), dtype=np.int16)

    with shelf_engine.client() as client:
        txt = DreamRequest(prompt="a red circle", negative_prompt="blue", model=name, n=2, seed=5, steps=2,
                           width=64, height=64, sampler="k_euler", requester=who)  # fmt: skip
        first, second = run(txt)
        # Image i of a request is seed + i, alone too (FLUX's packed latents included); a batch of two may
        # round a float differently from a batch of one (SDXL: one level in a few pixels), nothing more.
        (alone,) = run(txt.model_copy(update={"n": 1, "seed": 6}))
        assert np.abs(pixels(alone) - pixels(second)).max() <= 2 and (first.model, first.width) == (name, 64)
        (img2img,) = run(txt.model_copy(update={"n": 1, "mode": "img2img", "init_image": f"gallery:{first.id}",
                                                "strength": 0.6}))  # fmt: skip
        buf = io.BytesIO()
        mask = Image.new("L", (64, 64), 0)
        mask.paste(255, (16, 16, 48, 48))
        mask.save(buf, format="PNG")
        (inpaint,) = run(txt.model_copy(update={"n": 1, "mode": "inpaint", "init_image": f"gallery:{first.id}",
                                                "init_mask": client.upload(buf.getvalue()).ref}))  # fmt: skip
        variations = run(variation_of(first, amount=0.3, n=2, requester=who))
        (upscaled,) = run(upscale_of(first, factor=2, requester=who))
    assert (img2img.relation, inpaint.relation, upscaled.relation) == ("img2img", "inpaint", "upscale")
    assert [v.seed for v in variations] == [first.seed] * 2 and (upscaled.width, upscaled.height) == (128, 128)


def test_a_refiner_finishes_each_image_and_is_recorded(shelf_engine):
    with shelf_engine.client() as client:
        base = dict(prompt="a red circle", model="tiny-sdxl", n=2, seed=9, steps=10, width=64, height=64)
        plain = client.wait(client.submit(DreamRequest(**base)).id)
        refined = client.wait(client.submit(DreamRequest(**base, refiner="tiny-sdxl-refiner")).id)
        assert refined.status == "done", refined.error
        for before, after in zip(plain.images, refined.images):
            record = client.image(after.id)
            assert (record.model, record.params["refiner"], record.params["refiner_switch"]) == (
                "tiny-sdxl", "tiny-sdxl-refiner", 0.8)  # fmt: skip
            assert client.image_file(after.id) != client.image_file(before.id)
        infotext = Image.open(io.BytesIO(client.image_file(refined.images[0].id))).info["parameters"]
        assert "Refiner: tiny-sdxl-refiner, Refiner switch at: 0.8" in infotext
        with pytest.raises(RequestRejected, match="--refiner: unknown model 'nope'"):
            client.submit(DreamRequest(**base, refiner="nope", requester=Requester(source="discord")))
    with pytest.raises(DreamArgsError, match=r"a refiner finishes new images .* not img2img"):
        parse_dream("a red circle --refiner tiny-sdxl-refiner -I 3")
    assert parse_dream("a red circle --refiner r --refiner_switch 0.6").refiner_switch == 0.6


def test_requests_name_only_what_the_shelf_has(shelf_engine, tmp_path: Path):
    discord = Requester(source="discord", user="1", guild="2")
    with shelf_engine.client() as client:
        with pytest.raises(RequestRejected, match=r"unknown model '/etc/passwd'; available: dreamhall-toy-sd, tiny"):
            client.submit(DreamRequest(prompt="x", model="/etc/passwd", requester=discord))
        with pytest.raises(RequestRejected, match="unknown model 'stabilityai/sdxl'"):
            client.submit(DreamRequest(prompt="x", model="stabilityai/sdxl", requester=discord))
        with pytest.raises(RequestRejected, match="unknown LoRA 'add_detail'; available: toy-black-bg"):
            client.submit(DreamRequest(prompt="a cat <lora:add_detail:0.8>", requester=discord))
        with pytest.raises(RequestRejected, match="between -4 and 4"):
            client.submit(DreamRequest(prompt="a cat <lora:toy-black-bg:12>", requester=discord))
        with pytest.raises(RequestRejected, match="unknown embedding 'nope'"):
            client.submit(DreamRequest(prompt="a cat embedding:nope", requester=discord))


def test_a_lora_for_another_family_fails_its_job_only_and_images_record_their_addons(shelf_engine):
    with shelf_engine.client() as client:
        wrong = client.submit(DreamRequest(prompt="a cat <lora:toy-black-bg:1>", model="tiny-sdxl", steps=2,
                                           width=64, height=64))  # fmt: skip
        job = client.wait(wrong.id)
        assert job.status == "failed" and "does not fit this SDXL model" in job.error
        ok = client.submit(DreamRequest(prompt=f"{WHITE} <lora:toy-black-bg:0.5>", model="dreamhall-toy-sd",
                                        steps=2, width=64, height=64))  # fmt: skip
        job = client.wait(ok.id)
        assert job.status == "done", job.error
        record = client.image(job.images[0].id)
        (lora,) = record.params["loras"]
        assert (lora["name"], lora["weight"], len(lora["hash"])) == ("toy-black-bg", 0.5, 12)
        infotext = Image.open(io.BytesIO(client.image_file(record.id))).info["parameters"]
        assert f'Lora hashes: "toy-black-bg: {lora["hash"]}"' in infotext
        # The gallery finds images by the LoRA they were made with, in listings and in search.
        assert [i.id for i in client.images(lora="toy-black-bg").images] == [record.id]
        assert client.images(lora="another-lora").images == []
        assert [r.image.id for r in client.search("red circle", lora="toy-black-bg").results] == [record.id]


def test_every_failure_a_user_can_cause_is_one_sentence(shelf_engine, tmp_path: Path):
    """A sampler the family has no scheduler for, a LoRA for another family, a truncated .ckpt on the shelf
    and a broken file named by path: each is one sentence for the user (no class name), and the engine's log
    says it on one line, without a traceback at ERROR."""
    shelf = shelf_engine.home / "models" / "Stable-diffusion"
    (shelf / "truncated.ckpt").write_bytes((shelf / "tiny-sd1.safetensors").read_bytes()[:5000])
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(b'\x08\x00\x00\x00\x00\x00\x00\x00{"a": 1}' + b"\x00" * 64)
    cli = Requester(source="cli", user="me")
    log_start = len(shelf_engine.read_log(tail=None))
    probes = {
        "sampler": DreamRequest(prompt="x", model="tiny-flux", sampler="k_lms", steps=2, width=64, height=64),
        "lora": DreamRequest(prompt="a cat <lora:toy-black-bg:1>", model="tiny-sdxl", steps=2, width=64, height=64),
        "truncated": DreamRequest(prompt="x", model="truncated", steps=2, width=64, height=64, requester=cli),
        "path": DreamRequest(prompt="x", model=str(broken), steps=2, width=64, height=64, requester=cli),
    }
    with shelf_engine.client() as client:
        client.models(scan=True)
        for what, request in probes.items():
            try:
                message = client.wait(client.submit(request).id).error or ""
            except RequestRejected as e:  # refused at submit: as good, if it is one sentence
                message = str(e)
            assert message, what
            assert "\n" not in message and len(message) < 400, (what, message)
            assert not re.search(r"\b[A-Z][A-Za-z]*(Error|Exception)\b", message), (what, message)
    log = shelf_engine.read_log(tail=None)[log_start:]
    assert "Traceback" not in log
    assert not [line for line in log.splitlines() if " ERROR " in line], log
