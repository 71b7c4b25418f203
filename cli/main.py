"""`dreamhall`: run the engine, dream from the terminal, and look after the gallery.

    dreamhall engine                 run the engine in the foreground
    dreamhall engine stop | status
    dreamhall dream "a red circle on a blue background" -n 4 -S 3220803958 [--json]
    dreamhall dream "a blue circle" -I photo.png -f 0.6   (or -I 42: gallery image 42)
    dreamhall zoom "a red circle on a blue background" --frames 8 --out zoom.gif
    dreamhall search "green triangle" [--limit K] [--json]  |  --image PATH  |  --similar ID
    dreamhall gallery import DIR | reindex | check [--repair]
    dreamhall gallery list [--limit N] [--source cli] | show ID | open ID|last

The `dream` arguments are the `!dream` grammar (engine.client.dream_args), the same
as in Discord and the desktop prompt box.

Every `dreamhall dream` is a new process, so this module imports only the standard
library at the top: `dream` against a running engine speaks engine.client.wire and never loads
pydantic or httpx; the other commands import the client and the settings model when run.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, get_args

from engine import __version__
from engine.client import paths
from engine.client.dream_args import DreamArgsError, existing_file, looks_like_ref, parse_fields, resolve_local, usage
from engine.client.errors import EngineError, EngineUnavailable, RequestRejected, clip_text
from engine.client.wire import Wire

if TYPE_CHECKING:
    from tqdm import tqdm

    from engine.client.clients import EngineClient
    from engine.client.settings import Settings


def _fail(message: str, code: int = 2) -> int:
    print(f"dreamhall: {message}", file=sys.stderr)
    return code


def _fail_args(error: DreamArgsError, command: str = "dreamhall dream") -> int:
    """A grammar error, with examples in this command's words rather than Discord's."""
    text = str(error).replace("!dream --help", f"{command} --help").replace("!dream", command)
    return _fail(text)


class _GrammarHelp(argparse.Action):
    """--help of the commands that take the !dream grammar: the grammar's own help, then the command's flags."""

    def __init__(self, option_strings: list[str], dest: str, **kwargs) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, help="show this help")

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        print(usage(parser.prog))
        print(f"options of {parser.prog} itself:")
        print("\n".join(parser.format_help().split("\n")[2:]).replace("options:\n", "", 1))
        parser.exit()


class Exit(Exception):
    """Leave the command with this exit code (the message is already printed)."""

    def __init__(self, code: int) -> None:
        super().__init__(code)
        self.code = code


@contextmanager
def engine_errors() -> Iterator[None]:
    """Engine errors as one line on stderr: 2 when the engine refused the request, 1 when there is no engine."""
    try:
        yield
    except RequestRejected as e:
        raise Exit(_fail(str(e))) from None
    except EngineError as e:
        raise Exit(_fail(str(e), 1)) from None


def cmd_engine(args: argparse.Namespace, settings: Settings) -> int:
    from engine.client.clients import EngineClient
    from engine.client.launch import StopFailed, stop_engine

    if args.action == "stop":
        try:
            print(stop_engine(settings))
        except StopFailed as e:
            return _fail(str(e), 1)
        return 0
    if args.action == "status":
        with EngineClient(settings.socket_path) as client:
            try:
                h = client.health()
            except EngineUnavailable:
                print(f"no engine running ({settings.socket_path})")
                return 1
        if h.status == "starting":
            print(f"engine {h.version} on {settings.socket_path}: starting (loading torch, model {h.model} and the "
                  f"search index), {h.queued} queued")  # fmt: skip
            return 0
        print(f"engine {h.version} on {settings.socket_path}: device {h.device}, model {h.model}, "
              f"{h.queued} queued, {h.running} running")  # fmt: skip
        if h.loaded or h.loading:
            print("in memory: " + (", ".join(h.loaded) or "-") + (f" (loading {h.loading})" if h.loading else ""))
        if len(h.workers) > 1 or any(w.id != "local" for w in h.workers):
            for w in h.workers:
                doing = f"job {w.job}" if w.job else "idle" if w.alive else "restarting"
                loading = f", loading {w.loading}" if w.loading else ""
                print(f"  worker {w.id} on {w.node}, {w.device}: {doing}{loading}; holds {', '.join(w.loaded) or '-'}")
        return 0
    if _answers(settings):  # asked before the engine's imports: an answer in well under a second
        return _fail(f"an engine is already listening on {settings.socket_path}", 1)
    # The engine is its own program (the server side of the socket); this process becomes it, same pid.
    argv = [sys.executable, "-m", "engine.server", "--home", str(settings.home)]
    for flag in ("model", "device"):
        if (value := getattr(args, flag, None)) is not None:
            argv += [f"--{flag}", value]
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, argv)


def _answers(settings: Settings) -> bool:
    try:
        Wire(settings.socket_path, timeout=5).call("GET", "/v1/health")
        return True
    except EngineError:
        return False


class _Progress:
    """Turns a job's events into one terminal progress bar."""

    def __init__(self, quiet: bool) -> None:
        self.quiet = quiet
        self.bar: tqdm | None = None

    def __call__(self, event: dict[str, Any]) -> None:
        """`event`: one of the job's events as the engine sends it (engine.client.schema.Event's fields)."""
        if self.quiet:
            return
        from tqdm import tqdm  # here, not at the top: `--json` and every other command never show a bar

        kind, total = event["type"], event.get("total")
        if kind == "queued" and event.get("position"):
            tqdm.write(f"queued: {event['position']} job(s) ahead")
        elif kind == "loading":
            tqdm.write(f"loading model {event.get('model')} (the first job on a model waits for this)…")
        elif kind == "step" and total:
            # The bar starts with the first step, which knows the real count (img2img runs steps x strength),
            # and moves by deltas, so tqdm's rate is steps per second.
            if self.bar is None:
                self.bar = tqdm(total=total, unit="step", desc="dreaming", leave=False)
            self.bar.total = max(self.bar.total or 0, total)
            self.bar.update(max(0, (event.get("step") or 0) - self.bar.n))

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def _local_file_check(value: str) -> str:
    """-I/-M before an engine is there: ids pass, files must exist (they are uploaded once connected)."""
    if looks_like_ref(value):
        return value
    if existing_file(value) is None:
        raise ValueError(f"{clip_text(value)!r} is neither a gallery image id nor a file")
    return "upload:" + "0" * 64


