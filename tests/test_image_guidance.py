"""Steering with images: ControlNet and reference pictures (IP-Adapter). The grammar, the preprocessors, the shelf,
every family's plumbing with tiny random-weight nets, the toy nets' effects, and each through the CLI, the native API,
AUTOMATIC1111's ControlNet extension API (the real `webuiapi` client)."""

from __future__ import annotations

import base64
import io
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
import webuiapi
from PIL import Image, ImageDraw

from engine.client.dream_args import DreamArgsError, format_request, parse
from engine.client.errors import InputError
from engine.client.schema import DreamRequest
from engine.device.device import Device
from engine.device.modes import fit
from engine.device.pipelines import PipelineCache
from engine.device.pipelines.model import Control
from engine.device.shelf import Shelf, UnknownModel, encoder_of
from engine.server.control_maps import preprocess
from gallery.files import a1111_parameters
from gallery.schemas import ImageCreate
from models import toyworld
from models.checker import judge, shape_centre
from models.toyworld import control_disc
from models.train import ip_adapter_start
from tests.conftest import ROOT, TOKEN, EngineProcess, start_tcp_engine
from tests.tiny_pipeline import family_pipeline

RED = "a red circle on a blue background"
CENTRE = (11, 32)  # control_disc's: the middle of the left third, half way down


def near(image: Image.Image, centre: tuple[float, float] = CENTRE, within: float = 10.0) -> bool:
    found = shape_centre(image)
    return found is not None and float(np.hypot(found[0] - centre[0], found[1] - centre[1])) <= within


# --------------------------------------------------------------------------- the grammar
def test_control_groups_parse_in_order_and_format_back() -> None:
    request = parse(f'"{RED}" --control 12 --control_type Canny --control_weight 0.5 --control 13 --control_end 0.5')
    first, second = request.controls
    assert (first.image, first.type, first.weight, first.end) == ("gallery:12", "canny", 0.5, 1.0)
    assert (second.image, second.type, second.weight, second.end) == ("gallery:13", "none", 1.0, 0.5)
    assert parse(format_request(request)) == request
    assert request.mode == "txt2img" and parse(f'"{RED}" --control 12 -I 3').mode == "img2img"


@pytest.mark.parametrize(
    ("command", "says"),
    [
        ("--control_weight 1", "put it after the --control IMAGE"),
        ("--control 1 --control_weight 3", "--control_weight (weight): input should be less than or equal to 2"),
        ("--control 1 --control_start 0.6 --control_end 0.5", "start (0.6) must come before its end (0.5)"),
        ("--control 1 --control_type foo", "unknown control type 'foo'; choose one of none, canny"),
        ("--control 1 --control_weight 1 --control_weight 2", "given twice for one --control"),
        ("--control 1 -I 2 -U 2", "a ControlNet steers txt2img, img2img, inpaint and variations, not upscale"),
        ("--control 1 --control 2 --control 3 --control 4 --control 5", "at most 4 items"),
    ],
)
def test_bad_controls_are_one_sentence_naming_the_flag(command: str, says: str) -> None:
    with pytest.raises(DreamArgsError, match=None) as e:
        parse(f'"{RED}" {command}')
    assert says in str(e.value)


