"""Read the generation parameters other tools write into their PNGs.

AUTOMATIC1111 (`parameters` text chunk), ComfyUI (`prompt`, the API graph as
JSON), InvokeAI (`invokeai_metadata` JSON) and our own `dreamhall` chunk. Each
parser returns the fields it found; unknown or damaged metadata gives an
import with the pixels and no parameters, never an error.
"""

from __future__ import annotations

import contextlib
import json
import re
from typing import Any

from gallery.files import DREAMHALL_KEY, PARAMETERS_KEY

_A1111_FIELD = re.compile(r'\s*([\w ]+):\s*("(?:\\.|[^"])*"|[^,]*)(?:,|$)')


def parse_a1111(text: str) -> dict[str, Any]:
    """`<prompt>\\nNegative prompt: <neg>\\nSteps: 20, Sampler: Euler a, ...` -> fields."""
    lines = text.strip().split("\n")
    fields: dict[str, Any] = {}
    settings_line = lines[-1] if len(lines) > 1 or "Steps:" in lines[-1] else ""
    body = lines[:-1] if settings_line else lines
    prompt: list[str] = []
    negative: list[str] = []
    in_negative = False
    for line in body:
        if line.startswith("Negative prompt:"):
            in_negative = True
            line = line.removeprefix("Negative prompt:").strip()
        (negative if in_negative else prompt).append(line)
    fields["prompt"] = "\n".join(prompt).strip()
    fields["negative_prompt"] = "\n".join(negative).strip()
    raw = {k.strip(): v.strip().strip('"') for k, v in _A1111_FIELD.findall(settings_line)}
    numbers = {"Steps": ("steps", int), "CFG scale": ("cfg_scale", float), "Seed": ("seed", int)}
    for key, (name, kind) in numbers.items():
        with contextlib.suppress(KeyError, ValueError):
            fields[name] = kind(raw[key])
    if "Sampler" in raw:
        fields["sampler"] = raw["Sampler"]
    if "Model" in raw:
        fields["model"] = raw["Model"]
    size = re.fullmatch(r"(\d+)x(\d+)", raw.get("Size", ""))
    if size:
        fields["width"], fields["height"] = int(size[1]), int(size[2])
    return fields


def parse_comfyui(graph_json: str) -> dict[str, Any]:
    """ComfyUI's API graph: the first sampler node, its prompts and its checkpoint."""
    graph = json.loads(graph_json)
    if not isinstance(graph, dict):
        return {}
    nodes = {k: v for k, v in graph.items() if isinstance(v, dict)}

    def text_of(link: Any) -> str:
        if isinstance(link, list) and link and str(link[0]) in nodes:
            return str(nodes[str(link[0])].get("inputs", {}).get("text", ""))
        return ""

    fields: dict[str, Any] = {}
    for node in nodes.values():
        inputs = node.get("inputs", {})
        kind = node.get("class_type", "")
        if kind.startswith("KSampler") and "prompt" not in fields:
            fields["prompt"] = text_of(inputs.get("positive"))
            fields["negative_prompt"] = text_of(inputs.get("negative"))
            for src, dst in (("seed", "seed"), ("noise_seed", "seed"), ("steps", "steps"), ("cfg", "cfg_scale")):
                if isinstance(inputs.get(src), (int, float)):
                    fields[dst] = inputs[src]
            if isinstance(inputs.get("sampler_name"), str):
                fields["sampler"] = inputs["sampler_name"]
        if kind.startswith("CheckpointLoader") and isinstance(inputs.get("ckpt_name"), str):
            fields["model"] = inputs["ckpt_name"]
    return fields


def parse_invokeai(meta_json: str) -> dict[str, Any]:
    meta = json.loads(meta_json)
    if not isinstance(meta, dict):
        return {}
    model = meta.get("model")
    fields = {
        "prompt": meta.get("positive_prompt", ""),
        "negative_prompt": meta.get("negative_prompt", ""),
        "seed": meta.get("seed"),
        "steps": meta.get("steps"),
        "cfg_scale": meta.get("cfg_scale"),
        "sampler": meta.get("scheduler"),
        "model": model.get("name") or model.get("model_name") if isinstance(model, dict) else model,
    }
    return {k: v for k, v in fields.items() if v is not None}


def read_metadata(chunks: dict[str, str]) -> tuple[str, dict[str, Any], dict[str, Any]]:
    """(tool, fields, params) from an image's text chunks; tool is "none" when nothing is recognised.

    `fields` are ImageCreate fields; `params` keeps the tool's own metadata, verbatim.
    """
    params: dict[str, Any] = {}
    if DREAMHALL_KEY in chunks:
        # Our PNGs: display fields from the A1111 chunk we also write, the full request as params.
        try:
            params = json.loads(chunks[DREAMHALL_KEY])
        except ValueError:
            params = {}
    parsers = [
        ("invokeai_metadata", "invokeai", parse_invokeai),
        ("prompt", "comfyui", parse_comfyui),
        (PARAMETERS_KEY, "a1111", parse_a1111),
    ]
    for key, tool, parse in parsers:
        if key in chunks:
            try:
                fields = parse(chunks[key])
            except (ValueError, TypeError, AttributeError):
                continue  # damaged metadata: try the next format, else import the pixels alone
            if fields:
                if params:
                    return "dreamhall", fields, params
                return tool, fields, {key: chunks[key]}
    return "none", {}, params
