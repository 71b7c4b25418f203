"""Content-addressed PNG files that carry their generation parameters.

Each PNG has the AUTOMATIC1111 `parameters` text chunk (so other tools read
it) and our full request as JSON in a `dreamhall` chunk. The file name is the
SHA-256 of its bytes; files are written to a temporary name and renamed, so a
crash never leaves a half-written image under its final name.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import tempfile
from pathlib import Path

from PIL import Image, PngImagePlugin

from gallery.schemas import ImageCreate

PARAMETERS_KEY = "parameters"
DREAMHALL_KEY = "dreamhall"


def a1111_parameters(image: ImageCreate) -> str:
    """The `parameters` text AUTOMATIC1111 writes, e.g. `<prompt>\\nSteps: 20, Sampler: Euler a, ...`."""
    lines = [image.prompt]
    if image.negative_prompt:
        lines.append(f"Negative prompt: {image.negative_prompt}")
    p = image.params
    hires = p.get("hires") or {}
    resize = hires.get("width") or hires.get("height")  # A1111's hr_resize_x/y instead of a scale
    fields = [
        ("Steps", image.steps),
        ("Sampler", image.sampler),
        ("CFG scale", _num(image.cfg_scale)),
        ("Seed", image.seed),
        # with the hires fix, A1111's Size is the first pass's (its Hires fields say how it grew)
        ("Size", f"{p['width']}x{p['height']}" if hires and p.get("width") else f"{image.width}x{image.height}"),
        ("Model hash", image.params.get("model_hash")),
        ("Model", image.model),
        ("Denoising strength", _num(p.get("strength") or hires.get("strength"))),  # img2img, inpaint, hires fix
        ("Clip skip", p.get("clip_skip") if (p.get("clip_skip") or 1) > 1 else None),
        ("Tiling", "True" if p.get("tiling") else None),
        ("Mask blur", p.get("mask_blur") or None),
        ("Masked content", _FILLS.get(p.get("inpaint_fill") or "original")),
        ("Inpaint area", "Only masked" if p.get("inpaint_full_res") else None),
        ("Masked area padding", p.get("inpaint_padding") if p.get("inpaint_full_res") else None),
        ("Seed resize from", "{}x{}".format(*p["seed_resize_from"]) if p.get("seed_resize_from") else None),
        ("Eta", _num(p.get("eta"))),
        ("Hires upscale", _num(hires["scale"]) if hires and not resize else None),
        ("Hires resize", f"{hires.get('width') or 0}x{hires.get('height') or 0}" if resize else None),
        ("Hires steps", hires.get("steps") or None),
        ("Hires upscaler", p.get("hires_upscaler") if hires else None),
        ("Hires prompt", _quote(hires.get("prompt"))),
        ("Hires negative prompt", _quote(hires.get("negative_prompt"))),
        ("Template", _quote(p.get("prompt_template"))),
        ("Lora hashes", _hashes(image.params.get("loras"))),
        ("TI hashes", _hashes(image.params.get("embeddings"))),
        ("Refiner", image.params.get("refiner")),
        ("Refiner switch at", image.params.get("refiner_switch") if image.params.get("refiner") else None),
        *_controlnet_fields(image.params.get("controlnets")),
    ]
    lines.append(", ".join(f"{k}: {v}" for k, v in fields if v is not None))
    return "\n".join(lines)


# A1111's "Masked content" for our inpaint_fill (it writes nothing for "original", its default)
_FILLS = {"fill": "fill", "noise": "latent noise", "nothing": "latent nothing"}


def _quote(text: str | None) -> str | None:
    """A1111's quoting of a field with a comma, a colon or a newline in it (json.dumps)."""
    if not text:
        return None
    return json.dumps(text, ensure_ascii=False) if any(c in text for c in ',:\n"') else text


def _hashes(addons: list[dict] | None) -> str | None:
    """A1111's `Lora hashes: "name: hash, name: hash"` (quoted: the list has commas)."""
    if not addons:
        return None
    return '"' + ", ".join(f"{a['name']}: {a['hash']}" for a in addons) + '"'


def _controlnet_fields(controls: list[dict] | None) -> list[tuple[str, str]]:
    """A1111's ControlNet extension's `ControlNet 0: "Module: canny, Model: name [hash], Weight: 1, ..."`."""
    fields = []
    for i, c in enumerate(controls or []):
        model = c["model"] + (f" [{c['hash']}]" if c.get("hash") else "")
        unit = (f"Module: {c['module']}, Model: {model}, Weight: {c['weight']:g}, "
                f"Guidance Start: {c['start']:g}, Guidance End: {c['end']:g}")  # fmt: skip
        fields.append((f"ControlNet {i}", f'"{unit}"'))
    return fields


def _num(v: float | None) -> str | None:
    return None if v is None else f"{v:g}"


def encode_png(image: Image.Image, info: ImageCreate) -> bytes:
    """PNG bytes of `image` with both metadata chunks. Deterministic for equal inputs."""
    meta = PngImagePlugin.PngInfo()
    meta.add_text(PARAMETERS_KEY, a1111_parameters(info))
    meta.add_text(DREAMHALL_KEY, json.dumps(info.params, sort_keys=True, separators=(",", ":")))
    buf = io.BytesIO()
    image.save(buf, format="PNG", pnginfo=meta)
    return buf.getvalue()


def relative_path(sha256: str) -> str:
    return f"{sha256[:2]}/{sha256}.png"


def write_content_addressed(root: Path, data: bytes) -> tuple[str, str]:
    """Store `data` under its SHA-256; return (sha256, path relative to `root`)."""
    sha = hashlib.sha256(data).hexdigest()
    rel = relative_path(sha)
    target = root / rel
    if target.exists():
        return sha, rel
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".tmp-", suffix=".png")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return sha, rel


def read_text_chunks(path: Path) -> dict[str, str]:
    """The PNG text chunks of an image file (empty for other formats)."""
    with Image.open(path) as im:
        return {k: v for k, v in getattr(im, "text", {}).items() if isinstance(v, str)}


class BadImage(ValueError):
    """Bytes that are not an image we accept; the message says why."""


def decode_image(data: bytes, *, max_pixels: int = 4096 * 4096, mode: str = "RGB") -> Image.Image:
    """Open untrusted image bytes safely: size checked before decoding, fully loaded, in `mode`."""
    if not data:
        raise BadImage("the image is empty")
    try:
        im = Image.open(io.BytesIO(data))
        w, h = im.size
        if w * h > max_pixels:
            raise BadImage(f"the image is too large ({w}x{h}; at most {max_pixels} pixels)")
        im.load()
        return im.convert(mode)
    except BadImage:
        raise
    except Image.DecompressionBombError as e:
        raise BadImage(f"the image is too large: {e}") from e
    except Image.UnidentifiedImageError as e:
        raise BadImage("not a readable image (not PNG, JPEG, WebP or another format Pillow knows)") from e
    except (OSError, SyntaxError, ValueError) as e:
        # Truncated or corrupt files; the message never carries Python reprs of buffers.
        reason = re.sub(r"<[^>]*object at 0x[0-9a-f]+>", "the data", str(e))[:200]
        raise BadImage(f"not a readable image: {reason}") from e
