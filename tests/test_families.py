"""Model families: detection from a checkpoint's keys, offline single-file loading, every mode per family."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from PIL import Image
from safetensors.torch import save_file
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

from engine.device.device import Device
from engine.device.families import Detected, NotACheckpoint, detect_file, detect_keys, shipped_configs
from engine.device.pipelines import ModelLoadError, PipelineCache, SamplerError, load_model
from engine.device.pipelines.cache import estimate_bytes
from engine.device.shelf import Shelf
from tests.conftest import ROOT
from tests.ldm_layout import (
    clip_to_ldm,
    open_clip_to_ldm,
    save_config_folder,
    save_single_file,
    unet_to_ldm,
    vae_to_ldm,
)
from tests.tiny_pipeline import family_pipeline

FAMILIES = [("sd1", False), ("sd1", True), ("sdxl", False), ("sdxl", True), ("sdxl-refiner", False)]


def _real_layout_keys(name: str) -> dict[str, tuple[int, ...]]:
    """The keys and shapes of a real-size checkpoint of `name`, built on the meta device from our shipped configs."""
    folder = shipped_configs() / name
    with torch.device("meta"):
        state = unet_to_ldm(UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(folder / "unet")))
        state |= vae_to_ldm(AutoencoderKL.from_config(AutoencoderKL.load_config(folder / "vae")))
        if (folder / "text_encoder_2").exists():
            big = CLIPTextModelWithProjection(CLIPTextConfig.from_pretrained(folder / "text_encoder_2"))
            if (folder / "text_encoder").exists():
                small = CLIPTextModel(CLIPTextConfig.from_pretrained(folder / "text_encoder"))
                state |= clip_to_ldm(small, "conditioner.embedders.0.transformer.")
                state |= open_clip_to_ldm(big, "conditioner.embedders.1.model.")
            else:
                state |= open_clip_to_ldm(big, "conditioner.embedders.0.model.")
        elif name.startswith("sd2"):
            text = CLIPTextModel(CLIPTextConfig.from_pretrained(folder / "text_encoder"))
            state |= open_clip_to_ldm(text, "cond_stage_model.model.")
        else:
            state |= clip_to_ldm(CLIPTextModel(CLIPTextConfig.from_pretrained(folder / "text_encoder")),
                                 "cond_stage_model.transformer.")  # fmt: skip
    return {k: tuple(v.shape) for k, v in state.items()}


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        ("sd1", Detected("sd1")),
        ("sd1-inpainting", Detected("sd1", inpainting=True)),
        ("sd2", Detected("sd2", v_prediction=True)),
        ("sdxl", Detected("sdxl")),
        ("sdxl-inpainting", Detected("sdxl", inpainting=True)),
        ("sdxl-refiner", Detected("sdxl-refiner")),
    ],
)
def test_real_size_checkpoints_are_recognised_by_their_keys(config, expected):
    """A checkpoint with the real architecture's keys (our shipped configs at full size) is its family."""
    assert detect_keys(_real_layout_keys(config)) == expected


def test_the_shipped_configs_have_the_published_sizes():
    """Parameter counts of the published models, so a typo in a shipped config cannot hide."""
    expected_unet = {"sd1": 859.52, "sd2": 865.91, "sdxl": 2567.46, "sdxl-refiner": 2259.53}
    for name, millions in expected_unet.items():
        with torch.device("meta"):
            unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(shipped_configs() / name / "unet"))
        assert round(sum(p.numel() for p in unet.parameters()) / 1e6, 2) == millions, name


@pytest.fixture(scope="module")
def single_files(tmp_path_factory):
    """Tiny random-weight pipelines of each family, as single files in the original layout, plus the
    shelf's `configs/` folder that tells the loader their (tiny) architecture."""
    out = tmp_path_factory.mktemp("families")
    files = {}
    for family, inpainting in FAMILIES:
        name = family + ("-inpainting" if inpainting else "")
        pipe = family_pipeline(out, family, inpainting=inpainting)
        files[name] = (pipe, save_single_file(pipe, out / f"{name}.safetensors"))
        save_config_folder(pipe, out / "configs" / name)
    return out, files


