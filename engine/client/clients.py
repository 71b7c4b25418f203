"""The engine client: what every frontend (CLI, bot, desktop) uses to talk to the engine.

Light on purpose: httpx and pydantic only, no torch, no database. The
transport is a seam: a Unix socket by default, TCP with a token, or
`httpx.MockTransport` in unit tests.

Every endpoint is written once, in `_Endpoints` (method, path, body and the
type of the answer); `EngineClient` and `AsyncEngineClient` differ only in how
they send a request, as httpx's own `Client` and `AsyncClient` do.

    with EngineClient(settings.socket_path) as engine:
        accepted = engine.submit(parse('"a red circle" -n 4'))
        job = engine.wait(accepted.id, on_event=print)
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, TypeAlias, TypeVar, cast

import httpx
from httpx_sse import aconnect_sse, connect_sse
from pydantic import BaseModel

from engine.client.answers import (
    TERMINAL_EVENTS,
    Accepted,
    BoardPublic,
    CheckReport,
    Description,
    Event,
    Health,
    ImagePage,
    ImageRecord,
    ImportResult,
    Job,
    Lineage,
    ModelList,
    PromptStyle,
    QueueState,
    ReconcileReport,
    SavedSearch,
    SearchResults,
    TagCount,
    Upload,
)
from engine.client.errors import EngineError as EngineError
from engine.client.errors import EngineUnavailable as EngineUnavailable
from engine.client.errors import RequestRejected as RequestRejected
from engine.client.errors import rejected
from engine.client.local_files import local_image, resolve_local
from engine.client.schema import ControlPreview, ControlUnit, DreamRequest, Requester, Scope

T = TypeVar("T")
M = TypeVar("M", bound=BaseModel)
# What an endpoint method gives: the answer itself (EngineClient) or an awaitable of it (AsyncEngineClient).
Answer: TypeAlias = T | Awaitable[T]


def check(response: httpx.Response) -> httpx.Response:
    """The response, or RequestRejected with the engine's one-sentence error."""
    if response.status_code >= 400:
        raise rejected(response.status_code, response.content, response.reason_phrase)
    return response


@dataclass(frozen=True)
class Call(Generic[T]):
    """One request to the engine, and how to read its answer."""

    method: str
    path: str
    read: Callable[[httpx.Response], T]
    options: dict[str, Any] = field(default_factory=dict)  # params, json, content, headers, timeout


def _model(model: type[M]) -> Callable[[httpx.Response], M]:
    return lambda response: model.model_validate(check(response).json())


def _list(model: type[M]) -> Callable[[httpx.Response], list[M]]:
    return lambda response: [model.model_validate(item) for item in check(response).json()]


def _str_list(response: httpx.Response) -> list[str]:
    return [str(item) for item in check(response).json()]


def _who(who: Requester) -> dict[str, Any]:
    return {"params": who.model_dump(include={"source", "user", "guild"}, exclude_none=True)}


def _bytes(response: httpx.Response) -> bytes:
    return check(response).content


def _search_params(limit: int, offset: int, filters: dict[str, object]) -> dict[str, Any]:
    params: dict[str, Any] = {"limit": limit, "offset": offset}
    for key, value in filters.items():
        if value is not None:
            params[key] = value.isoformat() if hasattr(value, "isoformat") else value
    return params


def _scoped(scope: Scope | None) -> dict[str, Any]:
    return {"params": scope.params()} if scope is not None else {}


_BINARY = {"Content-Type": "application/octet-stream"}


