"""OpenAI's images API, as Open WebUI's "openai" image engine, LibreChat and the official `openai` client speak it,
under `openai_prefix` (default /openai/v1, since /v1 is ours): generations, edits, variations and the model list.

Every call is an ordinary job in the same fair queue and gallery (source `openai`, user from `user`). `model` names
a shelf checkpoint (OpenAI's own names mean the engine's default model); `size` is an aspect ratio drawn at the
model's native size; `quality` sets the steps; `seed`, `negative_prompt`, `steps`, `cfg_scale` and `sampler` may
ride along (`extra_body` in the `openai` client). Errors have OpenAI's shape. A `url` answer is a signed link to the
image that expires in an hour (so a client can fetch it without the token).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import io
import math
import secrets
import time
from typing import Any, Literal

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.datastructures import UploadFile

from engine.client.answers import Job
from engine.client.dream_args import explain
from engine.client.schema import MAX_PROMPT_CHARS, DreamRequest, Requester, Scope
from engine.device.shelf import UnknownModel
from engine.server.blocking import finished
from engine.server.describing import describe_picture
from engine.server.services import Services
from gallery.files import BadImage, decode_image

SOURCE = "openai"
# OpenAI's model names: a client that cannot be told another name gets the engine's default model.
OPENAI_MODELS = ("dall-e-2", "dall-e-3", "gpt-image-1", "gpt-image-1-mini", "gpt-image-1.5", "gpt-image-2")
# OpenAI's sizes as aspect ratios, drawn at the model's native size (SD 1.x 512², SDXL/SD3/FLUX 1024²): 1536x1024 on
# SD 1.5 is 624x416, on SDXL 1248x832; `auto` is the model's native square.
SIZES: dict[str, tuple[int, int] | None] = {
    "auto": None, "256x256": (1, 1), "512x512": (1, 1), "1024x1024": (1, 1), "1536x1024": (3, 2),
    "1024x1536": (2, 3), "1792x1024": (7, 4), "1024x1792": (4, 7),
}  # fmt: skip
QUALITY_STEPS: dict[str, int | None] = {"auto": None, "standard": None, "medium": None, "low": 12, "high": 30, "hd": 30}
FORMATS = {"png": "PNG", "jpeg": "JPEG", "webp": "WEBP"}
LINK_SECONDS = 3600
VARIATION_STRENGTH = 0.7  # Midjourney's Vary (Strong): the same picture's layout, drawn anew
ERROR_TYPES = {400: "invalid_request_error", 401: "invalid_request_error", 403: "invalid_request_error",
               404: "invalid_request_error", 413: "invalid_request_error", 429: "rate_limit_error"}  # fmt: skip


class OpenAIError(Exception):
    def __init__(self, message: str, status: int = 400, *, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.param, self.code = status, param, code


def error_body(message: str, status: int, *, param: str | None = None, code: str | None = None) -> JSONResponse:
    """OpenAI's error shape: {"error": {"message", "type", "param", "code"}}."""
    kind = ERROR_TYPES.get(status, "server_error")
    body = {"error": {"message": message, "type": kind, "param": param, "code": code}}
    return JSONResponse(body, status_code=400 if status == 422 else status)


class _Common(BaseModel):
    """What every images call takes (OpenAI's fields, then ours that ride along)."""

    model_config = ConfigDict(extra="forbid")

    model: str | None = Field(default=None, max_length=1000)
    n: int = Field(default=1, ge=1, le=10)
    size: str = "auto"
    response_format: Literal["b64_json", "url"] = "b64_json"
    output_format: Literal["png", "jpeg", "webp"] = "png"
    output_compression: int | None = Field(default=None, ge=0, le=100)
    background: Literal["auto", "opaque", "transparent"] = "auto"
    quality: Literal["auto", "standard", "hd", "low", "medium", "high"] = "auto"
    moderation: Literal["auto", "low"] | None = None  # the model's own safety checker decides, as always
    user: str | None = Field(default=None, max_length=200)
    stream: bool = False
    seed: int | None = Field(default=None, ge=0, le=2**32 - 1)
    negative_prompt: str = Field(default="", max_length=MAX_PROMPT_CHARS)
    steps: int | None = Field(default=None, ge=1, le=150)
    cfg_scale: float | None = Field(default=None, ge=0, le=30)
    sampler: str | None = None
    fresh: bool = Field(default=False, description="draw anew even when the gallery already has these images")

    def checked(self) -> None:
        if self.stream:
            raise OpenAIError("stream: partial images are not streamed here; send stream=false", param="stream")
        if self.background == "transparent":
            raise OpenAIError("background: these models draw opaque pictures; send auto or opaque",
                              param="background")  # fmt: skip


