"""The ControlNet annotators that need weights (depth, openpose, lineart), run where the models run.

Their networks and their pre- and post-processing are controlnet_aux's (the annotators of A1111's ControlNet
extension, packaged); the weights are the files A1111's extension downloads (lllyasviel/Annotators), read from the
shelf's `annotators/` folder. Nothing is downloaded: a missing file or package is one sentence. The last one used
stays loaded (a depth model is ~0.5 GB in fp32).
"""

from __future__ import annotations

import logging
import pickle
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from engine.client.controls import ANNOTATOR_FILES, ANNOTATOR_RESOLUTION, ANNOTATORS_PACKAGE
from engine.client.errors import InputError

log = logging.getLogger(__name__)


class Annotators:
    """The weight annotators of one device. Call `annotate` on the thread that owns torch (the worker's)."""

    def __init__(self, folder: Path, device: torch.device) -> None:
        self.folder = folder
        self.device = device
        self._loaded: tuple[tuple[str, str, int], Any] | None = None
        self._lock = threading.Lock()

    def annotate(self, picture: Image.Image, type: str) -> Image.Image:
        """The `type` map of `picture` (RGB, the picture's size), detected at its short side up to
        ANNOTATOR_RESOLUTION (A1111's processor_res)."""
        rgb = picture.convert("RGB")
        resolution = max(64, min(ANNOTATOR_RESOLUTION, min(rgb.size)))
        with self._lock, torch.inference_mode():
            detector = self._detector(type)
            started = time.perf_counter()
            if type == "openpose":
                out = detector(rgb, detect_resolution=resolution, image_resolution=resolution, include_body=True,
                               include_hand=False, include_face=False, output_type="pil")  # fmt: skip
            else:
                out = detector(rgb, detect_resolution=resolution, image_resolution=resolution, output_type="pil")
        log.info("%s map of a %dx%d picture in %.2f s", type, *rgb.size, time.perf_counter() - started)
        out = out.convert("RGB").resize(rgb.size, Image.Resampling.BILINEAR)
        if type == "openpose" and not np.asarray(out).any():
            raise InputError("the openpose annotator found no person in the control picture: it would steer nothing")
        return out

    def _detector(self, type: str) -> Any:
        path = self.folder / ANNOTATOR_FILES[type]
        if not path.is_file():  # the front checked at submit; it may have gone since
            raise InputError(f"the {type} annotator's weights annotators/{path.name} are not on the shelf")
        key = (type, str(path), path.stat().st_mtime_ns)
        if self._loaded is not None and self._loaded[0] == key:
            return self._loaded[1]
        self._loaded = None  # the one before goes first: two depth models need not fit at once
        started = time.perf_counter()
        try:
            detector = _load(type, path, self.device)
        except ImportError as e:
            raise InputError(f"the {type} annotator needs {ANNOTATORS_PACKAGE} ({e})") from e
        except (RuntimeError, OSError, ValueError, KeyError, EOFError, pickle.UnpicklingError) as e:  # damaged, foreign
            raise InputError(f"could not load the {type} annotator {path.name}: {str(e).splitlines()[0]}") from e
        log.info("loaded the %s annotator %s in %.1f s", type, path.name, time.perf_counter() - started)
        self._loaded = (key, detector)
        return detector


def _load(type: str, path: Path, device: torch.device) -> Any:
    import warnings

    with warnings.catch_warnings():  # controlnet_aux registers timm models that timm already has
        warnings.simplefilter("ignore")
        if type == "lineart":
            from controlnet_aux.lineart import Generator, LineartDetector

            model = Generator(3, 1, 3)
            model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
            model.float().eval()
            return LineartDetector(model.to(device), model)  # A1111's lineart_realistic: the fine model (coarse unused)
        if type == "openpose":
            from controlnet_aux.open_pose import OpenposeDetector
            from controlnet_aux.open_pose.body import Body
            from controlnet_aux.open_pose.model import bodypose_model
            from controlnet_aux.open_pose.util import transfer

            body = Body.__new__(Body)  # Body(path) would torch.load without map_location: a CUDA-saved file fails
            body.model = bodypose_model()
            body.model.load_state_dict(transfer(body.model, torch.load(path, map_location="cpu", weights_only=True)))
            body.model.float().eval().to(device)
            return OpenposeDetector(body, None, None)  # the body alone: A1111's "openpose" (no hands, no face)
        if type == "depth":
            from controlnet_aux.midas import MidasDetector
            from controlnet_aux.midas.api import MiDaSInference

            depth = MiDaSInference(model_type="dpt_hybrid", model_path=str(path))
            return MidasDetector(depth.float().eval().to(device))
    raise InputError(f"unknown annotator {type!r}")
