"""The MCP server: Dreamhall as tools an AI assistant can call (Claude Desktop, any Model Context Protocol client).

    dream        a prompt and the !dream grammar's options ("-n 4 -S 42 -W 768"): the images, with their ids
    search       the gallery by words (and `tag:NAME`), best first
    similar      images like gallery image ID
    describe     four candidate prompts for a gallery image (Midjourney's /describe)
    get_image    one gallery image and its parameters
    list_models  the shelf's checkpoints, LoRAs, embeddings and ControlNets
    variations   new takes on a gallery image; upscale: a bigger one
    resource     dreamhall://image/{id}: an image's PNG

It is a frontend like the others: it talks to the engine through the client package (its socket), never to the
gallery, and asks as the engine's owner (source `mcp`), who sees the whole local gallery as the CLI does.
"""

from __future__ import annotations

import getpass
import shlex
from collections.abc import Callable
from typing import Any

from mcp.server.mcpserver import Image, MCPServer

from engine.client.answers import Job
from engine.client.clients import AsyncEngineClient, RequestRejected
from engine.client.derived import upscale_of, variation_of
from engine.client.dream_args import DreamArgsError, parse_argv
from engine.client.errors import EngineError
from engine.client.schema import DEFAULT_VARIATION_AMOUNT, Requester

SOURCE = "mcp"
INSTRUCTIONS = """Dreamhall makes images with Stable Diffusion on the user's own GPU and keeps every image it made in a
searchable gallery. `dream` takes a prompt and optional flags of the !dream grammar (-n count, -S seed, -W/-H size,
-s steps, -C cfg, -A sampler, -m model, --style NAME, --hr 2 for the hires fix); the same seed gives the same image.
Search the gallery before dreaming: `search` finds past images by words."""

Content = list[Any]  # text and Image blocks, as MCPServer turns them into the tool's content


def requester() -> Requester:
    return Requester(source=SOURCE, user=getpass.getuser())


