"""`dreamhall`: run the engine, dream from the terminal, and look after the gallery.

    dreamhall engine                 run the engine in the foreground
    dreamhall engine stop | status
    dreamhall dream "a red circle on a blue background" -n 4 -S 3220803958 [--json]
    dreamhall dream "a blue circle" -I photo.png -f 0.6   (or -I 42: gallery image 42)
    dreamhall zoom "a red circle on a blue background" --frames 8 --out zoom.gif
    dreamhall search "green triangle" [--limit K] [--json]  |  --image PATH  |  --similar ID
    dreamhall describe photo.png | ID        four candidate prompts (Midjourney's /describe)
    dreamhall edit ID zoom-2 | pan-left | vary-subtle ...   Midjourney's edit loop
    dreamhall gallery import DIR | reindex | check [--repair]
    dreamhall gallery list [--limit N] [--source cli] [--board B] [--tag T] [--json] | show ID | open ID|last
    dreamhall gallery tag ID TAG… [--remove] | rate ID 1-5 | lineage ID
    dreamhall board create|list|rename|delete|add|remove NAME [ID…]
    dreamhall mcp                    an MCP server on stdio, for AI assistants

The `dream` arguments are the `!dream` grammar (engine.client.dream_args), the same
as in Discord and the desktop prompt box.

Every `dreamhall dream` is a new process, so this module imports only the standard
library at the top: `dream` against a running engine speaks engine.client.wire and never loads
pydantic or httpx; the other commands import the client and the settings model when run.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from engine import __version__
from engine.client.errors import EngineError, EngineUnavailable
from engine.client.wire import Wire

if TYPE_CHECKING:
    from engine.client.settings import Settings


from cli.common import Exit, engine_errors, fail, load_settings
from cli.dream import GrammarHelp, cmd_dream, cmd_zoom
from cli.edit import EDITS, cmd_describe, cmd_edit
from cli.gallery import cmd_gallery, cmd_models, cmd_search
from cli.organise import BOARD_ACTIONS, cmd_board


def cmd_engine(args: argparse.Namespace, settings: Settings) -> int:
    from engine.client.clients import EngineClient
    from engine.client.launch import StopFailed, stop_engine

    if args.action == "stop":
        try:
            print(stop_engine(settings))
        except StopFailed as e:
            return fail(str(e), 1)
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
        return fail(f"an engine is already listening on {settings.socket_path}", 1)
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
    dream.add_argument("--help", action=GrammarHelp)
    zoom = sub.add_parser("zoom", help="infinite zoom: chained outpaints as an animation", allow_abbrev=False,
                          add_help=False)  # fmt: skip
    zoom.add_argument("--help", action=GrammarHelp)
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
    search.add_argument("--tag", action="append", default=[], help="only images with this tag (repeatable)")
    search.add_argument("--stacks", action="store_true", help="one result per stack (images differing only by seed)")
    search.add_argument("--save", metavar="NAME", help="save this search by name, then run it (run it later: @NAME)")
    search.add_argument("--saved", action="store_true", help="list your saved searches")
    search.add_argument("--json", action="store_true")
    search.add_argument("--no-autostart", action="store_true")
    mcp = sub.add_parser("mcp", help="an MCP server on stdin/stdout, for AI assistants (Claude Desktop, ...)")
    mcp.add_argument("--no-autostart", action="store_true", help="fail instead of starting an engine")
    describe = sub.add_parser("describe", help="four candidate prompts for a picture (Midjourney's /describe)")
    describe.add_argument("image", help="a picture file, or a gallery image id")
    describe.add_argument("--json", action="store_true")
    describe.add_argument("--no-autostart", action="store_true")
    edit = sub.add_parser("edit", help="Midjourney's edit loop on a gallery image: vary, zoom out, pan")
    edit.add_argument("image_id", type=int, metavar="ID")
    edit.add_argument("action", choices=EDITS)
    edit.add_argument("-n", type=int, default=4, help="vary: how many images (default 4)")
    edit.add_argument("--json", action="store_true")
    edit.add_argument("--no-autostart", action="store_true")
    board = sub.add_parser("board", help="boards: create, list, rename, delete, add and remove images")
    board.add_argument("action", choices=BOARD_ACTIONS)
    board.add_argument("values", nargs="*", help="the board's name, then a new name or image ids")
    board.add_argument("--json", action="store_true")
    board.add_argument("--no-autostart", action="store_true")
    gallery = sub.add_parser("gallery", help="list, show and open images; tag and rate; import, reindex, check")
    gallery.add_argument("action", choices=["list", "show", "open", "lineage", "tag", "rate", "import", "reindex",
                                            "check"])  # fmt: skip
    gallery.add_argument("target", nargs="?", help="show/open/tag/rate: an image id (or `last`); import: the folder")
    gallery.add_argument("values", nargs="*", help="tag: the tags; rate: 1-5 (0 clears it)")
    gallery.add_argument("--board", help="list: only images on this board of yours")
    gallery.add_argument("--derived-from", type=int, metavar="ID", help="list: only images made from image ID")
    gallery.add_argument("--tag", action="append", default=[], help="list: only images with this tag (repeatable)")
    gallery.add_argument("--stacks", action="store_true", help="list: one image per stack (a job's images, and "
                         "images that differ only by seed or variation), with the stack's size")  # fmt: skip
    gallery.add_argument("--stack", metavar="KEY", help="list: the images of one stack (its key, from --stacks)")
    gallery.add_argument("--sort", choices=["newest", "rating", "favourites"], default="newest")
    gallery.add_argument("--remove", action="store_true", help="tag: take these tags off")
    gallery.add_argument("--json", action="store_true", help="one JSON object instead of text")
    gallery.add_argument("--limit", type=int, default=20, help="list: how many (newest first)")
    gallery.add_argument("--guild")
    gallery.add_argument("--user")
    gallery.add_argument("--source", help="only images from this source: cli, discord, desktop, api, ...")
    gallery.add_argument("--model", dest="model_filter", help="only images of this model")
    gallery.add_argument("--lora", help="list: only images made with this LoRA")
    gallery.add_argument("--repair", action="store_true", help="check: fix what is inconsistent (never merges "
                         "duplicates or similar pictures: it lists them)")  # fmt: skip
    gallery.add_argument("--similar-window", type=int, metavar="N", help="check: compare the newest N images for "
                         "similar pictures (default 2000)")  # fmt: skip
    gallery.add_argument("--no-autostart", action="store_true")
    return parser


def cmd_mcp(args: argparse.Namespace, settings: Settings) -> int:
    """The MCP server: stdout is the protocol's, so everything said goes to stderr."""
    from assistants.mcp_server import serve_stdio
    from engine.client.launch import connect

    with engine_errors(), connect(settings, autostart=not args.no_autostart, say=lambda m: print(m, file=sys.stderr)):
        pass  # the engine is up (started if need be) before the assistant's first call
    serve_stdio(settings.socket_path)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and args.command not in {"dream", "zoom"}:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        if args.command == "dream":
            return cmd_dream(args, extra)  # finds the socket itself: the settings model is not loaded for it
        settings = load_settings(args)
        if args.command == "engine":
            return cmd_engine(args, settings)
        if args.command == "search":
            return cmd_search(args, settings)
        if args.command == "models":
            return cmd_models(args, settings)
        if args.command == "board":
            return cmd_board(args, settings)
        if args.command == "mcp":
            return cmd_mcp(args, settings)
        if args.command == "describe":
            return cmd_describe(args, settings)
        if args.command == "edit":
            return cmd_edit(args, settings)
        if args.command == "gallery":
            if args.action == "import" and args.target is None:
                return fail("gallery import needs a folder: dreamhall gallery import DIR")
            return cmd_gallery(args, settings)
        return cmd_zoom(args, extra, settings)
    except Exit as e:
        return e.code


if __name__ == "__main__":
    sys.exit(main())