def _local_model(fields: dict[str, Any]) -> dict[str, Any]:
    """`-m ./file.safetensors` means this file: the engine gets it absolute (shelf names pass as they are)."""
    for field in ("model", "refiner"):
        value = fields.get(field)
        if value and (path := existing_file(value)) is not None:
            fields[field] = str(path.resolve())
    return fields


def cmd_models(args: argparse.Namespace, settings: Settings) -> int:
    from engine.client.launch import connect

    with engine_errors(), connect(settings, autostart=not args.no_autostart) as engine:
        shelf = engine.models(scan=args.scan)
    if args.json:
        print(shelf.model_dump_json())
        return 0
    print(f"checkpoints (-m NAME; default {shelf.default}):")
    for m in shelf.checkpoints:
        detail = m.problem or f"{m.family}, {m.format}, {_size(m.size)}" + (f", hash {m.hash}" if m.hash else "")
        print(f"  {m.name}  ({detail})")
    for title, items, how in (("LoRAs", shelf.loras, "<lora:NAME:1> in the prompt"),
                              ("embeddings", shelf.embeddings, "NAME in the prompt")):  # fmt: skip
        print(f"{title} ({how}):" + ("" if items else " none"))
        for m in items:
            print(f"  {m.name}  ({_size(m.size)}, hash {m.hash})")
    return 0


def _size(n: int) -> str:
    return f"{n / 2**30:.1f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB" if n >= 2**20 else f"{n / 2**10:.0f} KiB"


