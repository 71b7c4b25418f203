"""The `compile` setting: the built-in model's UNet under torch.compile makes the same images."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import ROOT

# In a child process: inductor reads its cache directory once, when torch loads it, and the
# compiled graphs of this test should not linger in the test process.
CHILD = """
import sys, numpy as np
from engine.device import modes
from engine.device.device import Device
from engine.device.runner import Resolved
from engine.device.pipelines import PipelineCache
from engine.client.schema import DreamRequest, Requester

request = DreamRequest(prompt="a red circle on a blue background", n=2, steps=4, width=64, height=64,
                       requester=Requester(source="cli"))
work = modes.plan(request, Resolved(), job_seed=7, native_size=64)
images = {}
for setting in ("off", "on"):
    cache = PipelineCache(Device("cpu"), None, compile=setting)
    model = cache.model(None)
    images[setting] = [np.asarray(im, dtype=np.int16) for im in work.run(model, [0, 1], on_step=lambda *_: None)]
print(max(int(np.abs(a - b).max()) for a, b in zip(images["off"], images["on"], strict=True)))
print(type(model.pipe.unet).__name__, model.pipe.unet._compiled_call_impl is not None)
"""


def test_a_compiled_unet_makes_the_same_images_within_one_grey_level(tmp_path: Path) -> None:
    cache = tmp_path / "inductor"
    env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": str(cache)}
    out = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True, cwd=ROOT, env=env, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    diff, compiled = out.stdout.split("\n")[:2]
    assert int(diff) <= 1, f"compiled and eager images differ by {diff} grey levels"
    # still the diffusers UNet (LoRA loading and config reads see the same module), compiled in place
    assert compiled == "UNet2DConditionModel True"
    assert any(cache.rglob("*")), "inductor wrote nothing to the cache directory it was given"
