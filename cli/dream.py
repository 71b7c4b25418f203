"""`dreamhall dream` and `dreamhall zoom`: the `!dream` grammar from the terminal.

Every `dreamhall dream` is a new process, so this module imports only the standard library at the top:
`dream` against a running engine speaks engine.client.wire and never loads pydantic or httpx."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from engine.client import paths
from engine.client.dream_args import DreamArgsError, parse_fields, usage
from engine.client.errors import EngineUnavailable, RequestRejected, clip_text
from engine.client.local_files import existing_file, looks_like_ref, resolve_local
from engine.client.wire import Wire

if TYPE_CHECKING:
    from tqdm import tqdm

    from engine.client.settings import Settings


from cli.common import engine_errors, fail, fail_args, load_settings


class GrammarHelp(argparse.Action):
    """--help of the commands that take the !dream grammar: the grammar's own help, then the command's flags."""

    def __init__(self, option_strings: list[str], dest: str, **kwargs) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, help="show this help")

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        print(usage(parser.prog))
        print(f"options of {parser.prog} itself:")
        print("\n".join(parser.format_help().split("\n")[2:]).replace("options:\n", "", 1))
        parser.exit()


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


def cmd_dream(args: argparse.Namespace, extra: list[str]) -> int:
    requester = {"source": "cli", "user": os.environ.get("USER")}
    try:
        # Flags and files are checked before anything is sent; values and ranges by the engine (or, when
        # none is running, by the request model here, before one is started for this command).
        parse_fields(extra, resolve_image=_local_file_check)
    except DreamArgsError as e:
        return fail_args(e)
    say = (lambda m: print(m, file=sys.stderr)) if args.json else print

    def submit(wire: Wire) -> tuple[dict, dict]:
        def upload(value: str) -> str:
            return resolve_local(value, lambda data: wire.call("POST", "/v1/uploads", data)["ref"])

        fields = _local_model(parse_fields(extra, requester=requester, resolve_image=upload))
        return fields, wire.call("POST", "/v1/dreams", fields)

    try:
        home = paths.home(args.home)
    except (OSError, ValueError):
        home = load_settings(args).home  # the settings model says what is wrong with the config file
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
        return fail_args(e)
    job_id = accepted["id"]
    if accepted.get("found"):  # find before draw: nothing was queued
        made = accepted["found"][:16].replace("T", " ")
        say(f"found in the gallery, made {made} (--fresh draws anew)")
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
            return fail("cancelled", 130)
        finally:
            progress.close()
        if end["type"] != "done":
            return fail(f"job {job_id} {end['type']}" + (f": {end['error']}" if end.get("error") else ""), 1)
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
        out: dict[str, Any] = {"job": job_id, "images": [{k: i.get(k) for k in keys} for i in images],
                               "found": accepted.get("found")}  # fmt: skip
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

    settings = load_settings(args)
    request = parse_argv(extra, requester=Requester(**requester), resolve_image=_local_file_check)
    model = _local_model({"model": request.model})["model"]
    connect(settings, autostart=not args.no_autostart, say=say, model=model).close()
    return Wire(settings.socket_path), settings.home


def cmd_zoom(args: argparse.Namespace, extra: list[str], settings: Settings) -> int:
    from tqdm import tqdm

    from cli.zoom import save_animation, zoom_in_animation, zoom_out_frames
    from engine.client.dream_args import parse_argv
    from engine.client.launch import connect
    from engine.client.schema import Requester

    if not 2 <= args.frames <= 100:
        return fail(f"--frames: between 2 and 100 (got {args.frames})")
    if not 0.3 <= args.factor <= 0.95:
        return fail(f"--factor: between 0.3 and 0.95 (got {args.factor})")
    if args.out.suffix.lower() not in {".gif", ".webp"}:
        return fail(f"--out: a .gif or .webp file (got {args.out.name})")
    try:
        request = parse_argv(extra, requester=Requester(source="cli", user=os.environ.get("USER")))
    except DreamArgsError as e:
        return fail_args(e, "dreamhall zoom")
    if request.mode != "txt2img":
        return fail("zoom starts from a prompt: leave out -I, -M, -v, -U and --outpaint")
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
