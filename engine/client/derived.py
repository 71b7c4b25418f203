"""Requests that start from a gallery image: variations, upscales and the desktop's actions (the one home
of "a request from an image")."""

from __future__ import annotations

from typing import Literal

from engine.client.answers import ImageRecord
from engine.client.samplers import SAMPLER_KEYS
from engine.client.schema import DreamRequest, Mode, Requester, default_of

VARIABLE_MODES = frozenset({"txt2img", "variation"})  # modes whose noise a variation can blend


def derived_request(parent: ImageRecord, *, mode: Mode, requester: Requester, **changes: object) -> DreamRequest:
    """A request that starts from `parent`'s own parameters: the U/V buttons and the desktop's actions."""
    fields: dict[str, object] = {
        "prompt": parent.prompt or "an image",
        "negative_prompt": parent.negative_prompt,
        "seed": parent.seed,
        "width": parent.width,
        "height": parent.height,
        "steps": parent.steps or default_of("steps"),
        "cfg_scale": parent.cfg_scale if parent.cfg_scale is not None else default_of("cfg_scale"),
        "sampler": SAMPLER_KEYS.get(parent.sampler or "", default_of("sampler")),
        "model": parent.model,
        "mode": mode,
        "init_image": f"gallery:{parent.id}",
        "requester": requester,
    }
    return DreamRequest.model_validate({**fields, **changes})


def variation_of(parent: ImageRecord, *, amount: float, n: int, requester: Requester) -> DreamRequest:
    """`n` variations of `parent`: its seed's noise blended with new noise by `amount`."""
    if parent.mode not in VARIABLE_MODES:
        raise ValueError(f"variations blend the noise of a txt2img image; image {parent.id} is {parent.mode}")
    earlier = parent.params.get("with_variations") or None
    return derived_request(parent, mode="variation", requester=requester, n=n, variation_amount=amount,
                           with_variations=earlier)  # fmt: skip


def upscale_of(parent: ImageRecord, *, factor: Literal[2, 4], requester: Requester) -> DreamRequest:
    """`parent` made `factor` times larger."""
    return derived_request(parent, mode="upscale", requester=requester, upscale=factor, width=None, height=None)