class GenerationBody(_Common):
    prompt: str = Field(min_length=1, max_length=MAX_PROMPT_CHARS)
    style: str | None = Field(default=None, max_length=200, description="a styles.csv style of this name, if any")


class EditBody(_Common):
    prompt: str = Field(min_length=1, max_length=MAX_PROMPT_CHARS)
    strength: float | None = Field(default=None, gt=0, le=1, description="how much is repainted (default: all)")
    input_fidelity: Literal["high", "low"] | None = None


class VariationBody(_Common):
    pass


class OpenAIErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class OpenAIErrorBody(BaseModel):
    """OpenAI's error shape."""

    error: OpenAIErrorDetail


router = APIRouter(
    tags=["OpenAI images"],
    responses={status: {"model": OpenAIErrorBody} for status in (400, 401, 403, 404, 413, 429, 500, 503)},
)


def _services(request: Request) -> Services:
    return request.app.state.services  # Starlette's app.state is untyped


def model_name(s: Services, asked: str | None) -> str | None:
    """The shelf checkpoint `model` names (None: the engine's default)."""
    if asked is None or asked in OPENAI_MODELS:
        return None
    return checkpoint(s, asked)


def checkpoint(s: Services, name: str) -> str:
    """A usable checkpoint on the shelf by this name (the shelf's own lookup), else OpenAI's 404."""
    try:
        return s.shelf.find("checkpoint", name).name
    except UnknownModel:
        raise OpenAIError(
            f"The model '{name}' does not exist on this engine's shelf (GET models lists them)",
            404,
            param="model",
            code="model_not_found",
        ) from None


def aspect_of(size: str) -> tuple[int, int] | None:
    if size in SIZES:
        return SIZES[size]
    w, _, h = size.partition("x")
    if w.isdigit() and h.isdigit() and 64 <= int(w) <= 4096 and 64 <= int(h) <= 4096:
        g = math.gcd(int(w), int(h))
        if int(w) // g <= 64 and int(h) // g <= 64:
            return int(w) // g, int(h) // g
    raise OpenAIError(f"size: one of {', '.join(SIZES)}, or WIDTHxHEIGHT (got {size[:40]!r})", param="size",
                      code="invalid_size")  # fmt: skip


def dream_request(s: Services, body: _Common, prompt: str, **fields: Any) -> DreamRequest:
    """The native request for an OpenAI call (raises OpenAIError naming the field)."""
    body.checked()
    steps = body.steps or QUALITY_STEPS[body.quality]
    extras = {k: v for k, v in {"steps": steps, "cfg_scale": body.cfg_scale, "sampler": body.sampler}.items() if v}
    try:
        who = Requester(source=SOURCE, user=body.user or SOURCE)
        return DreamRequest(prompt=prompt, negative_prompt=body.negative_prompt, n=body.n, seed=body.seed,
                            model=model_name(s, body.model), requester=who, fresh=body.fresh, **extras,
                            **fields)  # fmt: skip
    except ValidationError as e:
        first = e.errors()[0]["loc"]
        raise OpenAIError(explain(e), param=str(first[0]) if first else None) from None


