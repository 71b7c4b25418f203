"""CLIP embeddings for search: one open_clip model per gallery.

The built-in toy CLIP (models/toy-clip) is the default. Any open_clip model
name with a pretrained tag (`ViT-B-32` + `laion2b_s34b_b79k`) or a local
weights file loads through the same `open_clip.create_model_and_transforms`
call; a custom architecture can be given as the path of its JSON config.
"""

from __future__ import annotations

import functools
import hashlib
import logging
from abc import ABC, abstractmethod
from concurrent.futures import Future
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

log = logging.getLogger(__name__)

BUILTIN_CLIP_NAME = "dreamhall-toy-clip"


class EmbedderError(Exception):
    """A CLIP model that could not be loaded or used; the message says why."""


def builtin_clip_dir() -> Path:
    return Path(str(resources.files("models") / "toy-clip"))


class Embedder(ABC):
    """Turns images and texts into comparable, L2-normalised vectors."""

    model_id: str
    dim: int
    # The cosine under which a CLIP-only search hit is noise rather than a match. Real CLIP models put
    # a matching text and image at 0.25-0.35 and unrelated ones below 0.2; the built-in toy CLIP (a
    # small vocabulary, unknown words pointing anywhere) is calibrated in OpenClipEmbedder.
    relevance_floor: float = 0.2

    @abstractmethod
    def embed_images(self, images: list[Image.Image]) -> np.ndarray:
        """(N, dim) float32 unit vectors."""

    @abstractmethod
    def embed_texts(self, texts: list[str]) -> np.ndarray:
        """(N, dim) float32 unit vectors."""

    def embed_texts_soon(self, texts: list[str]) -> Future[np.ndarray]:
        """`embed_texts`, computed while the caller does other work where the embedder has a thread of its own
        (here: at once)."""
        future: Future[np.ndarray] = Future()
        try:
            future.set_result(self.embed_texts(texts))
        except Exception as e:  # raised by the caller's `result()`
            future.set_exception(e)
        return future


def _file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:12]


class OpenClipEmbedder(Embedder):
    """open_clip on the given device (fp16 on CUDA, fp32 elsewhere), batched."""

    def __init__(
        self, name: str | None = None, pretrained: str | None = None, *, device: str = "cpu", batch_size: int = 64
    ) -> None:
        if name is None:
            name = str(builtin_clip_dir() / f"{BUILTIN_CLIP_NAME}.json")
            pretrained = str(builtin_clip_dir() / "open_clip_model.safetensors")
            log.info("using the built-in toy CLIP; set `clip_model = ...` for real search")
            # Measured on 200 toy images: a caption's own image sits at 0.89-0.95, the images of a
            # "colour shape" query at 0.58-0.77; "xyzzy plugh" reaches 0.57 at most.
            self.relevance_floor = 0.6
        import open_clip  # here, not at import: the engine's first job needs no CLIP (it loads after it)

        if name.endswith(".json"):
            # open_clip does not store the architecture in the checkpoint: register it first.
            config = Path(name)
            if not config.is_file():
                raise EmbedderError(f"CLIP config {config} does not exist")
            open_clip.add_model_config(config)
            name = config.stem
        self.device = torch.device(device)
        precision = "fp16" if self.device.type == "cuda" else "fp32"
        try:
            model, _, preprocess = open_clip.create_model_and_transforms(
                name, pretrained=pretrained, device=self.device, precision=precision
            )
        except (RuntimeError, OSError, ValueError) as e:
            raise EmbedderError(f"could not load CLIP model {name!r} ({pretrained or 'no weights'}): {e}") from e
        self.model = model.eval()
        self.text_model = _bf16_text_tower(self.model) if self.device.type == "cpu" and _native_bf16() else self.model
        self.preprocess = preprocess
        self.tokenizer = open_clip.get_tokenizer(name)
        self.batch_size = batch_size
        weights = Path(pretrained) if pretrained else None
        tag = _file_digest(weights) if weights is not None and weights.is_file() else (pretrained or "random")
        self.model_id = f"{name}/{tag}"
        self.texts = TextTower(self.text_model, self.tokenizer, self.device, self.batch_size)
        self.dim = self.texts.dim

    @torch.inference_mode()
    def embed_images(self, images: list[Image.Image]) -> np.ndarray:
        out = []
        for i in range(0, len(images), self.batch_size):
            batch = torch.stack([self.preprocess(im.convert("RGB")) for im in images[i : i + self.batch_size]])
            feats = self.model.encode_image(batch.to(self.device, dtype=next(self.model.parameters()).dtype))
            out.append(torch.nn.functional.normalize(feats.float(), dim=-1).cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, self.dim), dtype=np.float32)

    def embed_texts(self, texts: list[str]) -> np.ndarray:
        return self.texts(texts)

    def text_tower(self) -> TextTower:
        """A copy of the text side alone (its own weights, shareable with another process; the image tower is
        not copied), computing what embed_texts does."""
        return TextTower(_text_copy(self.text_model), self.tokenizer, self.device, self.batch_size)


