"""The engine's native HTTP API: routes, the error map, and the middlewares of its listeners.

Transport only: handlers parse typed requests and call the job service, the
gallery and search; domain errors become status codes in one table. Wiring
and sockets are `engine.app`'s.

    curl --unix-socket ~/.local/share/dreamhall/engine.sock http://engine/v1/health
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import re
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Annotated

from fastapi import Depends, FastAPI, HTTPException, Path, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.sse import EventSourceResponse, ServerSentEvent
from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field
from starlette import types as asgi
from starlette.exceptions import HTTPException as StarletteHTTPException

from engine import __version__, a1111
from engine.dream_args import explain_errors
from engine.events import EventHub
from engine.grid import tile
from engine.inputs import InputError, Inputs
from engine.jobs import JobService, Runner
from engine.queue import JobNotFound, JobQueue, TooManyQueued
from engine.records import image_record
from engine.schema import (
    MAX_ID,
    TERMINAL_EVENTS,
    Accepted,
    CheckReport,
    DreamRequest,
    ErrorBody,
    Health,
    ImagePage,
    ImageRecord,
    ImageUpdate,
    ImportResult,
    Job,
    ModelList,
    QueueState,
    ReconcileReport,
    Scope,
    SearchResult,
    SearchResults,
    Upload,
    clip_text,
)
from engine.settings import Settings
from engine.shelf import Shelf, UnknownModel, default_model_name
from gallery.files import BadImage, decode_image
from gallery.schemas import ImagePublic, SearchFilters
from gallery.search import MAX_LIMIT, SearchError, SearchPage
from gallery.store import ImageNotFound, ImageStore

log = logging.getLogger(__name__)

if TYPE_CHECKING:  # the backend's modules import torch: the API answers before they are loaded
    from gallery.indexer import Indexer
    from gallery.search import GallerySearch
    from gallery.upkeep import Upkeep


class EngineStarting(RuntimeError):
    """Asked for what the backend does (search, models, progress) while it is still loading."""


@dataclass
class Backend:
    """The heavy half of the engine, built on a thread once the socket answers: torch, the workers,
    CLIP and the vector index."""

    device: str  # the device in words: one GPU, or the Ray pool
    workers: Runner  # the local worker thread, or Ray workers
    search: GallerySearch
    indexer: Indexer
    upkeep: Upkeep


@dataclass
class Services:
    """What the API needs, passed in explicitly (engine.app builds it). The light half (gallery rows,
    queue, jobs, shelf) is there from the first request; `backend` arrives when `load` has built it."""

    settings: Settings
    jobs: JobService
    queue: JobQueue
    store: ImageStore
    inputs: Inputs
    shelf: Shelf
    load: Callable[[], Backend] | None = None
    backend: Backend | None = None
    hub: EventHub | None = None
    failed: str | None = None

    def ready(self) -> Backend:
        if self.backend is None:
            raise EngineStarting(self.failed or "the engine is starting (loading torch, the model and the search "
                                 "index); try again in a few seconds")  # fmt: skip
        return self.backend

    def attach(self, backend: Backend) -> None:
        """The backend is built: jobs queued meanwhile start now."""
        assert self.hub is not None
        self.backend = backend
        self.jobs.runner = backend.workers
        backend.workers.serve(self.hub)

    def default_model(self) -> str:
        return default_model_name(self.settings.model)

    @property
    def workers(self) -> Runner:
        return self.ready().workers

    @property
    def search(self) -> GallerySearch:
        return self.ready().search

    @property
    def indexer(self) -> Indexer:
        return self.ready().indexer

    @property
    def upkeep(self) -> Upkeep:
        return self.ready().upkeep


def _services(request: Request) -> Services:
    return request.app.state.services


ServicesDep = Annotated[Services, Depends(_services)]


ImageId = Annotated[int, Path(ge=1, le=MAX_ID, description="a gallery image id")]
MAX_OFFSET = 10**9  # past any gallery; a larger one is a mistake, not a page
MAX_SIDE = 65_536  # no image is wider; larger is a mistake (and would overflow SQLite)


def _date(value: object) -> object:
    """ISO dates only, from year 1900: a bare number is not read as a Unix timestamp."""
    if isinstance(value, (int, float)) or (isinstance(value, str) and re.fullmatch(r"[-+]?[0-9.eE+-]+", value)):
        raise ValueError("use an ISO date such as 2026-11-21 or 2026-11-21T18:00:00Z")
    return value


def _from_1900(value: datetime | None) -> datetime | None:
    if value is not None and value.year < 1900:
        raise ValueError("dates before 1900 hold no images")
    return value


Date = Annotated[datetime | None, BeforeValidator(_date), AfterValidator(_from_1900)]


class FilterQuery(BaseModel):
    """The filters every listing and search takes, as query parameters; an unknown one is a 422."""

    model_config = ConfigDict(extra="forbid")

    guild: str | None = None
    user: str | None = None
    source: str | None = None
    model: str | None = None
    after: Date = None
    before: Date = None
    dm_of: str | None = Field(default=None, description="a Discord user: only their images from direct messages")
    favourites: bool = False
    min_width: int | None = Field(default=None, ge=1, le=MAX_SIDE)
    min_height: int | None = Field(default=None, ge=1, le=MAX_SIDE)
    lora: str | None = Field(default=None, max_length=200, description="only images made with this LoRA")

    def filters(self) -> SearchFilters:
        return SearchFilters(guild=self.guild, user=self.user, source=self.source, model=self.model,
                             created_after=self.after, created_before=self.before, dm_of=self.dm_of,
                             favourites=self.favourites, min_width=self.min_width,
                             min_height=self.min_height, lora=self.lora)  # fmt: skip


class BrowseQuery(FilterQuery):
    """A page of the gallery, newest first."""

    limit: int = Field(default=100, ge=1, le=1000)
    offset: int = Field(default=0, ge=0, le=MAX_OFFSET)


class SearchQuery(FilterQuery):
    """A page of search results, best first."""

    limit: int = Field(default=20, ge=1, le=MAX_LIMIT)
    offset: int = Field(default=0, ge=0, le=10_000)


class TextSearchQuery(SearchQuery):
    q: str


ScopeQuery = Annotated[Scope, Query()]


def scoped_image(s: Services, image_id: ImageId, scope: Scope) -> ImagePublic:
    """An image, if the requester's scope (a guild, or a DM user) may see it; else as if it did not exist."""
    image = s.store.get(image_id)
    if not scope.allows(image):
        raise ImageNotFound(f"image {image_id} is not in this server's gallery")
    return image


