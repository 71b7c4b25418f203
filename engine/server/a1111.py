"""AUTOMATIC1111's `/sdapi/v1`, spoken over the same job service as the native API.

Every generation made here is an ordinary job: fairly queued, stored in the gallery with source
`a1111`, searchable and cancelable from any frontend. Only what differs is here: A1111's field
names and sampler names in, its `images` / `parameters` / `info` out, and its error shape.

Over 450 lines on purpose: it is one job, one foreign protocol's translation (its bodies, their mapping
to a `DreamRequest`, its answers and its routes), and a reader checking it against A1111's API wants it
on one page.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import io
import json
import re
from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from PIL import Image, ImageOps
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from engine.client import upscalers
from engine.client.answers import Job, ModelEntry
from engine.client.controls import A1111_MODULES, A1111_RESIZE
from engine.client.dream_args import explain
from engine.client.samplers import SAMPLER_KEYS, SAMPLERS
from engine.client.schema import DreamRequest, Requester, Scope
from engine.server.blocking import finished
from engine.server.describing import describe_picture
from engine.server.services import Services
from gallery.files import BadImage

PREFIX = "/sdapi/v1"
SOURCE = "a1111"
# Every field A1111 honours is honoured here or named in the answer's `info.warnings` (restore_faces without a
# face restorer, other scripts, other settings): nothing a client asks for is dropped without a word.
# The sampler options A1111 passes to k-diffusion, at their no-op values (what webuiapi sends by default).
NEUTRAL_SAMPLER_OPTIONS = {"s_churn": 0.0, "s_tmin": 0.0, "s_noise": 1.0}
FACE_RESTORER_DIRS = ("GFPGAN", "Codeformer")
HONOURED_SETTINGS = {"sd_model_checkpoint", "CLIP_stop_at_last_layers"}


class A1111Error(Exception):
    """One sentence for an A1111 client, with the status A1111 would use."""

    def __init__(self, message: str, status: int = 422) -> None:
        super().__init__(message)
        self.status = status


class A1111ErrorBody(BaseModel):
    """A1111's error shape."""

    error: str
    detail: str
    body: str
    errors: str


def error_body(message: str, status: int, kind: str = "HTTPException") -> JSONResponse:
    body = A1111ErrorBody(error=kind, detail=message, body="", errors=message)
    return JSONResponse(body.model_dump(), status_code=status)


class _Body(BaseModel):
    model_config = ConfigDict(extra="allow")  # the fields of A1111's extensions are not ours to refuse

    prompt: str = ""
    negative_prompt: str = ""
    seed: int = -1
    subseed: int = -1
    subseed_strength: float = 0.0
    sampler_name: str | None = None
    sampler_index: str | None = None
    scheduler: str | None = None
    steps: int = 20
    cfg_scale: float = 7.0
    width: int | None = None  # the model's own size (A1111 says 512, which is only SD 1.x's)
    height: int | None = None
    batch_size: int = Field(default=1, ge=1)
    n_iter: int = Field(default=1, ge=1)
    override_settings: dict[str, Any] = Field(default_factory=dict)
    send_images: bool = True
    styles: list[str] | None = None
    restore_faces: bool | None = False
    tiling: bool | None = False
    clip_skip: int | None = None  # SillyTavern's; A1111 itself takes override_settings.CLIP_stop_at_last_layers
    eta: float | None = None
    s_churn: float | None = None
    s_tmin: float | None = None
    s_tmax: float | None = None
    s_noise: float | None = None
    seed_resize_from_w: int = -1
    seed_resize_from_h: int = -1
    script_name: str | None = None

    def common_fields(self) -> dict[str, Any]:
        """The request fields every A1111 body maps to the same way."""
        fields: dict[str, Any] = {"styles": tuple(self.styles or ()), "tiling": bool(self.tiling)}
        skip = self.override_settings.get("CLIP_stop_at_last_layers", self.clip_skip)
        if skip is not None:
            fields["clip_skip"] = skip
        if self.seed_resize_from_w > 0 and self.seed_resize_from_h > 0:
            fields["seed_resize_from"] = (self.seed_resize_from_w, self.seed_resize_from_h)
        return fields

    def warnings(self, shelf_dir: Any) -> list[str]:
        """What this engine cannot honour of the body, each in one sentence (the answer's `info.warnings`)."""
        out = []
        if self.restore_faces and (shelf_dir is None or not any((shelf_dir / d).is_dir() for d in FACE_RESTORER_DIRS)):
            out.append("restore_faces: no face restorer on this engine's shelf (models/GFPGAN or models/Codeformer); "
                       "faces are as the model drew them")  # fmt: skip
        elif self.restore_faces:
            out.append("restore_faces: this engine does not run face restorers yet; faces are as the model drew them")
        for name, neutral in NEUTRAL_SAMPLER_OPTIONS.items():
            value = getattr(self, name)
            if value is not None and value != neutral:
                out.append(f"{name}: the samplers here do not take it; sampled as with {name}={neutral:g}")
        if self.eta is not None and self.eta != 1 and sampler_key(self.sampler_name or self.sampler_index,
                                                                   self.scheduler) != "ddim":  # fmt: skip
            out.append("eta: only the DDIM sampler takes it here; ancestral samplers sampled as with eta=1")
        for key in sorted(set(self.override_settings) - HONOURED_SETTINGS):
            out.append(f"override_settings.{key}: not a setting of this engine; left as it is")
        if self.script_name:
            out.append(f"script_name: script {self.script_name!r} is not on this engine; nothing ran it")
        scripts = (self.model_extra or {}).get("alwayson_scripts") or {}
        for name in scripts if isinstance(scripts, dict) else ():
            if str(name).lower() != "controlnet" and scripts[name]:
                out.append(f"alwayson_scripts.{name}: not on this engine; nothing ran it")
        return out


