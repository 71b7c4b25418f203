"""The engine client: what every frontend (CLI, bot, desktop) uses to talk to the engine.

Light on purpose: httpx and pydantic only, no torch, no database. The
transport is a seam: a Unix socket by default, TCP with a token, or
`httpx.MockTransport` in unit tests.

    with EngineClient(settings.socket_path) as engine:
        accepted = engine.submit(parse('"a red circle" -n 4'))
        job = engine.wait(accepted.id, on_event=print)
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import TypeVar

import httpx
from httpx_sse import aconnect_sse, connect_sse
from pydantic import BaseModel

from engine.schema import (
    TERMINAL_EVENTS,
    Accepted,
    DreamRequest,
    Event,
    GalleryCheck,
    Health,
    ImagePage,
    ImageRecord,
    ImportResult,
    Job,
    QueueState,
    ReindexResult,
    SearchResults,
    Upload,
    looks_like_ref,
)
from engine.settings import Settings

T = TypeVar("T", bound=BaseModel)


class EngineError(Exception):
    """Root of the client's exceptions.

    EngineError
    ├── EngineUnavailable   nothing answers on the socket / port
    └── RequestRejected     the engine said no (bad request, unknown job, queue full); `.status` holds the HTTP status
    """


class EngineUnavailable(EngineError):
    pass


class RequestRejected(EngineError):
    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


def _check(response: httpx.Response) -> httpx.Response:
    if response.status_code >= 400:
        try:
            message = response.json().get("error") or response.text
        except ValueError:
            message = response.text or response.reason_phrase
        raise RequestRejected(message, response.status_code)
    return response


def _parse(model: type[T], response: httpx.Response) -> T:
    return model.model_validate(_check(response).json())


def _search_params(limit: int, offset: int, filters: dict[str, object]) -> dict:
    params: dict = {"limit": limit, "offset": offset}
    for key, value in filters.items():
        if value is not None:
            params[key] = value.isoformat() if hasattr(value, "isoformat") else value
    return params


def _submit_body(request: DreamRequest) -> dict:
    return request.model_dump(mode="json", exclude_defaults=True)


_BINARY = {"Content-Type": "application/octet-stream"}


def _transport_args(
    socket_path: Path | None, base_url: str | None, token: str | None
) -> tuple[str, dict[str, str], str]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    where = base_url or str(socket_path)
    return base_url or "http://engine", headers, where


class EngineClient:
    """Blocking client. Use as a context manager, or call close()."""

    def __init__(
        self,
        socket_path: Path | None = None,
        *,
        base_url: str | None = None,
        token: str | None = None,
        transport: httpx.BaseTransport | None = None,
        timeout: float = 30.0,
    ) -> None:
        url, headers, self.where = _transport_args(socket_path, base_url, token)
        if transport is None and base_url is None:
            transport = httpx.HTTPTransport(uds=str(socket_path), retries=2)
        self._http = httpx.Client(transport=transport, base_url=url, headers=headers, timeout=timeout)

    def __enter__(self) -> EngineClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _send(self, method: str, url: str, **kwargs) -> httpx.Response:
        try:
            return self._http.request(method, url, **kwargs)
        except (httpx.ConnectError, httpx.RemoteProtocolError, FileNotFoundError) as e:
            raise EngineUnavailable(f"no engine answers at {self.where}: {e}") from e

    def health(self) -> Health:
        return _parse(Health, self._send("GET", "/v1/health"))

    def submit(self, request: DreamRequest) -> Accepted:
        return _parse(Accepted, self._send("POST", "/v1/dreams", json=_submit_body(request)))

    def job(self, job_id: str) -> Job:
        return _parse(Job, self._send("GET", f"/v1/dreams/{job_id}"))

    def cancel(self, job_id: str) -> Job:
        return _parse(Job, self._send("DELETE", f"/v1/dreams/{job_id}"))

    def queue(self) -> QueueState:
        return _parse(QueueState, self._send("GET", "/v1/queue"))

    def grid(self, job_id: str) -> bytes:
        return _check(self._send("GET", f"/v1/dreams/{job_id}/grid")).content

    def image_file(self, image_id: int) -> bytes:
        return _check(self._send("GET", f"/v1/images/{image_id}/file")).content

    def image(self, image_id: int) -> ImageRecord:
        return _parse(ImageRecord, self._send("GET", f"/v1/images/{image_id}"))

    def images(self, *, limit: int = 100, offset: int = 0, **filters: object) -> ImagePage:
        """The gallery newest first; filters as for search (guild, user, source, model, after, before, favourites)."""
        return _parse(ImagePage, self._send("GET", "/v1/images", params=_search_params(limit, offset, filters)))

    def set_favourite(self, image_id: int, favourite: bool) -> ImageRecord:
        return _parse(ImageRecord, self._send("PATCH", f"/v1/images/{image_id}", json={"favourite": favourite}))

    def upload(self, data: bytes) -> Upload:
        """Send an input image (init image or mask); requests name it by the returned `ref`."""
        return _parse(Upload, self._send("POST", "/v1/uploads", content=data, headers=_BINARY, timeout=120))

    def image_ref(self, value: str) -> str:
        """What -I/-M mean on this machine: a gallery id (or reference) as is, a local file uploaded.

        Raises ValueError with a message for the user (the `!dream` parser reports it against the flag).
        """
        if looks_like_ref(value):
            return value
        path = Path(value).expanduser()
        if not path.is_file():
            raise ValueError(f"{value!r} is neither a gallery image id nor a file")
        try:
            return self.upload(path.read_bytes()).ref
        except RequestRejected as e:
            raise ValueError(f"{path.name}: {e}") from None

    def delete_image(self, image_id: int) -> ImageRecord:
        return _parse(ImageRecord, self._send("DELETE", f"/v1/images/{image_id}"))

    def search(self, query: str, *, limit: int = 20, offset: int = 0, **filters: object) -> SearchResults:
        """Text search (CLIP + prompt keywords); filters: guild, user, source, model, after, before, favourites."""
        params = _search_params(limit, offset, filters) | {"q": query}
        return _parse(SearchResults, self._send("GET", "/v1/search", params=params))

    def search_image(self, image: bytes, *, limit: int = 20, offset: int = 0, **filters: object) -> SearchResults:
        """Reverse image search with PNG/JPEG/WebP bytes."""
        params = _search_params(limit, offset, filters)
        return _parse(SearchResults, self._send("POST", "/v1/search/image", content=image, params=params,
                                                headers=_BINARY))  # fmt: skip

    def similar(self, image_id: int, *, limit: int = 20, offset: int = 0, **filters: object) -> SearchResults:
        params = _search_params(limit, offset, filters)
        return _parse(SearchResults, self._send("GET", f"/v1/images/{image_id}/similar", params=params))

    def import_image(self, data: bytes, *, filename: str = "") -> ImportResult:
        return _parse(ImportResult, self._send("POST", "/v1/gallery/import", content=data,
                                               params={"filename": filename}, timeout=120))  # fmt: skip

    def check_gallery(self, *, repair: bool = False) -> GalleryCheck:
        return _parse(GalleryCheck, self._send("POST", "/v1/gallery/check", params={"repair": repair}, timeout=None))

    def reindex(self) -> ReindexResult:
        return _parse(ReindexResult, self._send("POST", "/v1/gallery/reindex", timeout=None))

    def events(self, job_id: str) -> Iterator[Event]:
        """The job's events until it is done, failed or cancelled."""
        try:
            with connect_sse(self._http, "GET", f"/v1/dreams/{job_id}/events", timeout=None) as source:
                if source.response.status_code >= 400:
                    source.response.read()
                    _check(source.response)
                for sse in source.iter_sse():
                    event = Event.model_validate_json(sse.data)
                    yield event
                    if event.type in TERMINAL_EVENTS:
                        return
        except (httpx.ConnectError, httpx.RemoteProtocolError, FileNotFoundError) as e:
            raise EngineUnavailable(f"lost the engine at {self.where}: {e}") from e

    def wait(self, job_id: str, on_event: Callable[[Event], None] | None = None) -> Job:
        """Follow a job to its end, calling `on_event` for each event; return the final job."""
        for event in self.events(job_id):
            if on_event is not None:
                on_event(event)
        return self.job(job_id)