class _Endpoints:
    """Every endpoint of the engine, once. Subclasses say how a `Call` is sent (`_do`)."""

    where: str

    def _do(self, call: Call[T]) -> Answer[T]:
        raise NotImplementedError

    def health(self) -> Answer[Health]:
        return self._do(Call("GET", "/v1/health", _model(Health)))

    def styles(self) -> Answer[list[PromptStyle]]:
        """The styles `--style` takes (the engine's styles.csv)."""
        return self._do(Call("GET", "/v1/styles", _list(PromptStyle)))

    def models(self, *, scan: bool = False) -> Answer[ModelList]:
        if scan:
            return self._do(Call("POST", "/v1/models/scan", _model(ModelList), {"timeout": None}))
        return self._do(Call("GET", "/v1/models", _model(ModelList)))

    def submit(self, request: DreamRequest) -> Answer[Accepted]:
        body = request.model_dump(mode="json", exclude_defaults=True)
        return self._do(Call("POST", "/v1/dreams", _model(Accepted), {"json": body}))

    def job(self, job_id: str, *, scope: Scope | None = None) -> Answer[Job]:
        return self._do(Call("GET", f"/v1/dreams/{job_id}", _model(Job), _scoped(scope)))

    def cancel(self, job_id: str) -> Answer[Job]:
        return self._do(Call("DELETE", f"/v1/dreams/{job_id}", _model(Job)))

    def queue(self, *, scope: Scope | None = None) -> Answer[QueueState]:
        """Running and queued jobs; with a scope (a guild, a DM user), only theirs."""
        return self._do(Call("GET", "/v1/queue", _model(QueueState), _scoped(scope)))

    def grid(self, job_id: str) -> Answer[bytes]:
        return self._do(Call("GET", f"/v1/dreams/{job_id}/grid", _bytes))

    def image_file(self, image_id: int, *, scope: Scope | None = None) -> Answer[bytes]:
        return self._do(Call("GET", f"/v1/images/{image_id}/file", _bytes, _scoped(scope)))

    def image(self, image_id: int, *, scope: Scope | None = None) -> Answer[ImageRecord]:
        """One gallery image; with a scope, only if it is inside it (else RequestRejected, 404)."""
        return self._do(Call("GET", f"/v1/images/{image_id}", _model(ImageRecord), _scoped(scope)))

    def images(self, *, limit: int = 100, offset: int = 0, **filters: object) -> Answer[ImagePage]:
        """The gallery newest first; filters as for search (guild, user, source, model, lora, after, before,
        favourites)."""
        params = _search_params(limit, offset, filters)
        return self._do(Call("GET", "/v1/images", _model(ImagePage), {"params": params}))

    def set_favourite(self, image_id: int, favourite: bool) -> Answer[ImageRecord]:
        body = {"favourite": favourite}
        return self._do(Call("PATCH", f"/v1/images/{image_id}", _model(ImageRecord), {"json": body}))

    def rate(self, image_id: int, rating: int) -> Answer[ImageRecord]:
        """1-5; 0 clears the rating."""
        return self._do(Call("PATCH", f"/v1/images/{image_id}", _model(ImageRecord), {"json": {"rating": rating}}))

    def tag(self, image_id: int, add: list[str], remove: list[str] | None = None, *,
            scope: Scope | None = None) -> Answer[list[str]]:  # fmt: skip
        """A person's tags on and off an image; its tags after."""
        options = {"json": {"add": add, "remove": remove or []}, **_scoped(scope)}
        return self._do(Call("POST", f"/v1/images/{image_id}/tags", _str_list, options))

    def lineage(self, image_id: int, *, scope: Scope | None = None) -> Answer[Lineage]:
        """Where the image came from, and everything made from it."""
        return self._do(Call("GET", f"/v1/images/{image_id}/lineage", _model(Lineage), _scoped(scope)))

    def tags(self, prefix: str = "", *, limit: int = 20, **filters: object) -> Answer[list[TagCount]]:
        """The most used tags (of the images `filters` let through) that start with `prefix`."""
        params = {k: v for k, v in {**filters, "prefix": prefix, "limit": limit}.items() if v is not None}
        return self._do(Call("GET", "/v1/tags", _list(TagCount), {"params": params}))

    # --- saved searches ("smart boards"), scoped as boards ---------------------------------------------------
    def saved_searches(self, who: Requester) -> Answer[list[SavedSearch]]:
        return self._do(Call("GET", "/v1/searches", _list(SavedSearch), _who(who)))

    def save_search(self, name: str, query: str, who: Requester, *, shared: bool = False,
                    **filters: object) -> Answer[SavedSearch]:  # fmt: skip
        body = {"name": name, "q": query, "shared": shared, "filters": {k: v for k, v in filters.items() if v}}
        return self._do(Call("POST", "/v1/searches", _model(SavedSearch), {"json": body, **_who(who)}))

    def delete_search(self, search_id: int, who: Requester) -> Answer[SavedSearch]:
        return self._do(Call("DELETE", f"/v1/searches/{search_id}", _model(SavedSearch), _who(who)))

    def run_search(self, search_id: int, who: Requester, *, limit: int = 20, offset: int = 0) -> Answer[SearchResults]:
        """A saved search, run now within the asker's gallery."""
        options = _who(who)
        options["params"] |= {"limit": limit, "offset": offset}
        return self._do(Call("GET", f"/v1/searches/{search_id}/results", _model(SearchResults), options))

    # --- boards: `who` is the asker (the bot's member; the CLI's and the desktop's local user) ---------------
    def boards(self, who: Requester) -> Answer[list[BoardPublic]]:
        return self._do(Call("GET", "/v1/boards", _list(BoardPublic), _who(who)))

    def board(self, board_id: int, who: Requester) -> Answer[BoardPublic]:
        return self._do(Call("GET", f"/v1/boards/{board_id}", _model(BoardPublic), _who(who)))

    def create_board(self, name: str, who: Requester, *, shared: bool = False) -> Answer[BoardPublic]:
        options = {"json": {"name": name, "shared": shared}, **_who(who)}
        return self._do(Call("POST", "/v1/boards", _model(BoardPublic), options))

    def rename_board(self, board_id: int, name: str, who: Requester) -> Answer[BoardPublic]:
        options = {"json": {"name": name}, **_who(who)}
        return self._do(Call("PATCH", f"/v1/boards/{board_id}", _model(BoardPublic), options))

    def delete_board(self, board_id: int, who: Requester) -> Answer[BoardPublic]:
        """The board goes; its images stay."""
        return self._do(Call("DELETE", f"/v1/boards/{board_id}", _model(BoardPublic), _who(who)))

    def board_add(self, board_id: int, image_ids: list[int], who: Requester) -> Answer[BoardPublic]:
        options = {"json": {"image_ids": image_ids}, **_who(who)}
        return self._do(Call("POST", f"/v1/boards/{board_id}/images", _model(BoardPublic), options))

    def board_remove(self, board_id: int, image_ids: list[int], who: Requester) -> Answer[BoardPublic]:
        options = {"json": {"image_ids": image_ids}, **_who(who)}
        return self._do(Call("POST", f"/v1/boards/{board_id}/images/remove", _model(BoardPublic), options))

    def delete_image(self, image_id: int) -> Answer[ImageRecord]:
        return self._do(Call("DELETE", f"/v1/images/{image_id}", _model(ImageRecord)))

    def upload(self, data: bytes) -> Answer[Upload]:
        """Send an input image (init image or mask); requests name it by the returned `ref`."""
        options = {"content": data, "headers": _BINARY, "timeout": 120}
        return self._do(Call("POST", "/v1/uploads", _model(Upload), options))

    def control_preview(self, control: ControlUnit, requester: Requester | None = None) -> Answer[bytes]:
        """The PNG map a control would steer with (its image read by its type), before a job is spent on it."""
        body = ControlPreview(control=control, requester=requester or Requester()).model_dump(mode="json")
        return self._do(Call("POST", "/v1/controls/preview", _bytes, {"json": body}))

    def search(self, query: str, *, limit: int = 20, offset: int = 0, **filters: object) -> Answer[SearchResults]:
        """Text search (CLIP + prompt keywords); filters: guild, user, source, model, lora, after, before,
        favourites."""
        params = _search_params(limit, offset, filters) | {"q": query}
        return self._do(Call("GET", "/v1/search", _model(SearchResults), {"params": params}))

    def search_image(
        self, image: bytes, *, limit: int = 20, offset: int = 0, **filters: object
    ) -> Answer[SearchResults]:
        """Reverse image search with PNG/JPEG/WebP bytes."""
        options = {"content": image, "params": _search_params(limit, offset, filters), "headers": _BINARY}
        return self._do(Call("POST", "/v1/search/image", _model(SearchResults), options))

    def describe(self, image: bytes | int, *, scope: Scope | None = None) -> Answer[Description]:
        """Four candidate prompts for a picture (PNG/JPEG/WebP bytes, or a gallery image id)."""
        if isinstance(image, int):
            return self._do(Call("GET", f"/v1/images/{image}/describe", _model(Description), _scoped(scope)))
        options = {"content": image, "headers": _BINARY, **_scoped(scope)}
        return self._do(Call("POST", "/v1/describe", _model(Description), options))

    def similar(self, image_id: int, *, limit: int = 20, offset: int = 0, **filters: object) -> Answer[SearchResults]:
        params = _search_params(limit, offset, filters)
        return self._do(Call("GET", f"/v1/images/{image_id}/similar", _model(SearchResults), {"params": params}))

    def import_image(self, data: bytes, *, filename: str = "") -> Answer[ImportResult]:
        options = {"content": data, "params": {"filename": filename}, "timeout": 120}
        return self._do(Call("POST", "/v1/gallery/import", _model(ImportResult), options))

    def check_gallery(self, *, repair: bool = False, similar_window: int | None = None) -> Answer[CheckReport]:
        params = {"repair": repair} | ({"similar_window": similar_window} if similar_window is not None else {})
        options = {"params": params, "timeout": None}
        return self._do(Call("POST", "/v1/gallery/check", _model(CheckReport), options))

    def reindex(self) -> Answer[ReconcileReport]:
        return self._do(Call("POST", "/v1/gallery/reindex", _model(ReconcileReport), {"timeout": None}))

    def _events_path(self, job_id: str) -> str:
        return f"/v1/dreams/{job_id}/events"

    def _unavailable(self, e: Exception, verb: str = "no engine answers") -> EngineUnavailable:
        return EngineUnavailable(f"{verb} at {self.where}: {e}")


