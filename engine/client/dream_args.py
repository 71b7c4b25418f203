"""The `!dream` grammar: one parser for the bot, the CLI and the desktop prompt box.

    !dream "a red circle on a blue background" -n 4 -S 3220803958 -W 512 -H 512

Flags follow the 2022 dreambot and InvokeAI's dream.py, plus Midjourney's
`--no` and `--ar`. Errors are one human sentence naming the flag
(`DreamArgsError`), never a traceback. `format_request` is the inverse:
`parse(format_request(r)) == r` for any request with the default requester.

The grammar itself is argparse and plain data: `parse_fields` turns a command
line into the request's fields without loading pydantic, so `dreamhall dream`
starts in tens of milliseconds and lets the engine validate. The request model
is imported where a `DreamRequest` is built, and for help and error texts.
"""

from __future__ import annotations

import argparse
import functools
import shlex
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, NoReturn

from engine.client.samplers import SAMPLERS

if TYPE_CHECKING:
    from pydantic import ValidationError

    from engine.client.schema import DreamRequest, Requester


class DreamArgsError(ValueError):
    """A `!dream` command that cannot be understood; the message is for the user."""


# field -> the flag that sets it, for error messages and formatting.
FLAGS: dict[str, str] = {
    "prompt": "prompt",
    "n": "-n/--iterations",
    "seed": "-S/--seed",
    "width": "-W/--width",
    "height": "-H/--height",
    "aspect_ratio": "--ar",
    "cfg_scale": "-C/--cfg_scale",
    "steps": "-s/--steps",
    "sampler": "-A/--sampler",
    "negative_prompt": "-N/--negative",
    "model": "-m/--model",
    "refiner": "--refiner",
    "refiner_switch": "--refiner_switch",
    "init_image": "-I/--init_img",
    "strength": "-f/--strength",
    "init_mask": "-M/--init_mask",
    "variation_amount": "-v/--variation_amount",
    "variation_seed": "--variation_seed",
    "outpaint": "--outpaint",
    "zoom_out": "--zoom",
    "with_variations": "-V/--with_variations",
    "upscale": "-U/--upscale",
    "layout": "-g/--grid or -i/--individual",
    "controls": "--control",
    "references": "--sref",
    "style_weight": "--sw",
    "upscaler": "--upscaler",
    "hires": "--hr",
    "clip_skip": "--clip_skip",
    "tiling": "--tiling",
    "mask_blur": "--mask_blur",
    "inpaint_fill": "--inpaint_fill",
    "inpaint_full_res": "--inpaint_full_res",
    "inpaint_padding": "--inpaint_padding",
    "seed_resize_from": "--seed_resize_from",
    "eta": "--eta",
    "styles": "--style",
    "fresh": "--fresh",
}
# The hires fix's own flags: each sets that field of --hr.
HIRES_FLAGS: dict[str, str] = {
    "scale": "--hr",
    "steps": "--hr_steps",
    "strength": "--hr_strength",
    "upscaler": "--hr_upscaler",
}
# A control's own flags: each sets that field of the latest --control before it.
CONTROL_FLAGS: dict[str, str] = {
    "type": "--control_type",
    "model": "--control_model",
    "weight": "--control_weight",
    "start": "--control_start",
    "end": "--control_end",
    "resize": "--control_resize",
}


class _Parser(argparse.ArgumentParser):
    # argparse prints and exits on errors; we want one sentence as an exception.
    def error(self, message: str) -> NoReturn:
        raise DreamArgsError(_tidy_argparse(message))

    def exit(self, status: int = 0, message: str | None = None) -> NoReturn:
        raise DreamArgsError(message or "invalid !dream command")


def _tidy_argparse(message: str) -> str:
    message = message.replace("argument ", "", 1)
    if message.startswith("unrecognized arguments:"):
        bad = message.split(":", 1)[1].strip()
        return f"unknown flag {bad}; see the list of !dream flags (-n, -S, -W, -H, -C, -s, -A, ... in !dream --help)"
    return message


def _sampler(value: str) -> str:
    name = value.strip().lower().replace(" ", "_").replace("-", "_")
    if name not in SAMPLERS:
        raise argparse.ArgumentTypeError(f"unknown sampler {value!r}; choose one of {', '.join(SAMPLERS)}")
    return name


