"""The engine client on `httpx.MockTransport`: errors become the client's exceptions, in both flavours."""

from __future__ import annotations

import inspect

import httpx
import pytest

from engine.client.clients import AsyncEngineClient, EngineClient, EngineUnavailable, RequestRejected, _Endpoints
from engine.client.schema import DreamRequest


def answer(status: int, body: object = None, text: str | None = None) -> httpx.MockTransport:
    def handle(request: httpx.Request) -> httpx.Response:
        if text is not None:
            return httpx.Response(status, text=text)
        return httpx.Response(status, json=body)

    return httpx.MockTransport(handle)


def refuse(request: httpx.Request) -> httpx.Response:
    raise httpx.ConnectError("connection refused", request=request)


def test_an_error_body_becomes_request_rejected_with_its_status() -> None:
    with (
        EngineClient(transport=answer(429, {"error": "too many queued jobs"})) as client,
        pytest.raises(RequestRejected, match="too many queued jobs") as e,
    ):
        client.submit(DreamRequest(prompt="x"))
    assert e.value.status == 429


def test_a_body_that_is_not_json_is_still_one_line() -> None:
    with EngineClient(transport=answer(502, text="Bad Gateway")) as client, pytest.raises(RequestRejected):
        client.health()


def test_no_engine_is_engine_unavailable() -> None:
    with (
        EngineClient(transport=httpx.MockTransport(refuse)) as client,
        pytest.raises(EngineUnavailable, match="no engine answers"),
    ):
        client.queue()


def test_a_good_answer_is_parsed_into_the_record() -> None:
    health = {"version": "1", "device": "cpu", "model": "m", "queued": 2, "running": 0}
    with EngineClient(transport=answer(200, health)) as client:
        assert client.health().queued == 2


async def test_the_async_client_maps_errors_the_same_way() -> None:
    async with AsyncEngineClient(transport=answer(404, {"error": "no job abc"})) as client:
        with pytest.raises(RequestRejected, match="no job abc") as e:
            await client.job("abc")
        assert e.value.status == 404
    async with AsyncEngineClient(transport=httpx.MockTransport(refuse)) as client:
        with pytest.raises(EngineUnavailable):
            await client.health()


def test_every_endpoint_exists_in_both_clients() -> None:
    """Endpoints are written once (`_Endpoints`); each client adds only how it sends a call, its I/O-specific
    methods and its closing. An endpoint added to one client alone fails here."""
    endpoints = {n for n, f in inspect.getmembers(_Endpoints, inspect.isfunction) if not n.startswith("_")}
    own = {"image_ref", "events", "wait"}  # the I/O-specific ones, written per flavour

    def written_in(cls: type) -> set[str]:
        return {n for n, v in vars(cls).items() if inspect.isfunction(v) and not n.startswith("_")}

    assert written_in(EngineClient) == own | {"close"}
    assert written_in(AsyncEngineClient) == own | {"aclose"}
    for cls in (EngineClient, AsyncEngineClient):
        public = {n for n, f in inspect.getmembers(cls, inspect.isfunction) if not n.startswith("_")}
        assert endpoints | own <= public, cls
    assert len(endpoints) >= 18
