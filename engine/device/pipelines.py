"""Loading diffusers pipelines, choosing schedulers, and the tasks of a loaded model.

One loader serves every kind of model reference: a local diffusers folder (the
built-in toy model is one), a Hugging Face hub id (when online), or a
single-file `.safetensors`/`.ckpt` checkpoint. One cache keeps the loaded model;
task pipelines share its components.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import os
import socket
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from compel import BaseTextualInversionManager, Compel, ReturnedEmbeddingsType
from compel.prompt_parser import FlattenedPrompt, Fragment
from diffusers import (
    AutoPipelineForImage2Image,
    AutoPipelineForInpainting,
    DDIMScheduler,
    DiffusionPipeline,
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    FlowMatchEulerDiscreteScheduler,
    FlowMatchHeunDiscreteScheduler,
    HeunDiscreteScheduler,
    KDPM2AncestralDiscreteScheduler,
    KDPM2DiscreteScheduler,
    LMSDiscreteScheduler,
    PNDMScheduler,
    StableDiffusionInpaintPipeline,
    StableDiffusionLatentUpscalePipeline,
    StableDiffusionPipeline,
    StableDiffusionUpscalePipeline,
    StableDiffusionXLImg2ImgPipeline,
    StableDiffusionXLInpaintPipeline,
    StableDiffusionXLPipeline,
)
from diffusers.utils import logging as diffusers_logging
from PIL import Image
from safetensors.torch import load_file
from transformers import CLIPTokenizer
from transformers.utils import logging as transformers_logging

from engine.client import prompts
from engine.client.errors import InputError, UserError
from engine.client.schema import Sampler
from engine.device.device import Device
from engine.device.families import (
    FLOW_MATCHING,
    Detected,
    NotACheckpoint,
    clip_tokenizer_files,
    config_dir,
    config_name,
    detect_file,
    detect_pipeline,
)
from engine.device.runner import Affinity
from engine.device.shelf import CHECKPOINT_SUFFIXES, Item, Shelf, UnknownModel, builtin_model_dir, default_model_name

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
SCHEDULERS: dict[str, tuple[type, dict]] = {
    "k_lms": (LMSDiscreteScheduler, {}),
    "k_euler": (EulerDiscreteScheduler, {}),
    "k_euler_a": (EulerAncestralDiscreteScheduler, {}),
    "k_heun": (HeunDiscreteScheduler, {}),
    "k_dpm_2": (KDPM2DiscreteScheduler, {}),
    "k_dpm_2_a": (KDPM2AncestralDiscreteScheduler, {}),
    "ddim": (DDIMScheduler, {}),
    "plms": (PNDMScheduler, {"skip_prk_steps": True}),
    "dpm++_2m": (DPMSolverMultistepScheduler, {}),
    "dpm++_2m_karras": (DPMSolverMultistepScheduler, {"use_karras_sigmas": True}),
}


# Flow-matching models (SD3, FLUX) integrate a velocity field: only the Euler-family names apply.
FLOW_SCHEDULERS: dict[str, tuple[type, dict]] = {
    "k_euler": (FlowMatchEulerDiscreteScheduler, {}),
    "k_euler_a": (FlowMatchEulerDiscreteScheduler, {"stochastic_sampling": True}),
    "k_heun": (FlowMatchHeunDiscreteScheduler, {}),
}


class SamplerError(UserError, ValueError):
    """A sampler that does not apply to the loaded model's family."""


def make_scheduler(sampler: Sampler, base_config: dict, *, flow: bool = False, family: str = ""):
    """A fresh scheduler for one call (schedulers carry per-call state)."""
    table = FLOW_SCHEDULERS if flow else SCHEDULERS
    if sampler not in table:
        raise SamplerError(f"sampler {sampler} does not apply to {family or 'this model'}, which samples with flow "
                           f"matching; use one of {', '.join(table)}")  # fmt: skip
    cls, extra = table[sampler]
    return cls.from_config(base_config, **extra)


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


StepCallback = Callable[[int, int, torch.Tensor], None]


def effective_steps(steps: int, strength: float) -> int:
    """Steps to ask diffusers for so that an img2img pass at `strength` runs at least one.

    diffusers runs int(steps * strength) of them; below one it fails on an empty tensor. As
    AUTOMATIC1111 does, run one step instead: asking for ceil(1/strength) runs exactly the last
    step of that schedule, whose noise level matches `strength`.
    """
    if strength <= 0:
        raise ValueError(f"strength must be above 0, got {strength}")
    return steps if int(steps * strength) >= 1 else math.ceil(1 / strength)


