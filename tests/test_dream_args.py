"""The one `!dream` grammar: flags, errors that name the flag, and parse(format(r)) == r."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.client.dream_args import DreamArgsError, format_request, parse, parse_argv
from engine.client.samplers import SAMPLERS
from engine.client.schema import (
    DreamRequest,
    HiresFix,
    OutpaintSides,
    Requester,
    VariationWeight,
    image_seed,
    resolve_size,
)


def test_the_classic_command() -> None:
    r = parse('!dream "emma watson as hermione granger in game of thrones" -n 4 -i -S 3220803958')
    assert r.prompt == "emma watson as hermione granger in game of thrones"
    assert (r.n, r.seed, r.layout, r.mode) == (4, 3220803958, "individual", "txt2img")


def test_quotes_and_leading_command_are_optional() -> None:
    assert parse("a red circle -n 2").prompt == "a red circle"
    assert parse("/dream a red circle").prompt == "a red circle"
    assert parse("a red -n 2 circle").prompt == "a red circle"  # words after flags still belong to the prompt


def test_every_flag_short_and_long() -> None:
    short = parse('x -n 3 -S 7 -W 512 -H 768 -C 9.5 -s 30 -A k_heun -N "ugly" -m my/model -g')
    long = parse(
        "x --iterations 3 --seed 7 --width 512 --height 768 --cfg_scale 9.5 --steps 30 --sampler k_heun "
        "--negative ugly --model my/model --grid"
    )
    assert short == long
    assert (short.width, short.height, short.cfg_scale, short.steps, short.sampler) == (512, 768, 9.5, 30, "k_heun")


def test_midjourney_no_and_negative_are_joined() -> None:
    assert parse("x -N blurry --no text").negative_prompt == "blurry, text"


def test_sampler_names_are_forgiving() -> None:
    assert parse('x -A "dpm++ 2m karras"').sampler == "dpm++_2m_karras"
    assert parse("x -A K_EULER_A").sampler == "k_euler_a"


def test_modes_are_inferred_from_their_flags() -> None:
    assert parse("x -I 7 -f 0.6").mode == "img2img"
    assert parse("x -I 7 -M 8").mode == "inpaint"
    assert parse("x -v 0.2").mode == "variation"
    assert parse("x -v 0.2 -I 7").init_image == "gallery:7"  # the parent of the variations
    assert parse("x -V 12:0.5,13:0.25").with_variations == (VariationWeight(seed=12, weight=0.5),
                                                           VariationWeight(seed=13, weight=0.25))  # fmt: skip
    assert parse("x -U 2 -I 7").mode == "upscale"
    assert parse("x -I 7 --outpaint 64").outpaint == OutpaintSides(left=64, right=64, top=64, bottom=64)
    assert parse("x -I 7 --outpaint left:60,TOP:8").outpaint == OutpaintSides(left=64, top=8)


def test_image_flags_take_gallery_ids_or_resolved_files() -> None:
    assert parse("x -I 42").init_image == "gallery:42"
    uploaded = {"cat.png": "upload:" + "ab" * 32}
    request = parse("x -I cat.png -f 0.5", resolve_image=uploaded.__getitem__)
    assert request.init_image == "upload:" + "ab" * 32 and request.strength == 0.5


def test_sizes_round_to_multiples_of_8() -> None:
    assert parse("x -W 515 -H 509").width == 512
    assert parse("x -W 515 -H 509").height == 512


def test_aspect_ratio_resolves_against_the_model_size() -> None:
    assert resolve_size(parse("x --ar 16:9"), 512) == (512, 288)
    assert resolve_size(parse("x --ar 2:3 -W 512"), 512) == (512, 768)
    assert resolve_size(parse("x"), 64) == (64, 64)


def test_seed_convention_wraps_at_2_32() -> None:
    assert image_seed(4294967295, 1) == 0
    assert [image_seed(3220803958, i) for i in range(3)] == [3220803958, 3220803959, 3220803960]


@pytest.mark.parametrize(
    ("command", "expected"),
    [
        ("x -n 40", "-n/--iterations (n): must be between 1 and 16 (got 40)"),
        ("x -S -1", "-S/--seed (seed): must be between 0 and 4294967295"),
        ("x -S 4294967296", "-S/--seed (seed): must be between 0 and 4294967295"),
        ("x -W 32", "-W/--width (width): must be between 64 and 2048"),
        ("x -s 0", "-s/--steps (steps): must be between 1 and 150"),
        ("x -C 31", "-C/--cfg_scale (cfg_scale): must be between 0 and 30"),
        ("x -I 1 -f 1.5", "-f/--strength (strength): must be between 0 and 1"),
        ("x -I a.png", "-I/--init_img (init_image): expected a gallery image id such as 42, got 'a.png'"),
        ("x -I 1 --outpaint 0", "--outpaint (outpaint): outpaint needs at least one side"),
        ("x -I 1 --outpaint middle:8", "--outpaint: unknown side 'middle'"),
        ("x -I 1 --outpaint 2000", "--outpaint (outpaint): input should be less than or equal to 1024"),
        ("x -n many", "-n/--iterations: invalid int value: 'many'"),
        ("x -s", "-s/--steps: expected one argument"),
        ("x --bogus 3", "unknown flag --bogus"),
        ('x "unclosed', "unbalanced quotes"),
        ("-n 4", "no prompt given"),
        ("x -A euler_fancy", "-A/--sampler: unknown sampler 'euler_fancy'"),
        ("x -i -g", "not allowed with argument"),
        ("x --ar 16x9", "--ar: expected W:H"),
        ("x -V 12", "-V/--with_variations: expected seed:weight"),
        ("x -U 5 -I 1", "-U/--upscale (upscale): must be between 1 and 4"),
        ("x --hr_steps 10", "--hr_steps belongs to the hires fix: add --hr SCALE"),
        ("x --hr 5", "--hr (hires scale): input should be less than or equal to 4"),
        ("x --mask_blur 4", "a txt2img has no mask"),
        ("x --clip_skip 13", "--clip_skip (clip_skip): must be between 1 and 12"),
        ("x -I 1 --hr 2", "the hires fix (--hr) upscales new images"),
        ("x --upscaler Lanczos", "--upscaler names what makes an upscale (-U)"),
        ("x --seed_resize_from 64", "--seed_resize_from: expected WIDTHxHEIGHT"),
        ("x --ar 16:9 -W 512 -H 512", "aspect ratio or both width and height"),
    ],
)
def test_errors_are_one_sentence_naming_the_flag(command: str, expected: str) -> None:
    with pytest.raises(DreamArgsError) as info:
        parse(command)
    message = str(info.value)
    assert expected in message
    assert "\n" not in message and "Traceback" not in message


def test_overlong_prompt_is_refused() -> None:
    with pytest.raises(DreamArgsError, match="prompt: string should have at most 2000 characters"):
        parse_argv(["x" * 2001])


def test_values_that_look_like_flags_survive_formatting() -> None:
    request = DreamRequest(prompt="0", negative_prompt="-:", model="-weird")
    assert parse(format_request(request)) == request
    assert parse("x --negative=-blurry").negative_prompt == "-blurry"
    for prompt in ("-H", "-:", "--ar 16:9"):
        request = DreamRequest(prompt=prompt, n=2)
        assert parse(format_request(request)) == request


def test_requester_is_attached_by_the_frontend() -> None:
    who = Requester(source="discord", user="42", guild="7", channel="9")
    assert parse("x", requester=who).requester == who


# --- round trip ----------------------------------------------------------------------
prompts = st.text(
    alphabet=st.characters(blacklist_categories=("Cs", "Cc"), blacklist_characters="\x00"), min_size=1, max_size=60
).filter(lambda s: s.strip() and s.strip() == s and not s.startswith("!dream") and "\x85" not in s)
sizes = st.integers(min_value=8, max_value=256).map(lambda v: v * 8)


@st.composite
def requests(draw: st.DrawFn) -> DreamRequest:
    mode = draw(st.sampled_from(["txt2img", "img2img", "inpaint", "outpaint", "variation", "upscale"]))
    fields: dict = {
        "prompt": draw(prompts),
        "negative_prompt": draw(st.one_of(st.just(""), prompts)),
        "n": draw(st.integers(1, 16)),
        "seed": draw(st.one_of(st.none(), st.integers(0, 2**32 - 1))),
        "steps": draw(st.integers(1, 150)),
        "cfg_scale": draw(st.floats(0, 30, allow_nan=False)),
        "sampler": draw(st.sampled_from(sorted(SAMPLERS))),
        "model": draw(st.one_of(st.none(), st.sampled_from(["stabilityai/sd-turbo", "/models/my model"]))),
        "layout": draw(st.sampled_from([None, "grid", "individual"])),
        "mode": mode,
    }
    if draw(st.booleans()):
        fields["aspect_ratio"] = (draw(st.integers(1, 64)), draw(st.integers(1, 64)))
        fields["width"] = draw(st.one_of(st.none(), sizes))
    else:
        fields["width"] = draw(st.one_of(st.none(), sizes))
        fields["height"] = draw(st.one_of(st.none(), sizes))
    refs = st.one_of(st.integers(1, 10**9).map(lambda i: f"gallery:{i}"),
                     st.binary(min_size=32, max_size=32).map(lambda b: f"upload:{b.hex()}"))  # fmt: skip
    if mode in {"img2img", "inpaint", "outpaint", "upscale"}:
        fields["init_image"] = draw(refs)
        fields["strength"] = draw(st.one_of(st.none(), st.floats(0, 1, allow_nan=False).filter(bool)))
    if mode == "inpaint":
        fields["init_mask"] = draw(refs)
    if mode == "outpaint":
        sides = st.integers(0, 128).map(lambda v: v * 8)
        fields["outpaint"] = OutpaintSides(left=draw(sides), right=draw(sides), top=draw(sides), bottom=8)
    if mode == "upscale":
        fields["upscale"] = draw(st.sampled_from([1, 1.5, 2, 3, 4]))
        fields["upscaler"] = draw(st.sampled_from([None, "Lanczos", "Nearest", "Detail", "R-ESRGAN 4x+"]))
    if mode in {"inpaint", "outpaint"}:
        fields["mask_blur"] = draw(st.integers(0, 64))
        fields["inpaint_fill"] = draw(st.sampled_from(["original", "fill", "noise", "nothing"]))
        fields["inpaint_full_res"] = draw(st.booleans())
        fields["inpaint_padding"] = draw(st.integers(0, 256))
    if mode in {"txt2img", "variation"} and draw(st.booleans()):
        fields["hires"] = HiresFix(
            scale=draw(st.floats(1, 4, allow_nan=False)),
            steps=draw(st.integers(0, 150)),
            strength=draw(st.floats(0.01, 1)),
            upscaler=draw(st.sampled_from(["Lanczos", "Nearest"])),
        )
        fields["seed_resize_from"] = draw(st.one_of(st.none(), st.tuples(sizes, sizes)))
    fields["clip_skip"] = draw(st.integers(1, 12))
    fields["tiling"] = draw(st.booleans())
    fields["styles"] = tuple(draw(st.lists(st.sampled_from(["cinematic", "oil painting", "-odd"]), max_size=3)))
    if fields["sampler"] == "ddim":
        fields["eta"] = draw(st.one_of(st.none(), st.floats(0, 1, allow_nan=False)))
    if mode == "variation":
        fields["variation_amount"] = draw(st.floats(0, 1, allow_nan=False))
        fields["variation_seed"] = draw(st.one_of(st.none(), st.integers(0, 2**32 - 1)))
        fields["init_image"] = draw(st.one_of(st.none(), refs))
        if draw(st.booleans()):
            weights = st.builds(VariationWeight, seed=st.integers(0, 2**32 - 1), weight=st.floats(0, 1))
            fields["with_variations"] = tuple(draw(st.lists(weights, min_size=1, max_size=3)))
    return DreamRequest(**fields)


@settings(max_examples=300, deadline=None)
@given(requests())
def test_parse_of_format_is_identity(request: DreamRequest) -> None:
    assert parse(format_request(request)) == request


@pytest.mark.parametrize(
    "command, message",
    [
        ('"a red circle" —n 4', "did you mean -n?"),
        ('"a red circle" –S 42', "did you mean -S?"),
        ('"a red circle" -I ١٢', "expected a gallery image id"),
        ('"\u200b\u2060"', "no visible characters"),
        ('"a red circle" -I 3 -f 0', "-f/--strength (strength): 0 repaints nothing"),
        ('"a red circle" -I 99999999999999999999', "no gallery image has id"),
    ],
)
def test_odd_input_is_a_sentence_not_a_surprise(command: str, message: str) -> None:
    with pytest.raises(DreamArgsError, match=re.escape(message)):
        parse(command)


def test_an_error_quotes_an_excerpt_not_the_whole_input() -> None:
    with pytest.raises(DreamArgsError) as e:
        parse('"' + "x" * 100_000 + '"')
    assert len(str(e.value)) < 200 and "100000 characters" in str(e.value)
