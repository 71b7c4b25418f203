"""Sampler names: ours (the 2022 dreambot's, what -A takes) and the ones AUTOMATIC1111 writes in its
`parameters` chunk, so other tools read our PNGs correctly. Plain data: the `!dream` grammar checks -A
against it without loading the request model."""

from __future__ import annotations

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