def build(client: Callable[[], AsyncEngineClient]) -> MCPServer:
    """The MCP server over an engine client (made per call: one per event loop)."""
    server = MCPServer(name="dreamhall", instructions=INSTRUCTIONS)

    async def job_images(engine: AsyncEngineClient, job: Job, said: str) -> Content:
        if job.status != "done":
            return [f"The job {job.status}" + (f": {job.error}" if job.error else ".")]
        lines = [said] + [f"#{i.id} · seed {i.seed} · {i.width}x{i.height}" for i in job.images]
        if job.found is not None:
            lines.append("(found in the gallery: these very images were made before; add --fresh to draw anew)")
        return ["\n".join(lines), *[Image(data=await engine.image_file(i.id), format="png") for i in job.images]]

    async def run(request_of: Callable[[AsyncEngineClient], Any], said: str) -> Content:
        async with client() as engine:
            try:
                request = await request_of(engine)
                accepted = await engine.submit(request)
                return await job_images(engine, await engine.wait(accepted.id), said)
            except (DreamArgsError, ValueError, RequestRejected) as e:
                return [f"Refused: {e}"]

    @server.tool(structured_output=False)
    async def dream(prompt: str, options: str = "") -> Content:
        """Make images from a prompt. `options`: flags of the !dream grammar, e.g. "-n 4 -S 42 -W 768 -H 512"
        (-n count, -S seed, -W/-H size, -s steps, -C cfg, -A sampler, -m model, --style NAME, --hr 2, --fresh).
        Returns the images and their gallery ids."""

        async def request_of(_: AsyncEngineClient) -> Any:
            return parse_argv([prompt, *shlex.split(options)], requester=requester())

        return await run(request_of, f"Dreamed {prompt!r}:")

    @server.tool()
    async def search(text: str, limit: int = 8, tags: list[str] | None = None) -> str:
        """Find gallery images by words (prompt keywords and CLIP); `tag:NAME` words or `tags` narrow it."""
        async with client() as engine:
            try:
                found = await engine.search(text, limit=max(1, min(limit, 50)), tag=tags or None)
            except RequestRejected as e:
                return f"Refused: {e}"
        if not found.results:
            return "No match in the gallery."
        return "\n".join(f"#{r.image.id} · score {r.score:.3f} · seed {r.image.seed} · {r.image.prompt}"
                         for r in found.results)  # fmt: skip

    @server.tool()
    async def similar(image_id: int, limit: int = 8) -> str:
        """Gallery images that look like image #image_id (CLIP)."""
        async with client() as engine:
            try:
                found = await engine.similar(image_id, limit=max(1, min(limit, 50)))
            except RequestRejected as e:
                return f"Refused: {e}"
        return "\n".join(f"#{r.image.id} · score {r.score:.3f} · {r.image.prompt}" for r in found.results) or "None."

    @server.tool()
    async def describe(image_id: int) -> str:
        """Four candidate prompts for gallery image #image_id (Midjourney's /describe)."""
        async with client() as engine:
            try:
                described = await engine.describe(image_id)
            except RequestRejected as e:
                return f"Refused: {e}"
        return "\n".join(f"{k}. {p}" for k, p in enumerate(described.prompts, start=1))

    @server.tool(structured_output=False)
    async def get_image(image_id: int) -> Content:
        """Gallery image #image_id: the picture and the parameters that make it again."""
        async with client() as engine:
            try:
                record = await engine.image(image_id)
                data = await engine.image_file(image_id)
            except RequestRejected as e:
                return [f"Refused: {e}"]
        text = (f"#{record.id} · {record.width}x{record.height} · seed {record.seed} · {record.steps} steps · "
                f"{record.sampler} · cfg {record.cfg_scale} · model {record.model} · {record.mode}\n"
                f"prompt: {record.prompt}\nnegative: {record.negative_prompt}\n"
                f"tags: {', '.join(record.tags)}")  # fmt: skip
        return [text, Image(data=data, format="png")]

    @server.tool()
    async def list_models() -> str:
        """The models this engine can use, by the names `dream -m NAME` takes."""
        async with client() as engine:
            shelf = await engine.models()
        parts = [("checkpoints", shelf.checkpoints), ("LoRAs", shelf.loras), ("embeddings", shelf.embeddings),
                 ("ControlNets", shelf.controlnets)]  # fmt: skip
        return "\n".join(f"{what}: {', '.join(m.name for m in items) or '(none)'}" for what, items in parts)

    @server.tool(structured_output=False)
    async def variations(image_id: int, n: int = 4) -> Content:
        """New takes on gallery image #image_id (its seed noise varied; img2img for pictures that have none)."""

        async def request_of(engine: AsyncEngineClient) -> Any:
            record = await engine.image(image_id)
            return variation_of(record, amount=DEFAULT_VARIATION_AMOUNT, n=max(1, min(n, 8)), requester=requester())

        return await run(request_of, f"Variations of #{image_id}:")

    @server.tool(structured_output=False)
    async def upscale(image_id: int, factor: float = 2.0) -> Content:
        """Gallery image #image_id made bigger (1-4 times)."""

        async def request_of(engine: AsyncEngineClient) -> Any:
            return upscale_of(await engine.image(image_id), factor=factor, requester=requester())

        return await run(request_of, f"#{image_id} upscaled ×{factor:g}:")

    @server.resource("dreamhall://image/{image_id}", mime_type="image/png", description="a gallery image's PNG")
    async def image_resource(image_id: str) -> bytes:
        if not image_id.isdigit():
            raise ValueError(f"no gallery image {image_id!r}")
        async with client() as engine:
            return await engine.image_file(int(image_id))

    return server


def serve_stdio(socket_path: Any) -> None:
    """`dreamhall mcp`: the server on stdin/stdout, for an assistant that starts it."""
    try:
        build(lambda: AsyncEngineClient(socket_path, timeout=None)).run("stdio")
    except EngineError as e:  # pragma: no cover - reported to the assistant's log
        raise SystemExit(f"dreamhall mcp: {e}") from None
