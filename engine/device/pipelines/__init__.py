"""Diffusers pipelines: loading, schedulers, prompt encoding, the loaded model's tasks, the upscaler, the cache.

    loading.py        a model reference -> a pipeline, offline (folders, single files, hub ids when online)
    schedulers.py     classic sampler names -> diffusers schedulers
    conditioning.py   long and weighted prompts, textual-inversion vectors
    model.py          LoadedModel: txt2img, img2img, inpaint, previews, LoRAs and embeddings per job
    upscaler.py       the configured upscaler pipeline
    cache.py          the models kept loaded within a memory budget

One loader serves every kind of model reference; task pipelines share the loaded model's components.
"""

from __future__ import annotations

from engine.device.pipelines.cache import PipelineCache
from engine.device.pipelines.loading import ModelLoadError, load_pipeline
from engine.device.pipelines.model import LoadedModel, StepCallback, load_model
from engine.device.pipelines.schedulers import SamplerError
from engine.device.pipelines.upscaler import Upscaler, load_upscaler
from engine.device.shelf import builtin_model_dir

__all__ = [
    "LoadedModel",
    "ModelLoadError",
    "PipelineCache",
    "SamplerError",
    "StepCallback",
    "Upscaler",
    "builtin_model_dir",
    "load_model",
    "load_pipeline",
    "load_upscaler",
]
