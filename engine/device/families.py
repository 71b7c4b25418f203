"""Which model family a checkpoint is, from its tensors' names alone.

Single-file checkpoints carry no config: A1111 and ComfyUI recognise the family
from the state dict's keys and build the architecture from configs they ship.
So do we: `detect_file` reads only the header of a `.safetensors` file (a
`.ckpt` is unpickled with `weights_only`, never executed), `detect_folder` reads
a diffusers folder's `model_index.json`, and `config_dir` names the config
folder (in `engine/configs/`, no weights) that `from_single_file` loads with,
so nothing is fetched from the hub.
"""

from __future__ import annotations

import json
import pickle
import tempfile
from dataclasses import dataclass
from functools import cache
from importlib import resources
from pathlib import Path

from safetensors import SafetensorError, safe_open

FAMILIES = ("sd1", "sd2", "sdxl", "sdxl-refiner", "sd3", "flux")
FAMILY_NAMES = {
    "sd1": "SD 1.x",
    "sd2": "SD 2.x",
    "sdxl": "SDXL",
    "sdxl-refiner": "SDXL refiner",
    "sd3": "SD3",
    "flux": "FLUX",
}
# Flow-matching families sample with their own scheduler; the classic names do not apply.
FLOW_MATCHING = {"sd3", "flux"}


class NotACheckpoint(ValueError):
    """A file that is not a model checkpoint we can load; the message says what it is instead."""


@dataclass(frozen=True)
class Detected:
    family: str
    inpainting: bool = False
    # Only SD 2.x comes both ways; its 768 px models (the common ones) predict v.
    v_prediction: bool = False

    @property
    def label(self) -> str:
        return FAMILY_NAMES[self.family] + (" inpainting" if self.inpainting else "")


def addon_family(label: str) -> str:
    """The family whose add-ons (ControlNets, IP-Adapters) a model of this label takes: an inpainting model
    takes its family's."""
    return label.removesuffix(" inpainting")


def read_keys(path: Path) -> dict[str, tuple[int, ...]]:
    """Tensor names and shapes of a checkpoint file, without loading its weights where possible."""
    if path.suffix == ".safetensors":
        try:
            with safe_open(str(path), framework="numpy") as f:  # the header only: no torch on the API's side
                return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}  # noqa: SIM118
        except (SafetensorError, OSError, ValueError) as e:
            raise NotACheckpoint(f"{path.name} is not a readable .safetensors file (truncated or corrupt?): {e}") from e
    if path.suffix in {".ckpt", ".pt", ".pth", ".bin"}:
        import torch  # only for pickles: listing a shelf of .safetensors stays light

        try:
            state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except pickle.UnpicklingError as e:
            raise NotACheckpoint(
                f"{path.name} was refused: besides weights, its pickle asks to run code, and Dreamhall never "
                "runs a checkpoint's code. Use a .safetensors version of this model"
            ) from e
        except (RuntimeError, OSError, EOFError, ValueError) as e:
            raise NotACheckpoint(f"{path.name} is not a readable checkpoint (truncated or corrupt?): {e}") from e
        if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
            state = state["state_dict"]
        if not isinstance(state, dict):
            raise NotACheckpoint(f"{path.name} holds a {type(state).__name__}, not a checkpoint's tensors")
        return {k: tuple(v.shape) for k, v in state.items() if isinstance(v, torch.Tensor)}
    raise NotACheckpoint(f"{path.name}: checkpoints are .safetensors or .ckpt files")


def _strip(keys: dict[str, tuple[int, ...]], prefix: str) -> dict[str, tuple[int, ...]]:
    return {k.removeprefix(prefix): v for k, v in keys.items()}


def detect_keys(keys: dict[str, tuple[int, ...]], name: str = "this file") -> Detected:
    """The family of an original-layout (LDM/ComfyUI) state dict, from names, not sizes (tiny models too)."""
    if not keys:
        raise NotACheckpoint(f"{name} holds no tensors")
    if any("lora_down" in k or "lora_A" in k or k.startswith("lora_") for k in keys):
        raise NotACheckpoint(f"{name} is a LoRA, not a checkpoint: put it in the shelf's Lora/ folder "
                             "and write <lora:NAME:WEIGHT> in the prompt")  # fmt: skip
    if set(keys) <= {"emb_params", "string_to_param", "clip_l", "clip_g"} or "string_to_param" in keys:
        raise NotACheckpoint(f"{name} is a textual-inversion embedding, not a checkpoint: put it in the "
                             "shelf's embeddings/ folder and write its name in the prompt")  # fmt: skip
    unet = _strip(keys, "model.diffusion_model.")
    if any(k.startswith(("double_blocks.", "single_blocks.")) for k in unet):
        return Detected("flux")
    if any(k.startswith("joint_blocks.") for k in unet):
        return Detected("sd3")
    conv_in = unet.get("input_blocks.0.0.weight")
    if conv_in is None:
        raise NotACheckpoint(f"{name} is not a Stable Diffusion checkpoint of a family Dreamhall knows "
                             f"({', '.join(FAMILY_NAMES.values())})")  # fmt: skip
    inpainting = len(conv_in) > 1 and conv_in[1] == 9
    if any(k.startswith("conditioner.embedders.1.") for k in keys):
        return Detected("sdxl", inpainting)
    if any(k.startswith("conditioner.embedders.0.model.") for k in keys):
        return Detected("sdxl-refiner", inpainting)
    if any(k.startswith("cond_stage_model.model.") for k in keys):
        return Detected("sd2", inpainting, v_prediction=not inpainting)
    if any(k.startswith("cond_stage_model.transformer.") for k in keys):
        return Detected("sd1", inpainting)
    raise NotACheckpoint(f"{name} has a UNet but no text encoder Dreamhall recognises")