class Txt2ImgBody(_Body):
    enable_hr: bool = False
    denoising_strength: float | None = None  # the hires pass's (0.7 without one)
    hr_scale: float = 2.0
    hr_upscaler: str | None = None
    hr_second_pass_steps: int = 0
    hr_resize_x: int = 0
    hr_resize_y: int = 0
    hr_prompt: str = ""
    hr_negative_prompt: str = ""
    hr_checkpoint_name: str | None = None
    hr_sampler_name: str | None = None
    firstphase_width: int = 0
    firstphase_height: int = 0

    def hires(self) -> dict[str, Any] | None:
        if not self.enable_hr:
            return None
        return {
            "scale": self.hr_scale, "steps": self.hr_second_pass_steps, "upscaler": self.hr_upscaler or "Lanczos",
            "strength": 0.7 if self.denoising_strength is None else self.denoising_strength,
            "width": self.hr_resize_x or None, "height": self.hr_resize_y or None,
            "prompt": self.hr_prompt or None, "negative_prompt": self.hr_negative_prompt or None,
        }  # fmt: skip

    def warnings(self, shelf_dir: Any) -> list[str]:
        out = super().warnings(shelf_dir)
        if self.enable_hr and self.hr_checkpoint_name not in (None, "", "Use same checkpoint"):
            out.append("hr_checkpoint_name: the hires pass runs on the first pass's model here")
        if self.enable_hr and self.hr_sampler_name not in (None, "", "Use same sampler", self.sampler_name):
            out.append("hr_sampler_name: the hires pass runs with the first pass's sampler here")
        if self.enable_hr and self.hr_upscaler and not upscalers.is_resample(self.hr_upscaler):
            out.append(f"hr_upscaler: {self.hr_upscaler!r} is not on this engine; the hires fix upscaled with Lanczos")
        if self.firstphase_width or self.firstphase_height:
            out.append("firstphase_width/height: the old hires fix's sizes; use width/height and hr_scale")
        return out


class Img2ImgBody(_Body):
    init_images: list[str] = Field(default_factory=list)
    denoising_strength: float = 0.75
    mask: str | None = None
    inpainting_mask_invert: int = 0
    resize_mode: int = Field(default=0, ge=0, le=3)  # just resize, crop and resize, resize and fill, latent
    # A1111's API defaults (its UI's differ: "whole picture", "original")
    mask_blur: int | None = None
    mask_blur_x: int = 4
    mask_blur_y: int = 4
    inpainting_fill: int = Field(default=0, ge=0, le=3)  # fill, original, latent noise, latent nothing
    inpaint_full_res: bool = True
    inpaint_full_res_padding: int = Field(default=0, ge=0)

    def mask_fields(self) -> dict[str, Any]:
        return {
            "mask_blur": self.mask_blur if self.mask_blur is not None else max(self.mask_blur_x, self.mask_blur_y),
            "inpaint_fill": INPAINTING_FILLS[self.inpainting_fill], "inpaint_full_res": self.inpaint_full_res,
            "inpaint_padding": self.inpaint_full_res_padding,
        }  # fmt: skip


INPAINTING_FILLS = ("fill", "original", "noise", "nothing")  # A1111's inpainting_fill by number


class ControlNetUnitBody(BaseModel):
    """One unit of `alwayson_scripts.controlnet.args`, as the ControlNet extension takes it (webuiapi's
    ControlNetUnit.to_dict). `low_vram` and `hr_option` are memory and hires-pass hints that change nothing here."""

    model_config = ConfigDict(extra="allow")

    enabled: bool = True
    image: str | dict | None = None  # base64, or {"image": ..., "mask": ...}
    input_image: str | None = None  # the older name
    mask: str | None = None
    module: str = "none"
    model: str = "None"
    weight: float = 1.0
    resize_mode: str | int = "Crop and Resize"
    processor_res: int = 512
    threshold_a: float = -1
    threshold_b: float = -1
    guidance_start: float = 0.0
    guidance_end: float = 1.0
    control_mode: str | int = "Balanced"
    pixel_perfect: bool = False


