"""How each mode turns a request and its input images into calls on a loaded model.

    txt2img     noise from `seed + i`
    variation   the noise of `seed`, blended (slerp) with the noise of `variation_seed + i`
    img2img     the init image, noised by `strength`
    inpaint     the white part of the mask (and the init image's transparent part) repainted;
                everything else is pasted back from the original, pixel for pixel
    outpaint    the canvas grown by the requested sides, then the new border inpainted
    upscale     the configured diffusers upscaler; without one, a Lanczos resample, then an
                img2img detail pass at low strength

`plan()` is called once per job and returns one small frozen plan: its request,
size and per-image seeds, and the inputs its mode cannot run without (required
fields). `run(model, indices, on_step)` makes some of its images with exactly one
call; `records(images, nsfw=, origin=)` turns them into gallery rows whose
parameters remake each image alone. `run_batched` splits
the work into batches that fit (and halves them on out-of-memory).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, TypeVar

import numpy as np
from PIL import Image, ImageFilter, ImageOps

from engine.client import upscalers
from engine.client.errors import InputError
from engine.client.limits import Limits, fit8, input_size, upscaled_size, zoom_border
from engine.client.samplers import SAMPLERS, Sampler
from engine.client.schema import DEFAULT_STRENGTH, MAX_SEED, DreamRequest, HiresFix, image_seed, resolve_size
from engine.device.runner import Resolved
from gallery.schemas import ImageCreate, ImagePublic

if TYPE_CHECKING:  # torch loads with the worker, not with the API that checks requests
    import torch

    from engine.device.pipelines import LoadedModel, StepCallback, Upscaler
    from engine.device.pipelines.model import Control

MASK_THRESHOLD = 128  # mask pixels at or above this repaint; alpha below 255 - this repaints
T = TypeVar("T")
LIMITS = Limits()  # what any engine makes; the job service checked this engine's own at submit


@dataclass(frozen=True)
class Sampling:
    """What every task samples with."""

    prompt: str
    negative_prompt: str
    steps: int
    cfg_scale: float
    sampler: Sampler
    clip_skip: int = 1
    tiling: bool = False
    eta: float | None = None

    @classmethod
    def of(cls, req: DreamRequest, prompt: str | None = None) -> Sampling:
        return cls(req.prompt if prompt is None else prompt, req.drawn_negative_prompt, req.steps, req.cfg_scale,
                   req.sampler, req.clip_skip, req.tiling, req.eta)  # fmt: skip

    def call_args(self, seeds: list[int], on_step: StepCallback) -> dict:
        return dict(prompt=self.prompt, negative_prompt=self.negative_prompt, seeds=seeds, steps=self.steps,
                    cfg_scale=self.cfg_scale, sampler=self.sampler, on_step=on_step, clip_skip=self.clip_skip,
                    tiling=self.tiling, eta=self.eta)  # fmt: skip


@dataclass(frozen=True)
class Origin:
    """Where a plan's images come from, as their gallery rows record it."""

    job_id: str
    model: str  # its shelf name: never a path
    worker: str | None = None
    parent: ImagePublic | None = None
    made_with: dict = field(default_factory=dict)  # the model's hash, LoRAs, embeddings, refiner


