"""The configured upscaler pipeline (SD x4 upscaler, x2 latent upscaler)."""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import (
    DiffusionPipeline,
    StableDiffusionLatentUpscalePipeline,
    StableDiffusionUpscalePipeline,
)
from PIL import Image

from engine.device.device import Device
from engine.device.pipelines.loading import ModelLoadError
from engine.device.pipelines.model import StepCallback


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

        out = self.pipe(  # type: ignore[operator]  # every DiffusionPipeline subclass defines __call__
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