class DetectBody(BaseModel):
    """POST /controlnet/detect."""

    model_config = ConfigDict(extra="allow")

    controlnet_module: str = "none"
    controlnet_input_images: list[str] = Field(default_factory=list)
    controlnet_images: list[str] = Field(default_factory=list)  # webuiapi's name
    controlnet_processor_res: int = 512
    controlnet_threshold_a: float = -1
    controlnet_threshold_b: float = -1


# The extension's module names (and a few aliases its UI shows) -> our control types.
MODULE_TYPES: dict[str, str] = {a: t for t, a in A1111_MODULES.items()} | {
    "softedge_pidinet": "softedge", "softedge_hedsafe": "softedge", "hed": "softedge", "pidinet": "softedge",
    "tile_colorfix": "tile", "blur_gaussian": "tile", "invert (from white bg & black line)": "invert",
    "depth": "depth", "depth_zoe": "depth", "openpose_full": "openpose", "lineart": "lineart",
}  # fmt: skip
IP_ADAPTER_MODULE = "ip-adapter"  # its modules (ip-adapter_clip_sd15, ...) are reference pictures here
RESIZE_BY_NUMBER = ("Just Resize", "Crop and Resize", "Resize and Fill")  # its integer resize modes
CONTROL_MODES = ("Balanced", "My prompt is more important", "ControlNet is more important")


def control_type(module: str) -> str:
    key = module.strip().lower()
    if key not in MODULE_TYPES:
        raise A1111Error(
            f"ControlNet module {module!r} is not available here; use one of: {', '.join(A1111_MODULES.values())}"
        )
    return MODULE_TYPES[key]


def controlnet_units(body: _Body) -> list[ControlNetUnitBody]:
    """The enabled units of `alwayson_scripts.controlnet` (A1111 matches script names case-blind)."""
    scripts = (body.model_extra or {}).get("alwayson_scripts") or {}
    if not isinstance(scripts, dict):
        raise A1111Error("alwayson_scripts must be an object of script names")
    script = next((v for k, v in scripts.items() if str(k).lower() == "controlnet"), None)
    if not script:
        return []
    args = script.get("args", []) if isinstance(script, dict) else script
    if not isinstance(args, list):
        raise A1111Error("alwayson_scripts.controlnet.args must be a list of units")
    try:
        units = [ControlNetUnitBody.model_validate(a) for a in args]
    except ValidationError as e:
        raise A1111Error(f"alwayson_scripts.controlnet: {explain(e)}") from None
    return [u for u in units if u.enabled and (u.image or u.input_image)]


def _named(value: str | int, names: tuple[str, ...]) -> str:
    """The extension takes its enums by name or by number."""
    return value if isinstance(value, str) else names[value] if 0 <= value < len(names) else str(value)


async def control_fields(s: Services, units: list[ControlNetUnitBody], size: tuple[int, int] | None) -> dict:
    """The request fields of the extension's units: ControlNet units as our controls; IP-Adapter units
    (`ip-adapter*` modules) as reference pictures, steering at the first one's weight. Each image is uploaded."""
    controls, references, style_weight = [], [], None
    for i, unit in enumerate(units):
        what = f"alwayson_scripts.controlnet.args[{i}]"
        picture = unit.image.get("image") if isinstance(unit.image, dict) else unit.image or unit.input_image
        if unit.mask or (isinstance(unit.image, dict) and unit.image.get("mask")):
            raise A1111Error(f"{what}.mask: a unit's own mask is not supported here; inpaint with img2img's mask")
        mode = _named(unit.control_mode, CONTROL_MODES)
        if mode != "Balanced":
            raise A1111Error(f"{what}.control_mode: only 'Balanced' is supported here (got {mode!r})")
        resize = _named(unit.resize_mode, RESIZE_BY_NUMBER)
        if resize not in A1111_RESIZE:
            raise A1111Error(f"{what}.resize_mode: one of {', '.join(A1111_RESIZE)} (got {resize!r})")
        data = decode_b64_image(str(picture), f"{what}.image")
        if unit.module.strip().lower().startswith(IP_ADAPTER_MODULE):
            references.append({"image": await asyncio.to_thread(upload, s, data)})
            style_weight = round(unit.weight * 100) if style_weight is None else style_weight
            continue
        type_ = control_type(unit.module)
        # The extension runs a preprocessor at processor_res (the short side); pixel perfect: the output's.
        res = min(size) if unit.pixel_perfect and size else unit.processor_res
        if type_ != "none" and res > 0:
            data = await asyncio.to_thread(at_short_side, data, res)
        controls.append({
            "image": await asyncio.to_thread(upload, s, data), "type": type_,
            "model": None if unit.model in ("None", "") else checkpoint_name(unit.model),
            "weight": unit.weight, "start": unit.guidance_start, "end": unit.guidance_end,
            "resize": A1111_RESIZE[resize],
            "threshold_a": unit.threshold_a if unit.threshold_a >= 0 and type_ == "canny" else None,
            "threshold_b": unit.threshold_b if unit.threshold_b >= 0 and type_ == "canny" else None,
        })  # fmt: skip
    fields: dict[str, Any] = {"controls": controls}
    if references:
        fields |= {"references": references, "style_weight": style_weight}
    return fields


