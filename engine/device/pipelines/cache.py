"""The pipeline cache: the loaded models within a memory budget (LRU; the model in use always stays)."""

from __future__ import annotations

import functools
import json
import logging
import math
import threading
import time
from collections import OrderedDict
from pathlib import Path

import diffusers

from engine.device.device import Device
from engine.device.pipelines.loading import load_controlnet_file
from engine.device.pipelines.model import LoadedModel, load_model
from engine.device.pipelines.upscaler import Upscaler, load_upscaler
from engine.device.runner import Affinity
from engine.device.shelf import CHECKPOINT_SUFFIXES, Item, Shelf, UnknownModel, default_model_name

log = logging.getLogger(__name__)
MAX_CONTROLNETS = 4  # a request steers with up to MAX_CONTROLS; these are kept loaded between jobs


class PipelineCache:
    """Keeps the models in use within a memory budget (LRU) and hands out their task pipelines.

    Models are named by their shelf name; a path or hub id (the CLI's) loads too, and is
    recorded by its file name, never its full path. The model being used is never evicted,
    so one model over the budget still loads (alone).
    """

    def __init__(
        self, device: Device, default_model: str | None, *, safety_check: bool = True, upscaler: str | None = None,
        shelf: Shelf | None = None, budget_bytes: int | None = None, compile: str = "off",
    ) -> None:  # fmt: skip
        self.device = device
        self.default_model = default_model
        self.safety_check = safety_check
        self.upscaler_ref = upscaler
        self.shelf = shelf or Shelf(None)
        self.budget_bytes = device.model_budget() if budget_bytes is None else budget_bytes
        self.compile = compile == "on" or (compile == "auto" and device.type == "cuda")
        self._upscaler: Upscaler | None = None
        self._lock = threading.Lock()
        self._models: OrderedDict[str, LoadedModel] = OrderedDict()  # least recently used first
        self._controlnets: OrderedDict[Path, diffusers.ModelMixin] = OrderedDict()
        self.loading: str | None = None  # the model being loaded now (health reports it)
        self.loads = 0  # how many times a model was loaded (benchmarks and tests read it)
        self.evictions = 0  # how many models were unloaded to stay within the budget
        self.peak_bytes = 0  # the most weights this cache has held at once, a newcomer included

    def default_name(self) -> str:
        return default_model_name(self.default_model)

    def _key(self, ref: str | None) -> str:
        return ref or self.default_name()

    def is_loaded(self, ref: str | None) -> bool:
        return self._key(ref) in self._models

    def affinity(self) -> Affinity:
        """What the queue needs to spare this worker a reload."""
        return Affinity(loaded=frozenset(self._models), default_model=self.default_name())

    def native_sizes(self) -> dict[str, int]:
        """Each loaded model's native size, by the name requests use (the size of a batch's images)."""
        return {key: model.native_size for key, model in self._models.items()}

    def loaded(self) -> list[str]:
        """Names of the models in memory, most recently used first."""
        return [m.name for m in reversed(self._models.values())]

    def stats(self) -> dict[str, float | None]:
        """What the engine's metrics show of this cache (engine.server.metrics)."""
        return {
            "bytes": self._held(),
            "budget": self.budget_bytes,
            "loads": self.loads,
            "evictions": self.evictions,
            "device_bytes": self.device.memory_allocated(),
        }

    def _locate(self, key: str) -> tuple[str | None, str]:
        """(what the loader loads: a path, hub id or None for the built-in model; the name images record)."""
        try:
            item = self.shelf.find("checkpoint", key)
        except UnknownModel:
            path = Path(key).expanduser()
            return key, (path.stem if path.suffix in CHECKPOINT_SUFFIXES else path.name or key)
        return (str(item.path) if item.path is not None else None), item.name

    def model(self, ref: str | None) -> LoadedModel:
        """Model `ref` (None: the configured default), loading it if needed."""
        key = self._key(ref)
        with self._lock:
            if key in self._models:
                self._models.move_to_end(key)
                return self._models[key]
            load, name = self._locate(key)
            if load is None:
                log.info("using the built-in toy models; set `model = ...` in the config for real images")
            self.loading = name
            # Make room first: holding the old models while the newcomer loads is what runs a machine out of
            # memory on a switch (two real SD 1.5 files: ~13 GB at once on a CPU with a quarter of RAM budgeted).
            self._make_room(estimate_bytes(load, self.device.dtype.itemsize) if load is not None else None)
            started = time.perf_counter()
            attempt = functools.partial(load_model, load, self.device, safety_check=self.safety_check,
                                        configs=self.shelf.configs)  # fmt: skip
            try:
                try:
                    model = attempt()
                except Exception as e:
                    if not self.device.is_out_of_memory(e) or not self._models:
                        raise
                    log.warning("out of memory loading %s; unloading the other models and trying again", name)
                    self.unload()
                    model = attempt()
                model.name = name
                if self.compile:
                    model.compile()
                if load is not None and Path(load).is_file():
                    model.hash = self.shelf.short_hash(Path(load), "checkpoint")
            finally:
                self.loading = None
            self.loads += 1
            self._models[key] = model
            self.peak_bytes = max(self.peak_bytes, self._held())
            self._evict()
            log.info("loaded model %s (%s, %.2f GB) on %s in %.1f s; in memory: %s", name, model.family,
                     model.nbytes / 1e9, self.device.describe(), time.perf_counter() - started,
                     ", ".join(self.loaded()))  # fmt: skip
            return model

    def _make_room(self, newcomer: int | None) -> None:
        """Before a load: unload least recently used models until the newcomer (its estimated bytes) fits."""
        evicted = False
        while newcomer is not None and self._models and self._held() + newcomer > self.budget_bytes:
            _, old = self._models.popitem(last=False)
            log.info("unloading model %s (%.2f GB) before loading a %.2f GB one, to stay within the %.1f GB model "
                     "cache", old.name, old.nbytes / 1e9, newcomer / 1e9, self.budget_bytes / 1e9)  # fmt: skip
            self.evictions += 1
            evicted = True
        if evicted:
            self.device.free_memory()

    def _held(self) -> int:
        return sum(m.nbytes for m in self._models.values())

    def _evict(self) -> None:
        """Drop least recently used models until the rest fit the budget (the newest always stays)."""
        evicted = False
        while len(self._models) > 1 and self._held() > self.budget_bytes:
            _, old = self._models.popitem(last=False)
            self.evictions += 1
            log.info("unloading model %s (%.2f GB) to stay within the %.1f GB model cache", old.name,
                     old.nbytes / 1e9, self.budget_bytes / 1e9)  # fmt: skip
            evicted = True
        if evicted:
            self.device.free_memory()

    def controlnet(self, item: Item) -> diffusers.ModelMixin:
        """A ControlNet from the shelf (a diffusers folder, whose config names its class, or a single file), kept
        loaded with the models: the most recent few stay (each is a fraction of its model's size)."""
        assert item.path is not None
        with self._lock:
            if item.path in self._controlnets:
                self._controlnets.move_to_end(item.path)
                return self._controlnets[item.path]
            started = time.perf_counter()
            if item.path.is_file():  # lllyasviel's layout, as A1111's folder holds them
                net = load_controlnet_file(item.path, self.shelf.configs, self.device.dtype)
            else:
                class_name = json.loads((item.path / "config.json").read_text()).get("_class_name", "ControlNetModel")
                cls = getattr(diffusers, class_name, None)
                if cls is None or not class_name.endswith("Model"):
                    raise UnknownModel(f"ControlNet {item.name!r} is a {class_name}, which this diffusers cannot load")
                net = cls.from_pretrained(item.path, torch_dtype=self.device.dtype)
            net = net.to(self.device.torch_device)
            self._controlnets[item.path] = net
            while len(self._controlnets) > MAX_CONTROLNETS:
                self._controlnets.popitem(last=False)
            log.info("loaded ControlNet %s (%s) in %.1f s", item.name, item.family, time.perf_counter() - started)
            return net

    def upscaler(self) -> Upscaler | None:
        """The configured upscaler pipeline (loaded on first use), or None."""
        if self.upscaler_ref is None:
            return None
        with self._lock:
            if self._upscaler is None:
                self._upscaler = load_upscaler(self.upscaler_ref, self.device)
                log.info("loaded upscaler %s (x%d)", self.upscaler_ref, self._upscaler.factor)
            return self._upscaler

    def unload(self) -> None:
        self._controlnets.clear()
        if self._models:
            self._models.clear()
            self.device.free_memory()


