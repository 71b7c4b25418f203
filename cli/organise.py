"""`dreamhall board …`, `gallery tag` and `gallery rate`: organising the gallery from the terminal.

    dreamhall board create NAME | list | rename NAME NEW | delete NAME | add NAME ID… | remove NAME ID…
    dreamhall gallery list --board NAME [--tag T] [--sort rating] [--json]
    dreamhall gallery tag ID TAG… [--remove]
    dreamhall gallery rate ID 1-5          (0 clears it)

Boards made here are the engine owner's (`local`): the CLI and the desktop share them.
"""

from __future__ import annotations

import argparse
import getpass
import json
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from engine.client.clients import EngineClient
    from engine.client.schema import Requester
    from engine.client.settings import Settings

from cli.common import Exit, engine_errors, fail

BOARD_ACTIONS = ("create", "list", "rename", "delete", "add", "remove")


def local_user() -> Requester:
    from engine.client.schema import Requester

    return Requester(source="cli", user=getpass.getuser())


def _named(items: list, name: str) -> int | None:
    """The id of the item (a board, a saved search) with this name, matched as the engine does: case-blind."""
    key = " ".join(name.split()).casefold()
    return next((item.id for item in items if item.name.casefold() == key), None)


def board_id(engine: EngineClient, name: str) -> int:
    """A board of the local user's by name."""
    found = _named(engine.boards(local_user()), name)
    if found is None:
        raise Exit(fail(f"no board named {name!r} (dreamhall board list shows yours)"))
    return found


def _ids(values: list[str]) -> list[int]:
    bad = [v for v in values if not (v.isascii() and v.isdigit())]
    if bad or not values:
        raise Exit(fail(f"give image ids such as 42 43 (got {bad[0]!r})" if bad else "give at least one image id"))
    return [int(v) for v in values]


def cmd_board(args: argparse.Namespace, settings: Settings) -> int:
    from engine.client.launch import connect

    who = local_user()
    needs = {"create": 1, "rename": 2, "delete": 1, "add": 2, "remove": 2}.get(args.action, 0)
    if len(args.values) < needs:
        return fail(f"board {args.action} needs {'a name' if needs == 1 else 'a name and more'}: "
                    f"dreamhall board {args.action} NAME{' …' if needs > 1 else ''}")  # fmt: skip
    with engine_errors(), connect(settings, autostart=not args.no_autostart) as engine:
        if args.action == "list":
            boards = engine.boards(who)
            if args.json:
                print(json.dumps([b.model_dump(mode="json") for b in boards]))
                return 0
            for b in boards:
                cover = f"  cover #{b.cover}" if b.cover else ""
                print(f"{b.name}  ({b.count} image(s)){cover}")
            if not boards:
                print('no boards yet: dreamhall board create "Sunsets"')
            return 0
        name, rest = args.values[0], args.values[1:]
        if args.action == "create":
            board = engine.create_board(name, who)
        elif args.action == "rename":
            board = engine.rename_board(board_id(engine, name), rest[0], who)
        elif args.action == "delete":
            board = engine.delete_board(board_id(engine, name), who)
        elif args.action == "add":
            board = engine.board_add(board_id(engine, name), _ids(rest), who)
        else:
            board = engine.board_remove(board_id(engine, name), _ids(rest), who)
    if args.json:
        print(board.model_dump_json())
    else:
        done = {"create": "created", "rename": "renamed", "delete": "deleted (its images stay in the gallery)",
                "add": "now holds", "remove": "now holds"}[args.action]  # fmt: skip
        print(f"board {board.name!r} {done}" + (f" {board.count} image(s)" if args.action in ("add", "remove") else ""))
    return 0


def cmd_tag(engine: EngineClient, args: argparse.Namespace) -> int:
    if args.target is None or not args.values:
        return fail("gallery tag needs an image id and tags: dreamhall gallery tag 42 portrait sunset")
    [image_id] = _ids([args.target])
    tags = engine.tag(image_id, [] if args.remove else args.values, args.values if args.remove else [])
    print(json.dumps({"id": image_id, "tags": tags}) if args.json else f"#{image_id}: {' '.join(tags)}")
    return 0


def cmd_rate(engine: EngineClient, args: argparse.Namespace) -> int:
    if args.target is None or len(args.values) != 1 or args.values[0] not in {"0", "1", "2", "3", "4", "5"}:
        return fail("gallery rate needs an image id and 1-5 (0 clears it): dreamhall gallery rate 42 5")
    [image_id] = _ids([args.target])
    image = engine.rate(image_id, int(args.values[0]))
    print(json.dumps({"id": image.id, "rating": image.rating}) if args.json else
          f"#{image.id}: {'★' * (image.rating or 0) or 'no rating'}")  # fmt: skip
    return 0


def cmd_lineage(engine: EngineClient, args: argparse.Namespace) -> int:
    """Where an image came from (its parents, nearest first) and what was made from it, as a tree."""
    if args.target is None:
        return fail("gallery lineage needs an image id: dreamhall gallery lineage 42")
    [image_id] = _ids([args.target])
    lineage = engine.lineage(image_id)
    if args.json:
        print(lineage.model_dump_json())
        return 0
    image = engine.image(image_id)
    line = [*reversed(lineage.ancestors)]
    relations = [n.relation for n in line[1:]] + ([image.relation] if line else [])  # how each next came from it
    for node, relation in zip(line, relations, strict=True):
        print(f"#{node.id}  {node.mode}  {node.prompt[:60]!r}")
        print(f"  ↓ {relation}")
    print(f"#{image_id}  {image.mode}  {image.prompt[:60]!r}  (this image)")
    for node in lineage.sources:  # the gallery pictures that steered it
        print(f"  ← {node.edge} #{node.id}  {node.prompt[:50]!r}")
    children: dict[int | None, list] = {}
    for node in lineage.descendants:
        children.setdefault(node.via, []).append(node)

    def show(parent: int, indent: str) -> None:
        for node in children.get(parent, []):
            print(f"{indent}└ {node.edge or node.relation} #{node.id}  {node.prompt[:50]!r}")
            show(node.id, indent + "  ")

    show(image_id, "  ")
    return 0


def saved_id(engine: EngineClient, name: str) -> int:
    found = _named(engine.saved_searches(local_user()), name)
    if found is None:
        raise Exit(fail(f"no saved search named {name!r} (dreamhall search --saved lists yours)"))
    return found


def cmd_saved(args: argparse.Namespace, settings: Settings) -> int:
    from engine.client.launch import connect

    with engine_errors(), connect(settings, autostart=not args.no_autostart) as engine:
        saved = engine.saved_searches(local_user())
    if args.json:
        print(json.dumps([s.model_dump(mode="json") for s in saved]))
        return 0
    for s in saved:
        print(f"@{s.name}  {s.query!r}" + (f"  {s.filters}" if s.filters else ""))
    if not saved:
        print('no saved searches yet: dreamhall search "red circle" --save reds')
    return 0
