"""Turning results into what Discord accepts: text within its limits, images within the upload limit."""

from __future__ import annotations

import io

from PIL import Image

from engine.client.answers import Job
from engine.client.samplers import SAMPLERS
from engine.client.schema import DreamRequest, gallery_id

MESSAGE_LIMIT = 2000
ENGINE_DOWN = "The dream engine is not answering right now; try again in a minute."
FIELD_LIMIT = 1024


def clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def describe(job: Job) -> str:
    """The final message: prompt, seeds and parameters, always within Discord's 2000 characters."""
    req = job.request
    seeds = [i.seed for i in job.images]
    seed_text = str(seeds[0]) if len(seeds) == 1 else ", ".join(map(str, seeds))
    size = f"{job.images[0].width}x{job.images[0].height}" if job.images else ""
    params = f"seed {seed_text} · {req.steps} steps · {SAMPLERS[req.sampler]} · cfg {req.cfg_scale:g} · {size}" + (
        f" · model {req.model}" if req.model else ""
    )
    negative = f"\nnegative: {clip(req.negative_prompt, 300)}" if req.negative_prompt else ""
    found = f"\nfound in the gallery, made {job.found:%Y-%m-%d %H:%M} UTC (--fresh draws anew)" if job.found else ""
    head = f"\n{params}{negative}{_lineage(req)}{_controls(req)}{found}"
    return f"**{clip(prompt_of(req), MESSAGE_LIMIT - len(head) - 10)}**{head}"


def prompt_of(req: DreamRequest) -> str:
    """The prompt as shown: a request of reference pictures alone says so."""
    return req.prompt or f"a blend of {len(req.references)} pictures"


def _lineage(req: DreamRequest) -> str:
    """What a derived result came from, e.g. 'variations of #12 (amount 0.25)'."""
    if req.mode == "txt2img" or req.init_image is None:
        return ""
    parent = gallery_id(req.init_image)
    source = f"#{parent}" if parent is not None else "the attached image"
    detail = {
        "variation": f"variations of {source} (amount {req.variation_amount:g})" if req.variation_amount else "",
        "upscale": f"x{req.upscale or 0:g} upscale of {source}",
        "outpaint": f"zoom out x{req.zoom_out:g} of {source}" if req.zoom_out else "",
    }.get(req.mode) or f"{req.mode} of {source}" + (f" (strength {req.strength:g})" if req.strength else "")
    return f"\n{detail}"


def _controls(req: DreamRequest) -> str:
    """The ControlNets that steered a result, e.g. 'control: canny of #12 (weight 0.5)'."""
    lines = []
    for control in req.controls:
        image = gallery_id(control.image)
        source = f"#{image}" if image is not None else "an attached image"
        weight = f" (weight {control.weight:g})" if control.weight != 1 else ""
        lines.append(f"\ncontrol: {control.type} map of {source}{weight}")
    if req.references:
        lines.append(f"\nreferences: {len(req.references)} picture(s), --sw {req.style_weight}")
    return "".join(lines)


def queued_text(request: DreamRequest, position: int | None, seed: int) -> str:
    if position is None:  # answered from the gallery: nothing waits
        return clip(f"Found **{prompt_of(request)}** in the gallery (seed {seed})", MESSAGE_LIMIT)
    where = "next up" if position == 0 else f"position {position + 1} in the queue"
    return clip(f"Dreaming **{prompt_of(request)}** — {where} (seed {seed})", MESSAGE_LIMIT)


def fit_upload(png: bytes, limit: int, name: str) -> tuple[bytes, str]:
    """The image as is if it fits the guild's upload limit, else a smaller JPEG."""
    if len(png) <= limit:
        return png, name
    image = Image.open(io.BytesIO(png)).convert("RGB")
    for scale, quality in ((1.0, 90), (1.0, 75), (0.75, 75), (0.5, 70), (0.35, 60), (0.25, 50)):
        im = (
            image
            if scale == 1.0
            else image.resize((max(1, int(image.width * scale)), max(1, int(image.height * scale))))
        )
        buf = io.BytesIO()
        im.save(buf, format="JPEG", quality=quality)
        if buf.tell() <= limit:
            return buf.getvalue(), name.rsplit(".", 1)[0] + ".jpg"
    raise ValueError(f"the image does not fit the upload limit of {limit} bytes")