class _Vectors(BaseTextualInversionManager):
    """A multi-vector embedding's name stands for all its tokens (`name`, `name_1`, ...), by token id.
    (compel's diffusers manager decodes and re-encodes the prompt, which CLIP's BPE does not survive.)"""

    def __init__(self, tokenizer, names: list[str]) -> None:
        self.expand: dict[int, list[int]] = {}
        for name in names:
            ids = [tokenizer.convert_tokens_to_ids(name)]
            while (more := tokenizer.convert_tokens_to_ids(f"{name}_{len(ids)}")) != tokenizer.unk_token_id:
                ids.append(more)
            self.expand[ids[0]] = ids

    def expand_textual_inversion_token_ids_if_necessary(self, token_ids: list[int]) -> list[int]:
        return [t for token in token_ids for t in self.expand.get(token, [token])]


class PromptEncoder:
    """Prompts -> embeddings through compel, with AUTOMATIC1111's syntax (engine/prompts.py).

    Each BREAK segment is encoded on its own (compel chunks a long one by the encoder's window)
    and the segments are joined along the tokens, as A1111 does. SDXL: both encoders' penultimate
    layers side by side, the pooled vector from the big one.
    """

    def __init__(self, pipe: DiffusionPipeline, embeddings: list[str] = ()) -> None:
        self.pipe = pipe
        common = dict(truncate_long_prompts=False, device=pipe.device)
        self.pooled = getattr(pipe, "text_encoder_2", None) is not None
        self.compels: list[Compel] = []
        if not self.pooled:
            self.compels.append(
                Compel(
                    tokenizer=pipe.tokenizer,
                    text_encoder=pipe.text_encoder,
                    textual_inversion_manager=_Vectors(pipe.tokenizer, embeddings),
                    **common,
                )
            )
            return
        kind = ReturnedEmbeddingsType.PENULTIMATE_HIDDEN_STATES_NON_NORMALIZED
        if pipe.text_encoder is not None:
            self.compels.append(Compel(tokenizer=pipe.tokenizer, text_encoder=pipe.text_encoder,
                                       textual_inversion_manager=_Vectors(pipe.tokenizer, embeddings),
                                       returned_embeddings_type=kind, **common))  # fmt: skip
        self.compels.append(Compel(tokenizer=pipe.tokenizer_2, text_encoder=pipe.text_encoder_2,
                                   textual_inversion_manager=_Vectors(pipe.tokenizer_2, embeddings),
                                   returned_embeddings_type=kind, requires_pooled=True, **common))  # fmt: skip

    @torch.inference_mode()
    def __call__(self, prompt: str, negative_prompt: str, n: int) -> dict:
        zero_negative = not negative_prompt and self.pooled and self.pipe.config.get("force_zeros_for_empty_prompt")
        pos = [self._encode(c, prompt) for c in self.compels]
        neg = [self._encode(c, negative_prompt) for c in self.compels]
        length = max(t.shape[1] for t in pos + neg)
        pos = [self._pad(c, t, length) for c, t in zip(self.compels, pos)]
        neg = [self._pad(c, t, length) for c, t in zip(self.compels, neg)]
        embeds, negative = torch.cat(pos, dim=-1), torch.cat(neg, dim=-1)
        if zero_negative:
            negative = torch.zeros_like(negative)
        out = {"prompt_embeds": embeds.repeat(n, 1, 1), "negative_prompt_embeds": negative.repeat(n, 1, 1)}
        if self.pooled:
            big = self.compels[-1].conditioning_provider
            pooled = big.get_pooled_embeddings([prompts.segments(prompt)[0]], device=self.pipe.device)
            negative_pooled = big.get_pooled_embeddings([prompts.segments(negative_prompt)[0]], device=self.pipe.device)
            if zero_negative:
                negative_pooled = torch.zeros_like(negative_pooled)
            out |= {
                "pooled_prompt_embeds": pooled.repeat(n, 1),
                "negative_pooled_prompt_embeds": negative_pooled.repeat(n, 1),
            }
        return out

    @staticmethod
    def _encode(compel: Compel, text: str) -> torch.Tensor:
        parts = []
        for segment in prompts.segments(text):
            flat = FlattenedPrompt([Fragment(t, w) for t, w in prompts.fragments(segment)])
            (conditioning, _), _ = compel.build_conditioning_tensor_for_prompt_object(flat)
            parts.append(conditioning if conditioning.ndim == 3 else conditioning.unsqueeze(0))
        return torch.cat(parts, dim=1)

    @staticmethod
    def _pad(compel: Compel, t: torch.Tensor, length: int) -> torch.Tensor:
        if t.shape[1] == length:
            return t
        empty = PromptEncoder._encode(compel, "")
        while t.shape[1] < length:
            t = torch.cat([t, empty], dim=1)
        return t[:, :length]