def search_results(page: SearchPage, store: ImageStore) -> SearchResults:
    return SearchResults(
        results=[SearchResult(image=image_record(h.image, store), score=h.score) for h in page.results],
        offset=page.offset,
        limit=page.limit,
    )


def _existing_job(job_id: str, s: ServicesDep) -> str:
    # A dependency, so an unknown id is a 404 before the event stream starts.
    return s.queue.get(job_id).id


ExistingJob = Annotated[str, Depends(_existing_job)]


def parameter_error(error: dict) -> str:
    """One sentence for a bad query or path parameter, naming it and its bound."""
    name, ctx, got = str(error["loc"][-1]), error.get("ctx") or {}, clip_text(str(error.get("input")), 40)
    bounds = {"less_than_equal": ("at most", "le"), "greater_than_equal": ("at least", "ge"),
              "less_than": ("below", "lt"), "greater_than": ("above", "gt")}  # fmt: skip
    if error["type"] in bounds:
        words, key = bounds[error["type"]]
        return f"{name} must be {words} {ctx.get(key)} (got {got})"
    message = str(error.get("msg", "invalid value")).removeprefix("Value error, ")
    return f"{name}: {message[:1].lower()}{message[1:]} (got {got})"


def error_response(status: int, message: str) -> JSONResponse:
    return JSONResponse(ErrorBody(error=message).model_dump(exclude_none=True), status_code=status)


