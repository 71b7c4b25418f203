"""bench/gpu_check.py cannot rot: its --tiny mode runs the same code (build, load through the shelf, time, switch,
an engine process) on the CPU with tiny models."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.slow


def test_gpu_check_tiny_prints_every_figure(tmp_path: Path) -> None:
    out = tmp_path / "figures.json"
    run = subprocess.run([sys.executable, "bench/gpu_check.py", "--tiny", "--json", str(out)], cwd=ROOT,
                         capture_output=True, text=True, timeout=600)  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    figures = json.loads(out.read_text())
    for family in ("sd1", "sdxl"):
        assert figures[family]["it_s_eager"] > 0 and figures[family]["batch4_speedup"] > 0
        assert figures[f"{family}_load_s"] >= 0
    assert figures["engine"]["engine_job_s"] > 0 and figures["switch_sdxl_to_sd1_s"] >= 0
    assert figures["engine"]["cross_user_batching"]["batched_images_s"] > 0
    assert figures["tiny"] is True
