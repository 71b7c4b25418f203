"""Boards, tags and ratings through a real engine: the CLI's forms, the API's answers to bad input, the tenant rule."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from collections.abc import Iterator

import pytest

from engine.client.clients import RequestRejected
from engine.client.dream_args import parse
from engine.client.schema import Requester, Scope
from tests.conftest import ROOT, EngineProcess

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EngineProcess]:
    proc = EngineProcess(tmp_path_factory.mktemp("organise"), None).start()
    yield proc
    assert proc.stop() == 0


def cli(engine: EngineProcess, *argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cli", "--home", str(engine.home), *argv],
                          capture_output=True, text=True, cwd=ROOT, timeout=120)  # fmt: skip


def made(engine: EngineProcess, command: str, who: Requester | None = None) -> list[int]:
    with engine.client() as client:
        job = client.wait(client.submit(parse(command, requester=who)).id)
        assert job.status == "done", job.error
        return [i.id for i in job.images]


def test_boards_tags_and_ratings_from_the_cli(engine: EngineProcess) -> None:
    ids = made(engine, '"a red circle on a blue background" -n 3 -S 1 -s 4 -W 64 -H 96')
    assert cli(engine, "board", "create", "Red things").returncode == 0
    out = cli(engine, "board", "add", "red THINGS", str(ids[0]), str(ids[1]))  # names are matched case-blind
    assert out.returncode == 0 and "now holds 2 image(s)" in out.stdout, out.stderr
    listed = json.loads(cli(engine, "board", "list", "--json").stdout)
    assert [(b["name"], b["count"], b["cover"]) for b in listed] == [("Red things", 2, ids[1])]
    page = json.loads(cli(engine, "gallery", "list", "--board", "Red things", "--json").stdout)
    assert sorted(i["id"] for i in page["images"]) == ids[:2] and page["total"] == 2
    # tags: a person's, and the automatic ones (what made it)
    tagged = json.loads(cli(engine, "gallery", "tag", str(ids[2]), "Sunset", "for the poster", "--json").stdout)
    assert tagged["tags"][:2] == ["for-the-poster", "sunset"]
    assert {"portrait", "small", "mode:txt2img", "source:api", "sampler:euler-a"} <= set(tagged["tags"])
    found = json.loads(cli(engine, "search", "tag:sunset", "--json").stdout)["results"]
    assert [r["id"] for r in found] == [ids[2]]
    found = json.loads(cli(engine, "search", "red circle tag:sunset", "--json").stdout)["results"]
    assert [r["id"] for r in found] == [ids[2]]  # words among the tagged images only
    page = json.loads(cli(engine, "gallery", "list", "--tag", "portrait", "--tag", "sunset", "--json").stdout)
    assert [i["id"] for i in page["images"]] == [ids[2]]
    assert cli(engine, "gallery", "tag", str(ids[2]), "sunset", "--remove").returncode == 0
    assert json.loads(cli(engine, "search", "tag:sunset", "--json").stdout)["results"] == []
    # ratings, and the best rated first
    assert "★★★★★" in cli(engine, "gallery", "rate", str(ids[1]), "5").stdout
    assert cli(engine, "gallery", "rate", str(ids[0]), "2").returncode == 0
    page = json.loads(cli(engine, "gallery", "list", "--sort", "rating", "--json", "--limit", "2").stdout)
    assert [i["id"] for i in page["images"]] == [ids[1], ids[0]]
    bad = cli(engine, "gallery", "rate", str(ids[0]), "6")
    assert bad.returncode != 0 and "1-5" in bad.stderr and "Traceback" not in bad.stderr
    # removing and deleting never deletes images
    assert cli(engine, "board", "remove", "Red things", str(ids[0])).returncode == 0
    assert cli(engine, "board", "delete", "Red things").returncode == 0
    with engine.client() as client:
        assert [client.image(i).id for i in ids] == ids
    missing = cli(engine, "board", "add", "Red things", str(ids[0]))
    assert missing.returncode != 0 and "no board named 'Red things'" in missing.stderr


def test_boards_keep_to_their_server_and_their_member(engine: EngineProcess) -> None:
    alice = Requester(source="discord", user="alice", guild="g1")
    bob = Requester(source="discord", user="bob", guild="g1")
    eve = Requester(source="discord", user="eve", guild="g2")
    [mine] = made(engine, '"a green square on a white background" -S 3 -s 4', alice)
    [theirs] = made(engine, '"a green square on a white background" -S 3 -s 4', eve)
    with engine.client() as client:
        shared = client.create_board("Greens", alice, shared=True)
        personal = client.create_board("Private", alice)
        assert client.board_add(shared.id, [mine], bob).count == 1  # a shared board: any member adds
        with pytest.raises(RequestRejected, match=r"image \d+ is not in this server's gallery") as info:
            client.board_add(shared.id, [theirs], alice)  # another server's image
        assert info.value.status == 404
        assert [b.name for b in client.boards(bob)] == ["Greens"]  # alice's own board is hers
        with pytest.raises(RequestRejected, match="no board") as info:
            client.board(personal.id, bob)
        assert info.value.status == 404
        with pytest.raises(RequestRejected, match="no board"):
            client.board(shared.id, eve)  # another server: as if it did not exist
        with pytest.raises(RequestRejected, match="only the member who made it") as info:
            client.delete_board(shared.id, bob)
        assert info.value.status == 403
        with pytest.raises(RequestRejected, match="already a board named 'GREENS'") as info:
            client.create_board("ＧＲＥＥＮＳ", alice, shared=True)  # NFKC and case: the same name
        assert info.value.status == 409
        with pytest.raises(RequestRejected, match="at most 100 characters"):
            client.create_board("x" * 150, alice)
        page = client.images(guild="g1", board=shared.id)
        assert [i.id for i in page.images] == [mine] and page.images[0].tags
        assert [t.tag for t in client.tags("mode:", guild="g1")] == ["mode:txt2img"]
        with pytest.raises(RequestRejected) as info:
            client.tag(theirs, ["mine"], scope=Scope(guild="g1"))  # another server's image
        assert info.value.status == 404
        with pytest.raises(RequestRejected, match="is not a tag"):
            client.tag(mine, ["two, tags"])
        with pytest.raises(RequestRejected) as info:
            client.rate(mine, 9)
        assert info.value.status == 422


def test_find_before_draw_answers_a_repeat_from_the_gallery(engine: EngineProcess, tmp_path) -> None:
    command = ['"a purple star on a gray background"', "-n", "2", "-S", "77", "-s", "6", "--json"]
    first = cli(engine, "dream", *command)
    assert first.returncode == 0, first.stderr
    drawn = json.loads(first.stdout)
    assert drawn["found"] is None
    again = cli(engine, "dream", *command)
    repeat = json.loads(again.stdout)
    assert [i["id"] for i in repeat["images"]] == [i["id"] for i in drawn["images"]]  # the same images, not copies
    assert repeat["found"] and "found in the gallery, made" in again.stderr and repeat["job"] != drawn["job"]
    with engine.client() as client:
        job = client.job(repeat["job"])
        assert job.status == "done" and job.found is not None and [i.id for i in job.images] == [
            i["id"] for i in drawn["images"]]  # fmt: skip
        assert client.queue().queued == []  # nothing was queued
    fresh = json.loads(cli(engine, "dream", *command, "--fresh").stdout)
    assert fresh["found"] is None and {i["id"] for i in fresh["images"]}.isdisjoint(i["id"] for i in drawn["images"])
    # another seed, a changed knob, one image more: drawn (each image is keyed alone: after -n 3, seeds 77-79
    # are all in the gallery, and `-S 78 -n 2` would be found)
    for change in (["-S", "1000"], ["--clip_skip", "2"], ["-C", "5"], ["-n", "3"]):
        other = json.loads(cli(engine, "dream", *command, *change).stdout)
        assert other["found"] is None, change
    # another server does not get this server's images, even for the same request
    alice = Requester(source="discord", user="alice", guild="g9")
    with engine.client() as client:
        mine = client.wait(client.submit(parse('"a cyan circle" -S 5 -s 4', requester=alice)).id)
        theirs = client.submit(parse('"a cyan circle" -S 5 -s 4', requester=alice.model_copy(update={"guild": "g8"})))
        assert theirs.found is None
        again_mine = client.submit(parse('"a cyan circle" -S 5 -s 4', requester=alice))
        assert again_mine.found is not None and client.job(again_mine.id).images[0].id == mine.images[0].id


def test_lineage_both_ways_and_derived_from(engine: EngineProcess) -> None:
    [root] = made(engine, '"a blue square on a white background" -S 21 -s 4')
    [child] = made(engine, f'"a blue square on a white background" -I {root} -f 0.5 -S 2 -s 4')
    [grandchild] = made(engine, f"-I {child} -U 2 -s 4")
    [other] = made(engine, f'"a red star" -I {root} -f 0.7 -S 3 -s 4')
    with engine.client() as client:
        tree = client.lineage(child)
        assert [(n.id, n.depth) for n in tree.ancestors] == [(root, 1)]
        assert [(n.id, n.relation, n.depth) for n in tree.descendants] == [(grandchild, "upscale", 1)]
        down = client.lineage(root).descendants
        assert sorted((n.id, n.depth) for n in down) == sorted([(child, 1), (other, 1), (grandchild, 2)])
        assert [n.id for n in client.lineage(grandchild).ancestors] == [child, root]
        page = client.images(derived_from=root)
        assert sorted(i.id for i in page.images) == sorted([child, grandchild, other])
    found = json.loads(cli(engine, "search", f"derived_from:{root} red star", "--json").stdout)["results"]
    assert found and found[0]["id"] == other
    text = cli(engine, "gallery", "lineage", str(grandchild)).stdout
    assert f"#{root}" in text and "↓ img2img" in text and "↓ upscale" in text and text.rstrip().endswith("(this image)")


def test_controls_and_references_from_the_gallery_are_lineage(engine: EngineProcess) -> None:
    [disc] = made(engine, '"a white circle on a black background" -S 41 -s 4')
    [steered] = made(engine, f'"a red circle on a blue background" --control {disc} -S 42 -s 4')
    [styled] = made(engine, f'"a circle" --sref {disc} -S 43 -s 4')
    [bigger] = made(engine, f"-I {steered} -U 2 -s 4")
    with engine.client() as client:
        assert [(n.id, n.edge) for n in client.lineage(steered).sources] == [(disc, "control")]
        below = client.lineage(disc).descendants
        assert sorted((n.id, n.depth, n.via, n.edge) for n in below) == sorted(
            [(steered, 1, disc, "control"), (styled, 1, disc, "reference"), (bigger, 2, steered, None)])  # fmt: skip
        assert sorted(i.id for i in client.images(derived_from=disc).images) == sorted([steered, styled, bigger])
    shown = cli(engine, "gallery", "lineage", str(disc))
    text = shown.stdout
    assert shown.returncode == 0, shown.stderr
    assert f"└ control #{steered}" in text and f"└ reference #{styled}" in text and f"  └ upscale #{bigger}" in text
    assert f"← control #{disc}" in cli(engine, "gallery", "lineage", str(steered)).stdout


def test_saved_searches_rerun_as_the_gallery_grows(engine: EngineProcess) -> None:
    [first] = made(engine, '"a yellow triangle on a black background" -S 31 -s 4')
    saved = cli(engine, "search", "yellow triangle", "--save", "Yellows", "--json")
    assert saved.returncode == 0 and "saved as @Yellows" in saved.stderr, saved.stderr
    assert first in [r["id"] for r in json.loads(saved.stdout)["results"]]
    [later] = made(engine, '"a yellow triangle on a white background" -S 32 -s 4')
    again = json.loads(cli(engine, "search", "@yellows", "--json").stdout)["results"]
    assert {first, later} <= {r["id"] for r in again}  # re-run: the newer image is found too
    listed = json.loads(cli(engine, "search", "--saved", "--json").stdout)
    assert [s["name"] for s in listed] == ["Yellows"]
    missing = cli(engine, "search", "@nope")
    assert missing.returncode != 0 and "no saved search named 'nope'" in missing.stderr
    # a server's saved search runs within that server's gallery, whatever its filters say
    alice = Requester(source="discord", user="alice", guild="g5")
    with engine.client() as client:
        theirs = client.save_search("All yellow", "yellow triangle", alice, shared=True, guild="g1")
        assert client.run_search(theirs.id, alice).results == []  # g5 has no images; g1's are not its to see
        with pytest.raises(RequestRejected, match="no saved search") as info:
            client.run_search(theirs.id, Requester(source="discord", user="eve", guild="g6"))
        assert info.value.status == 404
        with pytest.raises(RequestRejected, match="filters"):
            client.save_search("Bad", "x", alice, colour="red")


def test_stacks_fold_seed_only_differences_and_expand(engine: EngineProcess) -> None:
    bob = Requester(source="discord", user="bob", guild="stacks")
    first = made(engine, '"a green circle on a white background" -n 3 -S 100 -s 4', bob)
    [again] = made(engine, '"a green circle on a white background" -S 500 -s 4', bob)  # only the seed differs
    [other] = made(engine, '"a green circle on a white background" -S 100 -s 5', bob)  # another step count
    with engine.client() as client:
        page = client.images(guild="stacks", stacks=True)
        assert [(i.id, i.stack_size) for i in page.images] == [(other, 1), (again, 4)]
        assert page.total == 5  # images, not stacks
        stack = client.images(guild="stacks", stack=page.images[1].stack_key)
        assert sorted(i.id for i in stack.images) == sorted([*first, again])
        plain = client.images(guild="stacks")
        assert all(i.stack_size is None for i in plain.images) and len(plain.images) == 5
        found = client.search("green circle", guild="stacks", stacks=True)
        assert sorted(r.image.stack_size for r in found.results) == [1, 4]
        assert len(client.search("green circle", guild="stacks").results) == 5
    listed = cli(engine, "gallery", "list", "--guild", "stacks", "--stacks")
    assert f"#{again}" in listed.stdout and f"[stack of 4: --stack {page.images[1].stack_key}]" in listed.stdout
    assert f"#{first[0]}" not in listed.stdout


def test_gallery_check_lists_duplicates_apart_from_similar(engine: EngineProcess) -> None:
    from PIL import Image, ImageOps

    ids = made(engine, '"a red circle on a blue background" -n 2 -S 7 -s 4')
    with engine.client() as client:
        picture = Image.open(client.image(ids[0]).path).convert("RGB")

    def imported(image: Image.Image, fmt: str) -> int:
        buf = io.BytesIO()
        image.save(buf, format=fmt, quality=85)
        with engine.client() as client:
            return client.import_image(buf.getvalue(), filename=f"copy.{fmt.lower()}").id

    jpeg = imported(picture, "JPEG")  # re-encoded: other bytes, the same picture
    small = imported(picture.resize((picture.width // 2, picture.height // 2)), "PNG")
    mirrored = imported(ImageOps.mirror(picture), "PNG")  # the same subject and look, another picture
    report = json.loads(cli(engine, "gallery", "check", "--json").stdout)
    same = [g for g in report["same_pictures"] if ids[0] in g]
    assert same == [sorted([ids[0], jpeg, small])]
    assert all(ids[1] not in g and mirrored not in g for g in report["same_pictures"])  # another seed; a mirror
    # similar, not the same: listed apart (with whatever else of this gallery looks alike), a duplicate group once
    assert any({ids[0], mirrored} <= set(g) for g in report["similar"])
    assert all(jpeg not in g and small not in g for g in report["similar"])
    text = cli(engine, "gallery", "check").stdout
    similar_line = next(line for line in text.splitlines() if " ~ " in line and f"#{mirrored}" in line)
    assert f"#{ids[0]} = #{jpeg} = #{small}" in text and f"#{ids[0]}" in similar_line
    with engine.client() as client:  # never merged: --repair leaves every copy in place
        client.check_gallery(repair=True)
        assert {i.id for i in client.images(limit=1000).images} >= {ids[0], jpeg, small, mirrored}