async def answer(request: Request, s: Services, body: _Common, job: Job) -> dict:
    if job.status != "done":
        raise OpenAIError(f"the job {job.status}" + (f": {job.error}" if job.error else ""), 500)
    data = []
    first = None
    for info in job.images:
        record = s.store.get(info.id)
        first = first or record
        item: dict[str, Any] = {"revised_prompt": record.prompt}
        if body.response_format == "url":
            item["url"] = signed_url(request, info.id, body.output_format, body.output_compression)
        else:
            png = s.store.file_path(record).read_bytes()
            item["b64_json"] = base64.b64encode(encoded(png, body.output_format, body.output_compression)).decode()
        data.append(item)
    return {"created": int(job.created_at.timestamp()), "data": data, "background": "opaque",
            "output_format": body.output_format, "quality": body.quality,
            "size": f"{first.width}x{first.height}" if first else body.size}  # fmt: skip


def encoded(png: bytes, fmt: str, compression: int | None) -> bytes:
    """The stored PNG as asked (PNG as stored: its parameters travel with it)."""
    if fmt == "png":
        return png
    out = io.BytesIO()
    Image.open(io.BytesIO(png)).convert("RGB").save(out, format=FORMATS[fmt], quality=compression or 90)
    return out.getvalue()


def link_key(request: Request) -> bytes:
    """What links are signed with: from the engine's token (links survive a restart), else this process's own."""
    state = request.app.state
    if getattr(state, "link_key", None) is None:
        token = _services(request).settings.token
        secret = token.get_secret_value().encode() if token is not None else secrets.token_bytes(32)
        state.link_key = hmac.new(secret, b"dreamhall openai links", hashlib.sha256).digest()
    return state.link_key


def _signature(key: bytes, name: str, expires: int, compression: int | None) -> str:
    return hmac.new(key, f"{name}:{expires}:{compression}".encode(), hashlib.sha256).hexdigest()


def signed_url(request: Request, image_id: int, fmt: str, compression: int | None) -> str:
    expires = int(time.time()) + LINK_SECONDS
    name = f"{image_id}.{fmt}"
    sig = _signature(link_key(request), name, expires, compression)
    query: dict[str, Any] = {"expires": expires, "sig": sig} | ({"q": compression} if compression is not None else {})
    return str(request.url_for("openai_file", name=name).include_query_params(**query))


@router.get("/files/{name}", name="openai_file", response_class=Response)
def image_file(request: Request, name: str, expires: int, sig: str, q: int | None = None) -> Response:
    """An image a `url` answer pointed at: needs the link's signature (not the token), until it expires."""
    stem, _, fmt = name.partition(".")
    good = hmac.compare_digest(sig.encode(), _signature(link_key(request), name, expires, q).encode())
    if not good or not stem.isdigit() or fmt not in FORMATS:
        raise OpenAIError("this link is not one the engine signed", 403)
    if expires < time.time():
        raise OpenAIError("this link has expired (links last an hour): ask for the image again", 403)
    s = _services(request)
    record = s.store.get(int(stem))
    data = encoded(s.store.file_path(record).read_bytes(), fmt, q)
    return Response(data, media_type=f"image/{fmt}")


@router.post("/images/generations")
async def generations(body: GenerationBody, request: Request) -> dict:
    s = _services(request)
    styles = (body.style,) if body.style and body.style in {st.name for st in s.prompting.styles()} else ()
    req = dream_request(s, body, body.prompt, aspect_ratio=aspect_of(body.size), styles=styles)
    return await answer(request, s, body, await finished(s, req))