# Domain errors -> status codes, in one place; anything else is a bug and a 500.
DOMAIN_ERRORS: dict[type[Exception], int] = {
    JobNotFound: 404,
    ImageNotFound: 404,
    SearchError: 422,
    BadImage: 422,
    InputError: 422,
    UnknownModel: 422,
    TooManyQueued: 429,
    EngineStarting: 503,
}


# Every route may answer these, always as one ErrorBody sentence (documented in /openapi.json).
ERROR_RESPONSES: dict[int | str, dict] = {
    status: {"model": ErrorBody, "description": what}
    for status, what in {
        404: "no such job or image (or not in the requester's guild)",
        409: "not possible yet (a job without images has no grid)",
        413: "request body too large",
        422: "bad input: the sentence names the field",
        429: "too many queued jobs for this user",
        503: "the engine is still starting (search, models and progress answer once it has loaded)",
    }.items()
}


def error_for(request: Request, status: int, message: str, kind: str = "HTTPException") -> JSONResponse:
    """The error shape of the route asked: A1111's on /sdapi/v1, ours everywhere else."""
    if is_a1111(request):
        return a1111.error_body(message, status, kind)
    return error_response(status, message)


def is_a1111(request: Request) -> bool:
    return request.url.path.startswith(request.app.state.a1111_prefix)


def _domain_error_handler(status: int):
    async def handle(request: Request, exc: Exception) -> JSONResponse:
        return error_for(request, status, str(exc), type(exc).__name__)

    return handle


async def _load_backend(services: Services) -> None:
    assert services.load is not None
    try:
        backend = await asyncio.to_thread(services.load)
    except Exception as e:
        log.exception("the engine could not load its backend")
        services.failed = f"the engine could not start: {e}"
        raise
    services.attach(backend)