class ExtraBody(BaseModel):
    model_config = ConfigDict(extra="allow")

    image: str
    resize_mode: int = Field(default=0, ge=0, le=1)  # 0: by upscaling_resize, 1: to upscaling_resize_w x _h
    upscaling_resize: float = 2
    upscaling_resize_w: int = Field(default=512, ge=1)
    upscaling_resize_h: int = Field(default=512, ge=1)
    upscaler_1: str | None = None
    upscaler_2: str | None = None
    extras_upscaler_2_visibility: float = 0
    gfpgan_visibility: float = 0
    codeformer_visibility: float = 0


class ImageBody(BaseModel):
    model_config = ConfigDict(extra="allow")

    image: str


SCHEDULERS = ("automatic", "normal", "karras")  # "normal" is SillyTavern's default; both mean the sampler's own


def sampler_key(name: str | None, scheduler: str | None) -> str:
    """Our sampler for A1111's name ("Euler a", "DPM++ 2M" + scheduler "Karras", or our own key)."""
    if name is None:
        return "k_euler_a"
    key = name if name in SAMPLERS else SAMPLER_KEYS.get(name)
    if key is None:
        raise A1111Error(f"sampler {name!r} is not available here; use one of: {', '.join(SAMPLER_KEYS)}")
    scheduler = (scheduler or "automatic").lower()
    if scheduler not in SCHEDULERS:
        raise A1111Error(f"scheduler {scheduler!r} is not available here; use one of: {', '.join(SCHEDULERS)}")
    if scheduler == "karras" and not key.endswith("_karras"):
        if f"{key}_karras" not in SAMPLERS:
            with_karras = ", ".join(SAMPLERS[k] for k in SAMPLERS if f"{k}_karras" in SAMPLERS)
            raise A1111Error(f"scheduler 'karras' goes with sampler {with_karras} here (got {name!r})")
        key += "_karras"
    return key


def basic_auth(header: bytes) -> tuple[bytes, bytes] | None:
    """(user, password) of an `Authorization: Basic ...` header, or None."""
    if header[:6].lower() != b"basic ":
        return None
    try:
        user, _, password = base64.b64decode(header[6:], validate=True).partition(b":")
    except (binascii.Error, ValueError):
        return None
    return user, password


def decode_b64_image(value: str, what: str) -> bytes:
    """Base64 or a data: URL, as A1111 accepts them."""
    data = value.split(",", 1)[1] if value.startswith("data:") else value
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise A1111Error(f"{what} is not base64 image data") from None


def checkpoint_name(title: str) -> str:
    """A shelf name from A1111's checkpoint title ("name.safetensors [hash]" or just "name")."""
    title = re.sub(r"\s*\[[0-9a-fA-F]+\]$", "", title.strip())
    return re.sub(r"\.(safetensors|ckpt)$", "", title)


