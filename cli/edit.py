"""`dreamhall describe` and `dreamhall edit`: Midjourney's /describe and its edit loop from the terminal.

dreamhall describe photo.png | 42            four candidate prompts for a picture or a gallery image
dreamhall edit 42 zoom-2 | zoom-1.5 | pan-left | pan-right | pan-up | pan-down | vary-subtle | vary-strong
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from engine.client.settings import Settings

from cli.common import engine_errors, fail

EDITS = ("vary-subtle", "vary-strong", "zoom-2", "zoom-1.5", "pan-left", "pan-right", "pan-up", "pan-down")
_PAN = {"left": "left", "right": "right", "up": "top", "down": "bottom"}


def cmd_describe(args: argparse.Namespace, settings: Settings) -> int:
    from engine.client.launch import connect

    target: bytes | int
    if args.image.isdigit() and not Path(args.image).exists():
        target = int(args.image)
    else:
        try:
            target = Path(args.image).read_bytes()
        except OSError as e:
            return fail(f"cannot read {args.image}: {e.strerror} (give a picture file or a gallery image id)")
    with engine_errors(), connect(settings, autostart=not args.no_autostart) as engine:
        described = engine.describe(target)
    if args.json:
        print(described.model_dump_json())
        return 0
    for k, prompt in enumerate(described.prompts, start=1):
        print(f"{k}. {prompt}")
    return 0


def cmd_edit(args: argparse.Namespace, settings: Settings) -> int:
    from engine.client import derived
    from engine.client.launch import connect
    from engine.client.schema import Requester

    who = Requester(source="cli", user=os.environ.get("USER"))
    with engine_errors(), connect(settings, autostart=not args.no_autostart) as engine:
        parent = engine.image(args.image_id)
        kind, _, how = args.action.partition("-")
        try:
            if kind == "vary":
                request = derived.vary_of(parent, how=how, n=args.n, requester=who)
            elif kind == "zoom":
                request = derived.zoom_out_of(parent, factor=float(how), requester=who)
            else:
                request = derived.pan_of(parent, side=_PAN[how], requester=who)
        except ValueError as e:
            return fail(str(e))
        job = engine.wait(engine.submit(request).id)
        if job.status != "done":
            return fail(f"the {args.action} {job.status}: {job.error or ''}".rstrip(": "))
        images = [engine.image(i.id) for i in job.images]
    if args.json:
        rows = [{"id": i.id, "path": i.path, "seed": i.seed, "width": i.width, "height": i.height} for i in images]
        print(json.dumps({"job": job.id, "images": rows}))
        return 0
    for i in images:
        print(f"#{i.id}  {i.width}x{i.height}  seed {i.seed}  {i.path}  ({args.action} of #{parent.id})")
    return 0
