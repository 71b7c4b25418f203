"""The app's error handlers: every error a route raises answered as one `ErrorBody` sentence (A1111's shape
under its prefix), with the status engine.server.errors gives it."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from engine.client.answers import ErrorBody
from engine.client.dream_args import explain_errors
from engine.client.errors import clip_text
from engine.server import a1111, openai_images
from engine.server.errors import USER_ERRORS
from engine.server.queries import FilterQuery

log = logging.getLogger(__name__)

# Every route may answer these, always as one ErrorBody sentence (documented in /openapi.json).
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorBody, "description": what}
    for status, what in {
        404: "no such job or image (or not in the requester's guild)",
        405: "the route exists, not with this method (the Allow header lists those it takes)",
        409: "not possible yet (a job without images has no grid)",
        413: "request body too large",
        422: "bad input: the sentence names the field",
        429: "too many queued jobs for this user",
        503: "the engine is still starting (search, models and progress answer once it has loaded)",
    }.items()
}


def parameter_error(error: dict[str, Any]) -> str:
    """One sentence for a bad query or path parameter, naming it and its bound."""
    name, ctx, got = str(error["loc"][-1]), error.get("ctx") or {}, clip_text(str(error.get("input")), 40)
    bounds = {"less_than_equal": ("at most", "le"), "greater_than_equal": ("at least", "ge"),
              "less_than": ("below", "lt"), "greater_than": ("above", "gt")}  # fmt: skip
    if error["type"] in bounds:
        words, key = bounds[error["type"]]
        return f"{name} must be {words} {ctx.get(key)} (got {got})"
    message = str(error.get("msg", "invalid value")).removeprefix("Value error, ")
    return f"{name}: {message[:1].lower()}{message[1:]} (got {got})"


def error_response(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(ErrorBody(error=message).model_dump(exclude_none=True), status_code=status, headers=headers)


def is_a1111(request: Request) -> bool:
    return request.url.path.startswith(request.app.state.a1111_prefixes)


def is_openai(request: Request) -> bool:
    return request.url.path.startswith(request.app.state.openai_prefix)


def error_for(
    request: Request, status: int, message: str, kind: str = "HTTPException", headers: dict[str, str] | None = None
) -> JSONResponse:
    """The error shape of the route asked: A1111's on /sdapi/v1, OpenAI's under its prefix, ours everywhere else."""
    if is_openai(request):
        response = openai_images.error_body(message, status)
    elif is_a1111(request):
        response = a1111.error_body(message, status, kind)
    else:
        response = error_response(status, message)
    response.headers.update(headers or {})
    return response


async def _user_error(request: Request, exc: Exception) -> JSONResponse:
    status = next(code for kind, code in USER_ERRORS.items() if isinstance(exc, kind))
    return error_for(request, status, str(exc), type(exc).__name__)


async def _validation(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = list(exc.errors())
    if is_openai(request):
        first = errors[0]["loc"] if errors else ()
        return openai_images.error_body(explain_errors(errors), 400, param=str(first[-1]) if len(first) > 1 else None)
    if is_a1111(request):
        return a1111.error_body(explain_errors(errors), 422, "RequestValidationError")
    if errors and errors[0].get("type") == "json_invalid":
        ctx = errors[0].get("ctx", {})
        return error_response(422, f"malformed JSON in the request body: {ctx.get('error', 'cannot parse')}")
    if errors and errors[0].get("type") == "extra_forbidden" and errors[0]["loc"][0] == "query":
        known = ", ".join(FilterQuery.model_fields)
        name = clip_text(str(errors[0]["loc"][-1]), 60)
        return error_response(422, f"unknown search filter {name!r}; known: {known}")
    if errors and errors[0]["loc"][0] in {"query", "path"}:
        return error_response(422, parameter_error(errors[0]))
    body = ErrorBody(error=explain_errors(errors), detail=[{"loc": e["loc"], "msg": e["msg"]} for e in errors])
    return JSONResponse(body.model_dump(), status_code=422)


async def _http(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    message = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
    if exc.status_code == 413:
        message = f"request body too large (limit {request.app.state.max_body_bytes} bytes)"
    if exc.status_code == 400:  # FastAPI's "error parsing the body" (e.g. not UTF-8): bad input, like bad JSON
        return error_for(request, 422, "the request body is not JSON in UTF-8")
    # A 405 keeps Starlette's Allow header: it says which methods the route takes.
    return error_for(request, exc.status_code, message, headers=exc.headers)


async def _hung_up(request: Request, exc: Exception) -> Response:
    # The client went away mid-body: nobody reads an answer, and it is no fault of the engine's.
    log.info("%s %s: the client hung up before its body arrived", request.method, request.url.path)
    return Response(status_code=400)


async def _openai(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, openai_images.OpenAIError)
    return openai_images.error_body(str(exc), exc.status, param=exc.param, code=exc.code)


async def _a1111(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, a1111.A1111Error)
    return a1111.error_body(str(exc), exc.status)


def install(app: FastAPI) -> None:
    """Every error handler of the app."""
    app.add_exception_handler(RequestValidationError, _validation)
    app.add_exception_handler(StarletteHTTPException, _http)
    app.add_exception_handler(ClientDisconnect, _hung_up)
    app.add_exception_handler(a1111.A1111Error, _a1111)
    app.add_exception_handler(openai_images.OpenAIError, _openai)
    for error_type in USER_ERRORS:
        app.add_exception_handler(error_type, _user_error)
