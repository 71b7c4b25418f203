"""`dreamhall`: run the engine, dream from the terminal, and look after the gallery.

    dreamhall engine                 run the engine in the foreground
    dreamhall engine stop | status
    dreamhall dream "a red circle on a blue background" -n 4 -S 3220803958 [--json]
    dreamhall dream "a blue circle" -I photo.png -f 0.6   (or -I 42: gallery image 42)
    dreamhall zoom "a red circle on a blue background" --frames 8 --out zoom.gif
    dreamhall search "green triangle" [--limit K] [--json]  |  --image PATH  |  --similar ID
    dreamhall gallery import DIR | reindex | check [--repair]

The `dream` arguments are the `!dream` grammar (engine.dream_args), the same
as in Discord and the desktop prompt box.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from pydantic import ValidationError
from tqdm import tqdm

from engine.client import EngineClient, EngineError, EngineUnavailable, RequestRejected
from engine.dream_args import DreamArgsError, parse_argv
from engine.launch import StopFailed, connect, stop_engine
from engine.schema import Event, Requester, looks_like_ref
from engine.settings import Settings


def _fail(message: str, code: int = 2) -> int:
    print(f"dreamhall: {message}", file=sys.stderr)
    return code


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
        print(f"engine {h.version} on {settings.socket_path}: device {h.device}, model {h.model}, "
              f"{h.queued} queued, {h.running} running")  # fmt: skip
        return 0
    logging.basicConfig(
        level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    logging.getLogger("alembic").setLevel(logging.WARNING)
    from engine.app import EngineAlreadyRunning, serve  # heavy: torch and diffusers

    try:
        serve(settings)
    except EngineAlreadyRunning as e:
        return _fail(str(e), 1)
    return 0


class _Progress:
    """Turns a job's events into one terminal progress bar."""

    def __init__(self, quiet: bool) -> None:
        self.quiet = quiet
        self.bar: tqdm | None = None

    def __call__(self, event: Event) -> None:
        if self.quiet:
            return
        if event.type == "queued" and event.position:
            tqdm.write(f"queued: {event.position} job(s) ahead")
        elif event.type in {"started", "step"} and event.total:
            if self.bar is None or self.bar.total != event.total:
                self.close()
                self.bar = tqdm(total=event.total, unit="step", desc="dreaming", leave=False)
            self.bar.n = event.step or 0
            self.bar.refresh()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def _local_file_check(value: str) -> str:
    """-I/-M before an engine is there: ids pass, files must exist (they are uploaded once connected)."""
    if looks_like_ref(value):
        return value
    if not Path(value).expanduser().is_file():
        raise ValueError(f"{value!r} is neither a gallery image id nor a file")
    return "upload:" + "0" * 64


def cmd_dream(args: argparse.Namespace, extra: list[str], settings: Settings) -> int:
    requester = Requester(source="cli", user=os.environ.get("USER"))
    try:
        # The whole command is checked before an engine is started for it.
        request = parse_argv(extra, requester=requester, resolve_image=_local_file_check)
    except DreamArgsError as e:
        return _fail(str(e))
    say = (lambda m: print(m, file=sys.stderr)) if args.json else print
    with engine_errors(), connect(settings, autostart=not args.no_autostart, say=say) as engine:
        try:
            request = parse_argv(extra, requester=requester, resolve_image=engine.image_ref)
        except DreamArgsError as e:
            return _fail(str(e))
        accepted = engine.submit(request)
        if request.seed is None:
            say(f"seed {accepted.seed}")
        progress = _Progress(quiet=args.json)
        try:
            job = engine.wait(accepted.id, on_event=progress)
        except KeyboardInterrupt:
            engine.cancel(accepted.id)
            return _fail("cancelled", 130)
        finally:
            progress.close()
        grid_path = None
        if job.status == "done" and request.mode == "upscale":
            say(f"upscaled with {engine.image(job.images[0].id).params.get('upscaler')}")
        if job.status == "done" and request.layout == "grid":
            grid_path = settings.home / "grids" / f"{job.id}.png"
            grid_path.parent.mkdir(parents=True, exist_ok=True)
            grid_path.write_bytes(engine.grid(job.id))
    if job.status != "done":
        return _fail(f"job {job.id} {job.status}" + (f": {job.error}" if job.error else ""), 1)
    if args.json:
        out = {
            "job": job.id,
            "images": [
                {"id": i.id, "path": i.path, "seed": i.seed, "width": i.width, "height": i.height} for i in job.images
            ],
        }
        if grid_path is not None:
            out["grid"] = str(grid_path)
        print(json.dumps(out))
    else:
        for i in job.images:
            print(f"{i.path}  seed {i.seed}  {i.width}x{i.height}")
        if grid_path is not None:
            print(f"{grid_path}  (grid)")
    return 0


