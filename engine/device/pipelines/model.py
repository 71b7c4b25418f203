"""A loaded model and its tasks (txt2img, img2img, inpaint, previews, add-ons), diffusers-style: check_inputs
first, a generator per seed, progress and cancel through callback_on_step_end."""

from __future__ import annotations

import functools
import inspect
import itertools
import logging
import math
import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from diffusers import (
    DiffusionPipeline,
    ModelMixin,
)
from diffusers.models.controlnets.multicontrolnet import MultiControlNetModel
from PIL import Image
from safetensors.torch import load_file

from engine.client import prompts
from engine.client.controls import UNION_MODES
from engine.client.errors import InputError
from engine.client.schema import Sampler
from engine.device.device import Device
from engine.device.families import (
    FLOW_MATCHING,
    Detected,
)
from engine.device.pipelines.conditioning import PromptEncoder
from engine.device.pipelines.loading import load_pipeline
from engine.device.pipelines.schedulers import make_scheduler
from engine.device.shelf import Item

log = logging.getLogger(__name__)


# Called after each step with (step, total, latents); answering True ends the sampling there and decodes what
# the latents hold (A1111's interrupt: the images as far as they got).
StepCallback = Callable[[int, int, torch.Tensor], bool | None]


@dataclass(frozen=True)
class Control:
    """One ControlNet in a task: the loaded net, its map at the output size, how hard and over which share of
    the steps it steers (diffusers' controlnet_conditioning_scale, control_guidance_start/end)."""

    net: ModelMixin
    image: Image.Image
    weight: float = 1.0
    start: float = 0.0
    end: float = 1.0
    kind: str = "none"  # the control type: what the map shows (a ControlNet-Union steers by it)
    name: str = "ControlNet"


def _several(family: str, nets: list[ModelMixin]) -> Any:  # diffusers types these three apart
    """Several ControlNets as one, in the wrapper the family's pipelines take (FLUX and SD3 have their own)."""
    if family == "flux":
        from diffusers.models.controlnets.controlnet_flux import FluxMultiControlNetModel

        return FluxMultiControlNetModel(nets)
    if family == "sd3":
        from diffusers.models.controlnets.controlnet_sd3 import SD3MultiControlNetModel

        return SD3MultiControlNetModel(nets)
    return MultiControlNetModel(nets)


def _takes(pipe: DiffusionPipeline, name: str) -> bool:
    """Whether this pipeline's call has the input `name` (they differ by family and task)."""
    return name in inspect.signature(type(pipe).__call__).parameters


def auto_pipeline(task: str) -> type:
    """diffusers' AutoPipeline for a task (Text2Image, Image2Image, Inpainting), imported on first use: its module
    imports every pipeline diffusers has (~0.7 s here), which a first txt2img job on a plain model never needs."""
    import diffusers

    return getattr(diffusers, f"AutoPipelineFor{task}")


class Unbatchable(ValueError):
    """Images that cannot share one pipeline call; each job runs alone instead."""