def cmd_dream(args: argparse.Namespace, extra: list[str]) -> int:
    requester = {"source": "cli", "user": os.environ.get("USER")}
    try:
        # Flags and files are checked before anything is sent; values and ranges by the engine (or, when
        # none is running, by the request model here, before one is started for this command).
        parse_fields(extra, resolve_image=_local_file_check)
    except DreamArgsError as e:
        return _fail_args(e)
    say = (lambda m: print(m, file=sys.stderr)) if args.json else print

    def submit(wire: Wire) -> tuple[dict, dict]:
        def upload(value: str) -> str:
            return resolve_local(value, lambda data: wire.call("POST", "/v1/uploads", data)["ref"])

        fields = _local_model(parse_fields(extra, requester=requester, resolve_image=upload))
        return fields, wire.call("POST", "/v1/dreams", fields)

    try:
        home = paths.home(args.home)
    except (OSError, ValueError):
        home = _settings(args).home  # the settings model says what is wrong with the config file
    wire = Wire(paths.socket_path(home))
    try:
        with engine_errors():
            try:
                fields, accepted = submit(wire)  # no health round trip first: a running engine answers this
            except EngineUnavailable:
                wire, home = _start_for(args, extra, requester, say)
                fields, accepted = submit(wire)
            except RequestRejected as e:
                if e.status != 422:
                    raise
                raise DreamArgsError(str(e)) from None  # a value the request model refused: named by its flag
    except DreamArgsError as e:
        return _fail_args(e)
    job_id = accepted["id"]
    images: list[dict[str, Any]] = []  # the stream says everything: each image, then how the job ended
    end: dict[str, Any] = {}
    with engine_errors():
        progress = _Progress(quiet=args.json)
        try:
            for event in wire.events(job_id):
                progress(event)
                if event["type"] == "image":
                    images.append(event["image"])
                end = event
        except KeyboardInterrupt:
            wire.call("DELETE", f"/v1/dreams/{job_id}")
            return _fail("cancelled", 130)
        finally:
            progress.close()
        if end["type"] != "done":
            return _fail(f"job {job_id} {end['type']}" + (f": {end['error']}" if end.get("error") else ""), 1)
        grid_path = None
        if fields["mode"] == "upscale":
            image = wire.call("GET", f"/v1/images/{images[0]['id']}")
            say(f"upscaled with {image['params'].get('upscaler')}")
        if fields.get("layout") == "grid":
            grid_path = home / "grids" / f"{job_id}.png"
            grid_path.parent.mkdir(parents=True, exist_ok=True)
            grid_path.write_bytes(wire.call("GET", f"/v1/dreams/{job_id}/grid"))
    if args.json:
        keys = ("id", "path", "seed", "variation_seed", "width", "height")
        out: dict[str, Any] = {"job": job_id, "images": [{k: i.get(k) for k in keys} for i in images]}
        if grid_path is not None:
            out["grid"] = str(grid_path)
        print(json.dumps(out))
    else:
        # One line per image: its id (what -I, `gallery show` and the desktop take), its seed, size and file.
        for i in images:
            seed = f"seed {i['seed']}"
            if i.get("variation_seed") is not None:
                seed += f", variation seed {i['variation_seed']}"
            print(f"#{i['id']}  {seed}  {i['width']}x{i['height']}  {i['path']}")
        if grid_path is not None:
            print(f"{grid_path}  (grid)")
    return 0


def _start_for(
    args: argparse.Namespace, extra: list[str], requester: dict, say: Callable[[str], None]
) -> tuple[Wire, Path]:
    """No engine answered: check the whole request with the request model, then start one (or say there is none)."""
    from engine.client.dream_args import parse_argv
    from engine.client.launch import connect
    from engine.client.schema import Requester

    settings = _settings(args)
    request = parse_argv(extra, requester=Requester(**requester), resolve_image=_local_file_check)
    model = _local_model({"model": request.model})["model"]
    connect(settings, autostart=not args.no_autostart, say=say, model=model).close()
    return Wire(settings.socket_path), settings.home


def _filters(args: argparse.Namespace) -> dict:
    """The gallery filters `search` and `gallery list` share."""
    from engine.client.schema import IMPORTED_SOURCES, Source

    sources = [*get_args(Source), *sorted(IMPORTED_SOURCES)]
    if args.source is not None and args.source not in sources:
        raise Exit(_fail(f"--source: one of {', '.join(sources)} (got {args.source!r})"))
    return {"guild": args.guild, "user": args.user, "source": args.source, "model": args.model_filter,
            "lora": args.lora}  # fmt: skip