def cmd_search(args: argparse.Namespace, settings: Settings) -> int:
    if (args.query is None) == (args.image is None and args.similar is None):
        return _fail('give search text, or --image PATH, or --similar ID (e.g. dreamhall search "green triangle")')
    filters = {"guild": args.guild, "user": args.user, "source": args.source, "model": args.model_filter}
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
    with engine_errors(), connect(settings, autostart=not args.no_autostart) as engine:
        if args.action == "import":
            return _import(engine, args.path)
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


def _import(engine, folder: Path) -> int:
    if not folder.is_dir():
        return _fail(f"{folder} is not a folder")
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    counts = {"added": 0, "duplicate": 0, "failed": 0}
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
    sub = parser.add_subparsers(dest="command", required=True)
    eng = sub.add_parser("engine", help="run, stop or ask about the engine")
    eng.add_argument("action", nargs="?", choices=["serve", "stop", "status"], default="serve")
    eng.add_argument("--model", help="default model: diffusers folder, hub id or .safetensors file")
    eng.add_argument("--device", help="auto, cpu, cuda, cuda:1, mps")
    dream = sub.add_parser("dream", help="make images: the !dream grammar", add_help=False, allow_abbrev=False)
    dream.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    dream.add_argument("--no-autostart", action="store_true", help="fail instead of starting an engine")
    dream.add_argument("--help", action="help", help="show this help")
    zoom = sub.add_parser("zoom", help="infinite zoom: chained outpaints as an animation", allow_abbrev=False)
    zoom.add_argument("--frames", type=int, default=5, help="pictures to make (each one outpaint job)")
    zoom.add_argument("--factor", type=float, default=0.75, help="how much smaller each picture sits in the next")
    zoom.add_argument("--out", type=Path, default=Path("zoom.gif"), help="the animation (.gif or .webp)")
    zoom.add_argument("--no-autostart", action="store_true")
    search = sub.add_parser("search", help="find images by text, by an image file, or like a gallery image")
    search.add_argument("query", nargs="?", help="text: a concept or words from a prompt")
    search.add_argument("--image", type=Path, help="reverse search: PNG/JPEG file")
    search.add_argument("--similar", type=int, metavar="ID", help="images like gallery image ID")
    search.add_argument("--limit", type=int, default=10)
    search.add_argument("--guild")
    search.add_argument("--user")
    search.add_argument("--source", choices=["cli", "discord", "desktop", "api"])
    search.add_argument("--model", dest="model_filter", help="only images of this model")
    search.add_argument("--json", action="store_true")
    search.add_argument("--no-autostart", action="store_true")
    gallery = sub.add_parser("gallery", help="import images, rebuild the search index, check and repair")
    gallery.add_argument("action", choices=["import", "reindex", "check"])
    gallery.add_argument("path", nargs="?", type=Path, help="import: the folder of images")
    gallery.add_argument("--repair", action="store_true", help="check: fix what is inconsistent")
    gallery.add_argument("--no-autostart", action="store_true")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and args.command not in {"dream", "zoom"}:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    overrides = {k: v for k in ("home", "model", "device") if (v := getattr(args, k, None)) is not None}
    try:
        settings = Settings(**overrides)
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        return _fail(f"bad setting {where}: {first['msg']} (check DREAMHALL_* variables and config.toml)")
    try:
        if args.command == "engine":
            return cmd_engine(args, settings)
        if args.command == "search":
            return cmd_search(args, settings)
        if args.command == "gallery":
            if args.action == "import" and args.path is None:
                return _fail("gallery import needs a folder: dreamhall gallery import DIR")
            return cmd_gallery(args, settings)
        if args.command == "zoom":
            return cmd_zoom(args, extra, settings)
        return cmd_dream(args, extra, settings)
    except Exit as e:
        return e.code


def cmd_zoom(args: argparse.Namespace, extra: list[str], settings: Settings) -> int:
    from engine.zoom import save_animation, zoom_in_animation, zoom_out_frames

    if not 2 <= args.frames <= 100:
        return _fail(f"--frames: between 2 and 100 (got {args.frames})")
    if not 0.3 <= args.factor <= 0.95:
        return _fail(f"--factor: between 0.3 and 0.95 (got {args.factor})")
    if args.out.suffix.lower() not in {".gif", ".webp"}:
        return _fail(f"--out: a .gif or .webp file (got {args.out.name})")
    try:
        request = parse_argv(extra, requester=Requester(source="cli", user=os.environ.get("USER")))
    except DreamArgsError as e:
        return _fail(str(e))
    if request.mode != "txt2img":
        return _fail("zoom starts from a prompt: leave out -I, -M, -v, -U and --outpaint")
    with (
        engine_errors(),
        connect(settings, autostart=not args.no_autostart) as engine,
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
