"""The request contract shared by the engine and every frontend.

Pure pydantic: no torch, no database. A `DreamRequest` means the same thing
whether it came from Discord, the desktop app, the CLI or raw HTTP.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal, Protocol

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator, model_validator

from engine.client.controls import (
    MAX_CONTROL_WEIGHT,
    MAX_CONTROLS,
    MAX_REFERENCES,
    MAX_STYLE_WEIGHT,
    ControlResize,
    ControlType,
)
from engine.client.errors import clip_text
from engine.client.limits import MAX_N, MAX_SIDE, MIN_SIDE, round8
from engine.client.samplers import Sampler
from engine.client.upscalers import MAX_FACTOR, MIN_FACTOR
from gallery.schemas import gallery_id as gallery_id  # the frontends read the ref format from here
from gallery.schemas import tenant_conditions

MAX_SEED = 2**32 - 1
MAX_PROMPT_CHARS = 2000
MAX_ID = 2**63 - 1  # SQLite's largest integer: an id past it is no image, not a crash

Mode = Literal["txt2img", "img2img", "inpaint", "outpaint", "variation", "upscale"]
Source = Literal["cli", "discord", "desktop", "api", "a1111", "openai", "mcp"]
JobStatus = Literal["queued", "running", "done", "failed", "cancelled"]
Seed = Annotated[int, Field(ge=0, le=MAX_SEED)]
InpaintFill = Literal["original", "fill", "noise", "nothing"]  # A1111's inpainting_fill 1, 0, 2, 3
MAX_STYLES = 8
Size = Annotated[int, Field(ge=MIN_SIDE, le=MAX_SIDE)]

# How far a "variations" button wanders from its parent (the bot's V buttons, the desktop's Variations).
DEFAULT_VARIATION_AMOUNT = 0.25
# Strength (how much of an input image is repainted) when a request gives none.
DEFAULT_STRENGTH: dict[str, float] = {"img2img": 0.75, "inpaint": 0.75, "outpaint": 1.0, "upscale": 0.3}


def _image_ref(value: object) -> object:
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if isinstance(value, str):
        value = value.strip()
        if re.fullmatch(r"[0-9]+", value):  # ASCII digits only: "١٢" is not image 12
            value = f"gallery:{int(value)}"
        if not re.fullmatch(r"gallery:[0-9]+|upload:[0-9a-f]{64}", value):
            raise ValueError(
                f"expected a gallery image id such as 42, got {clip_text(value, 40)!r} "
                "(the CLI and the desktop app upload local files for you)"
            )
        if value.startswith("gallery:") and not 1 <= int(value[8:]) <= MAX_ID:
            raise ValueError(f"no gallery image has id {clip_text(value[8:], 30)}")
    return value


# Characters that draw nothing: a prompt made only of these is empty.
_INVISIBLE_CHARS = r"\s\u200b-\u200f\u2028-\u202f\u2060-\u206f\ufeff\x00-\x1f\x7f-\x9f"
_INVISIBLE = re.compile(f"[{_INVISIBLE_CHARS}]+")
VISIBLE_PATTERN = f"[^{_INVISIBLE_CHARS}]"  # the JSON schema's form of "has a visible character"


# An input image: `gallery:<id>` (bare digits allowed) or `upload:<sha256>` from POST /v1/uploads.
ImageRef = Annotated[str, BeforeValidator(_image_ref)]


class Requester(BaseModel):
    """Who asked, and from where: used for fairness, limits and gallery scoping."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    source: Source = "api"
    user: str | None = Field(default=None, max_length=200)
    guild: str | None = Field(default=None, max_length=200)
    channel: str | None = Field(default=None, max_length=200)

    @property
    def queue_key(self) -> str:
        """Round-robin key: a Discord user in one guild is one queue user."""
        return f"{self.source}:{self.guild or '-'}:{self.user or '-'}"


class Owned(Protocol):
    """Who made something: a gallery image, or a job's requester."""

    guild: str | None
    source: str
    user: str | None


# Gallery images that were not made here: their seeds remake nothing with this engine's model.
IMPORTED_SOURCES: frozenset[str] = frozenset({"import", "recovered"})