@dataclass(frozen=True, kw_only=True)
class Plan:
    """One job's work: its request, output size, and each image's seed (what it records). Each mode's plan
    adds the inputs it cannot run without, as required fields."""

    request: DreamRequest
    width: int
    height: int
    seeds: tuple[int, ...]
    notes: dict = field(default_factory=dict)  # recorded in every image's params
    controls: tuple[Control, ...] = ()  # the request's ControlNets, loaded, their maps at the output size

    @property
    def sampling(self) -> Sampling:
        return Sampling.of(self.request)

    def prompt_of(self, index: int) -> str:
        """Image `index`'s prompt: its wildcards resolved from its seed (the engine did it at submit)."""
        return self.request.prompts[index] if self.request.prompts else self.request.prompt

    def run(self, model: LoadedModel, indices: list[int], on_step: StepCallback) -> list[Image.Image]:
        """Images `indices` of the plan: one call per distinct prompt among them (one call without wildcards)."""
        groups: dict[str, list[int]] = {}
        for i in indices:
            groups.setdefault(self.prompt_of(i), []).append(i)
        made: dict[int, Image.Image] = {}
        for prompt, group in groups.items():
            made |= zip(group, self.call(model, group, Sampling.of(self.request, prompt), on_step), strict=True)
        return [made[i] for i in indices]

    def call(self, model: LoadedModel, indices: list[int], sampling: Sampling, on_step: StepCallback) -> list:
        """Images `indices` of the plan, which share `sampling`'s prompt, as one pipeline call."""
        raise NotImplementedError

    def image_params(self, index: int) -> dict:
        """The request that makes image `index` alone: n=1, its own seed, its own prompt (styles and wildcards
        already applied: the template and the style names are kept beside it)."""
        req = self.request
        params = req.model_dump(mode="json", exclude={"requester", "priority", "preview", "layout", "prompts",
                                                      "styled_negative_prompt", "fresh"})  # fmt: skip
        params.update(n=1, seed=self.seeds[index], width=self.width, height=self.height, **self.notes)
        params.update(prompt=self.prompt_of(index), negative_prompt=self.sampling.negative_prompt)
        if req.prompts:
            params["prompt_template"] = req.prompt
        if req.styles:  # already in prompt and negative: remaking from these params must not apply them again
            params.update(styles=[], styles_applied=list(req.styles))
        return params

    def records(self, images: Sequence[Image.Image], *, nsfw: Sequence[bool], origin: Origin) -> list[ImageCreate]:
        """The gallery rows of this plan's images."""
        req, r, parent = self.request, self.request.requester, origin.parent
        made_with = {"model": origin.model, **origin.made_with} | ({"worker": origin.worker} if origin.worker else {})
        return [
            ImageCreate(
                job_id=origin.job_id,
                index=i,
                width=img.width,
                height=img.height,
                seed=self.seeds[i],
                prompt=self.prompt_of(i),
                negative_prompt=self.sampling.negative_prompt,
                steps=req.steps,
                cfg_scale=req.cfg_scale,
                sampler=SAMPLERS[req.sampler],
                model=origin.model,
                mode=req.mode,
                source=r.source,
                user=r.user,
                guild=r.guild,
                channel=r.channel,
                parent_id=parent.id if parent is not None else None,
                relation=None if req.mode == "txt2img" else req.mode,
                nsfw=nsfw[i],
                worker=origin.worker,
                # the size as asked (None: the model's): what a repeat of the request is compared by
                asked_size=[req.width, req.height, list(req.aspect_ratio) if req.aspect_ratio else None],
                params={**self.image_params(i), **made_with},
            )
            for i, img in enumerate(images)
        ]


@dataclass(frozen=True, kw_only=True)
class Txt2ImgPlan(Plan):
    """Noise from each seed; with `variations`, each image's noise blended with those terms in order."""

    variations: tuple[tuple[tuple[int, float], ...], ...] | None = None

    def call(self, model: LoadedModel, indices: list[int], sampling: Sampling, on_step: StepCallback) -> list:
        latents = None
        resize_from = self.request.seed_resize_from
        if self.variations is not None or resize_from is not None:
            import torch

            shape = model.latent_shape(self.width, self.height)
            from_shape = None if resize_from is None else model.latent_shape(*resize_from)
            terms = self.variations or ((),) * len(self.seeds)
            latents = torch.stack([variation_noise(self.seeds[i], terms[i], shape, from_shape) for i in indices])
        seeds = [self.seeds[i] for i in indices]
        return model.txt2img(width=self.width, height=self.height, latents=latents, controls=self.controls,
                             **sampling.call_args(seeds, on_step))  # fmt: skip

    def image_params(self, index: int) -> dict:
        params = super().image_params(index)
        if self.variations is not None:  # its own terms replay it: no new variation seed
            params.update(
                variation_amount=None,
                variation_seed=None,
                with_variations=[{"seed": s, "weight": w} for s, w in self.variations[index]] or None,
            )
        return params


@dataclass(frozen=True, kw_only=True)
class Img2ImgPlan(Plan):
    """The init image (RGB, at the output size), noised by `strength`, then denoised."""

    image: Image.Image
    strength: float

    def call(self, model: LoadedModel, indices: list[int], sampling: Sampling, on_step: StepCallback) -> list:
        seeds = [self.seeds[i] for i in indices]
        images = model.img2img(image=self.image, strength=self.strength, controls=self.controls,
                               **sampling.call_args(seeds, on_step))  # fmt: skip
        return [_sized(im, self.width, self.height) for im in images]  # an upscale's exact size

    def image_params(self, index: int) -> dict:
        return super().image_params(index) | {"strength": self.strength}


