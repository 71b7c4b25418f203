"""`dreamhall mcp` driven by the official `mcp` client over stdio, against a real engine on the built-in models."""

from __future__ import annotations

import base64
import io
import sys
from collections.abc import Iterator

import pytest
from mcp import Client, StdioServerParameters
from PIL import Image

from tests.conftest import ROOT, EngineProcess

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EngineProcess]:
    proc = EngineProcess(tmp_path_factory.mktemp("mcp-home"), None).start()
    yield proc
    proc.stop()


def server(engine: EngineProcess) -> StdioServerParameters:
    # what an assistant's config says: the command and its arguments (README: Claude Desktop)
    return StdioServerParameters(command=sys.executable, args=["-m", "cli", "--home", str(engine.home), "mcp"],
                                 cwd=str(ROOT))  # fmt: skip


async def test_an_assistant_lists_the_tools_dreams_searches_and_reads_an_image(engine: EngineProcess) -> None:
    async with Client(server(engine)) as client:
        names = {t.name for t in (await client.list_tools()).tools}
        assert names >= {"dream", "search", "similar", "describe", "get_image", "list_models", "variations",
                         "upscale"}  # fmt: skip
        dreamt = await client.call_tool("dream", {"prompt": "a red circle on a blue background",
                                                  "options": "-n 2 -S 3220803958 -s 4"})  # fmt: skip
        assert not dreamt.is_error
        text = dreamt.content[0].text
        assert "seed 3220803958" in text and "seed 3220803959" in text
        pictures = [c for c in dreamt.content if c.type == "image"]
        assert len(pictures) == 2 and Image.open(io.BytesIO(base64.b64decode(pictures[0].data))).size[0] > 0
        first = int(text.split("#", 2)[1].split(" ", 1)[0])
        found = await client.call_tool("search", {"text": "red circle"})
        assert f"#{first} " in found.content[0].text
        bad = await client.call_tool("dream", {"prompt": "x", "options": "-W 123456"})
        assert "Refused" in bad.content[0].text  # the grammar's sentence, not a traceback
        resource = await client.read_resource(f"dreamhall://image/{first}")
        blob = resource.contents[0]
        assert blob.mime_type == "image/png" and base64.b64decode(blob.blob)[:8] == b"\x89PNG\r\n\x1a\n"
    with engine.client() as native:  # the dreams are ordinary jobs, from source mcp
        assert native.images(source="mcp").total == 2
