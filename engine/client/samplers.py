"""Sampler names: ours (the 2022 dreambot's, what -A takes) and the ones AUTOMATIC1111 writes in its
`parameters` chunk, so other tools read our PNGs correctly. Plain data: the `!dream` grammar checks -A
against it without loading the request model."""

from __future__ import annotations

from typing import Literal, get_args

# The names -A takes, as a type (the request schema's); SAMPLERS below gives each its A1111 name.
Sampler = Literal[
    "k_lms", "k_euler", "k_euler_a", "k_heun", "k_dpm_2", "k_dpm_2_a", "ddim", "plms", "dpm++_2m", "dpm++_2m_karras"
]
SAMPLERS: dict[str, str] = {
    "k_lms": "LMS",
    "k_euler": "Euler",
    "k_euler_a": "Euler a",
    "k_heun": "Heun",
    "k_dpm_2": "DPM2",
    "k_dpm_2_a": "DPM2 a",
    "ddim": "DDIM",
    "plms": "PLMS",
    "dpm++_2m": "DPM++ 2M",
    "dpm++_2m_karras": "DPM++ 2M Karras",
}
assert set(SAMPLERS) == set(get_args(Sampler)), "one list of samplers: the type and the table name the same ones"

# Sampler names as images record them (AUTOMATIC1111's) back to ours.
SAMPLER_KEYS: dict[str, str] = {display: key for key, display in SAMPLERS.items()}