@dataclass(frozen=True, kw_only=True)
class InpaintPlan(Img2ImgPlan):
    """The white part of `mask` repainted; everything else pasted back from the original."""

    mask: Image.Image  # what the pipeline repaints (feathered by mask_blur)
    original: Image.Image | None = None  # what is pasted back, when `image` was prefilled (inpaint_fill)
    crop: tuple[int, int, int, int] | None = None  # inpaint_full_res: the box repainted at full size

    def call(self, model: LoadedModel, indices: list[int], sampling: Sampling, on_step: StepCallback) -> list:
        seeds = [self.seeds[i] for i in indices]
        image, mask, original = self.image, self.mask, self.original or self.image
        if self.crop is not None:  # A1111's "only masked": the box, scaled to the output size, then back
            size = (self.width, self.height)
            image, mask = (im.crop(self.crop).resize(size, Image.Resampling.LANCZOS) for im in (image, mask))
        images = model.inpaint(image=image, mask=mask, strength=self.strength, controls=self.controls,
                               **sampling.call_args(seeds, on_step))  # fmt: skip
        if self.crop is not None:
            box = self.crop
            images = [_pasted(original, im.resize((box[2] - box[0], box[3] - box[1]), Image.Resampling.LANCZOS),
                              box) for im in images]  # fmt: skip
        return [paste_back(im, original, self.mask) for im in images]


@dataclass(frozen=True, kw_only=True)
class UpscalePlan(Plan):
    """The configured upscaler pipeline; an x4 upscaler asked for x2 is resized down."""

    image: Image.Image
    upscaler: Upscaler

    def call(self, model: LoadedModel, indices: list[int], sampling: Sampling, on_step: StepCallback) -> list:
        seeds = [self.seeds[i] for i in indices]
        s = sampling
        images = self.upscaler.upscale(prompt=s.prompt, negative_prompt=s.negative_prompt, image=self.image,
                                       seeds=seeds, steps=s.steps, cfg_scale=s.cfg_scale, on_step=on_step)  # fmt: skip
        return [_sized(im, self.width, self.height) for im in images]


@dataclass(frozen=True, kw_only=True)
class ResamplePlan(Plan):
    """A plain resample (A1111's Lanczos and Nearest upscalers): nothing generated, every image the same."""

    image: Image.Image
    resample: Image.Resampling

    def call(self, model: LoadedModel, indices: list[int], sampling: Sampling, on_step: StepCallback) -> list:
        size = (self.width, self.height)
        image = self.image if self.image.size == size else self.image.resize(size, self.resample)
        return [image.copy() for _ in indices]


