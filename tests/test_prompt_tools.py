"""Nothing accepted and ignored, natively: styles and seed-resolved wildcards, the hires fix, tiling, clip skip, any
upscale factor and named upscalers, soft and cropped inpainting, through the grammar and a real engine."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from collections.abc import Iterator

import numpy as np
import pytest
from PIL import Image

from engine.client.clients import RequestRejected
from engine.client.dream_args import parse
from engine.client.schema import DreamRequest
from models.checker import judge
from tests.conftest import ROOT, EngineProcess

pytestmark = pytest.mark.slow

RED_ON_BLUE = "a red circle on a blue background"


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EngineProcess]:
    home = tmp_path_factory.mktemp("prompt-tools")
    (home / "wildcards").mkdir()
    (home / "wildcards" / "colour.txt").write_text("red\ngreen\nblue\nyellow\n")
    (home / "styles.csv").write_text('name,prompt,negative_prompt\non white,"{prompt} on a white background",blurry\n')
    proc = EngineProcess(home, None).start()
    yield proc
    assert proc.stop() == 0


def make(engine: EngineProcess, command: str) -> list:
    with engine.client() as client:
        job = client.wait(client.submit(parse(command)).id)
        assert job.status == "done", job.error
        return [(client.image(i.id), Image.open(io.BytesIO(client.image_file(i.id)))) for i in job.images]


def test_wildcards_are_chosen_by_each_images_seed_and_remake_alone(engine: EngineProcess) -> None:
    command = '"a __colour__ {circle|square} on a {white|gray} background" -S 42 -n 4 -s 6'
    first, again = make(engine, command), make(engine, command)
    prompts = [record.prompt for record, _ in first]
    assert prompts == [record.prompt for record, _ in again]  # the same seed, the same prompts
    assert all("__" not in p and "{" not in p for p in prompts) and len(set(prompts)) > 1
    record, image = first[2]
    assert record.params["prompt_template"].startswith("a __colour__") and record.seed == 44
    # what the image records remakes it alone, byte for byte (its prompt is resolved: no wildcard is drawn again)
    with engine.client() as client:
        job = client.wait(client.submit(DreamRequest.from_params(record.params)).id)
        assert job.status == "done", job.error
        remade = Image.open(io.BytesIO(client.image_file(job.images[0].id)))
    assert remade.tobytes() == image.tobytes()
    with engine.client() as client, pytest.raises(RequestRejected, match=r"wildcard __nope__ has no file"):
        client.submit(parse('"a __nope__ circle"'))


def test_a_style_from_styles_csv_and_an_unknown_one(engine: EngineProcess) -> None:
    [(record, image)] = make(engine, '"a blue square" --style "on white" -S 5 -s 6')
    assert record.prompt == "a blue square on a white background" and record.negative_prompt == "blurry"
    assert record.params["styles_applied"] == ["on white"] and record.params["styles"] == []
    assert judge(image).background == "white"
    with engine.client() as client, pytest.raises(RequestRejected, match=r"--style: no style named 'noir'"):
        client.submit(parse('"x" --style noir'))


def test_hires_fix_tiling_and_clip_skip_from_the_grammar(engine: EngineProcess) -> None:
    [(plain_record, plain)] = make(engine, f'"{RED_ON_BLUE}" -S 7 -s 6 -W 64 -H 64')
    [(record, big)] = make(engine, f'"{RED_ON_BLUE}" -S 7 -s 6 -W 64 -H 64 --hr 2 --hr_steps 4 --hr_strength 0.4')
    assert big.size == (128, 128) and record.width == 128 and record.params["width"] == 64
    assert "Hires upscale: 2" in big.info["parameters"] and judge(big.resize((64, 64))).colour == "red"
    [(_, skipped)] = make(engine, f'"{RED_ON_BLUE}" -S 7 -s 6 -W 64 -H 64 --clip_skip 2')
    assert skipped.tobytes() != plain.tobytes() and "Clip skip: 2" in skipped.info["parameters"]

    def seam(image: Image.Image) -> float:
        """How far the left edge is from continuing the right one (and the top the bottom), in grey levels."""
        a = np.asarray(image.convert("RGB"), dtype=float)
        return float(np.abs(a[:, 0] - a[:, -1]).mean() + np.abs(a[0] - a[-1]).mean())

    wide = f'"{RED_ON_BLUE}" -S 9 -s 8 -W 128 -H 64'
    [(_, flat)], [(_, tiled)] = make(engine, wide), make(engine, wide + " --tiling")
    assert seam(tiled) < seam(flat), (seam(tiled), seam(flat))
    assert plain_record.params["clip_skip"] == 1


def test_upscale_by_any_factor_and_by_name(engine: EngineProcess) -> None:
    [(parent, small)] = make(engine, f'"{RED_ON_BLUE}" -S 3 -s 6 -W 64 -H 64')
    [(record, three)] = make(engine, f"-I {parent.id} -U 3 --upscaler Lanczos")
    assert three.size == (192, 192) and record.params["upscaler"] == "Lanczos x3"
    assert three.tobytes() == small.convert("RGB").resize((192, 192), Image.Resampling.LANCZOS).tobytes()
    [(record, odd)] = make(engine, f"-I {parent.id} -U 1.3 -s 4")  # the detail pass, then the exact size
    assert odd.size == (83, 83) and "detail pass" in record.params["upscaler"]
    [(record, same)] = make(engine, f"-I {parent.id} -U 1")
    assert same.tobytes() == small.convert("RGB").tobytes() and record.params["upscaler"].startswith("none")
    [(record, _)] = make(engine, f'-I {parent.id} -U 2 --upscaler "R-ESRGAN 4x+" -s 4')
    assert "R-ESRGAN 4x+ is not on this engine" in record.params["upscaler"]


def test_soft_and_cropped_inpainting(engine: EngineProcess) -> None:
    [(parent, image)] = make(engine, f'"{RED_ON_BLUE}" -S 3 -s 6 -W 64 -H 64')
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (40, 40, 56, 56))
    with engine.client() as client:
        ref = client.upload(_png(mask)).ref
    [(record, cropped)] = make(engine, f'"a yellow star" -I {parent.id} -M {ref} -S 1 -s 6 --inpaint_full_res '
                                       f"--inpaint_padding 8 --mask_blur 2 --inpaint_fill fill")  # fmt: skip
    text = cropped.info["parameters"]
    assert cropped.size == (64, 64) and "Inpaint area: Only masked" in text and "Masked area padding: 8" in text
    assert "Denoising strength: 0.75" in text and "Mask blur: 2" in text and "Masked content: fill" in text
    before, after = (np.asarray(im.convert("RGB"), dtype=int) for im in (image, cropped))
    assert (before[:24, :24] == after[:24, :24]).all()  # far from the mask: untouched
    assert np.abs(before[40:56, 40:56] - after[40:56, 40:56]).mean() > 10  # the masked square: repainted
    assert record.params["inpaint_fill"] == "fill" and record.params["mask_blur"] == 2


def _png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def cli(engine: EngineProcess, *argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cli", "--home", str(engine.home), *argv],
                          capture_output=True, text=True, cwd=ROOT, timeout=120)  # fmt: skip


def test_describe_names_the_colour_shape_and_background_of_a_built_in_image(engine: EngineProcess, tmp_path) -> None:
    [(record, image)] = make(engine, f'"{RED_ON_BLUE}" -S 3220803958 -s 8')
    assert judge(image).colour == "red" and judge(image).shape == "circle"  # what the model drew
    picture = tmp_path / "red.png"
    image.save(picture)
    out = cli(engine, "describe", str(picture), "--json")
    assert out.returncode == 0, out.stderr
    described = json.loads(out.stdout)
    first = described["prompts"][0]
    assert "red circle" in first and "blue background" in first, described["prompts"]
    assert len(described["prompts"]) == 4 and described["terms"]["subject"][0]["term"] == first
    # a gallery image: the nearest other gallery prompt is among the candidates
    text = cli(engine, "describe", str(record.id))
    assert text.returncode == 0 and text.stdout.startswith("1. a red circle"), text.stdout
    missing = cli(engine, "describe", str(tmp_path / "nope.png"))
    assert missing.returncode != 0 and "cannot read" in missing.stderr and "Traceback" not in missing.stderr


def test_the_edit_loop_from_the_cli(engine: EngineProcess) -> None:
    [(record, image)] = make(engine, f'"{RED_ON_BLUE}" -S 12 -s 6')
    out = cli(engine, "edit", str(record.id), "zoom-2", "--json")
    assert out.returncode == 0, out.stderr
    [made] = json.loads(out.stdout)["images"]
    assert (made["width"], made["height"]) == image.size
    with engine.client() as client:
        child = client.image(made["id"])
    assert child.parent_id == record.id and child.relation == "outpaint" and child.params["zoom_out"] == 2.0
    out = cli(engine, "edit", str(record.id), "pan-down", "--json")
    [made] = json.loads(out.stdout)["images"]
    assert (made["width"], made["height"]) == (64, 96)
    out = cli(engine, "edit", str(record.id), "vary-strong", "-n", "2", "--json")
    assert out.returncode == 0 and len(json.loads(out.stdout)["images"]) == 2
