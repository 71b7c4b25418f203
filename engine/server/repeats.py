"""Find before you draw: the repeat key of an image, and of each image a request would make.

The key hashes everything that determines an image's pixels: the pipeline's version here, the model (its file's
hash, else its shelf name), the prompt as drawn (styles applied, wildcards chosen), the negative, the seed, the
size as asked, steps, cfg, sampler, strength, the add-ons (name, weight, file hash), the input images by their
content hash, and every knob of the request (hires fix, clip skip, tiling, masks...). A stored image gets its key
when it is stored; a request's keys are computed at submit. When every image of a request is already in the
asker's gallery, the job is answered from it: an index lookup, whatever the gallery's size.

Requests that are never answered so (always drawn): variations, outpaints and upscales (their noise or size comes
from the parent at run time), ControlNets and reference pictures (their net is chosen at run time), refiners,
and requests naming a model by path or hub id.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from engine.client.schema import DEFAULT_STRENGTH, DreamRequest, gallery_id, image_seed
from gallery.stacks import digest
from gallery.store import ImageStore

# Bump when the pipeline's arithmetic changes (a scheduler, the noise, the VAE's decode): older images are then
# no longer answers to new requests.
PIPELINE_VERSION = "2026.12.1"
FINDABLE_MODES = frozenset({"txt2img", "img2img", "inpaint"})
# Request fields that determine the pixels besides the ones keyed explicitly below.
KNOBS = ("steps", "cfg_scale", "sampler", "clip_skip", "tiling", "eta", "seed_resize_from", "hires", "mask_blur",
         "inpaint_fill", "inpaint_full_res", "inpaint_padding")  # fmt: skip

ContentOf = Callable[[str], str | None]  # an image reference -> its content's SHA-256 (None: unknown)


def _addons(made_with: Mapping[str, Any]) -> list:
    loras = [[lo.get("name"), lo.get("weight"), lo.get("hash")] for lo in made_with.get("loras") or []]
    embeddings = [[e.get("name"), e.get("hash")] for e in made_with.get("embeddings") or []]
    return [loras, embeddings]


def _fields(
    *, model: str, prompt: str, negative: str, seed: int, asked: list, mode: str, strength: float | None,
    init: str | None, mask: str | None, addons: list, knobs: Mapping[str, Any],
) -> dict[str, Any]:  # fmt: skip
    return {"v": PIPELINE_VERSION, "model": model, "prompt": prompt, "negative": negative, "seed": seed,
            "asked": asked, "mode": mode, "strength": strength, "init": init, "mask": mask, "addons": addons,
            "knobs": {k: knobs.get(k) for k in KNOBS}}  # fmt: skip


def image_key(params: Mapping[str, Any], *, asked: list | None, model: str | None, prompt: str, negative: str,
              seed: int | None, content_of: ContentOf) -> str | None:  # fmt: skip
    """The repeat key of an image the engine made (None for one no request can repeat)."""
    request = _findable(params)
    if request is None or seed is None or model is None or asked is None or params.get("interrupted"):
        return None
    init, mask = (content_of(r) if r else None for r in (request.init_image, request.init_mask))
    if (request.init_image and init is None) or (request.init_mask and mask is None):
        return None
    fields = _fields(model=params.get("model_hash") or model, prompt=prompt, negative=negative, seed=seed,
                     asked=list(asked), mode=request.mode, strength=params.get("strength"), init=init,
                     mask=mask, addons=_addons(params), knobs=request.model_dump(mode="json"))  # fmt: skip
    return digest(fields)


def request_keys(request: DreamRequest, *, seed: int, model: str, model_hash: str | None, made_with: Mapping,
                 content_of: ContentOf) -> list[str] | None:  # fmt: skip
    """The repeat key of each image `request` would make with job seed `seed` (None: not findable)."""
    if _findable(request.model_dump(mode="json")) is None:
        return None
    init, mask = (content_of(r) if r else None for r in (request.init_image, request.init_mask))
    if (request.init_image and init is None) or (request.init_mask and mask is None):
        return None
    negative = request.drawn_negative_prompt
    strength = None if request.mode == "txt2img" else request.strength or DEFAULT_STRENGTH[request.mode]
    asked = [request.width, request.height, list(request.aspect_ratio) if request.aspect_ratio else None]
    knobs = request.model_dump(mode="json")
    keys = []
    for i in range(request.n):
        prompt = request.prompts[i] if request.prompts else request.prompt
        fields = _fields(model=model_hash or model, prompt=prompt, negative=negative, seed=image_seed(seed, i),
                         asked=asked, mode=request.mode, strength=strength, init=init, mask=mask,
                         addons=_addons(made_with), knobs=knobs)  # fmt: skip
        keys.append(digest(fields))
    return keys


def _findable(params: Mapping[str, Any]) -> DreamRequest | None:
    """The request of a findable image or job (its mode and inputs), else None."""
    if params.get("mode") not in FINDABLE_MODES or params.get("controls") or params.get("references"):
        return None
    if params.get("refiner") or params.get("with_variations") or params.get("variation_amount"):
        return None
    try:
        return DreamRequest.from_params(dict(params) | {"n": 1, "prompts": None})
    except ValueError:
        return None


def content_in(store: ImageStore) -> ContentOf:
    """An image reference's content hash: an upload names its own; a gallery image's is its file's (None when the
    gallery no longer has it)."""

    def content_of(ref: str) -> str | None:
        if ref.startswith("upload:"):
            return ref.removeprefix("upload:")
        image_id = gallery_id(ref)
        found = store.get_many([image_id]) if image_id is not None else []
        return found[0].sha256 if found else None

    return content_of
