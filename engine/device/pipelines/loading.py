"""Loading a model reference into a diffusers pipeline, offline: a diffusers folder (the built-in toy model
is one), a hub id (when online), or a single-file `.safetensors`/`.ckpt` checkpoint with configs that ship here."""

from __future__ import annotations

import inspect
import json
import logging
import os
import socket
import tempfile
from pathlib import Path

import torch
from diffusers import (
    ControlNetModel,
    DiffusionPipeline,
    StableDiffusionInpaintPipeline,
    StableDiffusionPipeline,
    StableDiffusionXLImg2ImgPipeline,
    StableDiffusionXLInpaintPipeline,
    StableDiffusionXLPipeline,
)
from diffusers.utils import logging as diffusers_logging
from transformers import CLIPTokenizer
from transformers.utils import logging as transformers_logging

from engine.client.errors import UserError
from engine.device.device import Device
from engine.device.families import (
    FAMILY_NAMES,
    Detected,
    NotACheckpoint,
    clip_tokenizer_files,
    config_dir,
    config_folder,
    config_name,
    detect_controlnet_file,
    detect_file,
    detect_pipeline,
)
from engine.device.shelf import CHECKPOINT_SUFFIXES, builtin_model_dir, default_model_name

log = logging.getLogger(__name__)
# diffusers 0.42 warns on every single-file load that "modules ... should be kept in float32: []"
# (an empty list is not None); there is nothing to keep, so the engine's log does not repeat it.
logging.getLogger("diffusers.models.modeling_utils").addFilter(
    lambda record: "should be kept in float32: []" not in record.getMessage()
)


def first_sentence(e: BaseException, limit: int = 200) -> str:
    """A library's error as one short sentence (torch's can run to a paragraph); the log keeps the rest."""
    text = str(e).strip()
    if not text:
        return type(e).__name__
    line = text.splitlines()[0]
    cut = line.find(". ")
    line = line[: cut + 1] if 0 < cut < limit else line
    return line if len(line) <= limit else line[: limit - 1] + "…"


class ModelLoadError(UserError):
    """A model reference that could not be loaded; the message says why and what to do."""


# Classic sampler names -> diffusers schedulers, built from the model's own
# scheduler config so betas and offsets match what the model was trained with.
def load_pipeline(
    ref: str | None, device: Device, *, safety_check: bool = True, configs: Path | None = None
) -> tuple[str, DiffusionPipeline, Detected]:
    """Load `ref` (None: the built-in toy model) as its family's pipeline; return (name, pipeline, family).

    Folders load with the class their `model_index.json` names (an SDXL refiner stays an img2img
    pipeline). Single files load offline with the config folder of their detected family
    (`engine/configs/`, or the shelf's own `configs/<family>/` first). With `safety_check`, a
    model's own safety checker (SD 1.x folders ship one) is loaded too; see `LoadedModel`.
    """
    # Loading bars belong in a terminal, not in the engine's log.
    diffusers_logging.disable_progress_bar()
    transformers_logging.disable_progress_bar()
    name = default_model_name(ref)
    path = builtin_model_dir() if ref is None else Path(ref).expanduser()
    kwargs: dict = {"dtype": device.dtype}
    if not safety_check:
        kwargs["safety_checker"] = None
    try:
        if path.is_dir():
            if not (path / "model_index.json").exists():
                raise ModelLoadError(f"{path.name} is a folder but not a diffusers pipeline (no model_index.json)")
            pipe = DiffusionPipeline.from_pretrained(path, **kwargs)
            detected = detect_pipeline(pipe)
        elif path.suffix in CHECKPOINT_SUFFIXES:
            if not path.is_file():
                raise ModelLoadError(f"checkpoint file {path.name} does not exist")
            detected = detect_file(path)
            pipe = _load_single_file(path, detected, configs, kwargs)
        elif ref is not None and "/" in ref and not ref.startswith((".", "/", "~")):
            online = hub_reachable(ref)
            try:
                pipe = DiffusionPipeline.from_pretrained(ref, **kwargs, local_files_only=not online)
            except (OSError, ValueError) as e:
                if online:
                    raise
                raise ModelLoadError(
                    f"model {ref!r} is not in this machine's hub cache and the hub cannot be reached; "
                    "use a local diffusers folder or a .safetensors file"
                ) from e
            detected = detect_pipeline(pipe)
        else:
            raise ModelLoadError(f"model {ref!r} is neither a folder, a .safetensors/.ckpt file nor a hub id")
    except ModelLoadError:
        raise
    except NotACheckpoint as e:
        raise ModelLoadError(str(e)) from e
    except (OSError, ValueError, RuntimeError, KeyError) as e:
        raise ModelLoadError(f"could not load model {path.name if ref else name!r}: {first_sentence(e)}") from e
    pipe.set_progress_bar_config(disable=True)
    return name, pipe.to(device.torch_device), detected


