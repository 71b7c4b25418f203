"""img2img, inpaint, outpaint, variations and upscale on the built-in model, judged by the toy-world checker."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from engine.client.errors import InputError
from engine.client.schema import DreamRequest
from engine.device import modes
from engine.device.device import Device
from engine.device.pipelines import LoadedModel, load_model
from engine.device.runner import Resolved
from models.checker import judge

RED_ON_BLUE = "a red circle on a blue background"


@pytest.fixture(scope="module")
def toy() -> LoadedModel:
    return load_model(None, Device("cpu"))


@pytest.fixture(scope="module")
def red_circle(toy: LoadedModel) -> Image.Image:
    image = run(toy, DreamRequest(prompt=RED_ON_BLUE, seed=3220803958))[0]
    assert judge(image).colour == "red"
    return image


def run(gen: LoadedModel, req: DreamRequest, inputs: Resolved | None = None, job_seed: int | None = None):
    work = modes.plan(req, inputs or Resolved(), job_seed=job_seed if job_seed is not None else req.seed or 0,
                      native_size=gen.native_size)  # fmt: skip
    return work.run(gen, list(range(req.n)), on_step=lambda *_: None)


def ref_request(**fields) -> DreamRequest:
    return DreamRequest(init_image="gallery:1", **fields)


def test_img2img_follows_the_new_prompt(toy: LoadedModel, red_circle: Image.Image) -> None:
    req = ref_request(prompt="a blue circle on a white background", mode="img2img", strength=0.8, n=4, seed=7)
    verdicts = [judge(im) for im in run(toy, req, Resolved(init=red_circle.convert("RGBA")))]
    assert sum(v.colour == "blue" for v in verdicts) >= 3, verdicts
    assert sum(v.background == "white" for v in verdicts) >= 3, verdicts


def test_inpaint_leaves_the_unmasked_half_unchanged(toy: LoadedModel, red_circle: Image.Image) -> None:
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (32, 0, 64, 64))
    req = ref_request(prompt="a green square on a yellow background", mode="inpaint", init_mask="gallery:2", seed=3)
    out = np.asarray(run(toy, req, Resolved(init=red_circle.convert("RGBA"), mask=mask))[0]).astype(int)
    before = np.asarray(red_circle).astype(int)
    assert np.abs(out[:, :32] - before[:, :32]).max() <= 1
    assert np.abs(out[:, 32:] - before[:, 32:]).mean() > 10  # the masked half really was repainted


def test_transparent_pixels_count_as_mask(toy: LoadedModel, red_circle: Image.Image) -> None:
    init = red_circle.convert("RGBA")
    alpha = Image.new("L", (64, 64), 255)
    alpha.paste(0, (0, 0, 64, 20))
    init.putalpha(alpha)
    req = ref_request(prompt="a green square on a yellow background", mode="inpaint", init_mask="gallery:2", seed=3)
    out = np.asarray(run(toy, req, Resolved(init=init, mask=Image.new("L", (64, 64), 0)))[0]).astype(int)
    before = np.asarray(red_circle).astype(int)
    assert np.abs(out[20:] - before[20:]).max() <= 1 and np.abs(out[:20] - before[:20]).mean() > 10


def test_outpaint_grows_the_canvas_and_keeps_the_middle(toy: LoadedModel, red_circle: Image.Image) -> None:
    req = ref_request(prompt=RED_ON_BLUE, mode="outpaint", outpaint={"left": 16, "right": 16}, seed=5)
    out = run(toy, req, Resolved(init=red_circle.convert("RGBA")))[0]
    assert out.size == (96, 64)
    middle = np.asarray(out).astype(int)[:, 16:80]
    assert np.abs(middle - np.asarray(red_circle).astype(int)).max() <= 1


def test_a_small_variation_keeps_the_class_and_changes_pixels(toy: LoadedModel, red_circle: Image.Image) -> None:
    base = DreamRequest(prompt=RED_ON_BLUE, seed=3220803958)
    for amount, seed in ((0.1, 11), (0.1, 12)):
        req = base.model_copy(update={"mode": "variation", "variation_amount": amount, "variation_seed": seed})
        varied = run(toy, req)[0]
        assert judge(varied) == judge(red_circle)
        assert np.abs(np.asarray(varied).astype(int) - np.asarray(red_circle).astype(int)).mean() > 0.5


def test_variation_amount_zero_is_the_parent_and_terms_replay(toy: LoadedModel, red_circle: Image.Image) -> None:
    same = DreamRequest(prompt=RED_ON_BLUE, seed=3220803958, mode="variation", variation_amount=0.0, variation_seed=1)
    assert np.array_equal(np.asarray(run(toy, same)[0]), np.asarray(red_circle))
    # An image's recorded terms make it again alone.
    req = same.model_copy(update={"variation_amount": 0.3, "variation_seed": 40, "n": 2})
    work = modes.plan(req, Resolved(), job_seed=3220803958, native_size=64)
    second = work.run(toy, [0, 1], on_step=lambda *_: None)[1]
    params = work.image_params(1)
    assert params["with_variations"] == [{"seed": 41, "weight": 0.3}] and params["seed"] == 3220803958
    replay = DreamRequest.from_params({**params, "mode": "variation"})
    assert np.array_equal(np.asarray(run(toy, replay)[0]), np.asarray(second))


def test_upscale_resamples_then_adds_detail(toy: LoadedModel, red_circle: Image.Image) -> None:
    req = ref_request(prompt=RED_ON_BLUE, mode="upscale", upscale=2, seed=1)
    work = modes.plan(req, Resolved(init=red_circle.convert("RGBA")), job_seed=1, native_size=64)
    assert "lanczos x2" in work.notes["upscaler"] and work.strength == 0.3
    out = work.run(toy, [0], on_step=lambda *_: None)[0]
    assert out.size == (128, 128)
    assert judge(out.resize((64, 64))).colour == "red"


def test_a_configured_upscaler_pipeline_is_used_and_named(red_circle: Image.Image, tmp_path) -> None:
    from engine.device.pipelines import load_upscaler
    from tests.tiny_pipeline import build_upscaler

    upscaler = load_upscaler(str(build_upscaler(tmp_path)), Device("cpu"))
    assert upscaler.factor == 4
    steps = []
    for factor, size in ((4, 256), (2, 128)):
        req = ref_request(prompt=RED_ON_BLUE, mode="upscale", upscale=factor, seed=1, steps=2)
        work = modes.plan(req, Resolved(init=red_circle.convert("RGBA")), job_seed=1, native_size=64,
                          upscaler=lambda: upscaler)  # fmt: skip
        assert work.notes["upscaler"].endswith("(x4)" if factor == 4 else "(x4), resized to x2")
        out = work.run(None, [0], on_step=lambda step, total, _: steps.append((step, total)))[0]  # type: ignore[arg-type]
        assert out.size == (size, size)
    assert steps[:2] == [(1, 2), (2, 2)]


def test_slerp_keeps_gaussian_norm() -> None:
    a, b = torch.randn(4, 32, 32), torch.randn(4, 32, 32)
    mid = modes.slerp(0.5, a, b)
    assert abs(float(mid.norm()) / float(a.norm()) - 1) < 0.05


@pytest.mark.parametrize(
    ("fields", "init_size", "message"),
    [
        ({"mode": "upscale", "upscale": 4}, (1024, 1024), "would be 4096x4096; the largest is 2048"),
        ({"mode": "outpaint", "outpaint": {"left": 1024}}, (2000, 64), "outpainting would make a"),
        ({"mode": "inpaint", "init_mask": "gallery:2"}, (64, 64), "the mask is all black"),
    ],
)
def test_impossible_inputs_are_clear_errors(fields: dict, init_size: tuple[int, int], message: str) -> None:
    init = Image.new("RGBA", init_size, (10, 20, 30, 255))
    mask = Image.new("L", init_size, 0)
    with pytest.raises(InputError, match=message):
        modes.plan(ref_request(prompt="x", **fields), Resolved(init=init, mask=mask), job_seed=1, native_size=64)


def test_seed_resize_lays_the_small_noise_over_the_centre() -> None:
    """A1111's seed_resize_from: the seed's noise at the old size sits in the middle of the new size's noise."""
    big = modes.variation_noise(7, [], (4, 12, 16), from_shape=(4, 8, 8))
    small = torch.randn((4, 8, 8), generator=torch.Generator("cpu").manual_seed(7))
    assert torch.equal(big[:, 2:10, 4:12], small)
    plain = torch.randn((4, 12, 16), generator=torch.Generator("cpu").manual_seed(7))
    assert torch.equal(big[:, :2], plain[:, :2]) and not torch.equal(big, plain)
    shrunk = modes.variation_noise(7, [], (4, 8, 8), from_shape=(4, 12, 16))  # a larger old size: its centre
    assert torch.equal(shrunk, plain[:, 2:10, 4:12])