def cmd_search(args: argparse.Namespace, settings: Settings) -> int:
    from engine.client.launch import connect

    if (args.query is None) == (args.image is None and args.similar is None):
        return _fail('give search text, or --image PATH, or --similar ID (e.g. dreamhall search "green triangle")')
    filters = _filters(args)
    say = (lambda m: print(m, file=sys.stderr)) if args.json else print
    with engine_errors(), connect(settings, autostart=not args.no_autostart, say=say) as engine:
        if args.image is not None:
            try:
                data = Path(args.image).read_bytes()
            except OSError as e:
                return _fail(f"cannot read {args.image}: {e.strerror}")
            found = engine.search_image(data, limit=args.limit, **filters)
        elif args.similar is not None:
            found = engine.similar(args.similar, limit=args.limit, **filters)
        else:
            found = engine.search(args.query, limit=args.limit, **filters)
    if args.json:
        rows = [{"id": r.image.id, "path": r.image.path, "score": r.score, "prompt": r.image.prompt,
                 "seed": r.image.seed} for r in found.results]  # fmt: skip
        print(json.dumps({"results": rows}))
    elif not found.results:
        print("no matches")
    else:
        for r in found.results:
            print(f"{r.score:6.3f}  #{r.image.id}  seed {r.image.seed}  {r.image.prompt!r}  {r.image.path}")
    return 0


IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp"}


def cmd_gallery(args: argparse.Namespace, settings: Settings) -> int:
    from engine.client.launch import connect

    with engine_errors(), connect(settings, autostart=not args.no_autostart) as engine:
        if args.action in {"list", "show", "open"}:
            return _look(engine, args)
        if args.action == "import":
            return _import(engine, Path(args.target))
        if args.action == "reindex":
            result = engine.reindex()
            print(f"re-embedded {result.embedded} image(s); {len(result.unreadable)} unreadable")
            return 0
        report = engine.check_gallery(repair=args.repair)
    print(f"{report.rows} images, {report.files} files, {report.vectors} vectors")
    problems = [
        (report.missing_files, "image(s) whose file is missing or unreadable"),
        (report.orphan_files, "file(s) no image points at"),
        (report.temp_files, "half-written file(s) from a crash"),
        (range(report.missing_vectors), "image(s) without a search vector"),
        (range(report.orphan_vectors), "vector(s) of deleted images"),
        (report.duplicates, "image(s) stored twice by a job that ran again"),
    ]
    for items, what in problems:
        if len(items):
            print(f"  {len(items)} {what}")
    if report.repaired:
        print("repaired")
    consistent = not any(len(items) for items, _ in problems)
    if consistent:
        print("all consistent")
    return 0 if consistent or report.repaired else 1


def _look(engine: EngineClient, args: argparse.Namespace) -> int:
    """gallery list / show ID / open ID|last."""
    if args.action == "list":
        filters = _filters(args)
        page = engine.images(limit=args.limit, **filters)
        for image in page.images:
            when = image.created_at.astimezone().strftime("%Y-%m-%d %H:%M")
            print(f"#{image.id}  {when}  seed {image.seed}  {image.width}x{image.height}  {image.mode}  "
                  f"{image.prompt[:70]!r}")  # fmt: skip
        print(f"{len(page.images)} of {page.total} image(s), newest first")
        return 0
    if args.target is None:
        return _fail(f"gallery {args.action} needs an image id (or `last`): dreamhall gallery {args.action} 42")
    if args.target == "last":
        newest = engine.images(limit=1).images
        if not newest:
            return _fail("the gallery is empty", 1)
        image = newest[0]
    elif args.target.isascii() and args.target.isdigit():
        image = engine.image(int(args.target))
    else:
        return _fail(f"{args.target!r} is not an image id; give a number such as 42, or `last`")
    if args.action == "open":
        return _open_file(Path(image.path))
    lineage = f"{image.relation} of #{image.parent_id}" if image.parent_id else (image.relation or "—")
    fields = [
        ("prompt", image.prompt), ("negative", image.negative_prompt or "—"), ("seed", image.seed),
        ("size", f"{image.width}x{image.height}"), ("model", image.model), ("sampler", image.sampler),
        ("steps", image.steps), ("cfg", image.cfg_scale), ("mode", image.mode), ("lineage", lineage),
        ("made", f"{image.created_at.astimezone():%Y-%m-%d %H:%M} by {image.source}" + (f" ({image.user})"
                                                                                         if image.user else "")),
        ("file", image.path),
    ]  # fmt: skip
    print(f"#{image.id}")
    for name, value in fields:
        print(f"  {name:<9} {value}")
    return 0