class A1111:
    """The routes' state: each client's chosen model (`options.sd_model_checkpoint`)."""

    def __init__(self) -> None:
        self.models: dict[str, str] = {}

    @staticmethod
    def client(request: Request) -> str:
        """Who is asking: the Basic auth user name, else one shared A1111 client."""
        credentials = basic_auth(request.headers.get("authorization", "").encode())
        return credentials[0].decode(errors="replace") or SOURCE if credentials else SOURCE

    def to_request(self, s: Services, body: _Body, client: str, **mode: Any) -> DreamRequest:
        model = body.override_settings.get("sd_model_checkpoint") or self.models.get(client)
        fields: dict[str, Any] = dict(
            prompt=body.prompt, negative_prompt=body.negative_prompt, n=body.batch_size * body.n_iter,
            seed=None if body.seed < 0 else body.seed, steps=body.steps, cfg_scale=body.cfg_scale,
            width=body.width, height=body.height, sampler=sampler_key(body.sampler_name or body.sampler_index,
                                                                      body.scheduler),
            model=checkpoint_name(model) if model else None, preview=True,
            requester=Requester(source=SOURCE, user=client), **body.common_fields(),
        )  # fmt: skip
        if body.eta is not None and fields["sampler"] == "ddim":
            fields["eta"] = body.eta
        if body.subseed_strength > 0 and mode.get("mode") is None:
            fields.update(mode="variation", variation_amount=min(1.0, body.subseed_strength),
                          variation_seed=None if body.subseed < 0 else body.subseed)  # fmt: skip
        fields.update(mode)
        if fields["n"] > s.settings.max_n:
            raise A1111Error(f"batch_size x n_iter: at most {s.settings.max_n} images per request (got {fields['n']})")
        try:
            return DreamRequest(**fields)
        except ValidationError as e:
            raise A1111Error(explain(e)) from None

    def answer(self, s: Services, body: _Body, job: Job) -> dict:
        """A1111's `images`, `parameters` and `info` (a JSON string) for a finished job: an interrupted one
        answers its images as far as they got, as A1111 does."""
        if job.status == "failed":
            raise A1111Error(job.error or "the job failed", 500)
        records = [s.store.get(i.id) for i in job.images]
        files = [s.store.file_path(r).read_bytes() for r in records]
        infotexts = [Image.open(io.BytesIO(f)).info.get("parameters", "") for f in files]
        seeds = [r.seed for r in records]
        subseeds = [i.variation_seed if i.variation_seed is not None else body.subseed for i in job.images]
        first = records[0] if records else None
        prompts = [r.prompt for r in records] or [body.prompt]
        negatives = [r.negative_prompt for r in records] or [body.negative_prompt]
        req = job.request
        info: dict[str, Any] = {
            "prompt": prompts[0], "all_prompts": prompts,
            "negative_prompt": negatives[0], "all_negative_prompts": negatives,
            "seed": seeds[0] if seeds else body.seed, "all_seeds": seeds,
            "subseed": subseeds[0] if subseeds else body.subseed, "all_subseeds": subseeds,
            "subseed_strength": body.subseed_strength, "width": first.width if first else body.width,
            "height": first.height if first else body.height, "sampler_name": SAMPLERS[job.request.sampler],
            "cfg_scale": body.cfg_scale, "steps": body.steps, "batch_size": body.batch_size,
            "restore_faces": False, "face_restoration_model": None,
            "sd_model_name": first.model if first else None,
            "sd_model_hash": first.params.get("model_hash") if first else None,
            "seed_resize_from_w": req.seed_resize_from[0] if req.seed_resize_from else -1,
            "seed_resize_from_h": req.seed_resize_from[1] if req.seed_resize_from else -1,
            "denoising_strength": req.hires.strength if req.hires else req.strength,
            "extra_generation_params": {"Hires upscale": req.hires.scale} if req.hires else {},
            "index_of_first_image": 0, "infotexts": infotexts, "styles": list(req.styles),
            "job_timestamp": job.created_at.strftime("%Y%m%d%H%M%S"), "clip_skip": req.clip_skip,
            "is_using_inpainting_conditioning": False,
            "interrupted": job.status == "cancelled" or any(r.params.get("interrupted") for r in records),
            "warnings": body.warnings(s.shelf.root),
        }  # fmt: skip
        images = [base64.b64encode(f).decode() for f in files] if body.send_images else []
        return {"images": images, "parameters": body.model_dump(), "info": json.dumps(info)}


# The `/sdapi/v1` routes. Errors come back in A1111's shape (engine.server.errors answers them so here).
router = APIRouter(
    prefix=PREFIX,
    tags=["AUTOMATIC1111"],
    responses={status: {"model": A1111ErrorBody} for status in (401, 413, 422, 429, 500)},
)


def _services(request: Request) -> Services:
    return request.app.state.services  # Starlette's app.state is untyped


def _state(request: Request) -> A1111:
    """The routes' state, one per app (engine.server.http makes it)."""
    return request.app.state.a1111


@router.post("/txt2img")
async def txt2img(body: Txt2ImgBody, request: Request) -> dict:
    s = _services(request)
    size = (body.width, body.height) if body.width and body.height else None
    mode: dict[str, Any] = {"hires": body.hires()}
    if units := controlnet_units(body):
        mode |= await control_fields(s, units, size)
    job = await finished(s, _state(request).to_request(s, body, A1111.client(request), **mode))
    return _state(request).answer(s, body, job)


@router.post("/img2img")
async def img2img(body: Img2ImgBody, request: Request) -> dict:
    s = _services(request)
    if not body.init_images:
        raise A1111Error("init_images: give at least one image (base64 or a data: URL)")
    size = (body.width, body.height) if body.width and body.height else None
    init = decode_b64_image(body.init_images[0], "init_images[0]")
    ref = await asyncio.to_thread(upload, s, resized(init, size, body.resize_mode))
    mode: dict[str, Any] = {"mode": "img2img", "init_image": ref, "strength": body.denoising_strength}
    if body.mask is not None:
        mask = decode_b64_image(body.mask, "mask")
        mask = resized(mask, size, body.resize_mode, invert=body.inpainting_mask_invert)
        mode.update(mode="inpaint", init_mask=await asyncio.to_thread(upload, s, mask), **body.mask_fields())
    if units := controlnet_units(body):
        mode |= await control_fields(s, units, size)
    job = await finished(s, _state(request).to_request(s, body, A1111.client(request), **mode))
    return _state(request).answer(s, body, job)