_LOST = (httpx.ConnectError, httpx.RemoteProtocolError, FileNotFoundError)


def _base(socket_path: Path | None, base_url: str | None, token: str | None) -> tuple[str, dict[str, str], str]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return base_url or "http://engine", headers, base_url or str(socket_path)


class EngineClient(_Endpoints):
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
        url, headers, self.where = _base(socket_path, base_url, token)
        if transport is None and base_url is None:
            # verify=False: a Unix socket has no TLS, and loading the CA bundle for nothing costs ~80 ms a client.
            transport = httpx.HTTPTransport(uds=str(socket_path), retries=2, verify=False)
        self._http = httpx.Client(transport=transport, base_url=url, headers=headers, timeout=timeout)

    def __enter__(self) -> EngineClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _do(self, call: Call[T]) -> T:
        try:
            response = self._http.request(call.method, call.path, **call.options)
        except _LOST as e:
            raise self._unavailable(e) from e
        return call.read(response)

    def image_ref(self, value: str) -> str:
        """-I/-M as the engine reads them: a gallery reference as is, a local file uploaded first."""
        return resolve_local(value, lambda data: cast(Upload, self.upload(data)).ref)

    def events(self, job_id: str) -> Iterator[Event]:
        """The job's events until it is done, failed or cancelled."""
        try:
            with connect_sse(self._http, "GET", self._events_path(job_id), timeout=None) as source:
                if source.response.status_code >= 400:
                    source.response.read()
                    check(source.response)
                for sse in source.iter_sse():
                    event = Event.model_validate_json(sse.data)
                    yield event
                    if event.type in TERMINAL_EVENTS:
                        return
        except _LOST as e:
            raise self._unavailable(e, "lost the engine") from e

    def wait(self, job_id: str, on_event: Callable[[Event], None] | None = None) -> Job:
        """Follow a job to its end, calling `on_event` for each event; return the final job."""
        for event in self.events(job_id):
            if on_event is not None:
                on_event(event)
        return cast(Job, self.job(job_id))