def plan(
    req: DreamRequest,
    inputs: Resolved,
    *,
    job_seed: int,
    native_size: int,
    upscaler: Callable[[], Upscaler | None] = lambda: None,
) -> Plan:
    """Work out a job from its request; `job_seed` is the seed the engine settled on at submit time.

    `upscaler`: gives the configured upscaler pipeline, if any (asked only for an upscale; without
    one, upscale resamples, then runs img2img).
    """
    if req.mode == "txt2img":
        width, height = resolve_size(req, native_size)
        return Txt2ImgPlan(request=req, width=width, height=height, seeds=seeds_of(job_seed, req.n))
    if req.mode == "variation":
        width, height = resolve_size(req, native_size)
        earlier = tuple((v.seed, v.weight) for v in req.with_variations or ())
        if req.variation_amount is None:  # -V alone replays given terms: every image is the same
            terms = (earlier,) * req.n
        else:
            base = req.variation_seed if req.variation_seed is not None else job_seed
            terms = tuple((*earlier, (image_seed(base, i), req.variation_amount)) for i in range(req.n))
        return Txt2ImgPlan(request=req, width=width, height=height, seeds=(job_seed,) * req.n, variations=terms)

    assert inputs.init is not None  # the schema requires init_image for every other mode
    seeds = seeds_of(job_seed, req.n)
    strength = req.strength if req.strength is not None else DEFAULT_STRENGTH[req.mode]
    if req.mode == "upscale":
        return _upscale_plan(req, inputs.init, seeds, strength, upscaler)

    width, height = input_size(req, inputs.init.size)
    if req.mode != "outpaint":  # an outpaint grows small pictures (infinite zoom starts from them)
        iw, ih = inputs.init.size
        LIMITS.check_made(f"a {iw}x{ih} init image would make a {width}x{height} picture", width, height)
    init = inputs.init.resize((width, height), Image.Resampling.LANCZOS)
    if req.mode == "img2img":
        return Img2ImgPlan(request=req, width=width, height=height, seeds=seeds, image=_rgb(init), strength=strength)
    mask = _mask_of(init, inputs.mask)
    if req.mode == "outpaint" and req.zoom_out is not None:  # Midjourney's Zoom Out: grow, then back to the size
        bx, by = zoom_border(width, req.zoom_out), zoom_border(height, req.zoom_out)
        init, mask = grow_canvas(init, mask, bx, by, bx, by)
        init = init.resize((width, height), Image.Resampling.LANCZOS)
        mask = mask.resize((width, height), Image.Resampling.NEAREST)
    elif req.mode == "outpaint":
        assert req.outpaint is not None
        init, mask = grow_canvas(init, mask, req.outpaint.left, req.outpaint.top, req.outpaint.right,
                                 req.outpaint.bottom)  # fmt: skip
        width, height = init.size
        LIMITS.check_made(f"outpainting would make a {width}x{height} image", width, height)
    if not np.asarray(mask).any():
        raise InputError("the mask is all black: nothing to repaint (white marks what to repaint)")
    original = _rgb(init)
    image = prefilled(original, mask, req.inpaint_fill, job_seed)
    crop = masked_box(mask, req.inpaint_padding, width, height) if req.inpaint_full_res else None
    if req.mask_blur:  # A1111 feathers the mask it repaints and pastes back through
        mask = mask.filter(ImageFilter.GaussianBlur(req.mask_blur))
    return InpaintPlan(request=req, width=width, height=height, seeds=seeds, image=image, mask=mask,
                       strength=strength, original=original if image is not original else None, crop=crop)  # fmt: skip


def _upscale_plan(
    req: DreamRequest, init: Image.Image, seeds: tuple[int, ...], strength: float,
    upscaler: Callable[[], Upscaler | None],
) -> Plan:  # fmt: skip
    """An upscale by the named upscaler (engine.client.upscalers): the image's `upscaler` note says what ran."""
    assert req.upscale is not None
    factor = req.upscale
    width, height = upscaled_size(factor, init.size)
    LIMITS.check_made(f"a x{factor:g} upscale of a {init.width}x{init.height} image would be {width}x{height}",
                      width, height)  # fmt: skip
    common = dict(request=req, width=width, height=height, seeds=seeds)
    name = upscalers.canonical(req.upscaler)
    if factor == 1 or name in upscalers.RESAMPLERS:  # x1 returns the image as it is, as A1111 does
        resample = Image.Resampling.NEAREST if name == "Nearest" else Image.Resampling.LANCZOS
        note = "none (x1: the image as it is)" if factor == 1 else f"{name} x{factor:g}"
        return ResamplePlan(**common, notes={"upscaler": note}, image=_rgb(init), resample=resample)
    pipeline = upscaler() if name != upscalers.DETAIL else None
    missing = "" if name in (None, upscalers.DETAIL) or (pipeline and pipeline.name == name) else name
    why = f" ({missing} is not on this engine)" if missing else ""
    if pipeline is not None:
        note = f"{pipeline.name} (x{pipeline.factor})"
        if pipeline.factor != factor:
            note += f", resized to x{factor:g}"
        return UpscalePlan(**common, notes={"upscaler": note + why}, image=_rgb(init), upscaler=pipeline)
    # the detail pass runs at the multiple of 8 nearest the exact size, which it is resized to after
    image = _rgb(init).resize((fit8(width), fit8(height)), Image.Resampling.LANCZOS)
    note = f"lanczos x{factor:g} + img2img detail pass at strength {strength:g}{why}"
    return Img2ImgPlan(**common, notes={"upscaler": note}, image=image, strength=strength)


def hires(
    model: LoadedModel, images: list[Image.Image], work: Plan, on_step_for: Callable[[int], StepCallback]
) -> list[Image.Image]:
    """A1111's hires fix: each first-pass image upscaled, then repainted by img2img at the larger size with its
    own seed (the second pass's prompt and steps when given)."""
    fix = work.request.hires
    assert fix is not None
    size = fix.size(work.width, work.height)
    resample = Image.Resampling.NEAREST if upscalers.canonical(fix.upscaler) == "Nearest" else Image.Resampling.LANCZOS
    out = []
    for i, img in enumerate(images):
        s = Sampling.of(work.request, fix.prompt or work.prompt_of(i))
        s = dataclasses.replace(s, negative_prompt=fix.negative_prompt if fix.negative_prompt is not None
                                else s.negative_prompt, steps=fix.steps or s.steps)  # fmt: skip
        out += model.img2img(image=img.resize(size, resample), strength=fix.strength, controls=(),
                             **s.call_args([work.seeds[i]], on_step_for(i)))  # fmt: skip
    return out