@router.post("/extra-single-image")
async def extra_single_image(body: ExtraBody, request: Request) -> dict:
    """A1111's Extras upscale: by any factor in [1, 4] (1 answers the image as it is), by the named upscaler
    (`None`: the engine's own; what ran is said in `html_info`)."""
    s = _services(request)
    data = decode_b64_image(body.image, "image")
    factor = body.upscaling_resize
    if body.resize_mode == 1:  # to a size: the factor that covers it, as A1111 does, then the exact size
        with Image.open(io.BytesIO(data)) as probe:
            factor = max(body.upscaling_resize_w / probe.width, body.upscaling_resize_h / probe.height)
    if not upscalers.MIN_FACTOR <= factor <= upscalers.MAX_FACTOR:
        raise A1111Error(f"upscaling_resize: this engine upscales by 1 to 4 (got {factor:g})")
    init = await asyncio.to_thread(upload, s, data)
    name = None if body.upscaler_1 in (None, "", "None") else body.upscaler_1
    try:
        request_ = DreamRequest(mode="upscale", init_image=init, upscale=factor, upscaler=name,
                                requester=Requester(source=SOURCE, user=A1111.client(request)))  # fmt: skip
    except ValidationError as e:
        raise A1111Error(explain(e)) from None
    job = await finished(s, request_)
    if job.status != "done" or not job.images:
        raise A1111Error(job.error or f"the upscale {job.status}", 500)
    record = s.store.get(job.images[0].id)
    data = s.store.file_path(record).read_bytes()
    notes = [f"Upscaler: {record.params.get('upscaler')}"]
    if body.upscaler_2 not in (None, "", "None") and body.extras_upscaler_2_visibility > 0:
        notes.append("upscaler_2: a second upscaler is not blended in here")
    if body.gfpgan_visibility > 0 or body.codeformer_visibility > 0:
        notes.append("gfpgan/codeformer: no face restorer on this engine")
    if body.resize_mode == 1:
        with Image.open(io.BytesIO(data)) as made:
            if made.size != (body.upscaling_resize_w, body.upscaling_resize_h):
                image = ImageOps.fit(made, (body.upscaling_resize_w, body.upscaling_resize_h), Image.Resampling.LANCZOS)
                buf = io.BytesIO()
                image.save(buf, format="PNG", pnginfo=_png_text(made.info))
                data = buf.getvalue()
    return {"image": base64.b64encode(data).decode(), "html_info": "<p>" + "<br>".join(notes) + "</p>"}


def _png_text(info: dict) -> Any:
    from PIL import PngImagePlugin

    meta = PngImagePlugin.PngInfo()
    for key, value in info.items():
        if isinstance(key, str) and isinstance(value, str):
            meta.add_text(key, value)
    return meta


@router.post("/png-info")
def png_info(body: ImageBody) -> dict:
    from gallery.importers import read_metadata

    try:
        image = Image.open(io.BytesIO(decode_b64_image(body.image, "image")))
        chunks = {k: v for k, v in image.info.items() if isinstance(k, str) and isinstance(v, str)}
    except OSError:
        raise A1111Error("image is not a picture this engine can read") from None
    tool, fields, _ = read_metadata(chunks)
    text = chunks.get("parameters", "")
    items = {k: v for k, v in chunks.items() if k != "parameters"}
    return {"info": text, "items": items, "parameters": {"tool": tool, **fields}}


class InterrogateBody(ImageBody):
    model: str = "clip"


@router.post("/interrogate")
async def interrogate(body: InterrogateBody, request: Request) -> dict:
    """`clip`: the best prompt `describe` finds for the picture (vocabularies ranked by CLIP, and the prompts of
    the nearest gallery images); `deepdanbooru`: its best terms as comma-separated tags."""
    s = _services(request)
    if body.model not in ("clip", "deepdanbooru"):
        raise A1111Error(f"model: interrogate with clip or deepdanbooru here (got {body.model!r})")
    try:
        image = Image.open(io.BytesIO(decode_b64_image(body.image, "image"))).convert("RGB")
    except OSError:
        raise A1111Error("image is not a picture this engine can read") from None
    described = await asyncio.to_thread(describe_picture, s, image, Scope())
    if body.model == "deepdanbooru":
        return {"caption": ", ".join(terms[0].term for terms in described.terms.values() if terms)}
    return {"caption": described.prompts[0] if described.prompts else ""}


@router.get("/options")
def get_options(request: Request) -> dict:
    s = _services(request)
    name = _state(request).models.get(A1111.client(request)) or s.default_model()
    model = next((m for m in s.shelf.listing().checkpoints if m.name == name), None)
    # The title, as sd-models lists it: clients compare the two (Open WebUI) and post it back.
    return {"sd_model_checkpoint": title(model) if model else name, "samples_format": "png",
            "sd_checkpoint_hash": model.hash if model else None}  # fmt: skip