def test_only_masked_box_and_masked_content() -> None:
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (40, 40, 48, 48))
    assert modes.masked_box(mask, 4, 64, 64) == (36, 36, 52, 52)  # grown by the padding, square like the output
    wide = Image.new("L", (64, 32), 0)
    wide.paste(255, (40, 8, 48, 16))
    assert modes.masked_box(wide, 4, 64, 32) == (28, 4, 60, 20)  # widened to the output's 2:1
    assert modes.masked_box(mask, 40, 64, 64) == (0, 0, 64, 64)  # never past the picture
    image = Image.new("RGB", (64, 64), (200, 30, 30))
    assert modes.prefilled(image, mask, "original", 1) is image
    grey = np.asarray(modes.prefilled(image, mask, "nothing", 1))
    assert (grey[40:48, 40:48] == 127).all() and (grey[:40] == (200, 30, 30)).all()
    filled = np.asarray(modes.prefilled(image, mask, "fill", 1)).astype(int)
    assert np.abs(filled[44, 44] - (200, 30, 30)).max() < 10  # painted from the colours around it
    noise = [np.asarray(modes.prefilled(image, mask, "noise", s)) for s in (1, 1, 2)]
    assert (noise[0] == noise[1]).all() and not (noise[0] == noise[2]).all()  # seeded
