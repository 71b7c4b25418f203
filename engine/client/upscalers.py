"""Upscaler names: what `--upscaler`, `--hr_upscaler` and A1111's `upscaler_1` / `hr_upscaler` take, in one place.

    None (default)  the engine's own: its configured upscaler pipeline (settings `upscaler`), else a Lanczos
                    resample followed by an img2img detail pass at low strength
    Lanczos         a plain Lanczos resample, nothing generated (A1111's "Lanczos")
    Nearest         a plain nearest-neighbour resample (A1111's "Nearest")
    Detail          Lanczos, then the img2img detail pass (the default without an upscaler pipeline)

Any other name (A1111's "ESRGAN_4x", "R-ESRGAN 4x+", "Latent"...) is the configured pipeline when it is
that pipeline's name, else the engine's default, and the image's `upscaler` note says which ran and why.
Plain data: the grammar and the A1111 router read it without torch.
"""

from __future__ import annotations

RESAMPLERS: tuple[str, ...] = ("Lanczos", "Nearest")
DETAIL = "Detail"
NAMED: tuple[str, ...] = (*RESAMPLERS, DETAIL)
MIN_FACTOR, MAX_FACTOR = 1.0, 4.0  # an upscale's factor: 1 returns the image as it is, as A1111 does


def canonical(name: str | None) -> str | None:
    """A name as the table spells it ("lanczos" -> "Lanczos"); other names unchanged."""
    if name is None:
        return None
    return next((n for n in NAMED if n.lower() == name.strip().lower()), name.strip())


def is_resample(name: str | None) -> bool:
    return canonical(name) in RESAMPLERS