SINGLE_FILE_PIPELINES = {
    "sd1": StableDiffusionPipeline,
    "sd1-inpainting": StableDiffusionInpaintPipeline,
    "sd2": StableDiffusionPipeline,
    "sdxl": StableDiffusionXLPipeline,
    "sdxl-inpainting": StableDiffusionXLInpaintPipeline,
    "sdxl-refiner": StableDiffusionXLImg2ImgPipeline,
}


def _load_single_file(path: Path, detected: Detected, configs: Path | None, kwargs: dict) -> DiffusionPipeline:
    """A single-file checkpoint through diffusers' converter, with a local config: nothing is fetched."""
    config = config_dir(detected, configs)
    cls = SINGLE_FILE_PIPELINES[config_name(detected)]
    extra: dict = {"safety_checker": None}  # the checker is not in the file; fetching it would need the hub
    # CLIP's tokenizer is not in the file either: ours is written from open_clip's BPE (same vocabulary).
    index = json.loads((config / "model_index.json").read_text())
    for component, pad in (("tokenizer", "<|endoftext|>" if detected.family != "sd2" else "!"), ("tokenizer_2", "!")):
        if index.get(component, [None])[0] is not None and not (config / component).is_dir():
            extra[component] = CLIPTokenizer.from_pretrained(clip_tokenizer_files(pad))
    pipe = cls.from_single_file(str(path), config=str(config), local_files_only=True,
                                **{**kwargs, **extra})  # fmt: skip
    if detected.family == "sd2" and not detected.v_prediction:
        pipe.scheduler = pipe.scheduler.from_config(pipe.scheduler.config, prediction_type="epsilon")
    return pipe


def load_controlnet_file(path: Path, configs: Path | None, dtype: torch.dtype) -> ControlNetModel:
    """A single-file ControlNet through diffusers' converter, with a config made from its family's UNet config
    (a ControlNet is a copy of the UNet's encoder) and the file's own hint encoder: nothing is fetched."""
    try:
        found = detect_controlnet_file(path)
    except NotACheckpoint as e:
        raise ModelLoadError(str(e)) from e
    unet = config_folder(found.family, configs, holding="unet/config.json") / "unet" / "config.json"
    if not unet.exists():
        raise ModelLoadError(f"no {FAMILY_NAMES[found.family]} config to build ControlNet {path.name} from")
    fields = inspect.signature(ControlNetModel.__init__).parameters
    config = {k: v for k, v in json.loads(unet.read_text()).items() if k in fields}
    config |= {"_class_name": "ControlNetModel", "conditioning_embedding_out_channels": list(found.hint_widths)}
    with tempfile.TemporaryDirectory(prefix="dreamhall-controlnet-") as folder:
        (Path(folder) / "config.json").write_text(json.dumps(config))
        try:
            return ControlNetModel.from_single_file(str(path), config=folder, local_files_only=True, torch_dtype=dtype)
        except (OSError, ValueError, RuntimeError, KeyError) as e:
            raise ModelLoadError(f"could not load ControlNet {path.name}: {first_sentence(e)}") from e


HUB_HOST = "huggingface.co"


def hub_reachable(ref: str, timeout: float = 3.0) -> bool:
    """Whether a hub id can be fetched now; if not, loading uses the local cache only.

    Without this, an unknown hub id offline holds the worker ~30 s while the hub client retries.
    """
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in {"1", "true", "yes"}:
        return False
    try:
        socket.create_connection((HUB_HOST, 443), timeout=timeout).close()
        return True
    except OSError:
        log.info("the hub cannot be reached: %s comes from the local cache or not at all", ref)
        return False
