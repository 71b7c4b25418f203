"""Requests that start from a gallery image: variations, upscales and the desktop's actions (the one home
of "a request from an image")."""

from __future__ import annotations

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


def upscale_of(parent: ImageRecord, *, factor: float, requester: Requester) -> DreamRequest:
    """`parent` made `factor` times larger."""
    return derived_request(parent, mode="upscale", requester=requester, upscale=factor, width=None, height=None)


# Midjourney's edit loop under a result (the bot's buttons, the desktop's gallery, `dreamhall edit`).
# Vary (Subtle) and Vary (Strong): for an image with seed noise (txt2img, variations) its noise blended with new
# noise by these amounts; for any other (an upscale, an outpaint...) an img2img at these strengths.
VARY_AMOUNTS = {"subtle": 0.15, "strong": 0.5}
VARY_STRENGTHS = {"subtle": 0.35, "strong": 0.7}
ZOOMS = (2.0, 1.5)  # Midjourney's Zoom Out buttons
PAN_SHARE = 0.5  # Pan adds half the picture in that direction (the canvas grows)
PAN_SIDES = ("left", "right", "top", "bottom")
REGION_STRENGTH = 0.85  # Vary (Region): how much of the marked part is repainted


def vary_of(parent: ImageRecord, *, how: str, n: int, requester: Requester) -> DreamRequest:
    """Midjourney's Vary (Subtle) / Vary (Strong) of `parent`: `n` new takes on it."""
    if parent.mode in VARIABLE_MODES and parent.job_id is not None:
        return variation_of(parent, amount=VARY_AMOUNTS[how], n=n, requester=requester)
    return derived_request(parent, mode="img2img", requester=requester, n=n, seed=None, strength=VARY_STRENGTHS[how])


def zoom_out_of(parent: ImageRecord, *, factor: float, requester: Requester) -> DreamRequest:
    """Midjourney's Zoom Out: `parent` shrunk by `factor` inside a painted border, at its own size."""
    return derived_request(parent, mode="outpaint", requester=requester, zoom_out=factor, seed=None)


def pan_of(parent: ImageRecord, *, side: str, requester: Requester) -> DreamRequest:
    """Midjourney's Pan: the canvas grown on one side by half the picture, the new part painted."""
    grow = parent.width if side in ("left", "right") else parent.height
    return derived_request(parent, mode="outpaint", requester=requester, outpaint={side: int(grow * PAN_SHARE)},
                           seed=None)  # fmt: skip


def region_of(parent: ImageRecord, *, mask: str, prompt: str | None, n: int, requester: Requester) -> DreamRequest:
    """Midjourney's Vary (Region): the marked part (`mask`, an uploaded white-on-black picture) repainted."""
    changes: dict[str, object] = {"init_mask": mask, "n": n, "seed": None, "strength": REGION_STRENGTH}
    if prompt:
        changes["prompt"] = prompt
    return derived_request(parent, mode="inpaint", requester=requester, mask_blur=4, **changes)


def box_mask(width: int, height: int, box: tuple[float, float, float, float]) -> bytes:
    """A white-on-black PNG marking `box` (left, top, right, bottom as shares 0–1 of the picture)."""
    import io

    from PIL import Image, ImageDraw

    left, top, right, bottom = box
    if not (0 <= left < right <= 1 and 0 <= top < bottom <= 1):
        raise ValueError("the region must be left,top,right,bottom in percent with left < right and top < bottom")
    mask = Image.new("L", (width, height), 0)
    ImageDraw.Draw(mask).rectangle((left * width, top * height, right * width - 1, bottom * height - 1), fill=255)
    buf = io.BytesIO()
    mask.save(buf, format="PNG")
    return buf.getvalue()