# ---------------------------------------------------------------------- the preprocessors
def picture(size: int = 128) -> Image.Image:
    image = Image.new("RGB", (size, size), (240, 240, 240))
    ImageDraw.Draw(image).ellipse([size // 8, size // 4, size // 2, 3 * size // 4], fill=(225, 35, 35))
    return image


def test_each_preprocessor_draws_its_map() -> None:
    source = picture()
    edges = np.asarray(preprocess(source, "canny"))[:, :, 0]
    assert edges[64, 16] == 255 or edges[64, 15:18].max() == 255  # the disc's left edge
    assert edges[64, 40] == 0 and edges[5, 5] == 0  # inside it and the background: no edge
    soft = np.asarray(preprocess(source, "softedge"))[:, :, 0]
    assert soft[64, 10:22].max() > 200 and soft[64, 40] < 20 and soft[5, 100] == 0
    assert np.array_equal(np.asarray(preprocess(source, "invert")), 255 - np.asarray(source))
    assert np.array_equal(np.asarray(preprocess(source, "none")), np.asarray(source))
    tile = np.asarray(preprocess(source, "tile"), dtype=int)
    assert np.abs(tile - np.asarray(source, dtype=int)).mean() < 10 and not np.array_equal(tile, np.asarray(source))
    # canny's thresholds (A1111's threshold_a/b): above every gradient, nothing is an edge
    with pytest.raises(InputError, match="the control map is empty"):
        preprocess(source, "canny", threshold_a=250, threshold_b=255 * 8)


def test_a_flat_picture_and_annotators_without_weights_are_refused(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"empty \(one flat colour after canny\)"):
        preprocess(Image.new("RGB", (64, 64), "white"), "canny")
    with pytest.raises(InputError, match=r"annotators/dpt_hybrid-midas-501f0c75\.pt, which are not on the shelf"):
        preprocess(picture(), "depth", annotators=tmp_path)


@pytest.fixture(scope="module")
def annotator_files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Random-weight annotators in the layouts of the files A1111's extension downloads (the trained ones are
    0.5 GB together): the fine lineart generator, the body pose network under the original file's names, MiDaS
    DPT-Hybrid. Saved in fp16 to halve the disk; the loaders cast."""
    from controlnet_aux.lineart import Generator
    from controlnet_aux.midas.midas.dpt_depth import DPTDepthModel
    from controlnet_aux.open_pose.model import bodypose_model

    folder = tmp_path_factory.mktemp("annotators")
    torch.manual_seed(0)
    half = lambda state: {k: v.half() for k, v in state.items()}  # noqa: E731
    torch.save(half(Generator(3, 1, 3).state_dict()), folder / "sk_model.pth")
    body = bodypose_model().state_dict()  # the original file has no "model0." etc. in front: controlnet_aux maps them
    torch.save(half({k.split(".", 1)[1]: v for k, v in body.items()}), folder / "body_pose_model.pth")
    depth = DPTDepthModel(path=None, backbone="vitb_rn50_384", non_negative=True).state_dict()
    torch.save(half(depth), folder / "dpt_hybrid-midas-501f0c75.pt")
    return folder


def test_weight_annotators_run_from_their_files_as_controlnet_aux_runs_them(annotator_files: Path,
                                                                              tmp_path: Path) -> None:  # fmt: skip
    from controlnet_aux.lineart import LineartDetector
    from controlnet_aux.midas import MidasDetector

    from engine.device.annotators import Annotators

    annotators = Annotators(annotator_files, torch.device("cpu"))
    source = picture(128)
    line = annotators.annotate(source, "lineart")
    depth = annotators.annotate(source, "depth")
    assert line.size == depth.size == source.size and line.mode == depth.mode == "RGB"
    # the maps the package's own loaders make from the same files, at the same resolution (the picture's short side)
    theirs = LineartDetector.from_pretrained(str(annotator_files), coarse_filename="sk_model.pth")(
        source, detect_resolution=128, image_resolution=128)  # fmt: skip
    assert np.abs(np.asarray(line, dtype=int) - np.asarray(theirs.convert("RGB"), dtype=int)).max() <= 1
    theirs = MidasDetector.from_pretrained(str(annotator_files))(source, detect_resolution=128, image_resolution=128)
    assert np.abs(np.asarray(depth, dtype=int) - np.asarray(theirs.convert("RGB"), dtype=int)).max() <= 1
    assert np.asarray(depth).std() > 0 and np.asarray(line).std() > 0
    with pytest.raises(InputError, match="the openpose annotator found no person"):  # random weights see nobody
        annotators.annotate(source, "openpose")
    damaged = tmp_path / "annotators"
    damaged.mkdir()
    (damaged / "sk_model.pth").write_bytes(b"not weights")
    with pytest.raises(InputError, match=r"could not load the lineart annotator sk_model\.pth"):
        Annotators(damaged, torch.device("cpu")).annotate(source, "lineart")
    with pytest.raises(InputError, match=r"annotators/body_pose_model\.pth are not on the shelf"):
        Annotators(damaged, torch.device("cpu")).annotate(source, "openpose")


def test_an_annotator_is_checked_at_submit_and_refused_without_its_package(
    annotator_files: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import importlib.util

    # at submit: the file is there, the picture is not flat; the map is made with the job
    assert preprocess(picture(), "lineart", annotators=annotator_files, check_only=True) is not None
    with pytest.raises(InputError, match="runs only inside the engine"):
        preprocess(picture(), "lineart", annotators=annotator_files)
    found = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "controlnet_aux" else found(name, *a)
    )
    with pytest.raises(InputError, match=r"needs pip install 'dreamhall\[annotators\]'"):
        preprocess(picture(), "depth", annotators=annotator_files, check_only=True)


@pytest.mark.parametrize(("resize", "corner", "middle"), [("crop", 255, 255), ("just", 255, 255), ("fill", 0, 255)])
def test_maps_of_another_shape_fit_as_a1111_resizes(resize: str, corner: int, middle: int) -> None:
    wide = Image.new("RGB", (200, 100), "white")
    fitted = np.asarray(fit(wide, 64, 64, resize))
    assert fitted.shape == (64, 64, 3)
    assert (fitted[0, 0, 0], fitted[32, 32, 0]) == (corner, middle)  # fill pads black above and below


# ----------------------------------------------------------------- the shelf and the families
def save_controlnet(pipe, family: str, folder: Path) -> None:
    """A tiny random-weight ControlNet of `family`'s own kind, built from its denoiser, as a diffusers folder."""
    from diffusers import ControlNetModel, FluxControlNetModel, SD3ControlNetModel

    torch.manual_seed(1)
    if family == "flux":  # the shapes of tiny_pipeline's transformers, one block each
        net = FluxControlNetModel(patch_size=1, in_channels=64, num_layers=1, num_single_layers=1,
                                  attention_head_dim=16, num_attention_heads=2, joint_attention_dim=32,
                                  pooled_projection_dim=32, axes_dims_rope=[4, 4, 8])  # fmt: skip
    elif family == "sd3":
        net = SD3ControlNetModel(sample_size=8, patch_size=1, in_channels=16, num_layers=1, attention_head_dim=8,
                                 num_attention_heads=4, joint_attention_dim=64, caption_projection_dim=32,
                                 pooled_projection_dim=64, out_channels=16)  # fmt: skip
    else:
        levels = len(pipe.vae.config.block_out_channels)
        net = ControlNetModel.from_unet(pipe.unet, conditioning_embedding_out_channels=(8, 16, 16, 16)[:levels])
    with torch.no_grad():  # a new ControlNet's output layers start at zero (it steers nothing): wake them
        for weight in net.parameters():
            if not weight.any():
                weight.normal_(0, 0.05)
    net.save_pretrained(folder)


@pytest.fixture(scope="module")
def family_shelf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("shelf")
    for family in ("sd1", "sdxl", "sd3", "flux"):
        pipe = family_pipeline(root / "_build", family)
        if family == "sd3":  # SD3 adds a ControlNet's output to blocks before its last one: it needs two
            from diffusers import SD3Transformer2DModel

            pipe.transformer = SD3Transformer2DModel(**{**pipe.transformer.config, "num_layers": 2})
        pipe.save_pretrained(root / "Stable-diffusion" / f"tiny-{family}")
        save_controlnet(pipe, family, root / "ControlNet" / f"tiny-{family}-canny")
        if family == "sd1":  # the same ControlNet as A1111's folder holds them: one file in lllyasviel's layout
            from diffusers import ControlNetModel
            from safetensors.torch import save_file

            from tests.ldm_layout import controlnet_to_ldm, save_config_folder

            state = controlnet_to_ldm(ControlNetModel.from_pretrained(root / "ControlNet" / "tiny-sd1-canny"))
            save_file(
                {k: v.contiguous() for k, v in state.items()}, str(root / "ControlNet" / "tiny-sd1-file.safetensors")
            )
            torch.save(state, root / "ControlNet" / "tiny-sd1-pickle.pth")
            save_config_folder(pipe, root / "configs" / "sd1")  # the tiny UNet's shape, as for any odd architecture
    (root / "ControlNet" / "stray.safetensors").write_bytes(b"not a ControlNet")
    return root


def test_the_shelf_lists_controlnets_by_family_and_picks_one_that_fits(family_shelf: Path) -> None:
    shelf = Shelf(family_shelf)
    listed = {m.name: m for m in shelf.listing().controlnets}
    assert {n: listed[n].family for n in listed if n.startswith("tiny")} == {
        "tiny-sd1-canny": "SD 1.x", "tiny-sdxl-canny": "SDXL", "tiny-sd3-canny": "SD3", "tiny-flux-canny": "FLUX",
        "tiny-sd1-file": "SD 1.x", "tiny-sd1-pickle": "SD 1.x",
    }  # fmt: skip
    assert listed["toy-silhouette"].family == "SD 1.x"  # the built-in one is always there
    assert "not a readable .safetensors file" in (listed["stray"].problem or "")
    assert shelf.controlnet_for(None, "SDXL").name == "tiny-sdxl-canny"
    with pytest.raises(UnknownModel, match="'tiny-sdxl-canny' steers SDXL models, and this model is FLUX"):
        shelf.controlnet_for("tiny-sdxl-canny", "FLUX")
    with pytest.raises(UnknownModel, match="control 1: unknown ControlNet 'nope'; available: stray, tiny-flux-canny"):
        shelf.check_controls(["nope"], "tiny-sd1")
    shelf.check_controls([None, "tiny-sd1-canny"], "tiny-sd1")  # both fit: no error


@pytest.mark.parametrize("family", ["sd1", "sdxl", "sd3", "flux"])
def test_every_family_runs_its_controlnet_in_each_mode(family_shelf: Path, family: str, monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cache = PipelineCache(Device("cpu"), None, shelf=Shelf(family_shelf))
    model = cache.model(f"tiny-{family}")
    net = cache.controlnet(cache.shelf.controlnet_for(None, model.family))
    assert cache.controlnet(cache.shelf.controlnet_for(None, model.family)) is net  # cached
    size = 64
    control = Control(net, fit(picture(), size, size), weight=0.8, start=0.0, end=0.5)
    common = dict(prompt="a red circle", negative_prompt="", steps=2, cfg_scale=5.0, sampler="k_euler", seeds=[3])
    (plain,) = model.txt2img(width=size, height=size, **common)
    (steered,) = model.txt2img(width=size, height=size, controls=[control], **common)
    assert steered.size == (size, size) and steered.tobytes() != plain.tobytes()
    # the model is untouched by a controlled call: the same seed still gives the plain image
    assert model.txt2img(width=size, height=size, **common)[0].tobytes() == plain.tobytes()
    two = [control, Control(net, fit(picture(), size, size), weight=0.3)]  # several: each family's own wrapper
    assert model.txt2img(width=size, height=size, controls=two, **common)[0].tobytes() != steered.tobytes()
    if family == "flux":  # its ControlNet img2img and inpaint pipelines take no negative: one sentence, not ignored
        with pytest.raises(InputError, match="FluxControlNetImg2ImgPipeline takes no negative prompt"):
            model.img2img(image=picture(size), strength=0.6, controls=[control], **{**common, "negative_prompt": "x"})
    if family == "sd3":  # diffusers has no SD3 ControlNet img2img pipeline
        with pytest.raises(InputError, match="SD3 models cannot do this"):
            model.img2img(image=picture(size), strength=0.6, controls=[control], **common)
    if family in ("sd1", "sdxl", "flux"):  # diffusers has img2img and inpaint ControlNet pipelines for these
        assert model.img2img(image=picture(size), strength=0.6, controls=two, **common)[0].size == (size, size)
        mask = Image.new("L", (size, size), 0)
        mask.paste(255, (16, 16, 48, 48))
        assert model.inpaint(image=picture(size), mask=mask, strength=0.9, controls=[control], **common)[0].size == (
            size, size,
        )  # fmt: skip


def test_a_single_file_controlnet_in_a1111s_layout_loads_weight_for_weight_and_steers(family_shelf: Path,
                                                                                      monkeypatch) -> None:  # fmt: skip
    """lllyasviel's layout (`control_model.` + the UNet encoder's names, `input_hint_block`, `zero_convs`), as
    .safetensors and as a weights-only .pth: listed by family, built offline from the family's UNet config and the
    file's own hint encoder, the same weights as the diffusers folder they were written from, the same picture."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    shelf = Shelf(family_shelf)
    listed = {m.name: m for m in shelf.listing().controlnets}
    for name in ("tiny-sd1-file", "tiny-sd1-pickle"):
        assert (listed[name].family, listed[name].problem) == ("SD 1.x", None)
    cache = PipelineCache(Device("cpu"), None, shelf=shelf)
    folder = cache.controlnet(shelf.find("controlnet", "tiny-sd1-canny"))
    model = cache.model("tiny-sd1")
    common = dict(prompt="a red circle", negative_prompt="", steps=2, cfg_scale=5.0, sampler="k_euler", seeds=[3])
    (want,) = model.txt2img(width=64, height=64, controls=[Control(folder, fit(picture(), 64, 64))], **common)
    for name in ("tiny-sd1-file", "tiny-sd1-pickle"):
        net = cache.controlnet(shelf.find("controlnet", name))
        assert net.state_dict().keys() == folder.state_dict().keys()
        assert all(torch.equal(v, folder.state_dict()[k]) for k, v in net.state_dict().items())
        model.check_control(net, name)
        (got,) = model.txt2img(width=64, height=64, controls=[Control(net, fit(picture(), 64, 64))], **common)
        assert got.tobytes() == want.tobytes()


def test_a_controlnet_union_steers_sdxl_by_each_map_s_kind(family_shelf: Path, monkeypatch) -> None:
    """One SDXL ControlNet-Union (xinsir's kind: a control mode per map) takes every control of a request, a mode
    from each --control_type; what it cannot do is one sentence each, not ignored."""
    from diffusers import ControlNetUnionModel

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cache = PipelineCache(Device("cpu"), None, shelf=Shelf(family_shelf))
    model = cache.model("tiny-sdxl")
    torch.manual_seed(2)
    shape = ControlNetUnionModel.from_unet(model.pipe.unet, conditioning_embedding_out_channels=(8, 16)).config
    width = model.pipe.unet.config.block_out_channels[0]  # its map tokens are as wide as the UNet's first level
    shape = {k: v for k, v in shape.items() if k != "_use_default_values"}  # else those keys are reset
    union = ControlNetUnionModel.from_config({**shape, "num_trans_channel": width, "num_proj_channel": width,
                                              "num_trans_head": 2})  # fmt: skip
    with torch.no_grad():  # awake, as save_controlnet does
        for weight in union.parameters():
            if not weight.any():
                weight.normal_(0, 0.05)
    union.save_pretrained(family_shelf / "ControlNet" / "tiny-sdxl-union")
    item = Shelf(family_shelf).find("controlnet", "tiny-sdxl-union")
    assert item.family == "SDXL"
    net = cache.controlnet(item)
    assert type(net).__name__ == "ControlNetUnionModel"
    common = dict(prompt="a red circle", negative_prompt="", steps=2, cfg_scale=5.0, sampler="k_euler", seeds=[3])
    edges = fit(picture(), 64, 64)

    def dream(*controls: Control) -> bytes:
        return model.txt2img(width=64, height=64, controls=list(controls), **common)[0].tobytes()

    plain = model.txt2img(width=64, height=64, **common)[0].tobytes()
    canny, depth = dream(Control(net, edges, kind="canny")), dream(Control(net, edges, kind="depth"))
    assert len({plain, canny, depth}) == 3  # it steers, and the mode matters
    assert dream(Control(net, edges, kind="canny"), Control(net, edges, kind="depth")) not in (canny, depth)
    assert model.img2img(image=picture(64), strength=0.6, controls=[Control(net, edges, kind="canny")],
                         **common)[0].size == (64, 64)  # fmt: skip
    for controls, says in (
        ([Control(net, edges, kind="none", name="u")], "--control_type none does not say it"),
        ([Control(net, edges, kind="tile", name="u")], "has 6 modes and none for tile"),
        ([Control(net, edges, kind="canny", name="u"), Control(net, edges, weight=0.5, kind="depth")],
         "one weight and span"),
    ):  # fmt: skip
        with pytest.raises(InputError, match=says):
            dream(*controls)


def test_single_files_that_are_no_controlnet_we_load_say_so(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    folder = tmp_path / "ControlNet"
    folder.mkdir()
    save_file({"control_model.task_embedding": torch.zeros(2, 2)}, str(folder / "union.safetensors"))
    save_file({"controlnet_x_embedder.weight": torch.zeros(2, 2)}, str(folder / "flux-canny.safetensors"))
    save_file({"model.diffusion_model.out.2.weight": torch.zeros(2, 2)}, str(folder / "a-checkpoint.safetensors"))
    listed = {m.name: m.problem for m in Shelf(tmp_path).listing().controlnets}
    assert "ControlNet-Union; put its diffusers folder" in listed["union"]
    assert "SD3/FLUX ControlNet; put its diffusers folder" in listed["flux-canny"]
    assert "is not a ControlNet" in listed["a-checkpoint"]


def test_a_controlnet_of_another_width_is_one_sentence_naming_both(family_shelf: Path) -> None:
    cache = PipelineCache(Device("cpu"), None, shelf=Shelf(family_shelf))
    toy = cache.model(None)
    tiny = cache.controlnet(cache.shelf.find("controlnet", "tiny-sd1-canny"))
    with pytest.raises(InputError, match="ControlNet 'tiny-sd1-canny' does not fit model 'dreamhall-toy-sd'"):
        toy.check_control(tiny, "tiny-sd1-canny")


def test_the_infotext_carries_each_control_as_a1111s_extension_writes_it() -> None:
    record = ImageCreate(job_id="j", index=0, width=64, height=64, seed=1, prompt=RED, negative_prompt="", steps=20,
                         cfg_scale=7.5, sampler="Euler a", model="toy", mode="txt2img", source="cli",
                         params={"controlnets": [{"module": "canny", "model": "toy-silhouette", "hash": None,
                                                  "weight": 0.5, "start": 0.0, "end": 0.8}]})  # fmt: skip
    assert ('ControlNet 0: "Module: canny, Model: toy-silhouette, Weight: 0.5, Guidance Start: 0, Guidance End: 0.8"'
            in a1111_parameters(record))  # fmt: skip


# ------------------------------------------------------------------- the toy ControlNet's effect
def test_the_toy_controlnet_puts_the_shape_where_the_map_says() -> None:
    cache = PipelineCache(Device("cpu"), None)
    model = cache.model(None)
    net = cache.controlnet(cache.shelf.controlnet_for(None, model.family))
    common = dict(prompt=RED, negative_prompt="", steps=20, cfg_scale=7.5, sampler="k_euler_a", seeds=list(range(8)))
    steered = model.txt2img(width=64, height=64, controls=[Control(net, control_disc())], **common)
    plain = model.txt2img(width=64, height=64, **common)
    assert sum(near(im) for im in steered) >= 7, [shape_centre(im) for im in steered]
    assert sum(near(im) for im in plain) <= 3  # without the map the toy draws its shapes anywhere
    # the same map at 128 px fits the 64 px output; its outline through canny steers as well
    outline = fit(preprocess(control_disc(128), "canny"), 64, 64)
    assert sum(near(im) for im in model.txt2img(width=64, height=64, controls=[Control(net, outline)], **common)) >= 6


# ---------------------------------------------------------------------------- a real engine
@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EngineProcess]:
    proc = start_tcp_engine(tmp_path_factory.mktemp("controlnet-home"))
    yield proc
    proc.stop()


def dreamhall(engine: EngineProcess, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cli", "--home", str(engine.home), *args], capture_output=True,
                          text=True, cwd=ROOT, timeout=180)  # fmt: skip


def test_the_cli_steers_with_a_file_and_the_image_remembers_it(engine: EngineProcess, tmp_path: Path) -> None:
    left = tmp_path / "left.png"
    control_disc().save(left)
    done = dreamhall(engine, "dream", RED, "--control", str(left), "--control_type", "none", "-S", "1", "-n", "4",
                     "-i", "--json")  # fmt: skip
    assert done.returncode == 0, done.stderr
    images = json.loads(done.stdout)["images"]
    assert sum(near(Image.open(i["path"])) for i in images) >= 3
    first = Image.open(images[0]["path"])
    assert 'ControlNet 0: "Module: none, Model: toy-silhouette, Weight: 1' in first.info["parameters"]
    with engine.client() as client:
        record = client.image(images[0]["id"])
        (control,) = record.params["controls"]
        assert control["model"] == "toy-silhouette" and control["image"].startswith("upload:")
        # reusing its parameters remakes it, byte for byte (the control's upload is kept)
        again = client.wait(client.submit(DreamRequest.from_params(record.params)).id)
        assert Path(again.images[0].path).read_bytes() == Path(images[0]["path"]).read_bytes()


def test_bad_controls_are_refused_before_anything_is_queued(engine: EngineProcess, tmp_path: Path) -> None:
    flat, text = tmp_path / "flat.png", tmp_path / "notes.png"
    Image.new("RGB", (64, 64), "white").save(flat)
    text.write_text("not a picture")
    cases = [
        (["--control", str(flat), "--control_type", "canny"], "control 1: the control map is empty"),
        (["--control", str(text)], "--control: notes.png: not a readable image"),
        (["--control", str(flat), "--control_model", "nope"], "control 1: unknown ControlNet 'nope'"),
        (["--control", str(flat), "--control_type", "openpose"], "annotators/body_pose_model.pth"),
        (["--control", "999999"], "image 999999 is not in the gallery"),
    ]
    with engine.client() as client:
        before = len(client.queue().queued)
        for args, says in cases:
            done = dreamhall(engine, "dream", RED, *args)
            assert done.returncode != 0 and says in done.stderr, (args, done.stderr)
            assert "Traceback" not in done.stderr
        assert len(client.queue().queued) == before and client.health().status == "ok"


def test_the_preview_route_shows_the_map_before_a_job(engine: EngineProcess) -> None:
    with engine.client() as client:
        ref = client.upload(_png(picture()))
        with httpx.Client(transport=httpx.HTTPTransport(uds=str(engine.socket)), base_url="http://engine") as http:
            shown = http.post("/v1/controls/preview", json={"control": {"image": ref.ref, "type": "canny"}})
            assert shown.status_code == 200 and shown.headers["content-type"] == "image/png"
            assert np.array_equal(np.asarray(Image.open(io.BytesIO(shown.content))),
                                  np.asarray(preprocess(picture(), "canny")))  # fmt: skip
            empty = http.post("/v1/controls/preview", json={"control": {"image": client.upload(
                _png(Image.new("RGB", (64, 64), "white"))).ref, "type": "canny"}})  # fmt: skip
            assert empty.status_code == 422 and "the control map is empty" in empty.json()["error"]


def _png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture
def api(engine: EngineProcess) -> webuiapi.WebUIApi:
    return webuiapi.WebUIApi(host="127.0.0.1", port=engine.port, username="alice", password=TOKEN)  # type: ignore[attr-defined]


def test_webuiapis_controlnet_unit_steers_txt2img(api: webuiapi.WebUIApi) -> None:
    unit = webuiapi.ControlNetUnit(image=control_disc(128), module="none", model="toy-silhouette", weight=1.0)
    result = api.txt2img(prompt=RED, seed=1, steps=20, width=64, height=64, batch_size=4, controlnet_units=[unit])
    assert sum(near(im) for im in result.images) >= 3
    assert 'ControlNet 0: "Module: none, Model: toy-silhouette' in result.info["infotexts"][0]
    # webuiapi's defaults are canny thresholds 64/64 and "Resize and Fill"; a canny unit on the picture steers too
    canny = webuiapi.ControlNetUnit(image=control_disc(128), module="canny", model="None", processor_res=64)
    assert api.txt2img(prompt=RED, seed=1, steps=20, width=64, height=64, controlnet_units=[canny]).images


def test_the_extensions_routes(api: webuiapi.WebUIApi, engine: EngineProcess) -> None:
    assert api.controlnet_version() == 2
    assert "toy-silhouette" in api.controlnet_model_list()
    assert {"none", "canny", "softedge_hed", "invert", "tile_resample"} <= set(api.controlnet_module_list())
    detected = api.controlnet_detect([picture()], module="canny", processor_res=128, threshold_a=100, threshold_b=200)
    (shown,) = detected.images  # webuiapi decodes the maps
    assert np.array_equal(np.asarray(shown.convert("RGB")), np.asarray(preprocess(picture(), "canny")))


def test_the_engine_runs_an_annotator_from_its_shelf_for_previews_and_jobs(
    engine: EngineProcess, api: webuiapi.WebUIApi, annotator_files: Path, tmp_path: Path
) -> None:
    from engine.device.annotators import Annotators

    shelf = engine.home / "models" / "annotators"
    shelf.mkdir(parents=True, exist_ok=True)
    (shelf / "sk_model.pth").symlink_to(annotator_files / "sk_model.pth")  # the user puts it there: no restart
    try:
        expected = np.asarray(Annotators(annotator_files, torch.device("cpu")).annotate(picture(), "lineart"), int)
        with engine.client() as client:
            ref = client.upload(_png(picture()))
            with httpx.Client(transport=httpx.HTTPTransport(uds=str(engine.socket)), base_url="http://engine") as http:
                shown = http.post("/v1/controls/preview", json={"control": {"image": ref.ref, "type": "lineart"}},
                                  timeout=120)  # fmt: skip
        assert shown.status_code == 200, shown.text
        assert np.abs(np.asarray(Image.open(io.BytesIO(shown.content)), int) - expected).max() <= 1
        (detected,) = api.controlnet_detect([picture()], module="lineart_realistic", processor_res=128).images
        assert np.abs(np.asarray(detected.convert("RGB"), int) - expected).max() <= 1
        source = tmp_path / "picture.png"
        picture().save(source)
        done = dreamhall(engine, "dream", RED, "--control", str(source), "--control_type", "lineart", "-S", "1",
                         "--json")  # fmt: skip
        assert done.returncode == 0, done.stderr
        made = Image.open(json.loads(done.stdout)["images"][0]["path"])
        assert 'ControlNet 0: "Module: lineart_realistic, Model: toy-silhouette' in made.info["parameters"]
    finally:
        (shelf / "sk_model.pth").unlink()


def test_the_extensions_bad_units_are_a1111_errors(engine: EngineProcess) -> None:
    url = f"http://127.0.0.1:{engine.port}"  # type: ignore[attr-defined]
    unit = {"image": base64.b64encode(_png(control_disc())).decode(), "module": "none", "model": "None"}
    cases = [
        ({**unit, "module": "reference_only"}, "ControlNet module 'reference_only' is not available here"),
        ({**unit, "control_mode": "ControlNet is more important"}, "only 'Balanced' is supported"),
        ({**unit, "image": "%%%"}, "is not base64 image data"),
        ({**unit, "weight": 5}, "less than or equal to 2"),
    ]
    for bad, says in cases:
        body = {"prompt": RED, "steps": 2, "alwayson_scripts": {"ControlNet": {"args": [bad]}}}
        answer = httpx.post(f"{url}/sdapi/v1/txt2img", json=body, auth=("alice", TOKEN), timeout=60)
        assert answer.status_code == 422 and says in answer.json()["detail"], answer.text
    detect = httpx.post(f"{url}/controlnet/detect", json={"controlnet_module": "canny"}, auth=("alice", TOKEN))
    assert detect.status_code == 422 and "give at least one image" in detect.json()["detail"]


# ------------------------------------------------------------------------- reference pictures
def green_on_gray(size: int = 64) -> Image.Image:
    return toyworld.render(toyworld.Scene("circle", "green", "gray"), np.random.default_rng(7)).resize((size, size))


def test_sref_takes_several_pictures_with_weights_and_formats_back() -> None:
    request = parse('"a circle" --sref 12 13::2.5 --sw 50')
    assert [(r.image, r.weight) for r in request.references] == [("gallery:12", 1.0), ("gallery:13", 2.5)]
    assert request.style_weight == 50 and parse(format_request(request)) == request
    alone = parse("--sref 12 13")  # pictures alone are a prompt, as Midjourney's image prompts
    assert alone.prompt == "" and parse(format_request(alone)) == alone
    for command, says in [('"x" --sref 1::heavy', "expected IMAGE or IMAGE::WEIGHT"),
                          ('"x" --sref 1 --sw 1001', "--sw (style_weight): must be between 0 and 1000"),
                          ('"x" --sref 1 2 3 4 5 6', "at most 5 items"), ("", "no prompt given")]:  # fmt: skip
        with pytest.raises(DreamArgsError) as e:
            parse(command)
        assert says in str(e.value)


def save_ip_adapter(pipe, root: Path, name: str) -> None:
    """A tiny random-weight IP-Adapter for `pipe`'s UNet in the original file layout, and its image encoder."""
    from safetensors.torch import save_file
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    torch.manual_seed(2)
    encoder = CLIPVisionModelWithProjection(CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                                             num_attention_heads=2, image_size=32, patch_size=8,
                                                             projection_dim=16))  # fmt: skip
    encoder.save_pretrained(root / "clip_vision" / name)
    (root / "ipadapter").mkdir(parents=True, exist_ok=True)
    if getattr(pipe, "unet", None) is None:  # FLUX: XLabs' layout, written by the caller
        return
    start = ip_adapter_start(pipe.unet, 16)
    save_file({f"{part}.{k}": v.contiguous() for part in start for k, v in start[part].items()},
              str(root / "ipadapter" / f"{name}.safetensors"))  # fmt: skip


def plus_image_proj(encoder_width: int, width: int) -> dict[str, torch.Tensor]:
    """A random IP-Adapter Plus resampler (4 layers, 4 queries) in the original file's names: diffusers' own module,
    its names turned back the way its loader turns them forward."""
    from diffusers.models.embeddings import IPAdapterPlusImageProjection

    module = IPAdapterPlusImageProjection(embed_dims=encoder_width, output_dims=width, hidden_dims=64, heads=1,
                                          num_queries=4)  # fmt: skip
    state, out = module.state_dict(), {}
    names = {"ln0": "0.norm1", "ln1": "0.norm2", "attn.to_q": "0.to_q", "attn.to_out.0": "0.to_out",
             "ff.0": "1.0", "ff.1.net.0.proj": "1.1", "ff.1.net.2": "1.3"}  # fmt: skip
    for key, value in state.items():
        if ".attn.to_k." in key or ".attn.to_v." in key:
            continue
        for new, old in names.items():
            key = key.replace(f".{new}.", f".{old}.")
        out["image_proj." + key] = value
    for i in range(4):
        for kind in ("weight", "bias"):
            if f"layers.{i}.attn.to_k.{kind}" in state:
                kv = [state[f"layers.{i}.attn.to_{p}.{kind}"] for p in "kv"]
                out[f"image_proj.layers.{i}.0.to_kv.{kind}"] = torch.cat(kv)
    return out


def flux_ip_adapter(transformer, embed_dim: int) -> dict[str, torch.Tensor]:
    """A random IP-Adapter for a FLUX transformer in XLabs' layout (what FLUX's IP-Adapters ship as): the image
    projection to four tokens and each double block's image keys and values."""
    joint, inner = transformer.config.joint_attention_dim, transformer.inner_dim
    state = {"ip_adapter_proj_model.proj.weight": torch.randn(4 * joint, embed_dim) * 0.02,
             "ip_adapter_proj_model.proj.bias": torch.zeros(4 * joint),
             "ip_adapter_proj_model.norm.weight": torch.ones(joint),
             "ip_adapter_proj_model.norm.bias": torch.zeros(joint)}  # fmt: skip
    for i in range(len(transformer.transformer_blocks)):
        for kv in "kv":
            prefix = f"double_blocks.{i}.processor.ip_adapter_double_stream_{kv}_proj"
            state[f"{prefix}.weight"] = torch.randn(inner, joint) * 0.2
            state[f"{prefix}.bias"] = torch.zeros(inner)
    return state


@pytest.mark.parametrize("family", ["sd1", "sdxl", "sd1-plus", "flux"])
def test_reference_pictures_load_and_steer_each_family_and_unload(tmp_path: Path, family: str, monkeypatch) -> None:
    from safetensors.torch import load_file, save_file

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    family, _, plus = family.partition("-")
    pipe = family_pipeline(tmp_path / "_build", family)
    pipe.save_pretrained(tmp_path / "Stable-diffusion" / f"tiny-{family}")
    save_ip_adapter(pipe, tmp_path, f"tiny-{family}-ip")
    file = tmp_path / "ipadapter" / f"tiny-{family}-ip.safetensors"
    if plus:  # IP-Adapter Plus: a resampler over the encoder's patch tokens instead of the pooled projection
        state = {k: v for k, v in load_file(str(file)).items() if not k.startswith("image_proj.")}
        save_file(state | plus_image_proj(32, pipe.unet.config.cross_attention_dim), str(file))
    if family == "flux":
        save_file(flux_ip_adapter(pipe.transformer, 16), str(file))
    cache = PipelineCache(Device("cpu"), None, shelf=Shelf(tmp_path))
    model = cache.model(f"tiny-{family}")
    adapter = cache.shelf.reference_adapter(model.family, model.text_width)
    assert adapter.name == f"tiny-{family}-ip" and encoder_of(adapter).name == f"tiny-{family}-ip"
    common = dict(prompt="a circle", negative_prompt="", steps=2, cfg_scale=5.0, sampler="k_euler", seeds=[3, 4])
    (plain, _) = model.txt2img(width=64, height=64, **common)
    with model.references(adapter, encoder_of(adapter), [green_on_gray(), picture()], [1.0, 3.0], 1.0):
        steered, _ = model.txt2img(width=64, height=64, **common)
        assert model.img2img(image=picture(64), strength=0.5, **common)[0].size == (64, 64)
    assert steered.tobytes() != plain.tobytes()
    assert model.txt2img(width=64, height=64, **common)[0].tobytes() == plain.tobytes()  # unloaded after the job


def test_the_shelf_says_what_a_reference_adapter_lacks(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    (tmp_path / "ipadapter").mkdir()
    save_file({"image_proj.proj.weight": torch.zeros(4 * 768, 16)}, str(tmp_path / "ipadapter" / "lonely.safetensors"))
    save_file({"image_proj.latents": torch.zeros(1, 16, 64), "image_proj.proj_out.weight": torch.zeros(768, 64)},
              str(tmp_path / "ipadapter" / "plus.safetensors"))  # fmt: skip
    listed = {m.name: m for m in Shelf(tmp_path).listing().ip_adapters}
    assert listed["lonely"].family == "SD 1.x" and "put one in clip_vision/lonely/" in (listed["lonely"].problem or "")
    assert listed["plus"].family == "SD 1.x" and "put one in clip_vision/plus/" in (listed["plus"].problem or "")
    save_file({"image_proj.perceiver_resampler.proj_in.weight": torch.zeros(2, 2)},
              str(tmp_path / "ipadapter" / "faceid.safetensors"))  # fmt: skip
    listed = {m.name: m for m in Shelf(tmp_path).listing().ip_adapters}
    assert "IP-Adapter FaceID variant" in (listed["faceid"].problem or "")
    with pytest.raises(UnknownModel, match="this version has no reference adapter for SD3"):
        Shelf(tmp_path).reference_adapter("SD3", None)
    with pytest.raises(UnknownModel, match="no reference adapter \\(IP-Adapter\\) on the shelf fits this FLUX model"):
        Shelf(tmp_path).reference_adapter("FLUX", None)
    with pytest.raises(UnknownModel, match="no reference adapter \\(IP-Adapter\\) on the shelf fits this SDXL model"):
        Shelf(tmp_path).reference_adapter("SDXL", 2048)
    assert Shelf(tmp_path).reference_adapter("SD 1.x", 64).name == "toy-colours"  # the built-in model's width


def test_the_toy_reference_adapter_carries_a_pictures_colours() -> None:
    cache = PipelineCache(Device("cpu"), None)
    model = cache.model(None)
    adapter = cache.shelf.reference_adapter(model.family, model.text_width)
    common = dict(
        prompt="a circle", negative_prompt="", steps=20, cfg_scale=7.5, sampler="k_euler_a", seeds=list(range(8))
    )
    with model.references(adapter, encoder_of(adapter), [green_on_gray()], [1.0], 1.0):
        steered = [judge(im) for im in model.txt2img(width=64, height=64, **common)]
    plain = [judge(im) for im in model.txt2img(width=64, height=64, **common)]
    carried = sum(v.colour == "green" and v.background == "gray" for v in steered)
    assert carried >= 6, steered
    assert sum(v.colour == "green" and v.background == "gray" for v in plain) <= 2
    assert sum(v.shape == "circle" for v in steered) >= 5  # the prompt still says what to draw


def test_the_cli_takes_reference_files_and_the_image_records_them(engine: EngineProcess, tmp_path: Path) -> None:
    reference = tmp_path / "green.png"
    green_on_gray().save(reference)
    done = dreamhall(engine, "dream", "a circle", "-S", "1", "-n", "4", "-i", "--json", "--sref", str(reference))
    assert done.returncode == 0, done.stderr
    images = [Image.open(i["path"]) for i in json.loads(done.stdout)["images"]]
    assert sum(judge(im).colour == "green" and judge(im).background == "gray" for im in images) >= 3
    assert 'ControlNet 0: "Module: ip-adapter_clip, Model: toy-colours' in images[0].info["parameters"]
    with engine.client() as client:
        record = client.image(json.loads(done.stdout)["images"][0]["id"])
        assert record.params["references"][0]["image"].startswith("upload:") and record.params["style_weight"] == 100
    text = tmp_path / "notes.png"
    text.write_text("not a picture")
    bad = dreamhall(engine, "dream", "a circle", "--sref", str(text))
    assert bad.returncode != 0 and "--sref: notes.png: not a readable image" in bad.stderr


def test_an_ip_adapter_unit_is_a_reference_picture(api: webuiapi.WebUIApi) -> None:
    unit = webuiapi.ControlNetUnit(
        image=green_on_gray(), module="ip-adapter_clip_sd15", model="toy-colours", weight=1.0
    )
    result = api.txt2img(
        prompt="a circle", seed=1, steps=20, width=64, height=64, batch_size=4, controlnet_units=[unit]
    )
    assert sum(judge(im).colour == "green" and judge(im).background == "gray" for im in result.images) >= 3
    assert "Module: ip-adapter_clip, Model: toy-colours" in result.info["infotexts"][0]