def detect_file(path: Path) -> Detected:
    return detect_keys(read_keys(path), path.name)


def detect_folder(path: Path) -> Detected:
    """The family of a diffusers pipeline folder, from its configs (nothing is loaded)."""

    def config(*parts: str) -> dict:
        file = path.joinpath(*parts)
        return json.loads(file.read_text()) if file.exists() else {}

    return detect_configs(config("model_index.json"), config("unet", "config.json"),
                          config("scheduler", "scheduler_config.json"))  # fmt: skip


def detect_pipeline(pipe) -> Detected:
    """The family of a loaded diffusers pipeline (a folder or a hub id)."""
    unet = getattr(pipe, "unet", None)
    index = {"_class_name": type(pipe).__name__, **pipe.config}
    return detect_configs(index, dict(unet.config) if unet is not None else {}, dict(pipe.scheduler.config))


def detect_configs(index: dict, unet: dict, scheduler: dict) -> Detected:
    """The family from a pipeline's `model_index.json`, its UNet's and its scheduler's configs."""
    cls = index.get("_class_name", "")
    if cls.startswith("Flux"):
        return Detected("flux")
    if cls.startswith("StableDiffusion3"):
        return Detected("sd3")
    inpainting = unet.get("in_channels") == 9
    if "XL" in cls:
        return Detected("sdxl-refiner" if index.get("requires_aesthetics_score") else "sdxl", inpainting)
    v = scheduler.get("prediction_type") == "v_prediction"
    if unet.get("cross_attention_dim") == 1024 or v:
        return Detected("sd2", inpainting, v_prediction=v)
    return Detected("sd1", inpainting)


def shipped_configs() -> Path:
    return Path(str(resources.files("engine.device") / "configs"))


def config_name(d: Detected) -> str:
    """The config folder for a detected single file: `sd1`, `sdxl-inpainting`, ..."""
    if d.family in FLOW_MATCHING:
        raise NotACheckpoint(
            f"{FAMILY_NAMES[d.family]} single files hold the transformer but not all of the pipeline; "
            f"load {FAMILY_NAMES[d.family]} from a diffusers folder in the shelf's Stable-diffusion/ folder"
        )
    if d.family == "sd2" and d.inpainting:
        raise NotACheckpoint("SD 2.x inpainting single files are not supported; use its diffusers folder")
    return d.family + ("-inpainting" if d.inpainting else "")


def config_dir(d: Detected, extra: Path | None = None) -> Path:
    """The config folder for a detected single-file checkpoint."""
    return config_folder(config_name(d), extra)


def config_folder(name: str, extra: Path | None = None, holding: str = "model_index.json") -> Path:
    """The config folder `name` (`sd1`, `sdxl-inpainting`, ...): the shelf's own `configs/<name>/` first when it
    holds `holding` (a non-standard architecture), then the one that ships with Dreamhall."""
    if extra is not None and (extra / name / holding).exists():
        return extra / name
    return shipped_configs() / name


@cache
def clip_tokenizer_files(pad_token: str) -> Path:
    """CLIP's tokenizer files, written once per process from the BPE merges that ship inside open_clip
    (the same 49,408-token vocabulary SD 1.x, 2.x and SDXL use), so no hub is needed."""
    from models import tokenizer as clip_bpe

    # Removed when the process exits (the engine's SIGTERM stop included): one folder per engine run,
    # never left behind in /tmp. `cache` keeps the object, and so the folder, alive until then.
    folder = tempfile.TemporaryDirectory(prefix="dreamhall-clip-tokenizer-")
    _TOKENIZER_DIRS.append(folder)
    out = Path(folder.name)
    clip_bpe.build(out, first_merges=None, model_max_length=77, pad_token=pad_token)
    return out


_TOKENIZER_DIRS: list[tempfile.TemporaryDirectory[str]] = []