def _ratio(value: str) -> tuple[int, int]:
    try:
        w, h = (int(p) for p in value.split(":"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected W:H such as 16:9, got {value!r}") from None
    return w, h


def _variations(value: str) -> list[dict[str, float]]:
    terms = []
    for part in value.split(","):
        try:
            seed, weight = part.split(":")
            terms.append({"seed": int(seed), "weight": float(weight)})
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected seed:weight[,seed:weight...], got {value!r}") from None
    return terms


def _sides(value: str) -> dict[str, int]:
    """`64` (every side) or `left:64,top:32`."""
    try:
        if value.strip().isdigit():
            px = int(value)
            return {"left": px, "right": px, "top": px, "bottom": px}
        sides: dict[str, int] = {}
        for part in value.split(","):
            side, pixels = part.split(":")
            sides[side.strip().lower()] = int(pixels)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected PIXELS or side:pixels[,side:pixels...], got {value!r}") from None
    unknown = set(sides) - {"left", "right", "top", "bottom"}
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown side {sorted(unknown)[0]!r}; use left, right, top, bottom")
    return sides


class _NewControl(argparse.Action):
    """`--control REF`: opens a control; the --control_* flags after it describe it."""

    def __call__(self, parser: argparse.ArgumentParser, ns: argparse.Namespace, value: Any, flag: Any = None) -> None:
        ns.controls = [*(ns.controls or []), {"image": value}]


class _ControlField(argparse.Action):
    """`--control_weight 0.5` etc.: a field of the latest --control."""

    def __call__(self, parser: argparse.ArgumentParser, ns: argparse.Namespace, value: Any, flag: Any = None) -> None:
        if not ns.controls:
            raise DreamArgsError(f"{flag} describes a control: put it after the --control IMAGE it belongs to")
        field = self.dest.removeprefix("control_")
        if field in ns.controls[-1]:
            raise DreamArgsError(f"{flag} is given twice for one --control; start another control with --control")
        ns.controls[-1][field] = value


def _size(value: str) -> tuple[int, int]:
    try:
        w, h = (int(p) for p in value.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected WIDTHxHEIGHT such as 512x512, got {value!r}") from None
    return w, h


def _reference(value: str) -> dict[str, Any]:
    """`REF` or Midjourney's `REF::WEIGHT`."""
    image, _, weight = value.partition("::")
    if not weight:
        return {"image": image}
    try:
        return {"image": image, "weight": float(weight)}
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected IMAGE or IMAGE::WEIGHT, got {value!r}") from None


def _control_type(value: str) -> str:
    from engine.client.controls import control_type_named

    try:
        return control_type_named(value)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


@functools.cache
def _request_schema() -> dict[str, Any]:
    from engine.client.schema import DreamRequest

    return DreamRequest.model_json_schema()  # ~12 ms a call: once per process, not once per flag


def _range(field: str) -> tuple[float, float] | None:
    """The (min, max) a numeric request field allows, read from the schema itself."""
    prop = _request_schema()["properties"].get(field, {})
    for option in [prop, *prop.get("anyOf", [])]:
        if "minimum" in option and "maximum" in option:
            return option["minimum"], option["maximum"]
    return None


def _about(field: str) -> str:
    """What help says of a field beyond its words: its default and its range, read from the request model."""
    default = _request_schema()["properties"].get(field, {}).get("default")
    text = f" (default {default})" if default is not None else ""
    bounds = _range(field)
    if bounds is not None:
        lo, hi = (str(int(v)) if float(v).is_integer() else str(v) for v in bounds)
        text += f" ({lo}–{hi})"
    return text


def _build_parser(about: Callable[[str], str] = lambda field: "") -> _Parser:
    """The one parser. `about` adds defaults and ranges to the help: only `usage()` needs them, and they
    come from the request model, which parsing alone does not load."""
    p = _Parser(
        prog="!dream",
        add_help=False,
        allow_abbrev=False,
        usage='%(prog)s "PROMPT" [flags]',
        description="Make images from a prompt. The same flags everywhere: Discord, the CLI, the desktop prompt box.",
        epilog="Image i of a request uses seed S+i, and each image records its own seed: any one remakes it alone.",
    )
    p.add_argument("prompt", nargs="*", help="what to draw; quote it, or end the flags with -- before it")
    p.add_argument("-n", "--iterations", dest="n", type=int, metavar="N", help="how many images" + about("n"))
    p.add_argument("-S", "--seed", type=int, help="seed of the first image (default: drawn and reported)")
    p.add_argument("-W", "--width", type=int, help="width in pixels, a multiple of 8" + about("width"))
    p.add_argument("-H", "--height", type=int, help="height in pixels, a multiple of 8" + about("height"))
    p.add_argument("--ar", dest="aspect_ratio", type=_ratio, metavar="W:H", help="aspect ratio such as 16:9")
    p.add_argument(
        "-C",
        "--cfg_scale",
        type=float,
        metavar="CFG",
        help="how closely to follow the prompt" + about("cfg_scale"),
    )
    p.add_argument("-s", "--steps", type=int, help="sampling steps" + about("steps"))
    p.add_argument(
        "-A",
        "--sampler",
        type=_sampler,
        metavar="NAME",
        help=f"one of {', '.join(SAMPLERS)}" + about("sampler"),
    )
    p.add_argument("-N", "--negative", dest="negative", action="append", metavar="TEXT", help="what to avoid")
    p.add_argument("--no", dest="negative", action="append", metavar="TEXT", help="the same as -N")
    p.add_argument("-m", "--model", help="a model the engine has (default: the engine's)")
    p.add_argument("--refiner", metavar="MODEL", help="a second model that finishes each image (an SDXL refiner)")
    p.add_argument(
        "--refiner_switch",
        type=float,
        metavar="SHARE",
        help="the share of the steps made before the refiner takes over" + about("refiner_switch"),
    )
    p.add_argument(
        "-I",
        "--init_img",
        dest="init_image",
        metavar="IMAGE",
        help="start from an image: a gallery id such as 42, or a file (CLI and desktop)",
    )
    p.add_argument("-f", "--strength", type=float, help="how much of -I to repaint (above 0, at most 1)")
    p.add_argument("-M", "--init_mask", metavar="MASK", help="inpaint: white repaints, black keeps (id or file)")
    p.add_argument(
        "-v",
        "--variation_amount",
        type=float,
        metavar="AMOUNT",
        help="variations of -I (or of -S): how far to wander" + about("variation_amount"),
    )
    p.add_argument(
        "-V",
        "--with_variations",
        type=_variations,
        metavar="SEED:WEIGHT,...",
        help="replay the variation terms an image recorded",
    )
    p.add_argument("--variation_seed", type=int, help="seed of the first variation's noise")
    p.add_argument(
        "--outpaint",
        type=_sides,
        metavar="PX|SIDE:PX,...",
        help="grow -I by pixels on every side, or on some: left:64,top:32",
    )
    p.add_argument("--zoom", dest="zoom_out", type=float, metavar="FACTOR",
                   help="zoom out of -I: it shrinks inside a new border the model paints (1.1–4)")  # fmt: skip
    p.add_argument("-U", "--upscale", type=float, metavar="FACTOR",
                   help="make -I larger by this factor (1–4, e.g. 2 or 1.5)")  # fmt: skip
    p.add_argument("--upscaler", metavar="NAME",
                   help="what upscales: Lanczos, Nearest (plain resamples), Detail (Lanczos + an img2img detail "
                        "pass); default: the engine's")  # fmt: skip
    hires = p.add_argument_group("Hires fix", "Draw at the asked size, upscale, then repaint at the larger size "
                                 "over the same seed (AUTOMATIC1111's hires fix).")  # fmt: skip
    hires.add_argument("--hr", dest="hr_scale", type=float, metavar="SCALE", help="the hires fix's factor (1–4)")
    hires.add_argument("--hr_steps", type=int, metavar="N", help="its steps (default: as many as -s)")
    hires.add_argument("--hr_strength", type=float, metavar="S", help="how much it repaints (default 0.7)")
    hires.add_argument("--hr_upscaler", metavar="NAME", help="Lanczos (default) or Nearest")
    look = p.add_argument_group("More AUTOMATIC1111 options")
    look.add_argument("--style", dest="styles", action="append", metavar="NAME",
                      help="a style from the engine's styles.csv (repeat for several)")  # fmt: skip
    look.add_argument("--clip_skip", type=int, metavar="N", help="stop the text encoder N-1 layers early (1–12)")
    look.add_argument("--tiling", action="store_const", const=True, help="a seamless picture that tiles")
    look.add_argument("--seed_resize_from", type=_size, metavar="WxH",
                      help="draw the seed's noise at this size (keeps its composition at another size)")  # fmt: skip
    look.add_argument("--eta", type=float, help="DDIM's eta (with -A ddim)")
    look.add_argument("--mask_blur", type=int, metavar="PX", help="inpaint: feather the mask (0–64 px)")
    look.add_argument("--inpaint_fill", choices=("original", "fill", "noise", "nothing"),
                      help="inpaint: what the masked part starts from (default original)")  # fmt: skip
    look.add_argument("--inpaint_full_res", action="store_const", const=True,
                      help="inpaint a crop around the mask at full size, then paste it back")  # fmt: skip
    look.add_argument("--inpaint_padding", type=int, metavar="PX", help="pixels around the mask in that crop (32)")
    control = p.add_argument_group(
        "ControlNet",
        "Steer the picture with an image: --control IMAGE, then its own flags. Repeat the group for several "
        "controls: --control a.png --control_type canny --control b.png --control_weight 0.5. "
        "IMAGE is a gallery id, a file (CLI, desktop) or an attachment (Discord: att1 is the first attached image).",
    )
    control.add_argument("--control", dest="controls", action=_NewControl, metavar="IMAGE",
                         help="a control image (or ready map)")  # fmt: skip
    control.add_argument("--control_type", action=_ControlField, type=_control_type, metavar="TYPE",
                         help="how to read it: none (the image is the map), canny, softedge, invert, tile, "
                              "depth, openpose, lineart (default none)")  # fmt: skip
    control.add_argument("--control_model", action=_ControlField, metavar="NAME",
                         help="which ControlNet (default: the first on the shelf that fits the model)")  # fmt: skip
    control.add_argument("--control_weight", action=_ControlField, type=float, metavar="W",
                         help="how hard it steers (default 1, 0–2)")  # fmt: skip
    control.add_argument("--control_start", action=_ControlField, type=float, metavar="SHARE",
                         help="the share of the steps before it starts (default 0)")  # fmt: skip
    control.add_argument("--control_end", action=_ControlField, type=float, metavar="SHARE",
                         help="the share of the steps after which it stops (default 1)")  # fmt: skip
    control.add_argument("--control_resize", action=_ControlField, choices=("crop", "just", "fill"),
                         help="an image of another shape: crop (default: cover, centre), just (stretch), "
                              "fill (fit inside, pad black)")  # fmt: skip
    reference = p.add_argument_group("Reference pictures", "Carry a picture's look into the result (IP-Adapter).")
    reference.add_argument("--sref", dest="references", nargs="+", type=_reference, action="extend",
                           metavar="IMAGE[::WEIGHT]",
                           help="reference pictures; several blend by their weights (default 1 each)")  # fmt: skip
    reference.add_argument("--sw", dest="style_weight", type=int, metavar="N",
                           help="how strongly the references steer" + about("style_weight"))  # fmt: skip
    p.add_argument("--fresh", action="store_const", const=True,
                   help="draw anew even when the gallery already holds the very images this asks for")  # fmt: skip
    layout = p.add_mutually_exclusive_group()
    layout.add_argument("-g", "--grid", dest="layout", action="store_const", const="grid", help="one grid (default)")
    layout.add_argument(
        "-i", "--individual", dest="layout", action="store_const", const="individual", help="each image on its own"
    )
    return p


def usage(prog: str = "!dream") -> str:
    """The grammar's help, generated from the one parser (so it can never drift from it)."""
    return _build_parser(_about).format_help().replace("!dream", prog)


_PARSER = _build_parser()


def split(text: str) -> list[str]:
    """Split a command line the shell's way; a leading `!dream` or `/dream` is dropped."""
    try:
        argv = shlex.split(text)
    except ValueError as e:
        raise DreamArgsError(f"unbalanced quotes in the command ({e}); close every \" and '") from None
    if argv and argv[0].lower() in {"!dream", "/dream", "dream"}:
        argv = argv[1:]
    return argv


ImageResolver = Callable[[str], str]


def parse(text: str, *, requester: Requester | None = None, resolve_image: ImageResolver | None = None) -> DreamRequest:
    """Parse `!dream "prompt" -n 4 -S 42 ...` into a validated request."""
    return parse_argv(split(text), requester=requester, resolve_image=resolve_image)


def parse_argv(
    argv: Sequence[str], *, requester: Requester | None = None, resolve_image: ImageResolver | None = None
) -> DreamRequest:
    """Parse an already split command line (what `dreamhall dream` receives) into a validated request.

    `resolve_image` turns the values of -I and -M into image references
    (the CLI and the desktop app upload local files with it).
    """
    from pydantic import ValidationError

    from engine.client.schema import DreamRequest

    fields = parse_fields(argv, resolve_image=resolve_image)
    if requester is not None:
        fields["requester"] = requester
    try:
        return DreamRequest(**fields)
    except ValidationError as e:
        raise DreamArgsError(explain(e)) from None


def parse_fields(
    argv: Sequence[str], *, requester: Mapping[str, Any] | None = None, resolve_image: ImageResolver | None = None
) -> dict[str, Any]:
    """The grammar alone: a command line as the request's fields (JSON-ready), not yet validated.

    Flags, their types and the prompt are checked here; values and ranges by the request model
    (`parse_argv`, or the engine when it receives them).
    """
    argv = list(argv)
    # Everything after `--` is prompt, even words that look like flags (argparse's
    # intermixed parsing does not honour `--` itself).
    tail: list[str] = []
    if "--" in argv:
        cut = argv.index("--")
        argv, tail = argv[:cut], argv[cut + 1 :]
    for word in argv:
        # A phone turns "-n" into "—n": say so instead of silently drawing "—n 4" into the picture.
        if len(word) > 1 and word[0] in "—–" and "-" + word[1:] in _PARSER._option_string_actions:
            raise DreamArgsError(f"{word!r} starts with a dash that is not '-': did you mean -{word[1:]}?")
    ns = _PARSER.parse_intermixed_args(argv)
    prompt = " ".join(ns.prompt + tail).strip()
    # An upscale keeps its image's prompt, as A1111's Extras tab needs none; reference pictures can be the prompt.
    if not prompt and ns.upscale is None and not ns.references:
        raise DreamArgsError('no prompt given; write it first, e.g. !dream "a red circle on a blue background" -n 4')
    fields = {k: v for k, v in vars(ns).items() if v is not None and k not in {"prompt", "negative"}}
    hires = {field: fields.pop(f"hr_{field}") for field in HIRES_FLAGS if f"hr_{field}" in fields}
    if hires:
        if "scale" not in hires:
            flag = HIRES_FLAGS[next(iter(hires))]
            raise DreamArgsError(f"{flag} belongs to the hires fix: add --hr SCALE (e.g. --hr 2)")
        fields["hires"] = hires
    fields["prompt"] = prompt
    if ns.negative:
        fields["negative_prompt"] = ", ".join(ns.negative)
    if resolve_image is not None:
        for field in ("init_image", "init_mask"):
            if field in fields:
                try:
                    fields[field] = resolve_image(fields[field])
                except ValueError as e:
                    raise DreamArgsError(f"{FLAGS[field]}: {e}") from None
        for flag, items in (("--control", fields.get("controls", [])), ("--sref", fields.get("references", []))):
            for item in items:
                try:
                    item["image"] = resolve_image(item["image"])
                except ValueError as e:
                    raise DreamArgsError(f"{flag}: {e}") from None
    fields["mode"] = _infer_mode(fields)
    if requester is not None:
        fields["requester"] = dict(requester)
    return fields


def _infer_mode(fields: dict[str, Any]) -> str:
    if fields.get("upscale") is not None:
        return "upscale"
    if fields.get("variation_amount") is not None or fields.get("with_variations"):
        return "variation"
    if fields.get("outpaint") is not None or fields.get("zoom_out") is not None:
        return "outpaint"
    if fields.get("init_mask") is not None:
        return "inpaint"
    if fields.get("init_image") is not None:
        return "img2img"
    return "txt2img"


def _short(value: object) -> str:
    """An input quoted in an error: at most 60 characters of it."""
    text = repr(value)
    return text if len(text) <= 60 else f"{text[:50]}… ({len(str(value))} characters)"


def explain(error: ValidationError) -> str:
    """One sentence for the first problem of a validation error, naming the flag."""
    return explain_errors(error.errors())


def explain_errors(errors: Sequence[Mapping[str, Any]]) -> str:
    """One sentence for the first of pydantic's errors (also used for the API's 422 answers)."""
    if not errors:
        return "invalid request"
    first = errors[0]
    loc = [str(p) for p in first.get("loc", ()) if not isinstance(p, int) and p != "body"]
    field = loc[0] if loc else ""
    msg = first.get("msg", "invalid value").removeprefix("Value error, ")
    msg = msg[0].lower() + msg[1:] if msg else "invalid value"
    got = first.get("input")
    got_text = "" if got is None or isinstance(got, (dict, list)) or not field else f" (got {_short(got)})"
    if not field:
        return msg
    if field == "controls" and len(loc) > 1 and loc[1] in CONTROL_FLAGS:
        label = f"{CONTROL_FLAGS[loc[1]]} ({loc[1]})"
    elif field == "hires" and len(loc) > 1 and loc[1] in HIRES_FLAGS:
        label = f"{HIRES_FLAGS[loc[1]]} (hires {loc[1]})"
    elif field in FLAGS:
        label = FLAGS[field] if field == "prompt" else f"{FLAGS[field]} ({field})"
    else:
        label = ".".join(loc)
    bounds = _range(field)
    if bounds and first.get("type") in {"less_than_equal", "greater_than_equal", "less_than", "greater_than"}:
        lo, hi = (str(int(v)) if float(v).is_integer() else str(v) for v in bounds)
        return f"{label}: must be between {lo} and {hi}{got_text}"
    return f"{label}: {msg}{got_text}"


def format_request(request: DreamRequest) -> str:
    """The `!dream` command line (without `!dream`) that parses back to `request`."""
    from engine.client.schema import DreamRequest

    defaults = DreamRequest(prompt="x")
    parts: list[str] = []
    simple = [
        ("n", "-n"), ("seed", "-S"), ("width", "-W"), ("height", "-H"), ("cfg_scale", "-C"), ("steps", "-s"),
        ("sampler", "-A"), ("negative_prompt", "--negative"), ("model", "--model"), ("refiner", "--refiner"),
        ("refiner_switch", "--refiner_switch"), ("init_image", "--init_img"),
        ("strength", "-f"), ("init_mask", "--init_mask"), ("variation_amount", "-v"),
        ("variation_seed", "--variation_seed"), ("upscale", "-U"), ("style_weight", "--sw"),
        ("upscaler", "--upscaler"), ("zoom_out", "--zoom"), ("clip_skip", "--clip_skip"), ("eta", "--eta"),
        ("mask_blur", "--mask_blur"), ("inpaint_fill", "--inpaint_fill"), ("inpaint_padding", "--inpaint_padding"),
    ]  # fmt: skip
    for field, flag in simple:
        value = getattr(request, field)
        if value == getattr(defaults, field):
            continue
        text = repr(value) if isinstance(value, float) else str(value)
        if text.startswith("-"):
            # `--negative=-x`: a separate `-x` would read as a flag.
            parts.append(f"{flag}={shlex.quote(text)}")
        else:
            parts += [flag, shlex.quote(text)]
    if request.aspect_ratio is not None:
        parts += ["--ar", f"{request.aspect_ratio[0]}:{request.aspect_ratio[1]}"]
    for flag, on in (("--tiling", request.tiling), ("--inpaint_full_res", request.inpaint_full_res),
                     ("--fresh", request.fresh)):  # fmt: skip
        if on:
            parts.append(flag)
    if request.seed_resize_from is not None:
        parts += ["--seed_resize_from", "{}x{}".format(*request.seed_resize_from)]
    for style in request.styles:
        parts.append(f"--style={shlex.quote(style)}")  # `=`: a name may start with a dash
    if request.hires is not None:  # its size, prompt and negative are A1111's alone (hr_resize_x, hr_prompt...)
        hires = request.hires.model_dump(exclude_defaults=True, include=set(HIRES_FLAGS) - {"scale"})
        for field, value in {"scale": request.hires.scale, **hires}.items():
            parts += [HIRES_FLAGS[field], shlex.quote(repr(value) if isinstance(value, float) else str(value))]
    if request.outpaint is not None:
        sides = request.outpaint.model_dump()
        parts += ["--outpaint", ",".join(f"{k}:{v}" for k, v in sides.items() if v)]
    if request.with_variations:
        parts += ["-V", ",".join(f"{v.seed}:{v.weight!r}" for v in request.with_variations)]
    for control in request.controls:
        parts += ["--control", control.image]
        for field, value in control.model_dump(exclude={"image"}, exclude_defaults=True).items():
            parts += [CONTROL_FLAGS[field], shlex.quote(repr(value) if isinstance(value, float) else str(value))]
    if request.references:
        parts += ["--sref", *(r.image if r.weight == 1 else f"{r.image}::{r.weight!r}" for r in request.references)]
    if request.layout is not None:
        parts.append("-g" if request.layout == "grid" else "-i")
    quoted = shlex.quote(request.prompt)
    if request.prompt.startswith("-"):
        return " ".join(parts + ["--", quoted])
    return " ".join([quoted] + parts)


__all__ = [
    "DreamArgsError",
    "explain",
    "explain_errors",
    "format_request",
    "parse",
    "parse_argv",
    "parse_fields",
    "split",
]