class LoadedModel:
    """A loaded model and its tasks (txt2img, img2img, inpaint). img2img and inpaint pipelines are
    built with `from_pipe`, so they share the loaded components instead of copying them.

    Family differences live here and nowhere else: an inpainting checkpoint makes txt2img and
    img2img through its inpaint pipeline with a full mask (as A1111 does); an SDXL refiner only
    refines; SD3 and FLUX have a transformer instead of a UNet and flow-matching samplers.
    """

    def __init__(self, name: str, pipe: DiffusionPipeline, device: Device, detected: Detected | None = None) -> None:
        self.name = name
        self.detected = detected or Detected("sd1")
        # The model's safety checker flags images instead of blacking them out inside the
        # pipeline: the gallery keeps everything, and each frontend decides where to show it.
        self.safety_checker = getattr(pipe, "safety_checker", None)
        self.feature_extractor = getattr(pipe, "feature_extractor", None)
        if self.safety_checker is not None:
            pipe.safety_checker = None
            # Its warning says "a black image will be returned": not true here, the image is only flagged.
            logging.getLogger(type(self.safety_checker).__module__).setLevel(logging.ERROR)
        self.pipe = pipe
        self.device = device
        self.hash: str | None = None  # A1111's short hash of the checkpoint file, when it is one
        self.base_scheduler_config = dict(pipe.scheduler.config)
        self.flow = self.detected.family in FLOW_MATCHING
        self._img2img: DiffusionPipeline | None = None
        self._inpaint: DiffusionPipeline | None = None
        self._encoder: PromptEncoder | None = None
        self._embeddings: list[str] = []  # loaded for the running job

    @property
    def family(self) -> str:
        return self.detected.label

    def compile(self) -> None:
        """torch.compile the denoiser (UNet or transformer) in place: it compiles on its first call (and again
        for a new image size), from inductor's on-disk cache when this machine compiled it before."""
        denoiser = getattr(self.pipe, "unet", None) or self.pipe.transformer
        denoiser.compile()
        log.info("%s: %s compiles on first use (inductor cache %s)", self.name, type(denoiser).__name__,
                 os.environ.get("TORCHINDUCTOR_CACHE_DIR", "torch's default"))  # fmt: skip

    @functools.cached_property
    def nbytes(self) -> int:
        """Bytes its weights hold on the device (what the model cache budgets)."""
        modules = [c for c in self.pipe.components.values() if isinstance(c, torch.nn.Module)]
        return sum(t.numel() * t.element_size() for m in modules for t in [*m.parameters(), *m.buffers()])

    @property
    def _packed(self) -> bool:
        """FLUX packs 2x2 latent patches into tokens: sizes are multiples of twice the VAE's factor."""
        return self.detected.family == "flux"

    @property
    def native_size(self) -> int:
        """The square size the model was trained at (512 for SD 1.x, 64 for the toy model)."""
        unet = getattr(self.pipe, "unet", None)
        size = unet.config.sample_size if unet is not None else self.pipe.default_sample_size
        return int(size * self.pipe.vae_scale_factor)

    def latent_shape(self, width: int, height: int) -> tuple[int, int, int]:
        """The shape of one image's starting noise (the VAE's latent channels: an inpainting
        UNet takes 9, but its noise has the VAE's 4)."""
        f = self.pipe.vae_scale_factor * (2 if self._packed else 1)
        scale = 2 if self._packed else 1
        return int(self.pipe.vae.config.latent_channels), height // f * scale, width // f * scale

    def _pack(self, latents: torch.Tensor) -> torch.Tensor:
        if not self._packed:
            return latents
        b, c, h, w = latents.shape
        return latents.view(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5).reshape(b, (h // 2) * (w // 2), c * 4)

    def check_inputs(self, *, width: int, height: int, steps: int, seeds: list[int]) -> None:
        """Before any work, for every task: errors name the argument and its value."""
        multiple = self.pipe.vae_scale_factor * (2 if self._packed else 1)
        if width % multiple or height % multiple:
            raise ValueError(f"width and height must be multiples of {multiple}, got {width}x{height}")
        if steps < 1:
            raise ValueError(f"steps must be at least 1, got {steps}")
        if not seeds:
            raise ValueError("seeds must name at least one image")

    def txt2img(
        self,
        *,
        seeds: list[int],
        width: int,
        height: int,
        latents: torch.Tensor | None = None,
        **common,
    ) -> list[Image.Image]:
        """`latents`: starting noise drawn by the caller (variations); None draws it from `seeds`."""
        self.check_inputs(width=width, height=height, steps=common["steps"], seeds=seeds)
        if self.detected.family == "sdxl-refiner":
            raise InputError("an SDXL refiner only refines images: use it for img2img or inpaint, "
                             "or as --refiner after an SDXL model")  # fmt: skip
        if latents is not None:
            latents = self._pack(latents).to(self.device.torch_device, self.pipe.dtype)
        if self.detected.inpainting:
            # An inpainting UNet also sees a masked image: give it nothing to keep (all masked, grey).
            blank = Image.new("RGB", (width, height), (127, 127, 127))
            full = Image.new("L", (width, height), 255)
            return self._run(self._inpaint_pipe(), seeds=seeds, image=[blank] * len(seeds),
                             mask_image=[full] * len(seeds), strength=1.0, width=width, height=height,
                             latents=latents, **common)  # fmt: skip
        return self._run(self.pipe, seeds=seeds, width=width, height=height, latents=latents, **common)

    def img2img(
        self, *, seeds: list[int], image: Image.Image, strength: float, steps: int, **common
    ) -> list[Image.Image]:
        self.check_inputs(width=image.width, height=image.height, steps=steps, seeds=seeds)
        if self.detected.inpainting:
            full = Image.new("L", image.size, 255)
            return self.inpaint(seeds=seeds, image=image, mask=full, strength=strength, steps=steps, **common)
        if self._img2img is None:
            self._img2img = self._task(AutoPipelineForImage2Image)
        extra = {"width": image.width, "height": image.height} if self.flow else {}
        return self._run(self._img2img, seeds=seeds, image=[image] * len(seeds), strength=strength,
                         steps=effective_steps(steps, strength), **extra, **common)  # fmt: skip

    def inpaint(
        self, *, seeds: list[int], image: Image.Image, mask: Image.Image, strength: float, steps: int, **common
    ) -> list[Image.Image]:
        """Repaint the white part of `mask`. A model without an inpainting UNet gets the standard
        masked-latent blending (diffusers does it when the UNet has 4 input channels)."""
        self.check_inputs(width=image.width, height=image.height, steps=steps, seeds=seeds)
        n = len(seeds)
        return self._run(self._inpaint_pipe(), seeds=seeds, image=[image] * n, mask_image=[mask] * n,
                         strength=strength, width=image.width, height=image.height,
                         steps=effective_steps(steps, strength), **common)  # fmt: skip

    def _inpaint_pipe(self) -> DiffusionPipeline:
        if self._inpaint is None:
            self._inpaint = self._task(AutoPipelineForInpainting)
        return self._inpaint

    def _task(self, auto: type) -> DiffusionPipeline:
        try:
            pipe = auto.from_pipe(self.pipe)
        except ValueError as e:  # AutoPipeline has no such task for this family
            raise InputError(f"{self.family} models cannot do this ({e})") from e
        pipe.set_progress_bar_config(disable=True)
        return pipe

    @torch.inference_mode()
    def _run(
        self,
        pipe: DiffusionPipeline,
        *,
        prompt: str,
        negative_prompt: str,
        seeds: list[int],
        steps: int,
        cfg_scale: float,
        sampler: Sampler,
        on_step: StepCallback | None = None,
        **task_inputs,
    ) -> list[Image.Image]:
        # CPU generators: the same seed draws the same noise on any device.
        generators = [torch.Generator("cpu").manual_seed(s) for s in seeds]
        if task_inputs.get("latents") is not None:
            # The caller drew the starting noise from these generators; advance them
            # the same way so the sampler's own noise matches a plain txt2img call.
            for g in generators:
                torch.randn(task_inputs["latents"].shape[1:], generator=g)
        pipe.scheduler = make_scheduler(sampler, self.base_scheduler_config, flow=self.flow, family=self.family)
        if negative_prompt and self.detected.family == "flux":
            task_inputs["true_cfg_scale"] = cfg_scale  # FLUX's guidance is distilled; a negative needs true CFG

        def step_end(pipe, step: int, timestep, tensors: dict) -> dict:
            if on_step is not None:
                on_step(step + 1, pipe.num_timesteps, tensors["latents"])
            return tensors

        out = pipe(
            **self._conditioning(prompt, negative_prompt, len(seeds)),
            num_inference_steps=steps,
            guidance_scale=cfg_scale,
            generator=generators,
            callback_on_step_end=step_end,
            callback_on_step_end_tensor_inputs=["latents"],
            **task_inputs,
        )
        return list(out.images)

    def _conditioning(self, prompt: str, negative_prompt: str, n: int) -> dict:
        """The pipeline's text inputs for `n` images: compel's embeddings (A1111 weights, past the
        77-token window, BREAK) for SD 1.x/2.x/SDXL; the plain text for SD3 and FLUX."""
        prompt, negative_prompt = (prompts.without_embedding_prefix(prompts.parse(p)[0])
                                   for p in (prompt, negative_prompt))  # fmt: skip
        if self.flow:
            return {"prompt": [prompt] * n, "negative_prompt": [negative_prompt] * n if negative_prompt else None}
        if self._encoder is None:
            self._encoder = PromptEncoder(self.pipe, self._embeddings)
        return self._encoder(prompt, negative_prompt, n)

    @contextmanager
    def addons(self, loras: list[tuple[Item, float]], embeddings: list[Item]) -> Iterator[None]:
        """LoRAs and embeddings for one job; afterwards the model is exactly as before (the next job
        is byte-identical to one that never saw them)."""
        adapters: list[str] = []
        try:
            for i, (item, _) in enumerate(loras):
                name = f"job_lora_{i}"
                try:
                    self.pipe.load_lora_weights(str(item.path), adapter_name=name)
                except (ValueError, RuntimeError, KeyError, OSError) as e:
                    raise InputError(f"LoRA {item.name!r} does not fit this {self.family} model "
                                     f"(made for another family?): {str(e).splitlines()[0][:200]}") from e  # fmt: skip
                if not any(name in names for names in self.pipe.get_list_adapters().values()):
                    raise InputError(f"LoRA {item.name!r} does not fit this {self.family} model "
                                     "(none of its layers are in it: made for another family?)")  # fmt: skip
                adapters.append(name)
            if adapters:
                self.pipe.set_adapters(adapters, [weight for _, weight in loras])
            for item in embeddings:
                self._load_embedding(item)
            self._embeddings, self._encoder = [item.name for item in embeddings], None
            yield
        finally:
            if adapters or self.pipe.get_list_adapters():
                self.pipe.unload_lora_weights()
            if self._embeddings:
                self.pipe.unload_textual_inversion()
            self._embeddings, self._encoder = [], None

    def _load_embedding(self, item: Item) -> None:
        try:
            if getattr(self.pipe, "text_encoder_2", None) is None:
                self.pipe.load_textual_inversion(str(item.path), token=item.name)
                return
            state = load_file(str(item.path)) if item.path.suffix == ".safetensors" else {}
            if "clip_l" not in state or "clip_g" not in state:
                raise ValueError("it has no clip_l/clip_g vectors")
            self.pipe.load_textual_inversion(state["clip_l"], token=item.name, text_encoder=self.pipe.text_encoder,
                                             tokenizer=self.pipe.tokenizer)  # fmt: skip
            self.pipe.load_textual_inversion(state["clip_g"], token=item.name, text_encoder=self.pipe.text_encoder_2,
                                             tokenizer=self.pipe.tokenizer_2)  # fmt: skip
        except (ValueError, RuntimeError, KeyError, OSError) as e:
            raise InputError(f"embedding {item.name!r} does not fit this {self.family} model "
                             f"(made for another family?): {str(e).splitlines()[0][:200]}") from e  # fmt: skip

    @torch.inference_mode()
    def safety_flags(self, images: list[Image.Image]) -> list[bool]:
        """For each image, whether the model's safety checker flags it (all False when it has none)."""
        if self.safety_checker is None or self.feature_extractor is None or not images:
            return [False] * len(images)
        clip_input = self.feature_extractor(images, return_tensors="pt").pixel_values
        pixels = np.stack([np.asarray(im.convert("RGB"), dtype=np.float32) / 255 for im in images])
        checker = self.safety_checker
        _, flags = checker(images=pixels, clip_input=clip_input.to(self.device.torch_device, checker.dtype))
        return [bool(f) for f in flags]

    def preview(self, latents: torch.Tensor, size: int = 64) -> Image.Image | None:
        """A small picture of the first image's current latents, decoded by the real VAE
        (None for FLUX: its packed tokens do not say the picture's shape)."""
        if latents.ndim != 4:
            return None
        vae = self.pipe.vae
        shift = vae.config.get("shift_factor") or 0.0
        with torch.inference_mode():
            sample = vae.decode(latents[:1].to(vae.dtype) / vae.config.scaling_factor + shift).sample
        arr = ((sample[0].float().clamp(-1, 1) + 1) * 127.5).permute(1, 2, 0).byte().cpu().numpy()
        img = Image.fromarray(arr)
        img.thumbnail((size, size))
        return img


def load_model(
    ref: str | None, device: Device, *, safety_check: bool = True, configs: Path | None = None
) -> LoadedModel:
    """`load_pipeline`, ready to run: the model and its tasks."""
    name, pipe, detected = load_pipeline(ref, device, safety_check=safety_check, configs=configs)
    return LoadedModel(name, pipe, device, detected)


class Upscaler:
    """A diffusers upscaler pipeline: Stable Diffusion's x4 upscaler, or the x2 latent upscaler."""

    def __init__(self, name: str, pipe: DiffusionPipeline, device: Device) -> None:
        self.name = name
        self.pipe = pipe
        self.device = device
        self.factor = 2 if isinstance(pipe, StableDiffusionLatentUpscalePipeline) else int(pipe.vae_scale_factor)

    @torch.inference_mode()
    def upscale(
        self,
        *,
        prompt: str,
        negative_prompt: str,
        image: Image.Image,
        seeds: list[int],
        steps: int,
        cfg_scale: float,
        on_step: StepCallback | None = None,
    ) -> list[Image.Image]:
        """`image` made `factor` times larger, once per seed. The upscaler keeps its own scheduler."""
        n = len(seeds)

        def callback(step: int, timestep, latents: torch.Tensor) -> None:
            if on_step is not None:
                on_step(step + 1, steps, latents)

        out = self.pipe(
            prompt=[prompt] * n,
            negative_prompt=[negative_prompt] * n if negative_prompt else None,
            image=[image] * n,
            num_inference_steps=steps,
            guidance_scale=cfg_scale,
            generator=[torch.Generator("cpu").manual_seed(s) for s in seeds],
            callback=callback,
            callback_steps=1,
        )
        return list(out.images)


def load_upscaler(ref: str, device: Device) -> Upscaler:
    """A configured upscaler: a diffusers folder or hub id of an upscaler pipeline."""
    path = Path(ref).expanduser()
    try:
        pipe = DiffusionPipeline.from_pretrained(path if path.is_dir() else ref, dtype=device.dtype)
    except (OSError, ValueError) as e:
        raise ModelLoadError(f"could not load upscaler {ref!r}: {e}") from e
    if not isinstance(pipe, (StableDiffusionUpscalePipeline, StableDiffusionLatentUpscalePipeline)):
        raise ModelLoadError(f"{ref!r} is a {type(pipe).__name__}, not an upscaler pipeline")
    pipe.set_progress_bar_config(disable=True)
    return Upscaler(ref, pipe.to(device.torch_device), device)


class PipelineCache:
    """Keeps the models in use within a memory budget (LRU) and hands out their task pipelines.

    Models are named by their shelf name; a path or hub id (the CLI's) loads too, and is
    recorded by its file name, never its full path. The model being used is never evicted,
    so one model over the budget still loads (alone).
    """

    def __init__(
        self, device: Device, default_model: str | None, *, safety_check: bool = True, upscaler: str | None = None,
        shelf: Shelf | None = None, budget_bytes: int | None = None, compile: str = "off",
    ) -> None:  # fmt: skip
        self.device = device
        self.default_model = default_model
        self.safety_check = safety_check
        self.upscaler_ref = upscaler
        self.shelf = shelf or Shelf(None)
        self.budget_bytes = device.model_budget() if budget_bytes is None else budget_bytes
        self.compile = compile == "on" or (compile == "auto" and device.type == "cuda")
        self._upscaler: Upscaler | None = None
        self._lock = threading.Lock()
        self._models: OrderedDict[str, LoadedModel] = OrderedDict()  # least recently used first
        self.loading: str | None = None  # the model being loaded now (health reports it)
        self.loads = 0  # how many times a model was loaded (benchmarks and tests read it)

    def default_name(self) -> str:
        return default_model_name(self.default_model)

    def _key(self, ref: str | None) -> str:
        return ref or self.default_name()

    def is_loaded(self, ref: str | None) -> bool:
        return self._key(ref) in self._models

    def affinity(self) -> Affinity:
        """What the queue needs to spare this worker a reload."""
        return Affinity(loaded=frozenset(self._models), default_model=self.default_name())

    def loaded(self) -> list[str]:
        """Names of the models in memory, most recently used first."""
        return [m.name for m in reversed(self._models.values())]

    def _locate(self, key: str) -> tuple[str | None, str]:
        """(what the loader loads: a path, hub id or None for the built-in model; the name images record)."""
        try:
            item = self.shelf.find("checkpoint", key)
        except UnknownModel:
            path = Path(key).expanduser()
            return key, (path.stem if path.suffix in CHECKPOINT_SUFFIXES else path.name or key)
        return (str(item.path) if item.path is not None else None), item.name

    def model(self, ref: str | None) -> LoadedModel:
        """Model `ref` (None: the configured default), loading it if needed."""
        key = self._key(ref)
        with self._lock:
            if key in self._models:
                self._models.move_to_end(key)
                return self._models[key]
            load, name = self._locate(key)
            if load is None:
                log.info("using the built-in toy models; set `model = ...` in the config for real images")
            self.loading = name
            started = time.perf_counter()
            attempt = functools.partial(load_model, load, self.device, safety_check=self.safety_check,
                                        configs=self.shelf.configs)  # fmt: skip
            try:
                try:
                    model = attempt()
                except Exception as e:
                    if not self.device.is_out_of_memory(e) or not self._models:
                        raise
                    log.warning("out of memory loading %s; unloading the other models and trying again", name)
                    self.unload()
                    model = attempt()
                model.name = name
                if self.compile:
                    model.compile()
                if load is not None and Path(load).is_file():
                    model.hash = self.shelf.short_hash(Path(load), "checkpoint")
            finally:
                self.loading = None
            self.loads += 1
            self._models[key] = model
            self._evict()
            log.info("loaded model %s (%s, %.2f GB) on %s in %.1f s; in memory: %s", name, model.family,
                     model.nbytes / 1e9, self.device.describe(), time.perf_counter() - started,
                     ", ".join(self.loaded()))  # fmt: skip
            return model

    def _evict(self) -> None:
        """Drop least recently used models until the rest fit the budget (the newest always stays)."""
        evicted = False
        while len(self._models) > 1 and sum(m.nbytes for m in self._models.values()) > self.budget_bytes:
            _, old = self._models.popitem(last=False)
            log.info("unloading model %s (%.2f GB) to stay within the %.1f GB model cache", old.name,
                     old.nbytes / 1e9, self.budget_bytes / 1e9)  # fmt: skip
            evicted = True
        if evicted:
            self.device.free_memory()

    def upscaler(self) -> Upscaler | None:
        """The configured upscaler pipeline (loaded on first use), or None."""
        if self.upscaler_ref is None:
            return None
        with self._lock:
            if self._upscaler is None:
                self._upscaler = load_upscaler(self.upscaler_ref, self.device)
                log.info("loaded upscaler %s (x%d)", self.upscaler_ref, self._upscaler.factor)
            return self._upscaler

    def unload(self) -> None:
        if self._models:
            self._models.clear()
            self.device.free_memory()
