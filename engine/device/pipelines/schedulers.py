"""The classic sampler names -> diffusers schedulers, built from the model's own scheduler config."""

from __future__ import annotations

from diffusers import (
    DDIMScheduler,
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
)

from engine.client.errors import UserError
from engine.client.schema import Sampler

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
