"""The FastAPI app over the services: its lifespan (the backend loads behind the socket), its routers and
error handlers, and the OpenAPI document's error bodies."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager, suppress
from typing import Any

from fastapi import FastAPI

from engine import __version__
from engine.server import a1111, error_handlers, openai_images, organise, routes
from engine.server.services import Services

log = logging.getLogger(__name__)


async def _load_backend(services: Services) -> None:
    assert services.load is not None
    try:
        backend = await asyncio.to_thread(services.load, services)
    except Exception as e:
        log.exception("the engine could not load its backend")
        services.failed = f"the engine could not start: {e}"
        raise
    services.attach(backend)


def create_app(services: Services) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        services.hub.bind(asyncio.get_running_loop())
        loading = asyncio.create_task(_load_backend(services)) if services.load else None
        async with AsyncExitStack() as stack:
            if app.state.mcp is not None:
                await stack.enter_async_context(app.state.mcp.session_manager.run())
            yield
        if loading is not None:
            with suppress(Exception):
                await loading  # asked to stop while starting: finish starting, then stop cleanly
        await asyncio.to_thread(services.runner.stop)
        if services.backend is not None:
            services.backend.indexer.flush()

    app = FastAPI(
        title="Dreamhall engine",
        version=__version__,
        lifespan=lifespan,
        max_body_size=services.settings.max_body_bytes,
        responses=error_handlers.ERROR_RESPONSES,
    )
    app.state.services = services
    app.state.max_body_bytes = services.settings.max_body_bytes
    # Where A1111's error shape applies: its API and its ControlNet extension's routes.
    app.state.a1111_prefixes = tuple(services.settings.a1111_prefix + p for p in (a1111.PREFIX, "/controlnet/"))
    app.state.a1111 = a1111.A1111()
    app.state.openai_prefix = services.settings.openai_prefix + "/"
    error_handlers.install(app)
    app.include_router(a1111.router, prefix=services.settings.a1111_prefix)
    app.include_router(a1111.controlnet_router, prefix=services.settings.a1111_prefix)
    app.include_router(openai_images.router, prefix=services.settings.openai_prefix)
    app.include_router(routes.router)
    app.include_router(organise.router)
    app.state.mcp = _mcp_route(app, services) if services.settings.tcp_port is not None else None
    _errors_as_json_in_openapi(app)
    return app


def _mcp_route(app: FastAPI, services: Services) -> Any:
    """`/mcp`: the MCP server over streamable HTTP, for assistants that reach the engine over the network (behind
    the TCP listener's token). It is the `dreamhall mcp` frontend, talking to this engine through its own socket."""
    from mcp.server.transport_security import TransportSecuritySettings

    from assistants.mcp_server import build
    from engine.client.clients import AsyncEngineClient

    server = build(lambda: AsyncEngineClient(services.settings.socket_path, timeout=None))
    # The token guards this listener; the Host header check is for servers that have none.
    security = TransportSecuritySettings(enable_dns_rebinding_protection=False)
    mcp_app = server.streamable_http_app(streamable_http_path="/mcp", transport_security=security)
    app.router.routes.extend(mcp_app.routes)
    return server


def _errors_as_json_in_openapi(app: FastAPI) -> None:
    # Errors are JSON on every route, also where success is a stream or a PNG; FastAPI would
    # document them with the route's own media type.
    generate_openapi = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            spec = generate_openapi()
            error = {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}}
            a1111_error = {"application/json": {"schema": {"$ref": "#/components/schemas/A1111ErrorBody"}}}
            for path, operations in spec["paths"].items():
                for operation in operations.values():
                    for status, response in operation.get("responses", {}).items():
                        if status[0] in "45" and not path.startswith(app.state.openai_prefix):
                            response["content"] = a1111_error if path.startswith(app.state.a1111_prefixes) else error
            app.openapi_schema = spec
        return app.openapi_schema

    app.openapi = openapi  # FastAPI documents replacing it to customise the schema