class AsyncEngineClient:
    """The same API for asyncio frontends (the Discord bot)."""

    def __init__(
        self,
        socket_path: Path | None = None,
        *,
        base_url: str | None = None,
        token: str | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        timeout: float = 30.0,
    ) -> None:
        url, headers, self.where = _transport_args(socket_path, base_url, token)
        if transport is None and base_url is None:
            transport = httpx.AsyncHTTPTransport(uds=str(socket_path), retries=2)
        self._http = httpx.AsyncClient(transport=transport, base_url=url, headers=headers, timeout=timeout)

    async def __aenter__(self) -> AsyncEngineClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _send(self, method: str, url: str, **kwargs) -> httpx.Response:
        try:
            return await self._http.request(method, url, **kwargs)
        except (httpx.ConnectError, httpx.RemoteProtocolError, FileNotFoundError) as e:
            raise EngineUnavailable(f"no engine answers at {self.where}: {e}") from e

    async def health(self) -> Health:
        return _parse(Health, await self._send("GET", "/v1/health"))

    async def submit(self, request: DreamRequest) -> Accepted:
        return _parse(Accepted, await self._send("POST", "/v1/dreams", json=_submit_body(request)))

    async def job(self, job_id: str) -> Job:
        return _parse(Job, await self._send("GET", f"/v1/dreams/{job_id}"))

    async def cancel(self, job_id: str) -> Job:
        return _parse(Job, await self._send("DELETE", f"/v1/dreams/{job_id}"))

    async def queue(self) -> QueueState:
        return _parse(QueueState, await self._send("GET", "/v1/queue"))

    async def grid(self, job_id: str) -> bytes:
        return _check(await self._send("GET", f"/v1/dreams/{job_id}/grid")).content

    async def image_file(self, image_id: int) -> bytes:
        return _check(await self._send("GET", f"/v1/images/{image_id}/file")).content

    async def image(self, image_id: int) -> ImageRecord:
        return _parse(ImageRecord, await self._send("GET", f"/v1/images/{image_id}"))

    async def upload(self, data: bytes) -> Upload:
        return _parse(Upload, await self._send("POST", "/v1/uploads", content=data, headers=_BINARY, timeout=120))

    async def delete_image(self, image_id: int) -> ImageRecord:
        return _parse(ImageRecord, await self._send("DELETE", f"/v1/images/{image_id}"))

    async def search(self, query: str, *, limit: int = 20, offset: int = 0, **filters: object) -> SearchResults:
        params = _search_params(limit, offset, filters) | {"q": query}
        return _parse(SearchResults, await self._send("GET", "/v1/search", params=params))

    async def search_image(self, image: bytes, *, limit: int = 20, offset: int = 0, **filters: object) -> SearchResults:
        params = _search_params(limit, offset, filters)
        response = await self._send("POST", "/v1/search/image", content=image, params=params,
                                    headers=_BINARY)  # fmt: skip
        return _parse(SearchResults, response)

    async def similar(self, image_id: int, *, limit: int = 20, offset: int = 0, **filters: object) -> SearchResults:
        params = _search_params(limit, offset, filters)
        return _parse(SearchResults, await self._send("GET", f"/v1/images/{image_id}/similar", params=params))

    async def events(self, job_id: str) -> AsyncIterator[Event]:
        try:
            async with aconnect_sse(self._http, "GET", f"/v1/dreams/{job_id}/events", timeout=None) as source:
                if source.response.status_code >= 400:
                    await source.response.aread()
                    _check(source.response)
                async for sse in source.aiter_sse():
                    event = Event.model_validate_json(sse.data)
                    yield event
                    if event.type in TERMINAL_EVENTS:
                        return
        except (httpx.ConnectError, httpx.RemoteProtocolError, FileNotFoundError) as e:
            raise EngineUnavailable(f"lost the engine at {self.where}: {e}") from e