def create_app(services: Services) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        services.hub = EventHub(asyncio.get_running_loop())
        services.queue.events = services.hub
        loading = asyncio.create_task(_load_backend(services)) if services.load else None
        yield
        if loading is not None:
            with suppress(Exception):
                await loading  # asked to stop while starting: finish starting, then stop cleanly
        if services.backend is not None:
            await asyncio.to_thread(services.backend.workers.stop)
            services.backend.indexer.flush()

    app = FastAPI(
        title="Dreamhall engine",
        version=__version__,
        lifespan=lifespan,
        max_body_size=services.settings.max_body_bytes,
        responses=ERROR_RESPONSES,
    )
    app.state.services = services
    app.state.a1111_prefix = services.settings.a1111_prefix + a1111.PREFIX

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = list(exc.errors())
        if is_a1111(request):
            return a1111.error_body(explain_errors(errors), 422, "RequestValidationError")
        if errors and errors[0].get("type") == "json_invalid":
            ctx = errors[0].get("ctx", {})
            return error_response(422, f"malformed JSON in the request body: {ctx.get('error', 'cannot parse')}")
        if errors and errors[0].get("type") == "extra_forbidden" and errors[0]["loc"][0] == "query":
            known = ", ".join(FilterQuery.model_fields)
            return error_response(422, f"unknown search filter {errors[0]['loc'][-1]!r}; known: {known}")
        if errors and errors[0]["loc"][0] in {"query", "path"}:
            return error_response(422, parameter_error(errors[0]))
        body = ErrorBody(error=explain_errors(errors), detail=[{"loc": e["loc"], "msg": e["msg"]} for e in errors])
        return JSONResponse(body.model_dump(), status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        message = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
        if exc.status_code == 413:
            message = f"request body too large (limit {services.settings.max_body_bytes} bytes)"
        if exc.status_code == 400:  # FastAPI's "error parsing the body" (e.g. not UTF-8): bad input, like bad JSON
            return error_for(request, 422, "the request body is not JSON in UTF-8")
        return error_for(request, exc.status_code, message)

    for error_type, status in DOMAIN_ERRORS.items():
        app.add_exception_handler(error_type, _domain_error_handler(status))

    @app.exception_handler(a1111.A1111Error)
    async def _a1111(_: Request, exc: a1111.A1111Error) -> JSONResponse:
        return a1111.error_body(str(exc), exc.status)

    app.include_router(a1111.build_router(), prefix=services.settings.a1111_prefix)

    generate_openapi = app.openapi

    def openapi() -> dict:
        # Errors are JSON on every route, also where success is a stream or a PNG; FastAPI would
        # document them with the route's own media type.
        if app.openapi_schema is None:
            spec = generate_openapi()
            error = {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}}
            a1111_error = {"application/json": {"schema": {"$ref": "#/components/schemas/A1111ErrorBody"}}}
            for path, operations in spec["paths"].items():
                for operation in operations.values():
                    for status, response in operation.get("responses", {}).items():
                        if status[0] in "45":
                            response["content"] = a1111_error if path.startswith(app.state.a1111_prefix) else error
            app.openapi_schema = spec
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]

    @app.get("/v1/health")
    def health(s: ServicesDep) -> Health:
        if s.backend is None:
            return Health(status="starting", version=__version__, device="starting", model=s.default_model(),
                          queued=s.queue.count("queued"), running=0, loading=s.default_model())  # fmt: skip
        workers = s.workers.workers()
        loaded = list(dict.fromkeys(name for w in workers for name in w.loaded))
        return Health(
            version=__version__,
            device=s.ready().device,
            model=s.default_model(),
            queued=s.queue.count("queued"),
            running=len(s.workers.running()),
            loading=next((w.loading for w in workers if w.loading), None),
            loaded=loaded,
            workers=workers,
        )

    @app.get("/v1/models")
    def models(s: ServicesDep) -> ModelList:
        """The model shelf: checkpoints (by the names requests use), LoRAs and embeddings."""
        return s.shelf.listing().model_copy(update={"default": s.default_model()})

    @app.post("/v1/models/scan")
    def scan_models(s: ServicesDep) -> ModelList:
        """Look at the shelf's folders again (new files appear, removed ones go)."""
        return s.shelf.scan().model_copy(update={"default": s.default_model()})

    @app.post("/v1/dreams", status_code=202)
    def submit(request: DreamRequest, s: ServicesDep) -> Accepted:
        return s.jobs.submit(request)

    @app.post("/v1/uploads", openapi_extra={"requestBody": {"content": {"image/*": {}}, "required": True}})
    async def upload(request: Request, s: ServicesDep) -> Upload:
        """An input image for img2img, inpaint (image or mask), outpaint or upscale; name it by `ref`."""
        return await asyncio.to_thread(s.inputs.save_upload, await request.body())

    @app.get("/v1/dreams/{job_id}")
    def get_job(job_id: str, s: ServicesDep, scope: ScopeQuery) -> Job:
        return s.jobs.get(job_id, scope)

    @app.delete("/v1/dreams/{job_id}")
    def cancel(job_id: str, s: ServicesDep) -> Job:
        return s.jobs.cancel(job_id)

    @app.get("/v1/dreams/{job_id}/events", response_class=EventSourceResponse)
    async def events(job_id: ExistingJob, s: ServicesDep) -> AsyncIterator[ServerSentEvent]:
        assert s.hub is not None
        q = s.hub.subscribe(job_id)  # subscribe before the snapshot so nothing falls in between
        try:
            for event in await asyncio.to_thread(s.jobs.snapshot, job_id):
                yield ServerSentEvent(data=event.model_dump(exclude_none=True), event=event.type)
                if event.type in TERMINAL_EVENTS:
                    return
            while True:
                event = await q.get()
                yield ServerSentEvent(data=event.model_dump(exclude_none=True), event=event.type)
                if event.type in TERMINAL_EVENTS:
                    return
        finally:
            s.hub.unsubscribe(job_id, q)

    @app.get("/v1/dreams/{job_id}/grid", response_class=Response, responses={200: {"content": {"image/png": {}}}})
    def grid(job_id: str, s: ServicesDep) -> Response:
        images = s.jobs.images_of(job_id)
        if not images:
            raise HTTPException(409, f"job {job_id} has no images yet")
        return Response(tile([s.store.file_path(i).read_bytes() for i in images]), media_type="image/png")

    @app.get("/v1/queue")
    def queue_state(s: ServicesDep, scope: ScopeQuery) -> QueueState:
        return s.jobs.queue_state(scope)

    @app.get("/v1/images")
    def list_images(s: ServicesDep, query: Annotated[BrowseQuery, Query()]) -> ImagePage:
        """The gallery newest first (what a gallery grid pages through); same filters as search."""
        images, total = s.store.page(filters=query.filters(), limit=query.limit, offset=query.offset)
        return ImagePage(images=[image_record(i, s.store) for i in images], total=total, offset=query.offset,
                         limit=query.limit)  # fmt: skip

    @app.get("/v1/images/{image_id}")
    def get_image(image_id: ImageId, s: ServicesDep, scope: ScopeQuery) -> ImageRecord:
        return image_record(scoped_image(s, image_id, scope), s.store)

    @app.patch("/v1/images/{image_id}")
    def update_image(image_id: ImageId, update: ImageUpdate, s: ServicesDep) -> ImageRecord:
        return image_record(s.store.set_favourite(image_id, update.favourite), s.store)

    @app.delete("/v1/images/{image_id}")
    def delete_image(image_id: ImageId, s: ServicesDep) -> ImageRecord:
        image = s.store.soft_delete(image_id)
        s.indexer.forget([image])
        return image_record(image, s.store)

    @app.get("/v1/search")
    def search_text(s: ServicesDep, query: Annotated[TextSearchQuery, Query()]) -> SearchResults:
        page = s.search.by_text(query=query.q, limit=query.limit, offset=query.offset, filters=query.filters())
        return search_results(page, s.store)

    @app.post("/v1/search/image", openapi_extra={"requestBody": {"content": {"image/*": {}}, "required": True}})
    async def search_image(request: Request, s: ServicesDep, query: Annotated[SearchQuery, Query()]) -> SearchResults:
        image = decode_image(await request.body())
        page = await asyncio.to_thread(s.search.by_image, image=image, limit=query.limit, offset=query.offset,
                                       filters=query.filters())  # fmt: skip
        return search_results(page, s.store)

    @app.post("/v1/gallery/import", openapi_extra={"requestBody": {"content": {"image/*": {}}, "required": True}})
    async def gallery_import(request: Request, s: ServicesDep, filename: str = "") -> ImportResult:
        data = await request.body()
        return await asyncio.to_thread(s.upkeep.import_image, data, filename=filename)

    @app.post("/v1/gallery/check")
    def gallery_check(s: ServicesDep, repair: bool = False) -> CheckReport:
        return s.upkeep.check(repair=repair)

    @app.post("/v1/gallery/reindex")
    def gallery_reindex(s: ServicesDep) -> ReconcileReport:
        return s.indexer.rebuild()

    @app.get("/v1/images/{image_id}/similar")
    def similar(image_id: ImageId, s: ServicesDep, query: Annotated[SearchQuery, Query()]) -> SearchResults:
        page = s.search.similar(image_id=image_id, limit=query.limit, offset=query.offset, filters=query.filters())
        return search_results(page, s.store)

    @app.get("/v1/images/{image_id}/file", response_class=FileResponse)
    def image_file(image_id: ImageId, s: ServicesDep, scope: ScopeQuery) -> FileResponse:
        return FileResponse(s.store.file_path(scoped_image(s, image_id, scope)), media_type="image/png")

    return app


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
    Basic with the token as the password (A1111's `--api-auth user:pass`; the user name names the client)."""

    def __init__(self, app: asgi.ASGIApp, token: str) -> None:
        self.app = app
        self.token = token.encode()

    async def __call__(self, scope: asgi.Scope, receive: asgi.Receive, send: asgi.Send) -> None:
        if scope["type"] == "http":
            given = dict(scope["headers"]).get(b"authorization", b"")
            if not (hmac.compare_digest(given, b"Bearer " + self.token) or self._basic_ok(given)):
                await error_response(401, "missing or wrong token")(scope, receive, send)
                return
        await self.app(scope, receive, send)

    def _basic_ok(self, given: bytes) -> bool:
        credentials = a1111.basic_auth(given)
        return credentials is not None and hmac.compare_digest(credentials[1], self.token)