def detect_controlnet_folder(path: Path) -> str:
    """The family (a FAMILIES key) a diffusers ControlNet folder steers, from its config.json."""
    file = path / "config.json"
    try:
        config = json.loads(file.read_text())
    except (OSError, ValueError) as e:
        raise NotACheckpoint(f"{path.name} has no readable config.json: {e}") from e
    cls = str(config.get("_class_name", ""))
    if cls.startswith("Flux"):
        return "flux"
    if cls.startswith("SD3"):
        return "sd3"
    if "Union" in cls or config.get("addition_embed_type") == "text_time":
        return "sdxl"
    if not cls.endswith("ControlNetModel"):
        raise NotACheckpoint(f"{path.name} is a {cls or 'folder without a model class'}, not a ControlNet")
    return "sd2" if config.get("cross_attention_dim") == 1024 else "sd1"


@dataclass(frozen=True)
class ControlNetFile:
    """What a single-file ControlNet's tensors say: the family it steers and its hint encoder's widths."""

    family: str
    hint_widths: tuple[int, ...]


def detect_controlnet_file(path: Path) -> ControlNetFile:
    """A single-file ControlNet (lllyasviel's layout, as A1111's models/ControlNet/ holds them, or diffusers' names
    in one file), from its tensor names and shapes."""
    keys = {k.removeprefix("control_model."): shape for k, shape in read_keys(path).items()}
    if any(k.startswith(("task_embedding", "transformer_layes", "control_add_embedding")) for k in keys):
        raise NotACheckpoint(f"{path.name} is a ControlNet-Union; put its diffusers folder in models/ControlNet/")
    if any(k.startswith(("controlnet_x_embedder", "pos_embed_input", "controlnet_blocks")) for k in keys):
        raise NotACheckpoint(f"{path.name} is an SD3/FLUX ControlNet; put its diffusers folder in models/ControlNet/")
    if "input_hint_block.0.weight" in keys:  # convs 0, 2, ... 14: each width twice, then the last conv out
        convs = sorted((int(k.split(".")[1]), shape) for k, shape in keys.items()
                       if k.startswith("input_hint_block.") and k.endswith(".weight"))  # fmt: skip
        widths = tuple(shape[0] for _, shape in convs[:-1][::2])
    elif "controlnet_cond_embedding.conv_in.weight" in keys:
        blocks = sorted((int(k.split(".")[2]), shape) for k, shape in keys.items()
                        if k.startswith("controlnet_cond_embedding.blocks.") and k.endswith(".weight"))  # fmt: skip
        widths = (keys["controlnet_cond_embedding.conv_in.weight"][0], *(shape[0] for _, shape in blocks[1::2]))
    else:
        raise NotACheckpoint(f"{path.name} is not a ControlNet (no input_hint_block / controlnet_cond_embedding)")
    # As for folders: SDXL's has the added time embedding, SD 2.x's 1024-wide text, every other one is SD 1.x.
    width = next((shape[1] for k, shape in keys.items() if k.endswith("attn2.to_k.weight")), None)
    if any(k.startswith(("label_emb.", "add_embedding.")) for k in keys):
        return ControlNetFile("sdxl", widths)
    return ControlNetFile("sd2" if width == 1024 else "sd1", widths)


def ip_adapter_kind(path: Path) -> tuple[str | None, int]:
    """The family (a FAMILIES key; None: by its width) and the text width an IP-Adapter file is made for: FLUX's
    (XLabs' layout: `double_blocks.N.processor.ip_adapter_double_stream_*`) by its names, the others by width."""
    keys = read_keys(path)
    norm = keys.get("ip_adapter_proj_model.norm.weight")
    if norm is not None and any(k.startswith("double_blocks.") for k in keys):
        return "flux", norm[0]
    return None, ip_adapter_width(path, keys)


def ip_adapter_width(path: Path, keys: dict[str, tuple[int, ...]]) -> int:
    """The cross-attention width an IP-Adapter file is made for: the basic one's image projection makes four such
    tokens; the Plus one's resampler (`image_proj.latents`) ends in a projection to that width."""
    if any("perceiver" in key or "faceid" in key.lower() for key in keys):
        raise NotACheckpoint(f"{path.name} is an IP-Adapter FaceID variant; this version loads the basic and Plus ones")
    proj = next((shape for key, shape in keys.items() if key.endswith("image_proj.proj.weight")), None)
    if proj is not None:
        return proj[0] // 4
    plus = keys.get("image_proj.proj_out.weight")
    if "image_proj.latents" in keys and plus is not None:
        return plus[0]
    raise NotACheckpoint(f"{path.name} is not an IP-Adapter (no image_proj.proj.weight or image_proj.latents)")


# The text conditioning's width of each family's released models (what their add-ons are made for).
FAMILY_WIDTHS = {"sd1": 768, "sd2": 1024, "sdxl": 2048, "sdxl-refiner": 1280}


def family_of_width(width: int) -> str | None:
    return next((family for family, w in FAMILY_WIDTHS.items() if w == width), None)


def folder_width(path: Path) -> int | None:
    """A diffusers pipeline folder's UNet cross-attention width (None without a UNet: SD3, FLUX)."""
    try:
        width = json.loads((path / "unet" / "config.json").read_text()).get("cross_attention_dim")
    except (OSError, ValueError):
        return None
    return width if isinstance(width, int) else None
