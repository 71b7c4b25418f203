"""What a ControlNet control may be: its types (A1111's preprocessor "modules") and its limits.

Plain data, no pydantic: the `!dream` parser reads it without loading the request model.
"""

from __future__ import annotations

from typing import Literal, get_args

# "none": the image already is the map (a depth, pose or silhouette made elsewhere).
ControlType = Literal["none", "canny", "softedge", "invert", "tile", "depth", "openpose", "lineart"]
CONTROL_TYPES: tuple[str, ...] = get_args(ControlType)
# Other names people write for them (the older HED and PiDiNet soft edges, a blur for tile).
TYPE_ALIASES: dict[str, str] = {"hed": "softedge", "pidinet": "softedge", "blur": "tile"}


def control_type_named(value: str) -> str:
    """Our control type for a name as people write it ("Canny", "soft-edge", "hed"); a ValueError names the
    choices."""
    name = value.strip().lower().replace("-", "").replace("_", "")
    name = TYPE_ALIASES.get(name, name)
    if name not in CONTROL_TYPES:
        raise ValueError(f"unknown control type {value!r}; choose one of {', '.join(CONTROL_TYPES)}")
    return name


# The annotators that need weights, and the file each reads from <models>/annotators/ (the names
# of lllyasviel/Annotators, which A1111's ControlNet extension downloads).
ANNOTATOR_FILES: dict[str, str] = {
    "depth": "dpt_hybrid-midas-501f0c75.pt",
    "openpose": "body_pose_model.pth",
    "lineart": "sk_model.pth",
}
ANNOTATORS_PACKAGE = "pip install 'dreamhall[annotators]' (the controlnet-aux package)"
ANNOTATOR_RESOLUTION = 512  # they detect at the picture's short side up to this (A1111's processor_res default)
# A1111's ControlNet extension names its preprocessors ("modules") differently.
A1111_MODULES: dict[str, str] = {
    "none": "none",
    "canny": "canny",
    "softedge": "softedge_hed",
    "invert": "invert",
    "tile": "tile_resample",
    "depth": "depth_midas",
    "openpose": "openpose",
    "lineart": "lineart_realistic",
}
# A ControlNet-Union (xinsir's SDXL "union"/"promax") steers by the map's kind: its control modes, in its order.
UNION_MODES: dict[str, int] = {"openpose": 0, "depth": 1, "softedge": 2, "canny": 3, "lineart": 3, "invert": 3,
                               "tile": 6}  # fmt: skip
# How a control image of another shape fits the output (A1111's resize_mode names, and ours).
ControlResize = Literal["crop", "just", "fill"]
A1111_RESIZE: dict[str, str] = {"Crop and Resize": "crop", "Just Resize": "just", "Resize and Fill": "fill"}
MAX_CONTROLS = 4
MAX_REFERENCES = 5  # Midjourney's /blend takes 2-5 pictures
MAX_STYLE_WEIGHT = 1000  # Midjourney's --sw range; 100 (the default) is the adapter at full strength
MAX_CONTROL_WEIGHT = 2.0  # A1111's slider