class AsyncEngineClient(_Endpoints):
    """The same API for asyncio frontends (the Discord bot): every method returns an awaitable."""

    def __init__(
        self,
        socket_path: Path | None = None,
        *,
        base_url: str | None = None,
        token: str | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        timeout: float = 30.0,
    ) -> None:
        url, headers, self.where = _base(socket_path, base_url, token)
        if transport is None and base_url is None:
            transport = httpx.AsyncHTTPTransport(uds=str(socket_path), retries=2, verify=False)  # no TLS: as above
        self._http = httpx.AsyncClient(transport=transport, base_url=url, headers=headers, timeout=timeout)

    async def __aenter__(self) -> AsyncEngineClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _do(self, call: Call[T]) -> T:
        try:
            response = await self._http.request(call.method, call.path, **call.options)
        except _LOST as e:
            raise self._unavailable(e) from e
        return call.read(response)

    async def image_ref(self, value: str) -> str:
        name, data = local_image(value)
        if data is None:
            return name
        try:
            return (await cast(Awaitable[Upload], self.upload(data))).ref
        except RequestRejected as e:
            raise ValueError(f"{name}: {e}") from None

    async def events(self, job_id: str) -> AsyncIterator[Event]:
        try:
            async with aconnect_sse(self._http, "GET", self._events_path(job_id), timeout=None) as source:
                if source.response.status_code >= 400:
                    await source.response.aread()
                    check(source.response)
                async for sse in source.aiter_sse():
                    event = Event.model_validate_json(sse.data)
                    yield event
                    if event.type in TERMINAL_EVENTS:
                        return
        except _LOST as e:
            raise self._unavailable(e, "lost the engine") from e

    async def wait(self, job_id: str, on_event: Callable[[Event], None] | None = None) -> Job:
        async for event in self.events(job_id):
            if on_event is not None:
                on_event(event)
        return await cast(Awaitable[Job], self.job(job_id))