def _open_file(path: Path) -> int:
    """In the desktop's default viewer."""
    import subprocess

    opener = {"darwin": ["open"], "win32": None}.get(sys.platform, ["xdg-open"])
    if opener is None:
        os.startfile(path)
        return 0
    try:
        subprocess.Popen([*opener, str(path)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    except FileNotFoundError:
        return _fail(f"no viewer ({opener[0]}) on this machine; the file is {path}", 1)
    print(path)
    return 0


def _import(engine, folder: Path) -> int:
    if not folder.is_dir():
        return _fail(f"{folder} is not a folder")
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    counts = {"added": 0, "duplicate": 0, "failed": 0}
    from tqdm import tqdm

    for path in tqdm(files, unit="image", desc="importing"):
        try:
            counts[engine.import_image(path.read_bytes(), filename=str(path)).status] += 1
        except RequestRejected as e:
            counts["failed"] += 1
            tqdm.write(f"skipped {path}: {e}")
    print(f"{counts['added']} added, {counts['duplicate']} already in the gallery, {counts['failed']} skipped")
    return 0


def build_parser() -> argparse.ArgumentParser:
    # allow_abbrev=False: the !dream grammar's `--no` must not match `--no-autostart`.
    parser = argparse.ArgumentParser(prog="dreamhall", description=__doc__, allow_abbrev=False,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument("--home", type=Path, help="data directory (default: $DREAMHALL_HOME or the user data dir)")
    parser.add_argument("--version", action="version", version=f"dreamhall {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    eng = sub.add_parser("engine", help="run, stop or ask about the engine")
    eng.add_argument("action", nargs="?", choices=["serve", "stop", "status"], default="serve")
    eng.add_argument("--model", help="default model: diffusers folder, hub id or .safetensors file")
    eng.add_argument("--device", help="auto, cpu, cuda, cuda:1, mps")
    dream = sub.add_parser("dream", help="make images: the !dream grammar", add_help=False, allow_abbrev=False)
    dream.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    dream.add_argument("--no-autostart", action="store_true", help="fail instead of starting an engine")
    dream.add_argument("--help", action=_GrammarHelp)
    zoom = sub.add_parser("zoom", help="infinite zoom: chained outpaints as an animation", allow_abbrev=False,
                          add_help=False)  # fmt: skip
    zoom.add_argument("--help", action=_GrammarHelp)
    zoom.add_argument("--frames", type=int, default=5, help="pictures to make (each one outpaint job)")
    zoom.add_argument("--factor", type=float, default=0.75, help="how much smaller each picture sits in the next")
    zoom.add_argument("--out", type=Path, default=Path("zoom.gif"), help="the animation (.gif or .webp)")
    zoom.add_argument("--no-autostart", action="store_true")
    models = sub.add_parser("models", help="the model shelf: checkpoints, LoRAs and embeddings by name")
    models.add_argument("--scan", action="store_true", help="look at the shelf's folders again first")
    models.add_argument("--json", action="store_true")
    models.add_argument("--no-autostart", action="store_true")
    search = sub.add_parser("search", help="find images by text, by an image file, or like a gallery image")
    search.add_argument("query", nargs="?", help="text: a concept or words from a prompt")
    search.add_argument("--image", type=Path, help="reverse search: PNG/JPEG file")
    search.add_argument("--similar", type=int, metavar="ID", help="images like gallery image ID")
    search.add_argument("--limit", type=int, default=10)
    search.add_argument("--guild")
    search.add_argument("--user")
    search.add_argument("--source", help="only images from this source: cli, discord, desktop, api, ...")
    search.add_argument("--model", dest="model_filter", help="only images of this model")
    search.add_argument("--lora", help="only images made with this LoRA")
    search.add_argument("--json", action="store_true")
    search.add_argument("--no-autostart", action="store_true")
    gallery = sub.add_parser("gallery", help="list, show and open images; import, reindex, check and repair")
    gallery.add_argument("action", choices=["list", "show", "open", "import", "reindex", "check"])
    gallery.add_argument("target", nargs="?", help="show/open: an image id or `last`; import: the folder")
    gallery.add_argument("--limit", type=int, default=20, help="list: how many (newest first)")
    gallery.add_argument("--guild")
    gallery.add_argument("--user")
    gallery.add_argument("--source", help="only images from this source: cli, discord, desktop, api, ...")
    gallery.add_argument("--model", dest="model_filter", help="only images of this model")
    gallery.add_argument("--lora", help="list: only images made with this LoRA")
    gallery.add_argument("--repair", action="store_true", help="check: fix what is inconsistent")
    gallery.add_argument("--no-autostart", action="store_true")
    return parser


def _settings(args: argparse.Namespace) -> Settings:
    """The settings model for this command (flags over DREAMHALL_* over config.toml); Exit(2) if they are bad."""
    from pydantic import ValidationError

    from engine.client.settings import Settings, config_file

    overrides = {k: v for k in ("home", "model", "device") if (v := getattr(args, k, None)) is not None}
    try:
        return Settings(**overrides)
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        message = f"bad setting {where}: {first['msg']} (check DREAMHALL_* variables and config.toml)"
        raise Exit(_fail(message)) from None
    except (OSError, ValueError) as e:  # a config file that is not TOML, or cannot be read
        raise Exit(_fail(f"cannot read {config_file()}: {e}")) from None


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and args.command not in {"dream", "zoom"}:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        if args.command == "dream":
            return cmd_dream(args, extra)  # finds the socket itself: the settings model is not loaded for it
        settings = _settings(args)
        if args.command == "engine":
            return cmd_engine(args, settings)
        if args.command == "search":
            return cmd_search(args, settings)
        if args.command == "models":
            return cmd_models(args, settings)
        if args.command == "gallery":
            if args.action == "import" and args.target is None:
                return _fail("gallery import needs a folder: dreamhall gallery import DIR")
            return cmd_gallery(args, settings)
        return cmd_zoom(args, extra, settings)
    except Exit as e:
        return e.code


def cmd_zoom(args: argparse.Namespace, extra: list[str], settings: Settings) -> int:
    from tqdm import tqdm

    from cli.zoom import save_animation, zoom_in_animation, zoom_out_frames
    from engine.client.dream_args import parse_argv
    from engine.client.launch import connect
    from engine.client.schema import Requester

    if not 2 <= args.frames <= 100:
        return _fail(f"--frames: between 2 and 100 (got {args.frames})")
    if not 0.3 <= args.factor <= 0.95:
        return _fail(f"--factor: between 0.3 and 0.95 (got {args.factor})")
    if args.out.suffix.lower() not in {".gif", ".webp"}:
        return _fail(f"--out: a .gif or .webp file (got {args.out.name})")
    try:
        request = parse_argv(extra, requester=Requester(source="cli", user=os.environ.get("USER")))
    except DreamArgsError as e:
        return _fail_args(e, "dreamhall zoom")
    if request.mode != "txt2img":
        return _fail("zoom starts from a prompt: leave out -I, -M, -v, -U and --outpaint")
    with (
        engine_errors(),
        connect(settings, autostart=not args.no_autostart, model=request.model) as engine,
        tqdm(total=args.frames, unit="frame") as bar,
    ):
        frames = zoom_out_frames(engine, request, frames=args.frames, factor=args.factor,
                                 on_frame=lambda k, _: bar.update(1))  # fmt: skip
    shown = zoom_in_animation(frames, factor=args.factor)
    save_animation(shown, str(args.out))
    print(f"{args.out}  ({len(frames)} pictures, {len(shown)} frames)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