async def _form(request: Request, model: type[_Common]) -> tuple[Any, list[bytes], bytes | None]:
    """A multipart images call as OpenAI's clients send it: its fields, its image(s) (`image` or `image[]`), its
    mask."""
    try:
        form = await request.form()
    except Exception as e:  # python-multipart's errors: a body that is not the multipart form it says it is
        raise OpenAIError(f"the body must be multipart/form-data, as OpenAI's clients send it ({e})") from None
    pictures = [await f.read() for f in [*form.getlist("image"), *form.getlist("image[]")] if isinstance(f, UploadFile)]
    mask_part = form.get("mask")
    mask = await mask_part.read() if isinstance(mask_part, UploadFile) else None
    fields = {k: v for k, v in form.items() if k not in ("image", "image[]", "mask") and isinstance(v, str)}
    try:
        body = model.model_validate(fields)
    except ValidationError as e:
        first = e.errors()[0]["loc"]
        raise OpenAIError(explain(e), param=str(first[0]) if first else None) from None
    if len(pictures) != 1:
        raise OpenAIError(f"image: give one picture (got {len(pictures)})", param="image")
    return body, pictures, mask


def _picture(data: bytes, param: str) -> Image.Image:
    try:
        return decode_image(data, mode="RGBA")
    except BadImage as e:
        raise OpenAIError(f"{param}: not an image this engine can read: {e}", param=param) from None


def _same_shape(body: _Common, image: Image.Image) -> None:
    ratio = aspect_of(body.size)
    if ratio is not None and abs(ratio[0] / ratio[1] - image.width / image.height) > 0.02:
        raise OpenAIError(f"size: an edit keeps the picture's own shape ({image.width}x{image.height}); send auto",
                          param="size")  # fmt: skip


@router.post("/images/edits", openapi_extra={"requestBody": {"content": {"multipart/form-data": {}}}})
async def edits(request: Request) -> dict:
    """The picture repainted where the mask is transparent (else where the picture itself is; with neither, all of
    it, following the prompt)."""
    s = _services(request)
    body, pictures, mask_data = await _form(request, EditBody)
    picture = _picture(pictures[0], "image")
    _same_shape(body, picture)
    alpha = (_picture(mask_data, "mask") if mask_data is not None else picture).getchannel("A")
    if alpha.size != picture.size:
        raise OpenAIError(f"mask: it must be the picture's size ({picture.width}x{picture.height})", param="mask")
    repaint = alpha.point(lambda a: 255 if a < 128 else 0)
    init = (await asyncio.to_thread(s.inputs.save_upload, _png(picture.convert("RGB")))).ref
    if repaint.getbbox() is None:  # nothing transparent: the whole picture, redrawn after the prompt
        req = dream_request(s, body, body.prompt, mode="img2img", init_image=init, strength=body.strength or 0.75)
    else:
        mask = (await asyncio.to_thread(s.inputs.save_upload, _png(repaint))).ref
        req = dream_request(s, body, body.prompt, mode="inpaint", init_image=init, init_mask=mask,
                            strength=body.strength or 1.0)  # fmt: skip
    return await answer(request, s, body, await finished(s, req))


@router.post("/images/variations", openapi_extra={"requestBody": {"content": {"multipart/form-data": {}}}})
async def variations(request: Request) -> dict:
    """New takes on a picture: described in words by the engine's describe, then redrawn over itself."""
    s = _services(request)
    body, pictures, _ = await _form(request, VariationBody)
    picture = _picture(pictures[0], "image").convert("RGB")
    _same_shape(body, picture)
    prompt = (await asyncio.to_thread(describe_picture, s, picture, Scope())).prompts[0]
    init = (await asyncio.to_thread(s.inputs.save_upload, _png(picture))).ref
    req = dream_request(s, body, prompt, mode="img2img", init_image=init, strength=VARIATION_STRENGTH)
    return await answer(request, s, body, await finished(s, req))


def _png(image: Image.Image) -> bytes:
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def _model(name: str) -> dict:
    return {"id": name, "object": "model", "created": 0, "owned_by": "dreamhall"}


@router.get("/models")
def models(request: Request) -> dict:
    """The shelf's checkpoints, by the names `model` takes."""
    usable = [item.name for item in _services(request).shelf.items("checkpoint") if item.problem is None]
    return {"object": "list", "data": [_model(name) for name in usable]}


@router.get("/models/{name}")
def model(request: Request, name: str) -> dict:
    return _model(checkpoint(_services(request), name))