class TextTower:
    """CLIP's text side: words -> (N, dim) float32 unit vectors. Picklable (its tensors go to shared memory when
    it is sent to another process)."""

    def __init__(self, model: Any, tokenizer: Any, device: torch.device, batch_size: int) -> None:
        self.model, self.tokenizer, self.device, self.batch_size = model, tokenizer, device, batch_size

    @functools.cached_property
    def dim(self) -> int:
        """The vectors' width: the text projection's, or (a model without one) a probe's."""
        projection = int(self.model.text_projection.shape[1]) if hasattr(self.model, "text_projection") else 0
        return projection or int(self(["probe"]).shape[1])

    @torch.inference_mode()
    def __call__(self, texts: list[str]) -> np.ndarray:
        out = []
        for i in range(0, len(texts), self.batch_size):
            tokens = self.tokenizer(texts[i : i + self.batch_size]).to(self.device)
            feats = encode_text_to_end(self.model, tokens)
            out.append(torch.nn.functional.normalize(feats.float(), dim=-1).cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, self.dim), dtype=np.float32)


def _native_bf16() -> bool:
    probe = getattr(torch.cpu, "_is_avx512_bf16_supported", None)  # private, so looked up with care
    return bool(probe and probe())


def _bf16_text_tower(model: Any) -> Any:
    """A bfloat16 copy of the model without its image tower, for searches' texts on a CPU that computes bf16.

    A search embeds a few words: the text tower's time is reading its weights (150 MB in fp32 for ViT-B-32),
    and half the bytes take half the time (24 -> 12 ms here); the vectors stay within 2e-4 cosine of fp32's
    (9e-5 at worst seen).
    Images keep the fp32 tower: their vectors are stored, and the gallery compares them with each other."""
    visual = getattr(model, "visual", None)
    if visual is None:
        return model
    return _text_copy(model).to(torch.bfloat16).eval()


def _text_copy(model: Any) -> Any:
    """A copy of an open_clip model without its image tower (the text side's weights only)."""
    import copy

    visual = getattr(model, "visual", None)
    model.visual = None  # not copied
    try:
        return copy.deepcopy(model).eval()
    finally:
        model.visual = visual


def encode_text_to_end(model: Any, tokens: torch.Tensor) -> torch.Tensor:
    """CLIP's text features, running the text tower only up to the batch's last end token.

    CLIP's text transformer is causal and pools at the end token, so the padding after it cannot change the
    result: a five-word query runs ~8 positions instead of 77 (the same vector, to float rounding). Models that
    pool otherwise (or have no causal mask) run open_clip's own encode_text."""
    import open_clip

    if not (isinstance(model, open_clip.model.CLIP) and model.text_pool_type == "argmax"
            and getattr(model, "attn_mask", None) is not None):  # fmt: skip
        return model.encode_text(tokens)
    n = int(tokens.argmax(dim=-1).max()) + 1  # the end token has the vocabulary's largest id: argmax finds it
    tokens = tokens[:, :n]
    cast = model.transformer.get_cast_dtype()
    x = model.token_embedding(tokens).to(cast) + model.positional_embedding[:n].to(cast)
    x = model.ln_final(model.transformer(x, attn_mask=model.attn_mask[:n, :n]))
    x = x[torch.arange(x.shape[0]), tokens.argmax(dim=-1)]
    projection: Any = model.text_projection  # a matrix, or a Linear in some open_clip models
    if isinstance(projection, torch.nn.Linear):
        return projection(x)
    return x @ projection