def effective_steps(steps: int, strength: float) -> int:
    """Steps to ask diffusers for so that an img2img pass at `strength` runs at least one.

    diffusers runs int(steps * strength) of them; below one it fails on an empty tensor. As
    AUTOMATIC1111 does, run one step instead: asking for ceil(1/strength) runs exactly the last
    step of that schedule, whose noise level matches `strength`.
    """
    if strength <= 0:
        raise ValueError(f"strength must be above 0, got {strength}")
    return steps if int(steps * strength) >= 1 else math.ceil(1 / strength)


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
        self._reference: torch.Tensor | None = None  # the running job's blended reference embedding (IP-Adapter)
        self._reference_negative: torch.Tensor | None = None  # what an IP-Adapter Plus guides away from

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
    def text_width(self) -> int | None:
        """The UNet's cross-attention width (what its add-ons are made for); None for SD3 and FLUX."""
        unet = getattr(self.pipe, "unet", None)
        return None if unet is None else int(unet.config.cross_attention_dim)

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
        controls: Sequence[Control] = (),
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
            return self.inpaint(seeds=seeds, image=blank, mask=full, strength=1.0, latents=latents,
                                controls=controls, **common)  # fmt: skip
        pipe, control_inputs = self._controlled(auto_pipeline("Text2Image"), controls) if controls else (self.pipe, {})
        return self._run(pipe, seeds=seeds, width=width, height=height, latents=latents, **control_inputs,
                         **common)  # fmt: skip

    def img2img(
        self, *, seeds: list[int], image: Image.Image, strength: float, steps: int, controls: Sequence[Control] = (),
        **common,
    ) -> list[Image.Image]:  # fmt: skip
        self.check_inputs(width=image.width, height=image.height, steps=steps, seeds=seeds)
        if self.detected.inpainting:
            full = Image.new("L", image.size, 255)
            return self.inpaint(seeds=seeds, image=image, mask=full, strength=strength, steps=steps,
                                controls=controls, **common)  # fmt: skip
        if self._img2img is None:
            self._img2img = self._task(auto_pipeline("Image2Image"))
        pipe, control_inputs = (
            self._controlled(auto_pipeline("Image2Image"), controls) if controls else (self._img2img, {})
        )
        extra = {"width": image.width, "height": image.height} if self.flow else {}
        return self._run(pipe, seeds=seeds, image=[image] * len(seeds), strength=strength,
                         steps=effective_steps(steps, strength), **extra, **control_inputs, **common)  # fmt: skip

    def inpaint(
        self, *, seeds: list[int], image: Image.Image, mask: Image.Image, strength: float, steps: int,
        controls: Sequence[Control] = (), **common,
    ) -> list[Image.Image]:  # fmt: skip
        """Repaint the white part of `mask`. A model without an inpainting UNet gets the standard
        masked-latent blending (diffusers does it when the UNet has 4 input channels)."""
        self.check_inputs(width=image.width, height=image.height, steps=steps, seeds=seeds)
        n = len(seeds)
        pipe, control_inputs = (
            self._controlled(auto_pipeline("Inpainting"), controls) if controls else (self._inpaint_pipe(), {})
        )
        return self._run(pipe, seeds=seeds, image=[image] * n, mask_image=[mask] * n,
                         strength=strength, width=image.width, height=image.height,
                         steps=effective_steps(steps, strength), **control_inputs, **common)  # fmt: skip

    def check_control(self, net: ModelMixin, name: str) -> None:
        """A ControlNet's blocks must match the model's: one sentence naming both when they do not."""
        denoiser = getattr(self.pipe, "unet", None) or self.pipe.transformer
        mine = denoiser.config.get("cross_attention_dim") or denoiser.config.get("joint_attention_dim")
        theirs = net.config.get("cross_attention_dim") or net.config.get("joint_attention_dim")
        if mine != theirs:
            raise InputError(f"ControlNet {name!r} does not fit model {self.name!r} ({self.family}): it was made for "
                             f"a model with {theirs}-wide text conditioning, this one has {mine}")  # fmt: skip

    def _controlled(self, auto: type, controls: Sequence[Control]) -> tuple[DiffusionPipeline, dict]:
        """The task's ControlNet pipeline (sharing this model's components) and its control inputs."""
        if any(type(c.net).__name__ == "ControlNetUnionModel" for c in controls):
            return self._union(auto, controls)
        one = len(controls) == 1
        net = controls[0].net if one else _several(self.detected.family, [c.net for c in controls])
        pipe = self._task(auto, controlnet=net)

        def each(values: list) -> object:
            return values[0] if one else values

        # Text-to-image SD/SDXL pipelines take the map as `image`; the others (and SD3/FLUX) as `control_image`.
        key = "control_image" if _takes(pipe, "control_image") else "image"
        inputs = {
            key: each([c.image for c in controls]),
            "controlnet_conditioning_scale": each([c.weight for c in controls]),
            "control_guidance_start": each([c.start for c in controls]),
            "control_guidance_end": each([c.end for c in controls]),
        }
        if self.detected.family == "flux" and not one:  # FLUX's img2img/inpaint lose several nets without a mode
            inputs["control_mode"] = [None] * len(controls)  # each: none (a Union net's modes do not apply)
        return pipe, inputs

    def _union(self, auto: type, controls: Sequence[Control]) -> tuple[DiffusionPipeline, dict]:
        """One ControlNet-Union takes every control of the call, a mode each (the kind of its map), with one
        weight and span: diffusers' Union pipelines scale per net, not per map."""
        net, name = controls[0].net, controls[0].name
        if any(c.net is not net for c in controls):
            raise InputError(f"ControlNet-Union {name!r} takes every control of a request (a mode each): "
                             "give them all the same --control_model")  # fmt: skip
        if len({(c.weight, c.start, c.end) for c in controls}) > 1:
            raise InputError(f"ControlNet-Union {name!r} steers its controls with one weight and span: give them "
                             "the same --control_weight, --control_start and --control_end")  # fmt: skip
        modes = []
        for c in controls:
            mode = UNION_MODES.get(c.kind)
            if mode is None:
                raise InputError(f"ControlNet-Union {name!r} steers by what the map shows, and --control_type "
                                 f"{c.kind} does not say it: give one of {', '.join(UNION_MODES)}")  # fmt: skip
            if mode >= net.config.num_control_type:
                raise InputError(f"ControlNet-Union {name!r} has {net.config.num_control_type} modes and none for "
                                 f"{c.kind}")  # fmt: skip
            modes.append(mode)
        if self.detected.family != "sdxl":
            raise InputError(f"ControlNet-Union {name!r} steers SDXL models; this one is {self.family}")
        import diffusers  # AutoPipeline's from_pipe picks the plain ControlNet pipeline for a Union net: by name

        task = {"AutoPipelineForText2Image": "", "AutoPipelineForImage2Image": "Img2Img",
                "AutoPipelineForInpainting": "Inpaint"}[auto.__name__]  # fmt: skip
        pipe = self._task(getattr(diffusers, f"StableDiffusionXLControlNetUnion{task}Pipeline"), controlnet=net)
        return pipe, {"control_image": [c.image for c in controls], "control_mode": modes,
                      "controlnet_conditioning_scale": controls[0].weight,
                      "control_guidance_start": controls[0].start, "control_guidance_end": controls[0].end}  # fmt: skip

    def _inpaint_pipe(self) -> DiffusionPipeline:
        if self._inpaint is None:
            self._inpaint = self._task(auto_pipeline("Inpainting"))
        return self._inpaint

    def _task(self, auto: type, **components) -> DiffusionPipeline:
        try:
            pipe = auto.from_pipe(self.pipe, **components)
        except ValueError as e:  # AutoPipeline has no such task for this family
            raise InputError(f"{self.family} models cannot do this ({e})") from e
        pipe.set_progress_bar_config(disable=True)
        return pipe

    @torch.inference_mode()
    def _run(
        self,
        pipe: DiffusionPipeline,
        *,
        prompt: str | Sequence[str],
        negative_prompt: str | Sequence[str],
        seeds: list[int],
        steps: int,
        cfg_scale: float,
        sampler: Sampler,
        on_step: StepCallback | None = None,
        clip_skip: int = 1,
        tiling: bool = False,
        eta: float | None = None,
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
        # one prompt and negative for all the images, or one each (jobs that share a call)
        prompts_, negatives = ([p] * len(seeds) if isinstance(p, str) else list(p) for p in (prompt, negative_prompt))
        if any(negatives) and self.detected.family == "flux":
            task_inputs["true_cfg_scale"] = cfg_scale  # FLUX's guidance is distilled; a negative needs true CFG
        if self._reference is not None:
            # diffusers takes given embeddings with their unconditional half first when it guides (cfg > 1).
            embeds = self._reference[None].to(self.device.torch_device, self.pipe.dtype)
            negative = torch.zeros_like(embeds) if self._reference_negative is None else self._reference_negative[None]
            # FLUX's guidance is distilled: no unconditional half (its true CFG encodes a black picture itself)
            guided = cfg_scale > 1 and self.detected.family != "flux"
            task_inputs["ip_adapter_image_embeds"] = [torch.cat([negative.to(embeds), embeds]) if guided else embeds]

        if eta is not None:
            if not _takes(pipe, "eta") or sampler != "ddim":
                raise InputError(f"eta applies to the DDIM sampler of SD 1.x/2.x and SDXL models (got {sampler} "
                                 f"on a {self.family} model)")  # fmt: skip
            task_inputs["eta"] = eta

        def step_end(pipe, step: int, timestep, tensors: dict) -> dict:
            if on_step is not None and on_step(step + 1, pipe.num_timesteps, tensors["latents"]):
                pipe._interrupt = True  # diffusers skips the remaining steps and decodes the latents as they are
            return tensors

        with self._clip_skip(clip_skip):
            conditioning = self._conditioning(prompts_, negatives)
        if "negative_prompt" in conditioning and not _takes(pipe, "negative_prompt"):
            raise InputError(
                f"{type(pipe).__name__} takes no negative prompt: leave it out for this {self.family} task"
            )
        with self._tiling(tiling):
            out = pipe(  # type: ignore[operator]  # every DiffusionPipeline subclass defines __call__
                **conditioning,
                num_inference_steps=steps,
                guidance_scale=cfg_scale,
                generator=generators,
                callback_on_step_end=step_end,
                callback_on_step_end_tensor_inputs=["latents"],
                **task_inputs,
            )
        return list(out.images)

    @contextmanager
    def _clip_skip(self, skip: int) -> Iterator[None]:
        """A1111's clip skip: the CLIP text encoders stop `skip - 1` layers early (the encoder's own final norm
        still applies, as A1111 does; SDXL counts back from the penultimate layer it already uses)."""
        if skip == 1:
            yield
            return
        if self.flow:
            raise InputError(f"clip skip applies to the CLIP text encoders of SD 1.x/2.x and SDXL, not {self.family}")
        found = (getattr(self.pipe, "text_encoder", None), getattr(self.pipe, "text_encoder_2", None))
        encoders = [getattr(e, "text_model", e).encoder for e in found if e is not None]  # transformers 4 and 5
        kept = [e.layers for e in encoders]
        if any(skip > len(layers) for layers in kept):
            raise InputError(f"clip skip {skip}: this model's text encoder has {min(map(len, kept))} layers")
        try:
            for encoder, layers in zip(encoders, kept):
                encoder.layers = layers[: len(layers) - (skip - 1)]
            yield
        finally:
            for encoder, layers in zip(encoders, kept):
                encoder.layers = layers

    @contextmanager
    def _tiling(self, on: bool) -> Iterator[None]:
        """Seamless pictures (A1111's tiling): every convolution of the denoiser and the VAE pads circularly, so
        the left edge continues the right one and the top the bottom."""
        if not on:
            yield
            return
        denoiser = getattr(self.pipe, "unet", None) or self.pipe.transformer
        convs = [m for part in (denoiser, self.pipe.vae) for m in part.modules() if isinstance(m, torch.nn.Conv2d)]
        if not convs:
            raise InputError(f"tiling needs a convolutional model; {self.family} has none to wrap around")
        modes = [conv.padding_mode for conv in convs]
        try:
            for conv in convs:
                conv.padding_mode = "circular"
            yield
        finally:
            for conv, mode in zip(convs, modes):
                conv.padding_mode = mode

    def _conditioning(self, prompts_: list[str], negatives: list[str]) -> dict:
        """The pipeline's text inputs for its images, a prompt and a negative each: compel's embeddings (A1111
        weights, past the 77-token window, BREAK) for SD 1.x/2.x/SDXL; the plain text for SD3 and FLUX. Raises
        Unbatchable when the images' embeddings differ in length."""
        pairs = [tuple(prompts.without_embedding_prefix(prompts.parse(p)[0]) for p in pair)
                 for pair in zip(prompts_, negatives, strict=True)]  # fmt: skip
        if self.flow:
            negatives = [negative for _, negative in pairs]
            if any(negatives) and not all(negatives):
                raise Unbatchable(f"{self.family}: a negative prompt changes the whole call's guidance")
            return {"prompt": [p for p, _ in pairs]} | ({"negative_prompt": negatives} if any(negatives) else {})
        if self._encoder is None:
            self._encoder = PromptEncoder(self.pipe, self._embeddings)
        runs = [(pair, len(list(same))) for pair, same in itertools.groupby(pairs)]
        parts = [self._encoder(p, negative, count) for (p, negative), count in runs]
        if len(parts) == 1:
            return parts[0]
        if any(part[key].shape[1:] != parts[0][key].shape[1:] for part in parts for key in part):
            raise Unbatchable("prompts of different lengths (past 77 tokens, or BREAK) cannot share one call")
        return {key: torch.cat([part[key] for part in parts]) for key in parts[0]}

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

    @contextmanager
    def references(self, adapter: Item | None, encoder: Path | None, images: Sequence[Image.Image],
                   weights: Sequence[float], scale: float) -> Iterator[None]:  # fmt: skip
        """Reference pictures for one job (an IP-Adapter, as Midjourney's --sref): each picture's image embedding,
        blended by its weight, steers at `scale`; afterwards the model is exactly as before."""
        if adapter is None or not images:
            yield
            return
        assert adapter.path is not None and encoder is not None
        # diffusers names the image encoder's folder differently for FLUX (XLabs' adapters)
        flux = self.detected.family == "flux"
        where = {"image_encoder_pretrained_model_name_or_path" if flux else "image_encoder_folder": str(encoder)}
        try:
            self.pipe.load_ip_adapter(str(adapter.path.parent), subfolder="", weight_name=adapter.path.name, **where)
        except (ValueError, RuntimeError, KeyError, OSError) as e:
            raise InputError(f"IP-Adapter {adapter.name!r} does not fit this {self.family} model: "
                             f"{str(e).splitlines()[0][:200]}") from e  # fmt: skip
        try:
            self.pipe.set_ip_adapter_scale(scale)
            pixels = self.pipe.feature_extractor([im.convert("RGB") for im in images], return_tensors="pt").pixel_values
            pixels = pixels.to(self.device.torch_device, self.pipe.dtype)
            # Plus reads the encoder's patch tokens (its penultimate layer), the basic one its pooled embedding; Plus
            # guides away from a black picture's tokens, the basic one from zeros (as diffusers' own encoding does).
            denoiser = getattr(self.pipe, "unet", None) or self.pipe.transformer
            projection = denoiser.encoder_hid_proj.image_projection_layers[0]
            plus = type(projection).__name__ == "IPAdapterPlusImageProjection"
            with torch.inference_mode():
                if plus:
                    embeds = self.pipe.image_encoder(pixels, output_hidden_states=True).hidden_states[-2]
                    empty = self.pipe.image_encoder(torch.zeros_like(pixels[:1]), output_hidden_states=True)
                    self._reference_negative = empty.hidden_states[-2]
                else:
                    embeds = self.pipe.image_encoder(pixels).image_embeds
            share = torch.tensor(weights, dtype=embeds.dtype, device=embeds.device)
            share = (share / share.sum()).reshape(-1, *[1] * (embeds.ndim - 1))
            self._reference = (embeds * share).sum(0, keepdim=True)
            yield
        finally:
            self._reference = self._reference_negative = None
            self.pipe.unload_ip_adapter()

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