# Bytes per element of safetensors' dtypes (what its header names).
_DTYPE_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1}


def _tensor_counts(path: Path) -> dict[str, int]:
    """A safetensors file's tensors and their element counts, from its header alone (no weights read)."""
    with path.open("rb") as f:
        size = int.from_bytes(f.read(8), "little")
        if not 0 < size < 100 * 2**20:
            raise ValueError(f"{path.name}: not a safetensors header")
        header = json.loads(f.read(size))
    if not isinstance(header, dict):
        raise ValueError(f"{path.name}: not a safetensors header")
    return {k: math.prod(v["shape"]) for k, v in header.items()
            if isinstance(v, dict) and v.get("dtype") in _DTYPE_BYTES and isinstance(v.get("shape"), list)}  # fmt: skip


def estimate_bytes(load: str, itemsize: int) -> int | None:
    """A model's weights on the device before loading it: its safetensors headers' element counts at the device's
    dtype (EMA copies in a single file left out). Other formats: the files' size. None: no files to read (a hub
    id, the built-in model)."""
    path = Path(load).expanduser()
    files = [path] if path.is_file() else sorted(path.rglob("*.safetensors")) + sorted(path.rglob("*.bin"))
    if not path.exists() or not files:
        return None
    variants: dict[str, int] = {}
    for file in files:
        try:
            if file.suffix == ".safetensors":
                counts = _tensor_counts(file)
                found = sum(n for k, n in counts.items() if not k.startswith("model_ema.")) * itemsize
            else:
                found = file.stat().st_size
        except (OSError, ValueError, TypeError):  # a damaged header: the loader will say what is wrong with it
            found = file.stat().st_size if file.exists() else 0
        # a folder may hold one component twice (`x.safetensors` and `x.fp16.safetensors`): the loader reads one
        stem = str(file.relative_to(path) if file != path else file.name).replace(".fp16", "").rsplit(".", 1)[0]
        variants[stem] = max(variants.get(stem, 0), found)
    return sum(variants.values())