@pytest.mark.parametrize("name", ["sd1", "sd1-inpainting", "sdxl", "sdxl-inpainting", "sdxl-refiner"])
def test_single_files_load_offline_weight_for_weight_and_run_every_mode(single_files, name, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    out, files = single_files
    original, path = files[name]
    model = load_model(str(path), Device("cpu"), configs=out / "configs")
    assert model.detected == detect_file(path)
    for component in ("unet", "vae", "text_encoder", "text_encoder_2"):
        if getattr(original, component, None) is None:
            continue
        loaded = getattr(model.pipe, component).state_dict()
        for key, value in getattr(original, component).state_dict().items():
            assert torch.equal(value, loaded[key]), f"{component}.{key}"
    common = dict(prompt="a red circle", negative_prompt="blue", steps=2, cfg_scale=5.0, sampler="k_euler", seeds=[3])
    init = Image.new("RGB", (64, 64), "red")
    if name == "sdxl-refiner":
        with pytest.raises(ValueError, match="refiner only refines"):
            model.txt2img(width=64, height=64, **common)
    else:
        (image,) = model.txt2img(width=64, height=64, **common)
        assert image.size == (64, 64)
        # the same seed gives the same image (an inpainting model's txt2img too: full mask, grey canvas)
        assert model.txt2img(width=64, height=64, **common)[0].tobytes() == image.tobytes()
    assert model.img2img(image=init, strength=0.5, **common)[0].size == (64, 64)
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (16, 16, 48, 48))
    assert model.inpaint(image=init, mask=mask, strength=0.9, **common)[0].size == (64, 64)


def test_one_step_at_least_when_steps_times_strength_is_below_one(single_files):
    out, files = single_files
    model = load_model(str(files["sd1"][1]), Device("cpu"), configs=out / "configs")
    common = dict(prompt="a red circle", negative_prompt="", cfg_scale=5.0, sampler="k_euler", seeds=[3])
    init = Image.new("RGB", (64, 64), "red")
    assert model.img2img(image=init, strength=0.04, steps=2, **common)[0].size == (64, 64)


def test_bad_checkpoints_get_one_sentence(tmp_path, single_files):
    _, files = single_files
    lora = tmp_path / "add_detail.safetensors"
    save_file({"lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": torch.zeros(4, 8)}, str(lora))
    with pytest.raises(ModelLoadError, match="is a LoRA, not a checkpoint"):
        load_model(str(lora), Device("cpu"))
    embedding = tmp_path / "easynegative.safetensors"
    save_file({"emb_params": torch.zeros(2, 32)}, str(embedding))
    with pytest.raises(ModelLoadError, match="textual-inversion embedding"):
        load_model(str(embedding), Device("cpu"))
    unknown = tmp_path / "mystery.safetensors"
    save_file({"encoder.weight": torch.zeros(2, 2)}, str(unknown))
    with pytest.raises(ModelLoadError, match="not a Stable Diffusion checkpoint of a family Dreamhall knows"):
        load_model(str(unknown), Device("cpu"))
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(files["sd1"][1].read_bytes()[:5000])
    with pytest.raises(ModelLoadError, match="truncated or corrupt"):
        load_model(str(truncated), Device("cpu"))


