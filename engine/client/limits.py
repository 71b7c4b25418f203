"""The engine's limits and the size rule of every mode, in one place.

`MIN_SIDE`/`MAX_SIDE`/`MAX_N` are what any engine accepts (the request schema's bounds); `Limits` is what
this engine is configured to make (`max_side`, `max_n` in the settings, never above those). The job
service checks a request's planned output size against `Limits` at submit, the plans of
engine.device.modes compute the same sizes with the same functions, and the desktop's and the bot's
controls read their bounds here. The standard library only: the lean CLI path may import it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from engine.client.errors import InputError

MIN_SIDE = 64  # the smallest picture a request may ask for, and so the smallest any mode makes
MAX_SIDE = 2048  # the largest side any engine makes (the schema's bound; `max_side` may lower it)
MAX_N = 16  # images per request (the schema's bound; `max_n` may lower it)


class _Sides(Protocol):
    @property
    def left(self) -> int: ...
    @property
    def top(self) -> int: ...
    @property
    def right(self) -> int: ...
    @property
    def bottom(self) -> int: ...


class _Hires(Protocol):
    def size(self, width: int, height: int) -> tuple[int, int]: ...


class DreamRequest(Protocol):
    """The fields of engine.client.schema.DreamRequest that decide its size (that module imports this one)."""

    @property
    def n(self) -> int: ...
    @property
    def mode(self) -> str: ...
    @property
    def width(self) -> int | None: ...
    @property
    def height(self) -> int | None: ...
    @property
    def upscale(self) -> float | None: ...
    @property
    def outpaint(self) -> _Sides | None: ...
    @property
    def hires(self) -> _Hires | None: ...
    @property
    def zoom_out(self) -> float | None: ...


def fit8(v: float) -> int:
    """Down to a multiple of 8 (the VAE's stride). Small inputs stay small: an outpaint grows them."""
    return max(8, int(v) // 8 * 8)


def round8(v: float) -> int:
    """To the nearest multiple of 8, within the sides any engine makes."""
    return max(MIN_SIDE, min(MAX_SIDE, int(round(v / 8) * 8)))


def input_size(request: DreamRequest, init: tuple[int, int]) -> tuple[int, int]:
    """An image-to-image job's size: -W/-H if given; else the init image's size, shrunk to fit MAX_SIDE a side,
    in multiples of 8."""
    if request.width is not None and request.height is not None:
        return request.width, request.height
    w, h = init
    if request.width is not None:
        return request.width, fit8(request.width * h / w)
    if request.height is not None:
        return fit8(request.height * w / h), request.height
    scale = min(1.0, MAX_SIDE / max(w, h))
    return fit8(w * scale), fit8(h * scale)


def upscaled_size(factor: float, init: tuple[int, int]) -> tuple[int, int]:
    """Exactly `factor` times the image, as A1111 upscales (a generative pass runs at the multiple of 8 below)."""
    return max(1, round(init[0] * factor)), max(1, round(init[1] * factor))


def outpainted_size(request: DreamRequest, init: tuple[int, int]) -> tuple[int, int]:
    w, h = input_size(request, init)
    if request.zoom_out is not None:
        return w, h  # the picture keeps its size: it shrinks inside its new border
    assert request.outpaint is not None
    o = request.outpaint
    return w + o.left + o.right, h + o.top + o.bottom


def zoom_border(side: int, factor: float) -> int:
    """Pixels added on each side of a `side`-pixel picture so it is `factor` times larger (a multiple of 8)."""
    return max(8, round(side * (factor - 1) / 2 / 8) * 8)


@dataclass(frozen=True)
class Limits:
    """What this engine makes at most (from the settings' `max_side` and `max_n`)."""

    max_side: int = MAX_SIDE
    max_n: int = MAX_N

    def check_n(self, n: int) -> None:
        if n > self.max_n:
            raise InputError(f"n: this engine makes at most {self.max_n} images per request (got {n})")

    def check_asked(self, width: int | None, height: int | None) -> None:
        """-W/-H as asked."""
        for flag, side in (("-W/--width", width), ("-H/--height", height)):
            if side is not None and side > self.max_side:
                raise InputError(f"{flag}: this engine makes at most {self.max_side} px per side (got {side})")

    def check_made(self, what: str, width: int, height: int) -> None:
        """The size a job would make; `what` says so ("a x4 upscale of a 512x512 image would be 2048x2048")."""
        if max(width, height) > self.max_side:
            raise InputError(f"{what}; the largest is {self.max_side} px per side (the engine's max_side)")
        if min(width, height) < MIN_SIDE:
            raise InputError(f"{what}; each side must be at least {MIN_SIDE} px (use a larger image, or give -W/-H)")

    def check_output(self, request: DreamRequest, init: tuple[int, int] | None) -> None:
        """The output size of a mode that starts from an image of size `init` (the job service checks the count
        and -W/-H before it looks at the inputs)."""
        if request.mode in ("txt2img", "variation"):
            # their size is -W/-H (checked) or the model's native size; the hires pass's is checked when known
            if request.hires is not None and request.width is not None and request.height is not None:
                w, h = request.hires.size(request.width, request.height)
                self.check_made(f"the hires fix would make a {w}x{h} image", w, h)
            return
        if init is None:
            return
        if request.mode == "upscale":
            assert request.upscale is not None
            w, h = upscaled_size(request.upscale, init)
            self.check_made(f"a x{request.upscale:g} upscale of a {init[0]}x{init[1]} image would be {w}x{h}", w, h)
        elif request.mode == "outpaint":
            w, h = outpainted_size(request, init)
            self.check_made(f"outpainting would make a {w}x{h} image", w, h)
        else:
            w, h = input_size(request, init)
            self.check_made(f"a {init[0]}x{init[1]} init image would make a {w}x{h} picture", w, h)
