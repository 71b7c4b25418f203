"""ASGI middlewares of the engine's listeners: the declared-size guard (both) and the token guard (TCP)."""

from __future__ import annotations

import hmac

from starlette import types as asgi

from engine.server import openai_images
from engine.server.a1111 import basic_auth
from engine.server.error_handlers import error_response


class DeclaredBodyLimit:
    """Refuse a body whose Content-Length is over the limit with our JSON error, before reading it.

    FastAPI's max_body_size still guards bodies that declare no length (chunked).
    """

    def __init__(self, app: asgi.ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: asgi.Scope, receive: asgi.Receive, send: asgi.Send) -> None:
        if scope["type"] == "http":
            declared = dict(scope["headers"]).get(b"content-length", b"0")
            if declared.isdigit() and int(declared) > self.max_bytes:
                message = f"request body too large ({int(declared)} bytes; limit {self.max_bytes})"
                await error_response(413, message)(scope, receive, send)
                return
        await self.app(scope, receive, send)


class TokenGuard:
    """ASGI middleware for the TCP listener: every request needs `Authorization: Bearer <token>`, or HTTP
    Basic with the token as the password (A1111's `--api-auth user:pass`; the user name names the client).
    OpenAI's signed image links carry their own signature instead (the route checks it)."""

    def __init__(self, app: asgi.ASGIApp, token: str, openai_prefix: str = "/openai/v1") -> None:
        self.app = app
        self.token = token.encode()
        self.openai_prefix = openai_prefix + "/"

    async def __call__(self, scope: asgi.Scope, receive: asgi.Receive, send: asgi.Send) -> None:
        if scope["type"] == "http":
            given = dict(scope["headers"]).get(b"authorization", b"")
            path = scope.get("path", "")
            signed = path.startswith(self.openai_prefix + "files/") and scope.get("method") == "GET"
            if not (signed or hmac.compare_digest(given, b"Bearer " + self.token) or self._basic_ok(given)):
                wrong = "Incorrect API key provided (the engine's token)"
                answer = (
                    openai_images.error_body(wrong, 401, code="invalid_api_key")
                    if path.startswith(self.openai_prefix)
                    else error_response(401, "missing or wrong token")
                )
                await answer(scope, receive, send)
                return
        await self.app(scope, receive, send)

    def _basic_ok(self, given: bytes) -> bool:
        credentials = basic_auth(given)
        return credentials is not None and hmac.compare_digest(credentials[1], self.token)