class _Payload:
    """A pickle that runs code when loaded: what a malicious .ckpt carries."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_ckpt_with_code_in_its_pickle_is_refused_and_never_run(tmp_path):
    marker = tmp_path / "pwned"
    ckpt = tmp_path / "model.ckpt"
    torch.save({"state_dict": {"x": _Payload(str(marker))}}, ckpt)
    with pytest.raises(ModelLoadError, match="never runs a checkpoint's code"):
        load_model(str(ckpt), Device("cpu"))
    assert not marker.exists()


def test_flow_matching_single_files_say_what_to_use(tmp_path):
    flux = tmp_path / "flux1-dev.safetensors"
    save_file({"double_blocks.0.img_attn.norm.key_norm.scale": torch.zeros(4)}, str(flux))
    with pytest.raises(NotACheckpoint, match="load FLUX from a diffusers folder"):
        from engine.device.families import config_name

        config_name(detect_file(flux))


def test_the_model_cache_keeps_what_fits_and_evicts_the_least_recently_used(single_files, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    out, files = single_files
    root = tmp_path / "shelf"
    (root / "Stable-diffusion").mkdir(parents=True)
    for name in ("sd1", "sdxl", "sdxl-refiner"):
        (root / "Stable-diffusion" / f"{name}.safetensors").symlink_to(files[name][1])
    (root / "configs").symlink_to(out / "configs")
    shelf = Shelf(root)
    sizes = {name: PipelineCache(Device("cpu"), None, shelf=shelf).model(name).nbytes for name in ("sd1", "sdxl")}

    roomy = PipelineCache(Device("cpu"), None, shelf=shelf, budget_bytes=sum(sizes.values()))
    for name in ["sd1", "sdxl"] * 3:
        roomy.model(name)
    assert roomy.loads == 2 and roomy.loaded() == ["sdxl", "sd1"]
    roomy.model("sd1")  # now sdxl is the least recently used...
    roomy.model("sdxl-refiner")  # ...so it makes room for the third model
    assert roomy.loaded() == ["sdxl-refiner", "sd1"] and roomy.loads == 3

    tight = PipelineCache(Device("cpu"), None, shelf=shelf, budget_bytes=max(sizes.values()))
    for name in ["sd1", "sdxl"] * 3:
        tight.model(name)
    assert tight.loads == 6 and tight.loaded() == ["sdxl"]
    # each switch unloaded the other model *before* loading: the weights held never passed the budget
    assert tight.peak_bytes <= tight.budget_bytes < sum(sizes.values())
    assert roomy.peak_bytes <= roomy.budget_bytes
    for name in ("sd1", "sdxl"):  # the estimate (safetensors headers at the device's dtype) is close to the truth
        estimate = estimate_bytes(str(files[name][1]), 4)
        assert estimate is not None and abs(estimate - sizes[name]) <= 0.25 * sizes[name], (name, estimate)

    too_small = PipelineCache(Device("cpu"), None, shelf=shelf, budget_bytes=1)
    assert too_small.model("sdxl").nbytes == sizes["sdxl"]  # a model over the budget still loads, alone
    assert too_small.loaded() == ["sdxl"]


@pytest.mark.parametrize("family", ["sd3", "flux"])
def test_noise_drawn_for_variations_is_the_pipelines_own(family, tmp_path, monkeypatch):
    # Variations blend noise the engine draws itself; for FLUX it must be packed exactly as the pipeline packs.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    family_pipeline(tmp_path, family).save_pretrained(tmp_path / family)
    model = load_model(str(tmp_path / family), Device("cpu"))
    common = dict(prompt="a red circle", negative_prompt="", steps=2, cfg_scale=4.0, sampler="k_euler", seeds=[7])
    noise = torch.randn((1, *model.latent_shape(64, 64)), generator=torch.Generator("cpu").manual_seed(7))
    own = model.txt2img(width=64, height=64, **common)[0]
    assert model.txt2img(width=64, height=64, latents=noise, **common)[0].tobytes() == own.tobytes()
    with pytest.raises(SamplerError, match="k_euler, k_euler_a, k_heun"):
        model.txt2img(width=64, height=64, **{**common, "sampler": "k_dpmpp_2m"})


def test_the_tokenizer_files_go_when_the_process_does() -> None:
    code = "from engine.device.families import clip_tokenizer_files as f; p = f('<|endoftext|>'); print(p, p.is_dir())"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    folder, existed = out.stdout.split()
    assert existed == "True" and not Path(folder).exists()
