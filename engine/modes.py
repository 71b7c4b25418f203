"""How each mode turns a request and its input images into generator calls.

    txt2img     noise from `seed + i`
    variation   the noise of `seed`, blended (slerp) with the noise of `variation_seed + i`
    img2img     the init image, noised by `strength`
    inpaint     the white part of the mask (and the init image's transparent part) repainted;
                everything else is pasted back from the original, pixel for pixel
    outpaint    the canvas grown by the requested sides, then the new border inpainted
    upscale     the configured diffusers upscaler; without one, a Lanczos resample, then an
                img2img detail pass at low strength

A `Plan` is made once per job; the worker runs it in batches (`run`) and
asks it for each image's own parameters, which reproduce that image alone.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
from PIL import Image

from engine.inputs import InputError, Resolved
from engine.pipelines import Generator, StepCallback, Upscaler
from engine.schema import DEFAULT_STRENGTH, MAX_SEED, DreamRequest, image_seed, resolve_size

MAX_SIDE = 2048
MASK_THRESHOLD = 128  # mask pixels at or above this repaint; alpha below 255 - this repaints


@dataclass
class Plan:
    """One job's work: which task, at what size, on which inputs, and each image's seed."""

    task: str  # txt2img, img2img or inpaint (the generator's methods), or upscale (the upscaler pipeline)
    width: int
    height: int
    seeds: list[int]  # what each image records as its seed
    image: Image.Image | None = None  # RGB input at width x height
    mask: Image.Image | None = None  # L, white = repaint
    strength: float | None = None
    variations: list[list[tuple[int, float]]] | None = None  # per image: (seed, weight) blended in order
    notes: dict = field(default_factory=dict)  # recorded in every image's params
    upscaler: Upscaler | None = None

    def run(self, gen: Generator, req: DreamRequest, indices: list[int], on_step: StepCallback) -> list[Image.Image]:
        """Images `indices` of the plan, as one batch."""
        seeds = [self.seeds[i] for i in indices]
        common = dict(prompt=req.prompt, negative_prompt=req.negative_prompt, seeds=seeds, steps=req.steps,
                      cfg_scale=req.cfg_scale, sampler=req.sampler, on_step=on_step)  # fmt: skip
        if self.task == "txt2img":
            latents = None
            if self.variations is not None:
                shape = gen.latent_shape(self.width, self.height)
                latents = torch.stack([variation_noise(self.seeds[i], self.variations[i], shape) for i in indices])
            return gen.txt2img(width=self.width, height=self.height, latents=latents, **common)
        if self.task == "img2img":
            return gen.img2img(image=self.image, strength=self.strength, **common)
        if self.task == "upscale":
            assert self.upscaler is not None
            images = self.upscaler(image=self.image, **common)
            size = (self.width, self.height)  # an x4 upscaler asked for x2 is resized down
            return [im.resize(size, Image.Resampling.LANCZOS) if im.size != size else im for im in images]
        images = gen.inpaint(image=self.image, mask=self.mask, strength=self.strength, **common)
        return [paste_back(im, self.image, self.mask) for im in images]

    def image_params(self, req: DreamRequest, index: int) -> dict:
        """The request that makes image `index` alone: n=1, its own seed (and its variation terms)."""
        params = req.model_dump(mode="json", exclude={"requester", "priority", "preview", "layout"})
        params.update(n=1, seed=self.seeds[index], width=self.width, height=self.height, **self.notes)
        if self.variations is not None:
            params.update(
                variation_amount=None,
                variation_seed=None,
                with_variations=[{"seed": s, "weight": w} for s, w in self.variations[index]] or None,
            )
        if self.strength is not None:
            params["strength"] = self.strength
        return params


def plan(
    req: DreamRequest, inputs: Resolved, *, job_seed: int, native_size: int, upscaler: Upscaler | None = None
) -> Plan:
    """Work out a job from its request; `job_seed` is the seed the engine settled on at submit time.

    `upscaler`: the configured upscaler pipeline, if any (otherwise upscale resamples, then img2img).
    """
    if req.mode == "txt2img":
        width, height = resolve_size(req, native_size)
        return Plan("txt2img", width, height, [image_seed(job_seed, i) for i in range(req.n)])
    if req.mode == "variation":
        width, height = resolve_size(req, native_size)
        earlier = [(v.seed, v.weight) for v in req.with_variations or ()]
        if req.variation_amount is None:  # -V alone replays given terms: every image is the same
            terms = [earlier] * req.n
        else:
            base = req.variation_seed if req.variation_seed is not None else job_seed
            terms = [[*earlier, (image_seed(base, i), req.variation_amount)] for i in range(req.n)]
        return Plan("txt2img", width, height, [job_seed] * req.n, variations=terms)

    assert inputs.init is not None  # the schema requires init_image for every other mode
    seeds = [image_seed(job_seed, i) for i in range(req.n)]
    strength = req.strength if req.strength is not None else DEFAULT_STRENGTH[req.mode]
    if req.mode == "upscale":
        assert req.upscale is not None
        width, height = (_fit8(inputs.init.width * req.upscale), _fit8(inputs.init.height * req.upscale))
        if max(width, height) > MAX_SIDE:
            raise InputError(
                f"a x{req.upscale} upscale of a {inputs.init.width}x{inputs.init.height} image would be "
                f"{width}x{height}; the largest is {MAX_SIDE} per side"
            )
        if upscaler is not None:
            note = f"{upscaler.name} (x{upscaler.factor})"
            if upscaler.factor != req.upscale:
                note += f", resized to x{req.upscale}"
            return Plan("upscale", width, height, seeds, image=_rgb(inputs.init), notes={"upscaler": note},
                        upscaler=upscaler)  # fmt: skip
        image = _rgb(inputs.init).resize((width, height), Image.Resampling.LANCZOS)
        note = f"lanczos x{req.upscale} + img2img detail pass at strength {strength:g}"
        return Plan("img2img", width, height, seeds, image=image, strength=strength, notes={"upscaler": note})

    width, height = _input_size(req, inputs.init)
    init = inputs.init.resize((width, height), Image.Resampling.LANCZOS)
    if req.mode == "img2img":
        return Plan("img2img", width, height, seeds, image=_rgb(init), strength=strength)
    mask = _mask_of(init, inputs.mask)
    if req.mode == "outpaint":
        assert req.outpaint is not None
        init, mask = grow_canvas(init, mask, req.outpaint.left, req.outpaint.top, req.outpaint.right,
                                 req.outpaint.bottom)  # fmt: skip
        width, height = init.size
        if max(width, height) > MAX_SIDE:
            raise InputError(f"outpainting would make a {width}x{height} image; the largest is {MAX_SIDE} per side")
    if not np.asarray(mask).any():
        raise InputError("the mask is all black: nothing to repaint (white marks what to repaint)")
    return Plan("inpaint", width, height, seeds, image=_rgb(init), mask=mask, strength=strength)


def _fit8(v: float) -> int:
    """Down to a multiple of 8 (the VAE's stride). Small inputs stay small: an outpaint grows them."""
    return max(8, int(v) // 8 * 8)


def _input_size(req: DreamRequest, init: Image.Image) -> tuple[int, int]:
    """-W/-H if given; else the init image's size, shrunk to fit 2048 a side, in multiples of 8."""
    if req.width is not None and req.height is not None:
        return req.width, req.height
    w, h = init.size
    if req.width is not None:
        return req.width, _fit8(req.width * h / w)
    if req.height is not None:
        return _fit8(req.height * w / h), req.height
    scale = min(1.0, MAX_SIDE / max(w, h))
    return _fit8(w * scale), _fit8(h * scale)


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


def paste_back(generated: Image.Image, original: Image.Image, mask: Image.Image) -> Image.Image:
    """Keep the original wherever the mask does not repaint (the latent mask is coarser than pixels)."""
    return Image.composite(generated, original, mask)


def variation_noise(seed: int, terms: list[tuple[int, float]], shape: tuple[int, ...]) -> torch.Tensor:
    """The starting noise of `seed`, blended in turn with each term's noise (A1111 and InvokeAI's -V)."""
    noise = torch.randn(shape, generator=torch.Generator("cpu").manual_seed(seed))
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
