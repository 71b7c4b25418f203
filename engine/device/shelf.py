"""The model shelf: the checkpoints, LoRAs and embeddings a user has, in AUTOMATIC1111's layout.

    <models_dir>/Stable-diffusion/   single files (.safetensors, .ckpt) and diffusers folders
    <models_dir>/Lora/               LoRAs (.safetensors): <lora:NAME:WEIGHT> in a prompt
    <models_dir>/embeddings/         textual inversions (.safetensors, .pt): NAME in a prompt
    <models_dir>/ControlNet/         ControlNets (diffusers folders, SD 1.x/2.x/SDXL single files): --control_model NAME
    <models_dir>/ipadapter/          IP-Adapters (.safetensors, .bin): reference pictures (--sref)
    <models_dir>/clip_vision/        their image encoders (diffusers/transformers folders), named like the adapter
    <models_dir>/configs/<family>/   (optional) a config folder for a non-standard architecture

Requests name models by their shelf name (the path under its folder, without suffix),
so no path on the host is ever needed, shown, or guessable from an error. The built-in
toy model and its add-ons (`models/builtin/`) are always on the shelf. Hashes are
AUTOMATIC1111's short hashes (the file's SHA-256, 10 hex digits for checkpoints, 12
for add-ons), computed once per file version and remembered.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from engine.client import prompts
from engine.client.answers import ModelEntry, ModelList
from engine.client.errors import UserError, clip_text
from engine.device.families import (
    FAMILY_NAMES,
    FAMILY_WIDTHS,
    NotACheckpoint,
    addon_family,
    detect_controlnet_file,
    detect_controlnet_folder,
    detect_file,
    detect_folder,
    family_of_width,
    folder_width,
    ip_adapter_kind,
)

log = logging.getLogger(__name__)

BUILTIN_MODEL_NAME = "dreamhall-toy-sd"
CHECKPOINT_SUFFIXES = (".safetensors", ".ckpt")
CONTROLNET_SUFFIXES = (*CHECKPOINT_SUFFIXES, ".pth")  # lllyasviel's ControlNet 1.1 files are .pth
ADDON_SUFFIXES = {"lora": (".safetensors",), "embedding": (".safetensors", ".pt", ".bin")}
# Where a request may name a model by path or hub id: the local user's own tools, not Discord.
PATH_SOURCES = {"cli", "desktop", "api"}


def default_model_name(configured: str | None) -> str:
    """The name jobs without `-m` use: the configured `model`, else the built-in one."""
    return configured or BUILTIN_MODEL_NAME


class UnknownModel(UserError, ValueError):
    """A model, LoRA or embedding name that is not on the shelf; the message lists what is."""


def builtin_model_dir() -> Path:
    return Path(str(resources.files("models") / "toy-sd"))


def builtin_addons_dir() -> Path:
    return Path(str(resources.files("models") / "builtin"))


@dataclass(frozen=True)
class Item:
    name: str
    kind: str  # "checkpoint", "lora", "embedding", "controlnet"
    path: Path | None  # None: the built-in model
    format: str  # "diffusers", "safetensors", "ckpt", "pt"
    size: int
    family: str | None = None
    problem: str | None = None  # why it cannot load (listed, not hidden)
    width: int | None = None  # the text conditioning's width a model has or an add-on is made for


class Shelf:
    def __init__(self, root: Path | None, *, hash_cache: Path | None = None) -> None:
        self.root = root
        self.hash_cache = hash_cache
        self._lock = threading.Lock()
        self._items: dict[tuple[str, str], Item] = {}
        self._hashes: dict[str, str] = self._read_hashes()
        self.scan()

    @property
    def configs(self) -> Path | None:
        return self.root / "configs" if self.root is not None else None

    def scan(self) -> ModelList:
        """Look at the folders again (new files appear, removed ones go)."""
        builtin = Item(BUILTIN_MODEL_NAME, "checkpoint", None, "diffusers", _folder_size(builtin_model_dir()), "SD 1.x",
                       width=folder_width(builtin_model_dir()))  # fmt: skip
        items = {("checkpoint", BUILTIN_MODEL_NAME): builtin}
        for base in [builtin_addons_dir()] + ([self.root] if self.root is not None else []):
            for item in self._scan_checkpoints(base / "Stable-diffusion"):
                items[("checkpoint", item.name)] = item
            for kind, folder in (("lora", "Lora"), ("embedding", "embeddings")):
                for path in sorted((base / folder).rglob("*")) if (base / folder).is_dir() else []:
                    if path.suffix in ADDON_SUFFIXES[kind] and path.is_file():
                        name = path.relative_to(base / folder).with_suffix("").as_posix()
                        items[(kind, name)] = Item(name, kind, path, path.suffix[1:], path.stat().st_size)
            for item in self._scan_controlnets(base / "ControlNet"):
                items[("controlnet", item.name)] = item
            for item in _scan_ip_adapters(base / "ipadapter", base / "clip_vision"):
                items[("ipadapter", item.name)] = item
        with self._lock:
            self._items = items
        return self.listing()

    def _scan_checkpoints(self, folder: Path) -> list[Item]:
        if not folder.is_dir():
            return []
        found = []
        for path in sorted(folder.rglob("*")):
            name = path.relative_to(folder).with_suffix("").as_posix()
            if path.is_dir() and (path / "model_index.json").exists():
                try:
                    family = detect_folder(path).label
                    found.append(Item(name, "checkpoint", path, "diffusers", _folder_size(path), family,
                                      width=folder_width(path)))  # fmt: skip
                except (OSError, ValueError) as e:
                    found.append(Item(name, "checkpoint", path, "diffusers", 0, None, f"unreadable: {e}"))
            elif path.is_file() and path.suffix in CHECKPOINT_SUFFIXES and not _inside_diffusers(path, folder):
                size = path.stat().st_size
                try:
                    detected = detect_file(path)
                    found.append(Item(name, "checkpoint", path, path.suffix[1:], size, detected.label,
                                      width=FAMILY_WIDTHS.get(detected.family)))  # fmt: skip
                except NotACheckpoint as e:
                    found.append(Item(name, "checkpoint", path, path.suffix[1:], size, None, str(e)))
        return found

    @staticmethod
    def _scan_controlnets(folder: Path) -> list[Item]:
        found = []
        for path in sorted(folder.rglob("*")) if folder.is_dir() else []:
            name = path.relative_to(folder).with_suffix("").as_posix()
            if path.is_dir() and (path / "config.json").exists():
                try:
                    family = FAMILY_NAMES[detect_controlnet_folder(path)]
                    found.append(Item(name, "controlnet", path, "diffusers", _folder_size(path), family))
                except NotACheckpoint as e:
                    found.append(Item(name, "controlnet", path, "diffusers", 0, None, str(e)))
            elif path.is_file() and path.suffix in CONTROLNET_SUFFIXES and not (path.parent / "config.json").exists():
                size = path.stat().st_size
                try:
                    family = FAMILY_NAMES[detect_controlnet_file(path).family]
                    found.append(Item(name, "controlnet", path, path.suffix[1:], size, family))
                except NotACheckpoint as e:
                    found.append(Item(name, "controlnet", path, path.suffix[1:], size, None, str(e)))
        return found

    def controlnet_for(self, name: str | None, family: str) -> Item:
        """The ControlNet a control uses on a model of `family` (a label such as "SD 1.x"): the one named,
        which must fit, or the first on the shelf that does."""
        if name is not None:
            item = self.find("controlnet", name)
            if item.family != family:
                raise UnknownModel(f"ControlNet {item.name!r} steers {item.family} models, and this model is {family}; "
                                   "pick one made for it with --control_model")  # fmt: skip
            return item
        for item in self.items("controlnet"):
            if item.family == family and item.problem is None:
                return item
        raise UnknownModel(f"no ControlNet on the shelf fits this {family} model; put one in models/ControlNet/ "
                           "(a diffusers folder or a single file) and name it with --control_model")  # fmt: skip

    def reference_adapter(self, family: str, width: int | None) -> Item:
        """The IP-Adapter for reference pictures on a model of `family` whose text conditioning is `width` wide
        (None: unknown, the family decides); its image encoder: `encoder_of`."""
        if family in (FAMILY_NAMES["sd3"], FAMILY_NAMES["sdxl-refiner"]):
            raise UnknownModel(f"reference pictures (--sref) work with SD 1.x, SD 2.x, SDXL and FLUX models here; "
                               f"this version has no reference adapter for {family}")  # fmt: skip
        for item in self.items("ipadapter"):
            if item.problem is None and (item.width == width if width is not None else item.family == family):
                return item
        raise UnknownModel(f"no reference adapter (IP-Adapter) on the shelf fits this {family} model; put one in "
                           "models/ipadapter/ and its image encoder in models/clip_vision/")  # fmt: skip

    def check_references(self, model: str) -> None:
        """At submit: reference pictures need an IP-Adapter that fits `model` (when it is on the shelf)."""
        try:
            item = self.find("checkpoint", model)
        except UnknownModel:
            return
        if item.family is not None:
            self.reference_adapter(addon_family(item.family), item.width)

    def check_controls(self, names: list[str | None], model: str) -> None:
        """At submit: each control's ControlNet (None: the shelf's pick) is on the shelf and fits `model`
        (when the model is on the shelf too; a path's family is known once it loads)."""
        try:
            family = self.find("checkpoint", model).family
        except UnknownModel:
            family = None
        for i, name in enumerate(names):
            try:
                if family is not None:
                    self.controlnet_for(name, addon_family(family))
                elif name is not None:
                    self.find("controlnet", name)
            except UnknownModel as e:
                raise UnknownModel(f"control {i + 1}: {e}") from None

    def items(self, kind: str) -> list[Item]:
        with self._lock:
            return [item for (k, _), item in sorted(self._items.items()) if k == kind]

    def find(self, kind: str, name: str) -> Item:
        with self._lock:
            item = self._items.get((kind, name))
        if item is None:
            known = ", ".join(i.name for i in self.items(kind)) or "none"
            what = {"checkpoint": "model", "lora": "LoRA", "embedding": "embedding", "controlnet": "ControlNet",
                    "ipadapter": "IP-Adapter"}[kind]  # fmt: skip
            raise UnknownModel(f"unknown {what} {clip_text(name)!r}; available: {known}")
        if item.problem:
            raise UnknownModel(f"model {clip_text(name)!r} cannot be used: {item.problem}")
        return item

    def check_model(self, ref: str | None, source: str) -> None:
        """At submit: `ref` is a shelf name, or (from the local user's own tools) a path or hub id."""
        if ref is None or ref == BUILTIN_MODEL_NAME:
            return
        try:
            self.find("checkpoint", ref)
        except UnknownModel:
            if source in PATH_SOURCES and (Path(ref).is_absolute() or ("/" in ref and not Path(ref).exists())):
                return  # a local path (the CLI sends them absolute) or a hub id: the loader says if it fails
            raise

    def addons_of(self, prompt: str, negative_prompt: str) -> tuple[list[tuple[Item, float]], list[Item]]:
        """The LoRAs (with weights) and embeddings a request's prompts use; unknown names raise."""
        _, loras = prompts.parse(prompt)
        _, negative_loras = prompts.parse(negative_prompt)
        known = {item.name for item in self.items("embedding")}
        embeddings = prompts.embedding_names(f"{prompt}\n{negative_prompt}", known)
        return ([(self.find("lora", use.name), use.weight) for use in loras + negative_loras],
                [self.find("embedding", name) for name in embeddings])  # fmt: skip

    def made_with(self, loras: list[tuple[Item, float]], embeddings: list[Item]) -> dict:
        """What an image records about its add-ons (names, weights, A1111 hashes)."""
        out: dict = {}
        if loras:
            out["loras"] = [{"name": i.name, "weight": w, "hash": self.hash(i)} for i, w in loras]
        if embeddings:
            out["embeddings"] = [{"name": i.name, "hash": self.hash(i)} for i in embeddings]
        return out

    def hash(self, item: Item, *, compute: bool = True) -> str | None:
        """A1111's short hash; None for folders (and, without `compute`, for files not hashed yet:
        a listing must not read gigabytes)."""
        if item.path is None or item.path.is_dir():
            return None
        return self.short_hash(item.path, item.kind, compute=compute)

    def short_hash(self, path: Path, kind: str, *, compute: bool = True) -> str | None:
        """A1111's short forms of the file's SHA-256: 10 hex digits for checkpoints, 12 for add-ons."""
        full = self.file_hash(path) if compute else self._hashes.get(_version_key(path))
        return None if full is None else full[: 10 if kind == "checkpoint" else 12]

    def file_hash(self, path: Path) -> str:
        key = _version_key(path)
        if key not in self._hashes:
            digest = hashlib.sha256()
            with path.open("rb") as f:
                while chunk := f.read(1 << 20):
                    digest.update(chunk)
            self._hashes[key] = digest.hexdigest()
            self._write_hashes()
        return self._hashes[key]

    def listing(self) -> ModelList:
        def entry(item: Item) -> ModelEntry:
            known = self.hash(item, compute=item.kind != "checkpoint")
            filename = item.path.name if item.path is not None else None  # its name and suffix: no local paths
            vectors = embedding_vectors(item) if item.kind == "embedding" else None
            return ModelEntry(name=item.name, family=item.family, format=item.format, size=item.size, hash=known,
                              problem=item.problem, filename=filename, width=vectors[1] if vectors else None,
                              vectors=vectors[0] if vectors else None)  # fmt: skip

        return ModelList(
            checkpoints=[entry(i) for i in self.items("checkpoint")],
            loras=[entry(i) for i in self.items("lora")],
            embeddings=[entry(i) for i in self.items("embedding")],
            controlnets=[entry(i) for i in self.items("controlnet")],
            ip_adapters=[entry(i) for i in self.items("ipadapter")],
        )

    def _read_hashes(self) -> dict[str, str]:
        if self.hash_cache is None or not self.hash_cache.exists():
            return {}
        try:
            return dict(json.loads(self.hash_cache.read_text()))
        except (OSError, ValueError):
            return {}  # a cache: recomputed when lost

    def _write_hashes(self) -> None:
        if self.hash_cache is None:
            return
        tmp = self.hash_cache.with_suffix(".tmp")
        tmp.write_text(json.dumps(self._hashes))
        tmp.replace(self.hash_cache)


def encoder_of(adapter: Item) -> Path:
    """An IP-Adapter's image encoder: the clip_vision folder of the same name (else the only one there)."""
    assert adapter.path is not None
    folder = adapter.path.parent.parent / "clip_vision"
    return folder / adapter.path.stem if (folder / adapter.path.stem).is_dir() else next(folder.iterdir())


def _scan_ip_adapters(folder: Path, encoders: Path) -> list[Item]:
    """IP-Adapters (their family from the width of the tokens they make) that have an image encoder beside them."""
    found = []
    named = sorted(p.name for p in encoders.iterdir() if (p / "config.json").exists()) if encoders.is_dir() else []
    for path in sorted(folder.rglob("*")) if folder.is_dir() else []:
        if path.suffix not in (".safetensors", ".bin") or not path.is_file():
            continue
        name, size = path.relative_to(folder).with_suffix("").as_posix(), path.stat().st_size
        problem = None
        if not named:
            problem = f"no image encoder for it: put one in clip_vision/{path.stem}/ (a folder with config.json)"
        elif path.stem not in named and len(named) > 1:
            problem = f"which image encoder? name its clip_vision folder {path.stem}/"
        width: int | None = None
        try:
            kind, width = ip_adapter_kind(path)
            key = kind or family_of_width(width)
            family = FAMILY_NAMES[key] if key is not None else None
        except NotACheckpoint as e:
            family, problem = None, str(e)
        found.append(Item(name, "ipadapter", path, path.suffix[1:], size, family, problem, width))
    return found


def _version_key(path: Path) -> str:
    st = path.stat()
    return f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}"


def _folder_size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def _inside_diffusers(path: Path, root: Path) -> bool:
    return any(
        (parent / "model_index.json").exists() for parent in path.parents if parent != root and root in parent.parents
    )


def embedding_vectors(item: Item) -> tuple[int, int] | None:
    """An embedding's (vectors, width) from its safetensors header alone (A1111's `vectors` and `shape`); None for
    pickles, which this side of the engine does not open."""
    if item.path is None or item.path.suffix != ".safetensors":
        return None
    try:
        with item.path.open("rb") as f:
            size = int.from_bytes(f.read(8), "little")
            header = json.loads(f.read(min(size, 1 << 20)))
    except (OSError, ValueError):
        return None
    shapes = [v["shape"] for k, v in sorted(header.items()) if k != "__metadata__" and isinstance(v, dict)]
    if not shapes or not 1 <= len(shapes[0]) <= 2:
        return None
    shape = shapes[0]
    return (1, shape[0]) if len(shape) == 1 else (shape[0], shape[1])