@router.post("/options")
def set_options(options: dict[str, Any], request: Request) -> None:
    s = _services(request)
    if "sd_model_checkpoint" in options:
        name = checkpoint_name(str(options["sd_model_checkpoint"]))
        s.shelf.check_model(name, SOURCE)
        _state(request).models[A1111.client(request)] = name


@router.get("/sd-models")
def sd_models(request: Request) -> list[dict]:
    listing = _services(request).shelf.listing()
    return [{"title": title(m), "model_name": m.name, "hash": m.hash,
             "sha256": None, "filename": m.filename or m.name, "config": None}
            for m in listing.checkpoints if m.problem is None]  # fmt: skip


@router.get("/samplers")
def samplers() -> list[dict]:
    return [{"name": display, "aliases": [key], "options": {}} for key, display in SAMPLERS.items()]


@router.get("/schedulers")
def schedulers() -> list[dict]:
    return [{"name": name, "label": name.title(), "aliases": None, "default_rho": 7.0 if name == "karras" else -1,
             "need_inner_model": False} for name in SCHEDULERS]  # fmt: skip


@router.get("/upscalers")
def list_upscalers(request: Request) -> list[dict]:
    """A1111's upscaler list: None (the engine's own), the plain resamples, the detail pass, and the configured
    upscaler pipeline when there is one."""
    s = _services(request)
    names = ["None", *upscalers.NAMED] + ([s.settings.upscaler] if s.settings.upscaler else [])
    return [{"name": n, "model_name": None, "model_path": None, "model_url": None, "scale": 4} for n in names]


@router.get("/loras")
def loras(request: Request) -> list[dict]:
    listing = _services(request).shelf.listing()
    return [{"name": m.name, "alias": m.name, "path": m.name, "metadata": {}} for m in listing.loras]


@router.get("/embeddings")
def embeddings(request: Request) -> dict:
    listing = _services(request).shelf.listing()
    loaded = {m.name: {"step": None, "sd_checkpoint": None, "sd_checkpoint_name": None, "shape": m.width,
                       "vectors": m.vectors} for m in listing.embeddings}  # fmt: skip
    return {"loaded": loaded, "skipped": {}}


@router.get("/scripts")
def scripts() -> dict:
    return {"txt2img": [], "img2img": []}


for path in ("latent-upscale-modes", "sd-vae", "sd-modules", "face-restorers"):
    router.add_api_route(f"/{path}", lambda: [], methods=["GET"], name=path)


@router.get("/prompt-styles")
def prompt_styles(request: Request) -> list[dict]:
    """The styles of the engine's styles.csv, as A1111 lists them."""
    return [{"name": st.name, "prompt": st.prompt, "negative_prompt": st.negative_prompt}
            for st in _services(request).prompting.styles()]  # fmt: skip


@router.get("/cmd-flags")
def cmd_flags() -> dict:
    return {"api": True, "nowebui": True, "api_auth": "token"}


@router.get("/progress")
def progress(request: Request) -> dict:
    s = _services(request)
    if s.backend is None:  # A1111 always answers progress: clients poll it until idle (webuiapi, SillyTavern)
        return {
            "progress": 0.0, "eta_relative": 0.0, "textinfo": "engine starting",
            "state": {"skipped": False, "interrupted": False, "job": "", "job_count": s.queue.count("queued"),
                      "job_timestamp": "", "job_no": 0, "sampling_step": 0, "sampling_steps": 0},
            "current_image": None,
        }  # fmt: skip
    jobs = s.workers.running()
    client = A1111.client(request)
    mine = {r.id for r in s.queue.jobs("running") if r.request.requester.user == client}
    running = next((j for j in jobs if j in mine), jobs[0] if jobs else None)  # this client's, else any
    progress = s.workers.progress_of(running) if running else None
    step, total = (progress.step, progress.total) if progress else (0, 0)
    preview = s.workers.preview_of(running) if running else None
    fraction = step / total if total else 0.0
    started = s.jobs.get(running).started_at if running else None
    elapsed = (datetime.now(UTC) - started).total_seconds() if started else 0.0
    eta = elapsed / fraction - elapsed if fraction > 0 else 0.0
    return {
        "progress": fraction, "eta_relative": eta, "textinfo": None,
        "state": {"skipped": False, "interrupted": False, "job": running or "", "job_count":
                  s.queue.count("queued") + len(jobs), "job_timestamp": "", "job_no": 0,
                  "sampling_step": step, "sampling_steps": total},
        "current_image": preview.split(",", 1)[1] if preview else None,
    }  # fmt: skip


@router.post("/interrupt")
def interrupt(request: Request) -> None:
    """Stop this client's running job at its next step (A1111 has one job at a time; we have a queue)."""
    s = _services(request)
    client = A1111.client(request)
    for job in s.jobs.queue_state().running:
        if job.request.requester.source == SOURCE and job.request.requester.user == client:
            s.jobs.interrupt(job.id)  # its images as far as they got, as A1111 answers