def hires_note(fix: HiresFix) -> str:
    """The hires upscaler as the image records it: A1111's name when it resampled by it, else what ran instead."""
    name = upscalers.canonical(fix.upscaler)
    return name if name in upscalers.RESAMPLERS else f"Lanczos ({name} is not on this engine)"


def refine(
    refiner: LoadedModel, images: list[Image.Image], work: Plan, switch: float,
    on_step_for: Callable[[int], StepCallback],
) -> list[Image.Image]:  # fmt: skip
    """A1111's refiner: a second model finishes each image, as img2img over the last (1 - switch) of the
    steps, with the image's own seed."""
    s = work.sampling
    return [refiner.img2img(image=img, strength=1 - switch,
                            **dataclasses.replace(s, prompt=work.prompt_of(i)).call_args([work.seeds[i]],
                                                                                         on_step_for(i)))[0]
            for i, img in enumerate(images)]  # fmt: skip


def seeds_of(job_seed: int, n: int) -> tuple[int, ...]:
    return tuple(image_seed(job_seed, i) for i in range(n))


def run_batched(
    count: int,
    run: Callable[[list[int], int, int], list[T]],
    *,
    max_batch: int | None = None,
    is_out_of_memory: Callable[[BaseException], bool],
    on_retry: Callable[[int], None] = lambda batch: None,
) -> list[T]:
    """`run(indices, chunk_no, chunks)` over `count` items in batches of at most `max_batch` (all at once
    when None); on out-of-memory the batch is halved and the whole job starts again, down to one."""
    batch = max(1, min(count, max_batch or count))
    while True:
        try:
            out: list[T] = []
            chunks = [list(range(i, min(i + batch, count))) for i in range(0, count, batch)]
            for c, chunk in enumerate(chunks):
                out += run(chunk, c, len(chunks))
            return out
        except Exception as e:
            if not is_out_of_memory(e) or batch == 1:
                raise
            batch = max(1, batch // 2)
            on_retry(batch)


def _sized(image: Image.Image, width: int, height: int) -> Image.Image:
    return image if image.size == (width, height) else image.resize((width, height), Image.Resampling.LANCZOS)


def _pasted(original: Image.Image, patch: Image.Image, box: tuple[int, int, int, int]) -> Image.Image:
    out = original.copy()
    out.paste(patch, box[:2])
    return out


def _rgb(image: Image.Image) -> Image.Image:
    return image.convert("RGB") if image.mode != "RGB" else image


def _mask_of(init: Image.Image, mask: Image.Image | None) -> Image.Image:
    """White where to repaint: the given mask, plus the init image's transparent pixels."""
    repaint = np.zeros((init.height, init.width), dtype=bool)
    if mask is not None:
        repaint |= np.asarray(mask.resize(init.size, Image.Resampling.NEAREST)) >= MASK_THRESHOLD
    if init.mode == "RGBA":
        repaint |= np.asarray(init.getchannel("A")) <= 255 - MASK_THRESHOLD
    return Image.fromarray((repaint * 255).astype(np.uint8), "L")


def grow_canvas(
    image: Image.Image, mask: Image.Image, left: int, top: int, right: int, bottom: int
) -> tuple[Image.Image, Image.Image]:
    """The image on a larger canvas (new pixels: its edges stretched outwards) and the mask grown to match,
    white over the new border."""
    pad = ((top, bottom), (left, right))
    pixels = np.pad(np.asarray(_rgb(image)), (*pad, (0, 0)), mode="edge")
    grown = np.pad(np.asarray(mask), pad, mode="constant", constant_values=255)
    return Image.fromarray(pixels, "RGB"), Image.fromarray(grown, "L")


def fit(control: Image.Image, width: int, height: int, resize: str = "crop") -> Image.Image:
    """A control map at the output size, by A1111's resize modes: `crop` (its default "Crop and Resize": scaled
    to cover, centre cropped), `just` (stretched), `fill` ("Resize and Fill": scaled to fit inside, padded
    black, the colour of "nothing here" in a map)."""
    size, lanczos = (width, height), Image.Resampling.LANCZOS
    if control.size == size:
        return control
    if resize == "just":
        return control.resize(size, lanczos)
    if resize == "fill":
        return ImageOps.pad(control, size, lanczos, color=(0, 0, 0))
    return ImageOps.fit(control, size, lanczos)


def prefilled(image: Image.Image, mask: Image.Image, fill: str, seed: int) -> Image.Image:
    """What the masked part starts from (A1111's inpainting_fill), in pixels before the VAE: `original` keeps it,
    `fill` paints it from the colours around it (OpenCV's inpainting), `noise` seeded noise, `nothing` flat grey
    (about what a zero latent decodes to)."""
    if fill == "original":
        return image
    hard = np.asarray(mask) >= MASK_THRESHOLD
    pixels = np.asarray(image).copy()
    if fill == "fill":
        import cv2

        pixels = cv2.inpaint(pixels, hard.astype(np.uint8) * 255, 8, cv2.INPAINT_TELEA)
    elif fill == "noise":
        noise = np.random.default_rng(seed).integers(0, 256, pixels.shape, dtype=np.uint8)
        pixels[hard] = noise[hard]
    else:
        pixels[hard] = 127
    return Image.fromarray(pixels, "RGB")


def masked_box(mask: Image.Image, padding: int, width: int, height: int) -> tuple[int, int, int, int]:
    """A1111's "only masked" crop: the mask's box grown by `padding`, then to the output's aspect ratio,
    within the picture."""
    x0, y0, x1, y1 = mask.point(lambda v: 255 if v >= MASK_THRESHOLD else 0).getbbox() or (0, 0, width, height)
    x0, y0, x1, y1 = max(0, x0 - padding), max(0, y0 - padding), min(width, x1 + padding), min(height, y1 + padding)
    w, h = x1 - x0, y1 - y0
    if w / h < width / height:  # too tall: widen
        w = min(width, round(h * width / height))
    else:
        h = min(height, round(w * height / width))
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    x0, y0 = int(min(max(0, cx - w / 2), width - w)), int(min(max(0, cy - h / 2), height - h))
    return x0, y0, x0 + w, y0 + h


def paste_back(generated: Image.Image, original: Image.Image, mask: Image.Image) -> Image.Image:
    """Keep the original wherever the mask does not repaint (the latent mask is coarser than pixels)."""
    return Image.composite(generated, original, mask)


def variation_noise(
    seed: int, terms: Sequence[tuple[int, float]], shape: tuple[int, ...], from_shape: tuple[int, ...] | None = None
) -> torch.Tensor:
    """The starting noise of `seed`, blended in turn with each term's noise (A1111 and InvokeAI's -V). With
    `from_shape` (A1111's seed_resize_from), the centre of the seed's noise at that shape is laid over it, so the
    seed keeps its composition at another size."""
    import torch

    noise = torch.randn(shape, generator=torch.Generator("cpu").manual_seed(seed))
    if from_shape is not None and from_shape != shape:
        small = torch.randn(from_shape, generator=torch.Generator("cpu").manual_seed(seed))
        (_, h, w), (_, sh, sw) = shape, from_shape
        dy, dx = (h - sh) // 2, (w - sw) // 2
        ch, cw = min(h, sh), min(w, sw)
        ty, tx, sy, sx = max(dy, 0), max(dx, 0), max(-dy, 0), max(-dx, 0)
        noise[:, ty : ty + ch, tx : tx + cw] = small[:, sy : sy + ch, sx : sx + cw]
    for var_seed, weight in terms:
        other = torch.randn(shape, generator=torch.Generator("cpu").manual_seed(var_seed % (MAX_SEED + 1)))
        noise = slerp(weight, noise, other)
    return noise


def slerp(t: float, v0: torch.Tensor, v1: torch.Tensor) -> torch.Tensor:
    """Spherical interpolation: blended Gaussian noise keeps the norm the sampler expects."""
    dot = float((v0 * v1).sum() / (v0.norm() * v1.norm()))
    if abs(dot) > 0.9995:
        return (1 - t) * v0 + t * v1
    omega = math.acos(dot)
    return (math.sin((1 - t) * omega) * v0 + math.sin(t * omega) * v1) / math.sin(omega)