class Scope(BaseModel):
    """Whose images a Discord request may see and use: one guild's, or in a DM one user's DM images.

    Other sources (the CLI, the desktop, raw API calls on the socket or with the token) are the
    engine's owner and see everything: `Scope.of` gives None for them.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    guild: str | None = Field(default=None, max_length=200)
    dm_of: str | None = Field(default=None, max_length=200, description="a Discord user: only their DM images")

    @classmethod
    def of(cls, requester: Requester) -> Scope | None:
        if requester.source != "discord":
            return None
        return cls(guild=requester.guild) if requester.guild else cls(dm_of=requester.user or "")

    @property
    def given(self) -> bool:
        return self.guild is not None or self.dm_of is not None

    def allows(self, owner: Owned) -> bool:
        """Whether an image (or a job's requester) is inside the scope: the gallery's tenant rule, on one row."""
        return all(getattr(owner, column) == value for column, value in tenant_conditions(self.guild, self.dm_of))

    def params(self) -> dict[str, str]:
        return self.model_dump(exclude_none=True)


class VariationWeight(BaseModel):
    """One `-V seed:weight` term."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    seed: Seed
    weight: float = Field(ge=0.0, le=1.0)


class OutpaintSides(BaseModel):
    """Pixels to add on each side (rounded up to multiples of 8)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    left: int = Field(default=0, ge=0, le=1024)
    right: int = Field(default=0, ge=0, le=1024)
    top: int = Field(default=0, ge=0, le=1024)
    bottom: int = Field(default=0, ge=0, le=1024)

    @field_validator("left", "right", "top", "bottom")
    @classmethod
    def _up_to_8(cls, v: int) -> int:
        return -(-v // 8) * 8

    @model_validator(mode="after")
    def _some_side(self) -> OutpaintSides:
        if not (self.left or self.right or self.top or self.bottom):
            raise ValueError("outpaint needs at least one side to extend")
        return self


class HiresFix(BaseModel):
    """A1111's hires fix: the first pass at the asked size, an upscale, then an img2img pass over the same seed at
    the larger size (`scale`, or exactly `width`x`height`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    scale: float = Field(default=2.0, ge=MIN_FACTOR, le=MAX_FACTOR, description="the second pass's size factor")
    width: Size | None = Field(default=None, description="exact width of the second pass (A1111's hr_resize_x)")
    height: Size | None = Field(default=None, description="exact height of the second pass (A1111's hr_resize_y)")
    steps: int = Field(default=0, ge=0, le=150, description="the second pass's steps; 0: as many as the first")
    strength: float = Field(default=0.7, gt=0.0, le=1.0, description="how much the second pass repaints")
    upscaler: str = Field(default="Lanczos", max_length=200, description="Lanczos or Nearest (the resample between)")
    prompt: str | None = Field(default=None, max_length=MAX_PROMPT_CHARS, description="the second pass's prompt")
    negative_prompt: str | None = Field(default=None, max_length=MAX_PROMPT_CHARS)

    @field_validator("width", "height")
    @classmethod
    def _round_to_8(cls, v: int | None) -> int | None:
        return None if v is None else int(round(v / 8) * 8)

    def size(self, width: int, height: int) -> tuple[int, int]:
        """The second pass's size for a first pass of `width`x`height` (A1111: a lone hr_resize_x/y keeps
        the aspect ratio)."""
        if self.width and self.height:
            return self.width, self.height
        if self.width:
            return self.width, round8(height * self.width / width)
        if self.height:
            return round8(width * self.height / height), self.height
        return round8(width * self.scale), round8(height * self.scale)


class ControlUnit(BaseModel):
    """One ControlNet: its image, how to read it (`type`), which ControlNet, and how hard and when it steers.

    `image` is a map the `type` makes from any picture (`none`: the image already is the map: a
    depth, pose or silhouette made elsewhere). `start`/`end` are shares of the steps (A1111's
    guidance start/end); `model` None means the first ControlNet on the shelf that fits the model.
    A map of another shape than the output is fitted by `resize`, A1111's three resize modes.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    image: ImageRef
    type: ControlType = "none"
    model: str | None = Field(default=None, max_length=1000)
    weight: float = Field(default=1.0, ge=0.0, le=MAX_CONTROL_WEIGHT)
    start: float = Field(default=0.0, ge=0.0, le=1.0)
    end: float = Field(default=1.0, ge=0.0, le=1.0)
    resize: ControlResize = Field(
        default="crop", description="another shape than the output: crop (scale to cover, centre), just, fill (pad)"
    )
    threshold_a: float | None = Field(default=None, ge=0.0, le=255.0, description="canny: low threshold (100)")
    threshold_b: float | None = Field(default=None, ge=0.0, le=255.0, description="canny: high threshold (200)")

    @model_validator(mode="after")
    def _start_before_end(self) -> ControlUnit:
        if self.start >= self.end:
            raise ValueError(f"a control's start ({self.start:g}) must come before its end ({self.end:g})")
        return self


class Reference(BaseModel):
    """A reference picture (Midjourney's --sref, an IP-Adapter image prompt): its look carries into the result.
    Several references blend by their weights (`REF::2` in the grammar)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    image: ImageRef
    weight: float = Field(default=1.0, gt=0.0, le=100.0, description="its share among the references")


class ControlPreview(BaseModel):
    """POST /v1/controls/preview: the map a control would steer with, before a job is spent on it."""

    model_config = ConfigDict(extra="forbid")

    control: ControlUnit
    requester: Requester = Requester()


class DreamRequest(BaseModel):
    """One `!dream`: what to draw, how, and who asked.

    Sizes are rounded to the nearest multiple of 8 (the VAE's stride); `None`
    for width, height or model means the model's (or engine's) default.
    Image `i` of the request uses seed `(seed + i) mod 2**32`; in variation
    mode every image shares `seed` and image `i` blends in the noise of
    `variation_seed + i`.

    Input images (`init_image`, `init_mask`) are references: a gallery image
    id or an upload. In variation mode `init_image` names the parent image.
    """

    # The schema says what `_mode_inputs` enforces of the prompt: a visible character, except for an upscale and
    # a request steered by reference pictures alone (Midjourney's image-only prompts and /blend).
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "if": {
                "anyOf": [
                    {"properties": {"mode": {"const": "upscale"}}, "required": ["mode"]},
                    {"properties": {"references": {"minItems": 1}}, "required": ["references"]},
                ]
            },
            "else": {"properties": {"prompt": {"pattern": VISIBLE_PATTERN}}, "required": ["prompt"]},
        },
    )

    prompt: str = Field(
        default="", max_length=MAX_PROMPT_CHARS, description="required except for an upscale and with references"
    )
    negative_prompt: str = Field(default="", max_length=MAX_PROMPT_CHARS)
    n: int = Field(default=1, ge=1, le=MAX_N)
    seed: Seed | None = None
    width: Size | None = None
    height: Size | None = None
    aspect_ratio: tuple[Annotated[int, Field(ge=1, le=64)], Annotated[int, Field(ge=1, le=64)]] | None = None
    steps: int = Field(default=20, ge=1, le=150)
    cfg_scale: float = Field(default=7.5, ge=0.0, le=30.0)
    sampler: Sampler = "k_euler_a"
    model: str | None = Field(default=None, max_length=1000)
    refiner: str | None = Field(
        default=None, max_length=1000, description="a second model that finishes each image (an SDXL refiner)"
    )
    refiner_switch: float = Field(
        default=0.8, gt=0.0, lt=1.0, description="the share of the steps the first model makes (A1111's switch at)"
    )
    mode: Mode = "txt2img"
    init_image: ImageRef | None = None
    init_mask: ImageRef | None = None
    strength: float | None = Field(default=None, ge=0.0, le=1.0)  # 0 is refused below: it repaints nothing
    variation_amount: float | None = Field(default=None, ge=0.0, le=1.0)
    variation_seed: Seed | None = None
    with_variations: tuple[VariationWeight, ...] | None = None
    outpaint: OutpaintSides | None = None
    zoom_out: float | None = Field(
        default=None, ge=1.1, le=4.0,
        description="Midjourney's Zoom Out: -I shrunk by this factor inside its own frame, the border painted",
    )  # fmt: skip
    upscale: float | None = Field(
        default=None, ge=MIN_FACTOR, le=MAX_FACTOR, description="upscale -I by this factor (1 returns it as it is)"
    )
    upscaler: str | None = Field(
        default=None, max_length=200, description="Lanczos, Nearest, Detail, or None: the engine's (see README)"
    )
    hires: HiresFix | None = None
    clip_skip: int = Field(default=1, ge=1, le=12, description="stop the text encoder this many layers early (A1111)")
    tiling: bool = Field(default=False, description="seamless: the picture tiles (circular padding)")
    mask_blur: int = Field(default=0, ge=0, le=64, description="feather the inpaint mask by this many pixels")
    inpaint_fill: InpaintFill = Field(default="original", description="what the masked part starts from")
    inpaint_full_res: bool = Field(default=False, description="inpaint a crop around the mask at full size")
    inpaint_padding: int = Field(default=32, ge=0, le=256, description="pixels around the mask in that crop")
    seed_resize_from: tuple[Size, Size] | None = Field(
        default=None, description="draw the noise at this size, so a seed keeps its composition at another size"
    )
    eta: float | None = Field(default=None, ge=0.0, le=1.0, description="DDIM's eta (noise added per step)")
    styles: tuple[Annotated[str, Field(min_length=1, max_length=200)], ...] = Field(
        default=(), max_length=MAX_STYLES, description="styles from the engine's styles.csv, applied in order"
    )
    prompts: tuple[Annotated[str, Field(max_length=MAX_PROMPT_CHARS * 4)], ...] | None = Field(
        default=None, max_length=MAX_N,
        description="set by the engine: each image's prompt, styles applied and wildcards chosen by its seed",
    )  # fmt: skip
    styled_negative_prompt: str | None = Field(
        default=None, max_length=MAX_PROMPT_CHARS * 4, description="set by the engine: the negative with its styles"
    )
    controls: tuple[ControlUnit, ...] = Field(default=(), max_length=MAX_CONTROLS)
    references: tuple[Reference, ...] = Field(default=(), max_length=MAX_REFERENCES)
    style_weight: int = Field(
        default=100, ge=0, le=MAX_STYLE_WEIGHT, description="how strongly the references steer (Midjourney's --sw)"
    )
    layout: Literal["grid", "individual"] | None = None
    fresh: bool = Field(default=False, description="draw it even when the gallery already holds these very images")
    priority: int = Field(default=0, ge=-10, le=10)
    preview: bool = False
    requester: Requester = Requester()

    @property
    def drawn_negative_prompt(self) -> str:
        """The negative as drawn: with its styles, once the engine settled them."""
        return self.negative_prompt if self.styled_negative_prompt is None else self.styled_negative_prompt

    def drawn_prompts_text(self) -> str:
        """Every distinct prompt the job draws, as one text (what its LoRA tags and embeddings are read from)."""
        return " ".join(dict.fromkeys(self.prompts or (self.prompt,)))

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> DreamRequest:
        """The request that remakes an image alone, from its stored params (what it records beside the
        request, such as the model's hash, its add-ons' hashes and the worker, is left out)."""
        return cls.model_validate({k: v for k, v in params.items() if k in cls.model_fields})

    @field_validator("prompt")
    @classmethod
    def _prompt_visible(cls, v: str) -> str:
        v = v.strip()
        if v and not _INVISIBLE.sub("", v):
            raise ValueError("prompt must not be empty (it has no visible characters)")
        return v

    @field_validator("strength")
    @classmethod
    def _repaints_something(cls, v: float | None) -> float | None:
        if v == 0:
            raise ValueError("0 repaints nothing; use a strength above 0 (0.05 changes very little)")
        return v

    @field_validator("width", "height")
    @classmethod
    def _round_to_8(cls, v: int | None) -> int | None:
        return None if v is None else int(round(v / 8) * 8)

    @model_validator(mode="after")
    def _mode_inputs(self) -> DreamRequest:
        needs = {
            "img2img": ("init_image",),
            "inpaint": ("init_image", "init_mask"),
            "outpaint": ("init_image", "zoom_out" if self.outpaint is None else "outpaint"),
            "upscale": ("init_image", "upscale"),
        }.get(self.mode, ())
        for field in needs:
            if getattr(self, field) is None:
                raise ValueError(f"mode {self.mode} needs {field}")
        # An upscale without one keeps its parent's prompt; reference pictures alone are a prompt (Midjourney's).
        if not self.prompt and self.mode != "upscale" and not self.references:
            raise ValueError("prompt: must not be empty")
        if self.mode not in {"variation", "txt2img"} and (self.variation_amount is not None or self.with_variations):
            raise ValueError(f"variations (-v/-V) and {self.mode} do not mix: make the variation first, then "
                             f"{self.mode} the image you like")  # fmt: skip
        if self.refiner is not None and self.mode not in {"variation", "txt2img"}:
            raise ValueError(f"a refiner finishes new images (txt2img and variations), not {self.mode}; "
                             "for an existing image, use the refiner as the model (-m) of an img2img")  # fmt: skip
        if self.references and self.mode in {"upscale", "outpaint"}:
            raise ValueError(f"reference pictures steer txt2img, img2img, inpaint and variations, not {self.mode}")
        if self.controls and self.mode in {"upscale", "outpaint"}:
            raise ValueError(f"a ControlNet steers txt2img, img2img, inpaint and variations, not {self.mode}")
        if self.zoom_out is not None and (self.mode != "outpaint" or self.outpaint is not None):
            raise ValueError("--zoom paints a border around -I (an outpaint of its own): give it without --outpaint")
        if self.hires is not None and self.mode not in {"variation", "txt2img"}:
            raise ValueError(f"the hires fix (--hr) upscales new images (txt2img and variations), not {self.mode}; "
                             "for an existing image, use -U")  # fmt: skip
        if self.seed_resize_from is not None and self.mode not in {"variation", "txt2img"}:
            raise ValueError(f"seed_resize_from draws new noise (txt2img and variations), not {self.mode}")
        masked = self.mode in {"inpaint", "outpaint"}
        if not masked and (self.mask_blur or self.inpaint_fill != "original" or self.inpaint_full_res):
            raise ValueError(f"mask_blur, inpaint_fill and inpaint_full_res shape an inpaint's mask; "
                             f"a {self.mode} has no mask")  # fmt: skip
        if self.upscaler is not None and self.mode != "upscale":
            raise ValueError(f"--upscaler names what makes an upscale (-U), not a {self.mode}; "
                             "the hires fix has --hr_upscaler")  # fmt: skip
        if self.eta is not None and self.sampler != "ddim":
            raise ValueError(f"eta applies to the DDIM sampler (-A ddim), not {self.sampler}")
        if self.prompts is not None and len(self.prompts) != self.n:
            raise ValueError(f"prompts: one per image ({self.n}), got {len(self.prompts)}")
        if self.mode == "variation" and self.variation_amount is None and not self.with_variations:
            raise ValueError("mode variation needs variation_amount or with_variations")
        if self.aspect_ratio is not None and self.width is not None and self.height is not None:
            raise ValueError("give an aspect ratio or both width and height, not all three")
        return self


def default_of(field: str) -> Any:
    """A `DreamRequest` field's default: forms and derived requests read it here, never write it again."""
    return DreamRequest.model_fields[field].default


def resolve_size(request: DreamRequest, default: int) -> tuple[int, int]:
    """Width and height for `request`, given the model's native square size."""

    r8 = round8
    if request.aspect_ratio is None:
        return request.width or default, request.height or default
    aw, ah = request.aspect_ratio
    if request.width is not None:
        return request.width, r8(request.width * ah / aw)
    if request.height is not None:
        return r8(request.height * aw / ah), request.height
    # Midjourney-style: the longer side keeps the model's native size, unless that makes the shorter
    # side smaller than 64 px (a small model): then the shorter side is 64 and the ratio still holds.
    scale = max(default / max(aw, ah), MIN_SIDE / min(aw, ah))
    return r8(aw * scale), r8(ah * scale)


def image_seed(seed: int, index: int) -> int:
    """The seed of image `index` of a request: one convention for every frontend."""
    return (seed + index) % (MAX_SEED + 1)
