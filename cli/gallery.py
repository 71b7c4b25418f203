"""`dreamhall models`, `search` and `gallery`: the shelf and the gallery from the terminal."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, get_args

from engine.client.errors import RequestRejected

if TYPE_CHECKING:
    from engine.client.answers import CheckReport, ImageRecord
    from engine.client.clients import EngineClient
    from engine.client.settings import Settings


from cli.common import Exit, engine_errors, fail
from cli.organise import board_id, cmd_lineage, cmd_rate, cmd_saved, cmd_tag, local_user, saved_id


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


def _filters(args: argparse.Namespace) -> dict:
    """The gallery filters `search` and `gallery list` share."""
    from engine.client.schema import IMPORTED_SOURCES, Source

    sources = [*get_args(Source), *sorted(IMPORTED_SOURCES)]
    if args.source is not None and args.source not in sources:
        raise Exit(fail(f"--source: one of {', '.join(sources)} (got {args.source!r})"))
    return {"guild": args.guild, "user": args.user, "source": args.source, "model": args.model_filter,
            "lora": args.lora}  # fmt: skip


def cmd_search(args: argparse.Namespace, settings: Settings) -> int:
    from engine.client.launch import connect

    if args.saved:
        return cmd_saved(args, settings)
    if (args.query is None) == (args.image is None and args.similar is None):
        return fail('give search text, or --image PATH, or --similar ID (e.g. dreamhall search "green triangle")')
    filters = _filters(args)
    say = (lambda m: print(m, file=sys.stderr)) if args.json else print
    with engine_errors(), connect(settings, autostart=not args.no_autostart, say=say) as engine:
        if args.query is not None and args.query.startswith("@"):  # a saved search, run now
            found = engine.run_search(saved_id(engine, args.query[1:]), local_user(), limit=args.limit)
        elif args.save is not None:
            if args.query is None:
                return fail('--save keeps a text search: dreamhall search "red circle" --save reds')
            saved = engine.save_search(args.save, args.query, local_user(), tag=args.tag or None, **filters)
            say(f"saved as @{saved.name}")
            found = engine.run_search(saved.id, local_user(), limit=args.limit)
        elif args.image is not None:
            try:
                data = Path(args.image).read_bytes()
            except OSError as e:
                return fail(f"cannot read {args.image}: {e.strerror}")
            found = engine.search_image(data, limit=args.limit, stacks=args.stacks or None, **filters)
        elif args.similar is not None:
            found = engine.similar(args.similar, limit=args.limit, **filters)
        else:
            found = engine.search(args.query, limit=args.limit, tag=args.tag or None, stacks=args.stacks or None,
                                  **filters)  # fmt: skip
    if args.json:
        rows = [{"id": r.image.id, "path": r.image.path, "score": r.score, "prompt": r.image.prompt,
                 "seed": r.image.seed, "stack_key": r.image.stack_key, "stack_size": r.image.stack_size}
                for r in found.results]  # fmt: skip
        print(json.dumps({"results": rows}))
    elif not found.results:
        print("no matches")
    else:
        for r in found.results:
            print(f"{r.score:6.3f}  #{r.image.id}  seed {r.image.seed}  {r.image.prompt!r}  {r.image.path}"
                  f"{_stack_note(r.image)}")  # fmt: skip
    return 0


def _stack_note(image: ImageRecord) -> str:
    """How a stacked listing says there is more under an image, and how to see it."""
    if not image.stack_size or image.stack_size < 2:
        return ""
    return f"  [stack of {image.stack_size}: --stack {image.stack_key}]"


IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp"}


def cmd_gallery(args: argparse.Namespace, settings: Settings) -> int:
    from engine.client.launch import connect

    with engine_errors(), connect(settings, autostart=not args.no_autostart) as engine:
        if args.action in {"list", "show", "open"}:
            return _look(engine, args)
        if args.action == "tag":
            return cmd_tag(engine, args)
        if args.action == "rate":
            return cmd_rate(engine, args)
        if args.action == "lineage":
            return cmd_lineage(engine, args)
        if args.action == "import":
            return _import(engine, Path(args.target))
        if args.action == "reindex":
            result = engine.reindex()
            print(f"re-embedded {result.embedded} image(s); {len(result.unreadable)} unreadable")
            return 0
        report = engine.check_gallery(repair=args.repair, similar_window=args.similar_window)
    if args.json:
        print(report.model_dump_json())
    else:
        _print_check(report)
    consistent = report.consistent
    return 0 if consistent or report.repaired else 1


def _print_check(report: CheckReport) -> None:
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
    if not any(len(items) for items, _ in problems):
        print("all consistent")
    if report.hashed:
        print(f"  hashed {report.hashed} older image(s) to find duplicates")
    # listed for a person to decide: neither kind is ever merged or deleted by --repair
    if report.same_pictures:
        print(f"{len(report.same_pictures)} group(s) of the same picture (same pixels or perceptual hash):")
        for group in report.same_pictures:
            print("  " + " = ".join(f"#{i}" for i in group))
    if report.similar:
        print(f"{len(report.similar)} group(s) of similar, different pictures among the newest "
              f"{report.similar_window} (CLIP):")  # fmt: skip
        for group in report.similar:
            print("  " + " ~ ".join(f"#{i}" for i in group))


def _look(engine: EngineClient, args: argparse.Namespace) -> int:
    """gallery list / show ID / open ID|last."""
    if args.action == "list":
        filters = _filters(args)
        if args.board is not None:
            filters["board"] = board_id(engine, args.board)
        page = engine.images(limit=args.limit, tag=args.tag or None, sort=args.sort, derived_from=args.derived_from,
                             stacks=args.stacks or None, stack=args.stack, **filters)  # fmt: skip
        if args.json:
            print(page.model_dump_json())
            return 0
        for image in page.images:
            when = image.created_at.astimezone().strftime("%Y-%m-%d %H:%M")
            print(f"#{image.id}  {when}  seed {image.seed}  {image.width}x{image.height}  {image.mode}  "
                  f"{image.prompt[:70]!r}{_stack_note(image)}")  # fmt: skip
        order = {"newest": "newest first", "rating": "best rated first", "favourites": "favourites first"}[args.sort]
        print(f"{len(page.images)} of {page.total} image(s), {order}")
        return 0
    if args.target is None:
        return fail(f"gallery {args.action} needs an image id (or `last`): dreamhall gallery {args.action} 42")
    if args.target == "last":
        newest = engine.images(limit=1).images
        if not newest:
            return fail("the gallery is empty", 1)
        image = newest[0]
    elif args.target.isascii() and args.target.isdigit():
        image = engine.image(int(args.target))
    else:
        return fail(f"{args.target!r} is not an image id; give a number such as 42, or `last`")
    if args.action == "open":
        return _open_file(Path(image.path))
    lineage = f"{image.relation} of #{image.parent_id}" if image.parent_id else (image.relation or "—")
    fields = [
        ("prompt", image.prompt), ("negative", image.negative_prompt or "—"), ("seed", image.seed),
        ("size", f"{image.width}x{image.height}"), ("model", image.model), ("sampler", image.sampler),
        ("steps", image.steps), ("cfg", image.cfg_scale), ("mode", image.mode), ("lineage", lineage),
        ("rating", "★" * image.rating if image.rating else "—"), ("tags", " ".join(image.tags) or "—"),
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
        return fail(f"no viewer ({opener[0]}) on this machine; the file is {path}", 1)
    print(path)
    return 0


def _import(engine, folder: Path) -> int:
    if not folder.is_dir():
        return fail(f"{folder} is not a folder")
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
