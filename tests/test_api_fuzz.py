"""Schemathesis against a real engine's TCP listener: no 5xx, and every answer matches /openapi.json."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.conftest import EngineProcess, free_port

pytestmark = pytest.mark.slow
TOKEN = "fuzz-token"


@pytest.fixture(scope="module")
def fuzzed(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path) -> Iterator[str]:
    port = free_port()
    # Small jobs only, and room in the queue: the fuzzer submits hundreds of valid requests. A 2048 px
    # job on a CPU takes minutes a step, and a search waits for the step to end to embed its text.
    limits = {"DREAMHALL_MAX_N": "2", "DREAMHALL_MAX_SIDE": "256", "DREAMHALL_MAX_QUEUED_PER_USER": "100000"}
    proc = EngineProcess(tmp_path_factory.mktemp("home"), tiny_model, DREAMHALL_TCP_PORT=str(port),
                         DREAMHALL_TOKEN=TOKEN, **limits).start()  # fmt: skip
    yield f"http://127.0.0.1:{port}"
    proc.stop()


def test_no_server_errors_and_answers_match_the_schema(fuzzed: str) -> None:
    api = schemathesis.openapi.from_url(f"{fuzzed}/openapi.json", headers={"Authorization": f"Bearer {TOKEN}"})
    # A1111's generation routes answer only once the images exist (minutes for a large one on a CPU);
    # tests/test_a1111.py drives them with a real client and checks their bad inputs.
    blocking = {f"POST /sdapi/v1/{name}" for name in ("txt2img", "img2img", "extra-single-image")}
    operations = [result.ok() for result in api.get_all_operations()]
    operations = [op for op in operations if f"{op.method.upper()} {op.path}" not in blocking]
    assert len(operations) >= 18
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(max_examples=30, deadline=None, phases=[Phase.explicit, Phase.generate],
                  suppress_health_check=list(HealthCheck), database=None)  # fmt: skip
        def fuzz(case) -> None:
            case.call_and_validate(
                base_url=fuzzed,
                headers={"Authorization": f"Bearer {TOKEN}"},
                timeout=60,
                # not_a_server_error runs always; these add the contract. Not "positive data acceptance":
                # a schema-valid request may still name an image that does not exist (404).
                checks=[status_code_conformance, content_type_conformance, response_schema_conformance],
            )

        fuzz()


def test_max_side_holds_for_the_size_a_job_would_make(fuzzed: str) -> None:
    """max_side = 256: an x4 upscale of a 512 px upload (2048 px out) and an img2img from a 512 px init are
    refused at submit, with one sentence naming the limit; so is -W past it."""
    import io

    import httpx
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (512, 512), (200, 30, 30)).save(buf, format="PNG")
    with httpx.Client(base_url=fuzzed, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=60) as http:
        ref = http.post("/v1/uploads", content=buf.getvalue(), headers={"Content-Type": "image/png"}).json()["ref"]
        for body, said in [
            (
                {"mode": "upscale", "init_image": ref, "upscale": 4},
                "a x4 upscale of a 512x512 image would be 2048x2048",
            ),
            ({"mode": "img2img", "init_image": ref, "prompt": "x"}, "a 512x512 init image would make a 512x512"),
            ({"prompt": "x", "width": 512}, "-W/--width: this engine makes at most 256 px per side (got 512)"),
        ]:
            answer = http.post("/v1/dreams", json=body)
            assert answer.status_code == 422, answer.text
            assert said in answer.json()["error"] and "256 px per side" in answer.json()["error"]
            assert "\n" not in answer.json()["error"] and ("max_side" in answer.json()["error"] or "-W" in said)
        small = {"mode": "img2img", "init_image": ref, "prompt": "x", "width": 128, "height": 128, "steps": 1}
        assert http.post("/v1/dreams", json=small).status_code == 202  # -W/-H within the limit: accepted