def spawn_engine(settings: Settings) -> subprocess.Popen:
    """Start an engine in the background (its own session, so it outlives this process)."""
    settings.log_dir.mkdir(parents=True, exist_ok=True)
    log = open(settings.log_dir / "engine.log", "ab")  # noqa: SIM115 - handed to the child
    env = {**os.environ, "DREAMHALL_HOME": str(settings.home)}
    return subprocess.Popen(
        [sys.executable, "-m", "engine", "engine"],
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=log,
        env=env,
        start_new_session=True,
    )


def connect(
    settings: Settings, *, autostart: bool = True, timeout: float = 120.0, say: Callable[[str], None] = print
) -> EngineClient:
    """A client for the configured engine; start one in the background if none answers (and say so)."""
    client = EngineClient(settings.socket_path)
    try:
        client.health()
        return client
    except EngineUnavailable:
        if not autostart:
            client.close()
            raise
    proc = spawn_engine(settings)
    say(
        f"No engine was running; started one in the background (pid {proc.pid}, log {settings.log_dir / 'engine.log'})."
    )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            client.close()
            raise EngineUnavailable(
                f"the engine exited at start (code {proc.returncode}); see {settings.log_dir / 'engine.log'}"
            )
        try:
            client.health()
            return client
        except EngineUnavailable:
            time.sleep(0.2)
    client.close()
    raise EngineUnavailable(f"the engine did not answer within {timeout:.0f}s; see {settings.log_dir / 'engine.log'}")