router.add_api_route("/skip", interrupt, methods=["POST"], name="skip")


def title(model: ModelEntry) -> str:
    """A1111's checkpoint title: "name [hash]"."""
    return f"{model.name} [{model.hash}]" if model.hash else model.name


def at_short_side(data: bytes, side: int) -> bytes:
    """The picture scaled so its shorter side is `side` (the extension's processor resolution)."""
    try:
        image = Image.open(io.BytesIO(data))
        image.load()
    except OSError as e:
        raise A1111Error(f"not an image this engine can read: {e}") from None
    scale = side / min(image.size)
    if scale == 1:
        return data
    image = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))),
                         Image.Resampling.LANCZOS)  # fmt: skip
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def upload(s: Services, data: bytes) -> str:
    try:
        return s.inputs.save_upload(data).ref
    except BadImage as e:
        raise A1111Error(f"not an image this engine can read: {e}") from None


def resized(data: bytes, size: tuple[int, int] | None, resize_mode: int, invert: int = 0) -> bytes:
    """An input image brought to the requested size as A1111's `resize_mode` says (0 and 3, just resize,
    is what the engine does itself): 1 crops to the aspect ratio, 2 fits inside and fills the bars with
    the edges stretched. `invert` flips a mask (`inpainting_mask_invert`)."""
    if (size is None or resize_mode in (0, 3)) and not invert:
        return data
    try:
        image = Image.open(io.BytesIO(data))
        image.load()
    except OSError as e:
        raise A1111Error(f"not an image this engine can read: {e}") from None
    if invert:
        image = ImageOps.invert(image.convert("L"))
    if size is not None and resize_mode == 1:
        image = ImageOps.fit(image, size, Image.Resampling.LANCZOS)
    elif size is not None and resize_mode == 2:
        image = fill(image, size)
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def fill(image: Image.Image, size: tuple[int, int]) -> Image.Image:
    """`image` fitted inside `size`, centred; the bars are its first and last rows (or columns) stretched."""
    fitted = ImageOps.contain(image, size, Image.Resampling.LANCZOS)
    (w, h), (fw, fh) = size, fitted.size
    canvas = fitted.resize(size)
    x, y = (w - fw) // 2, (h - fh) // 2
    if y:
        canvas.paste(fitted.crop((0, 0, fw, 1)).resize((w, y)), (0, 0))
        canvas.paste(fitted.crop((0, fh - 1, fw, fh)).resize((w, h - y - fh)), (0, y + fh))
    if x:
        canvas.paste(fitted.crop((0, 0, 1, fh)).resize((x, h)), (0, 0))
        canvas.paste(fitted.crop((fw - 1, 0, fw, fh)).resize((w - x - fw, h)), (x + fw, 0))
    canvas.paste(fitted, (x, y))
    return canvas


# The ControlNet extension's own routes (at the server's root, as the extension mounts them).
controlnet_router = APIRouter(prefix="/controlnet", tags=["AUTOMATIC1111"])
CONTROLNET_API_VERSION = 2  # what the extension's /controlnet/version answers (webuiapi checks it)


@controlnet_router.get("/version")
def controlnet_version() -> dict:
    return {"version": CONTROLNET_API_VERSION}


@controlnet_router.get("/model_list")
def controlnet_model_list(request: Request) -> dict:
    listing = _services(request).shelf.listing()
    return {"model_list": [title(m) for m in listing.controlnets if m.problem is None]}


@controlnet_router.get("/module_list")
def controlnet_module_list() -> dict:
    return {"module_list": [*A1111_MODULES.values(), IP_ADAPTER_MODULE]}


@controlnet_router.post("/detect")
async def controlnet_detect(body: DetectBody, request: Request) -> dict:
    """The preprocessed maps of the images (what a unit with this module would steer with)."""
    s = _services(request)
    type_ = control_type(body.controlnet_module)
    images = body.controlnet_input_images or body.controlnet_images
    if not images:
        raise A1111Error("controlnet_input_images: give at least one image (base64)")
    maps = []
    for i, picture in enumerate(images):
        data = decode_b64_image(picture, f"controlnet_input_images[{i}]")
        if type_ != "none" and body.controlnet_processor_res > 0:
            data = await asyncio.to_thread(at_short_side, data, body.controlnet_processor_res)
        threshold_a = body.controlnet_threshold_a if body.controlnet_threshold_a >= 0 and type_ == "canny" else None
        threshold_b = body.controlnet_threshold_b if body.controlnet_threshold_b >= 0 and type_ == "canny" else None
        preview = await asyncio.to_thread(s.inputs.preview_map, data, type_, threshold_a, threshold_b)
        maps.append(base64.b64encode(preview).decode())
    return {"images": maps, "info": "Success"}
