"""The engine's HTTP API, on a Unix domain socket (and an opt-in, token-guarded TCP port).

Transport only: handlers validate typed requests, put jobs on the queue, set
intent (cancel) for the worker, and stream the worker's events. The queue,
the worker and the gallery live in their own modules.

    curl --unix-socket ~/.local/share/dreamhall/engine.sock http://engine/v1/health
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import io
import logging
import os
import signal
import socket
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Annotated

import uvicorn
from fastapi import Depends, FastAPI, HTTPException, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.sse import EventSourceResponse, ServerSentEvent
from PIL import Image
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Receive, Scope, Send

from engine import __version__
from engine.device import Device
from engine.dream_args import explain_errors
from engine.inputs import InputError, Inputs
from engine.pipelines import PipelineCache
from engine.queue import JobNotFound, JobQueue, JobRecord, SqliteJobQueue, TooManyQueued
from engine.schema import (
    TERMINAL_EVENTS,
    Accepted,
    DreamRequest,
    ErrorBody,
    Event,
    GalleryCheck,
    Health,
    ImagePage,
    ImageRecord,
    ImageUpdate,
    ImportResult,
    Job,
    Progress,
    QueueState,
    ReindexResult,
    SearchResult,
    SearchResults,
    Upload,
)
from engine.settings import Settings
from engine.worker import EventSink, Worker, WorkerEmbedder, draw_seed, image_info
from gallery.db import open_gallery_db
from gallery.embeddings import OpenClipEmbedder
from gallery.files import BadImage, decode_image
from gallery.index import LanceIndex
from gallery.indexer import Indexer
from gallery.schemas import ImagePublic
from gallery.search import GallerySearch, SearchError, SearchFilters, SearchPage
from gallery.store import ImageNotFound, ImageStore, SqliteImageStore
from gallery.upkeep import Upkeep

log = logging.getLogger(__name__)


class EventHub(EventSink):
    """Fans job events out to stream subscribers. Lives on the event loop; the worker calls in thread-safely."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self._subscribers: dict[str, set[asyncio.Queue[Event]]] = {}

    def publish(self, event: Event) -> None:
        self.loop.call_soon_threadsafe(self._deliver, event)

    def positions_changed(self, positions: dict[str, int]) -> None:
        self.loop.call_soon_threadsafe(self._deliver_positions, positions)

    def subscribe(self, job_id: str) -> asyncio.Queue[Event]:
        q: asyncio.Queue[Event] = asyncio.Queue(maxsize=512)
        self._subscribers.setdefault(job_id, set()).add(q)
        return q

    def unsubscribe(self, job_id: str, q: asyncio.Queue[Event]) -> None:
        subs = self._subscribers.get(job_id)
        if subs is not None:
            subs.discard(q)
            if not subs:
                del self._subscribers[job_id]

    def _deliver(self, event: Event) -> None:
        for q in list(self._subscribers.get(event.job, ())):
            with suppress(asyncio.QueueFull):  # a stalled client loses step events, not the engine
                q.put_nowait(event)

    def _deliver_positions(self, positions: dict[str, int]) -> None:
        for job_id in list(self._subscribers):
            if job_id in positions:
                self._deliver(Event(type="queued", job=job_id, position=positions[job_id]))


@dataclass
class Services:
    """What the API needs, built once at start-up and passed in explicitly."""

    settings: Settings
    queue: JobQueue
    store: ImageStore
    inputs: Inputs
    pipelines: PipelineCache
    device: Device
    search: GallerySearch
    indexer: Indexer
    upkeep: Upkeep
    worker: Worker
    hub: EventHub | None = None


def build_services(settings: Settings) -> Services:
    """Open the gallery and start the worker thread; every model loads on that thread."""
    db = open_gallery_db(settings.db_path)
    device = Device(settings.device)
    store = SqliteImageStore(db, settings.images_dir)
    queue = SqliteJobQueue(db, max_queued_per_user=settings.max_queued_per_user)
    pipelines = PipelineCache(device, settings.model, safety_check=settings.safety_check, upscaler=settings.upscaler)
    inputs = Inputs(store, settings.uploads_dir)
    worker = Worker(queue=queue, store=store, inputs=inputs, pipelines=pipelines, device=device)
    worker.start()
    clip = worker.call(OpenClipEmbedder, settings.clip_model, settings.clip_pretrained,
                       device=str(device.torch_device))  # fmt: skip
    embedder = WorkerEmbedder(clip, worker)
    index, rebuilt = LanceIndex.open_or_rebuild(settings.index_dir, model_id=embedder.model_id, dim=embedder.dim)
    if rebuilt:
        log.warning("the vector index was damaged and starts empty; the worker re-embeds the gallery")
    indexer = Indexer(engine=db, store=store, embedder=embedder, index=index)
    worker.indexer = indexer
    return Services(
        settings=settings,
        queue=queue,
        store=store,
        inputs=inputs,
        pipelines=pipelines,
        device=device,
        search=GallerySearch(engine=db, store=store, embedder=embedder, index=index),
        indexer=indexer,
        upkeep=Upkeep(engine=db, store=store, indexer=indexer),
        worker=worker,
    )


def _services(request: Request) -> Services:
    return request.app.state.services


ServicesDep = Annotated[Services, Depends(_services)]


SEARCH_PARAMETERS = frozenset(
    {"q", "limit", "offset", "guild", "user", "source", "model", "after", "before", "favourites", "min_width",
     "min_height"}
)  # fmt: skip


def _filters(
    request: Request,
    guild: str | None = None,
    user: str | None = None,
    source: str | None = None,
    model: str | None = None,
    after: datetime | None = None,
    before: datetime | None = None,
    favourites: bool = False,
    min_width: int | None = None,
    min_height: int | None = None,
) -> SearchFilters:
    unknown = sorted(set(request.query_params) - SEARCH_PARAMETERS)
    if unknown:
        known = ", ".join(sorted(SEARCH_PARAMETERS - {"q"}))
        raise HTTPException(422, f"unknown search filter {unknown[0]!r}; known: {known}")
    return SearchFilters(guild=guild, user=user, source=source, model=model, created_after=after,
                         created_before=before, favourites=favourites, min_width=min_width,
                         min_height=min_height)  # fmt: skip


FiltersDep = Annotated[SearchFilters, Depends(_filters)]


def image_record(image: ImagePublic, store: ImageStore) -> ImageRecord:
    return ImageRecord.model_validate({**image.model_dump(), "path": str(store.file_path(image))})


def search_results(page: SearchPage, store: ImageStore) -> SearchResults:
    return SearchResults(
        results=[SearchResult(image=image_record(h.image, store), score=h.score) for h in page.results],
        offset=page.offset,
        limit=page.limit,
    )


def settle_seeds(request: DreamRequest, parent: ImagePublic | None) -> DreamRequest:
    """Fix a variation's seeds at submit time, so the stored request replays exactly after a restart.

    The base seed is the parent image's (or the given one); new variation noise gets a drawn seed.
    """
    if request.mode != "variation":
        return request
    update: dict = {}
    if request.seed is None and parent is not None:
        update["seed"] = parent.seed
    if request.variation_amount is not None and request.variation_seed is None:
        update["variation_seed"] = draw_seed()
    return request.model_copy(update=update)


def _existing_job(job_id: str, s: ServicesDep) -> JobRecord:
    # A dependency, so an unknown id is a 404 before the event stream starts.
    return s.queue.get(job_id)


ExistingJob = Annotated[JobRecord, Depends(_existing_job)]


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse(ErrorBody(error=message).model_dump(exclude_none=True), status_code=status)


DOMAIN_ERRORS: dict[type[Exception], int] = {
    JobNotFound: 404,
    ImageNotFound: 404,
    SearchError: 422,
    BadImage: 422,
    InputError: 422,
    TooManyQueued: 429,
}


def _domain_error_handler(status: int):
    async def handle(_: Request, exc: Exception) -> JSONResponse:
        return _error(status, str(exc))

    return handle


def job_view(s: Services, record: JobRecord, positions: dict[str, int] | None = None) -> Job:
    positions = s.queue.positions() if positions is None and record.status == "queued" else positions or {}
    progress = Progress()
    if s.worker.current == record.id:
        progress = Progress(step=s.worker.progress[0], total=s.worker.progress[1])
    images = [image_info(i, s.store) for i in s.store.for_job(record.id)] if record.status == "done" else []
    return Job(
        id=record.id,
        status=record.status,
        position=positions.get(record.id),
        progress=progress,
        seed=record.seed,
        images=images,
        error=record.error,
        request=record.request,
        created_at=record.created_at,
        started_at=record.started_at,
        finished_at=record.finished_at,
    )


def snapshot_events(job: Job) -> list[Event]:
    """What a subscriber arriving now needs to catch up."""
    if job.status == "queued":
        return [Event(type="queued", job=job.id, position=job.position)]
    if job.status == "running":
        return [Event(type="started", job=job.id, step=job.progress.step, total=job.progress.total)]
    if job.status == "done":
        return [Event(type="image", job=job.id, image=i) for i in job.images] + [Event(type="done", job=job.id)]
    return [Event(type=job.status, job=job.id, error=job.error)]  # type: ignore[arg-type]


def create_app(services: Services) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        services.hub = EventHub(asyncio.get_running_loop())
        services.worker.serve(services.hub)
        yield
        await asyncio.to_thread(services.worker.stop)
        services.indexer.index.flush()

    app = FastAPI(
        title="Dreamhall engine",
        version=__version__,
        lifespan=lifespan,
        max_body_size=services.settings.max_body_bytes,
    )
    app.state.services = services

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        errors = list(exc.errors())
        if errors and errors[0].get("type") == "json_invalid":
            ctx = errors[0].get("ctx", {})
            return _error(422, f"malformed JSON in the request body: {ctx.get('error', 'cannot parse')}")
        body = ErrorBody(error=explain_errors(errors), detail=[{"loc": e["loc"], "msg": e["msg"]} for e in errors])
        return JSONResponse(body.model_dump(), status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        message = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
        if exc.status_code == 413:
            message = f"request body too large (limit {services.settings.max_body_bytes} bytes)"
        return _error(exc.status_code, message)

    # Domain errors -> status codes, in one place; anything else is a bug and a 500.
    for error_type, status in DOMAIN_ERRORS.items():
        app.add_exception_handler(error_type, _domain_error_handler(status))

    @app.get("/v1/health")
    def health(s: ServicesDep) -> Health:
        return Health(
            version=__version__,
            device=s.device.describe(),
            model=s.pipelines.default_name(),
            queued=len(s.queue.positions()),
            running=1 if s.worker.current else 0,
        )

    @app.post("/v1/dreams", status_code=202, responses={404: {"model": ErrorBody}, 429: {"model": ErrorBody}})
    def submit(request: DreamRequest, s: ServicesDep) -> Accepted:
        if request.n > s.settings.max_n:
            raise HTTPException(
                422, f"n: this engine makes at most {s.settings.max_n} images per request (got {request.n})"
            )
        parent = s.inputs.check(request)
        request = settle_seeds(request, parent)
        seed = request.seed if request.seed is not None else draw_seed()
        record, position = s.queue.put(request, seed=seed)
        s.worker.wake()
        if s.hub is not None:
            s.hub.positions_changed(s.queue.positions())
        return Accepted(id=record.id, status=record.status, position=position, seed=seed)

    @app.post("/v1/uploads", openapi_extra={"requestBody": {"content": {"image/*": {}}, "required": True}})
    async def upload(request: Request, s: ServicesDep) -> Upload:
        """An input image for img2img, inpaint (image or mask), outpaint or upscale; name it by `ref`."""
        return await asyncio.to_thread(s.inputs.save_upload, await request.body())

    @app.get("/v1/dreams/{job_id}")
    def get_job(job_id: str, s: ServicesDep) -> Job:
        return job_view(s, s.queue.get(job_id))

    @app.delete("/v1/dreams/{job_id}")
    def cancel(job_id: str, s: ServicesDep) -> Job:
        record = s.queue.cancel(job_id)
        if record.status == "cancelled" and s.hub is not None and record.error is None:
            s.hub.publish(Event(type="cancelled", job=job_id))
            s.hub.positions_changed(s.queue.positions())
        elif record.status == "running":
            s.worker.cancel(job_id)
        return job_view(s, record)

    @app.get("/v1/dreams/{job_id}/events", response_class=EventSourceResponse)
    async def events(job_id: str, s: ServicesDep, _: ExistingJob) -> AsyncIterator[ServerSentEvent]:
        assert s.hub is not None
        q = s.hub.subscribe(job_id)  # subscribe before the snapshot so nothing falls in between
        try:
            job = await asyncio.to_thread(lambda: job_view(s, s.queue.get(job_id)))
            for event in snapshot_events(job):
                yield ServerSentEvent(data=event.model_dump(exclude_none=True), event=event.type)
            if job.status in TERMINAL_EVENTS:
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
        images = s.store.for_job(s.queue.get(job_id).id)
        if not images:
            raise HTTPException(409, f"job {job_id} has no images yet")
        return Response(make_grid([s.store.file_path(i) for i in images]), media_type="image/png")

    @app.get("/v1/queue")
    def queue_state(s: ServicesDep) -> QueueState:
        positions = s.queue.positions()
        return QueueState(
            running=[job_view(s, r, positions) for r in s.queue.jobs("running")],
            queued=sorted((job_view(s, r, positions) for r in s.queue.jobs("queued")), key=lambda j: j.position or 0),
        )

    @app.get("/v1/images")
    def list_images(
        s: ServicesDep,
        filters: FiltersDep,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
        offset: Annotated[int, Query(ge=0)] = 0,
    ) -> ImagePage:
        """The gallery newest first (what a gallery grid pages through); same filters as search."""
        page = s.search.browse(limit=limit, offset=offset, filters=filters)
        return ImagePage(images=[image_record(i, s.store) for i in page.images], total=page.total,
                         offset=page.offset, limit=page.limit)  # fmt: skip

    @app.get("/v1/images/{image_id}")
    def get_image(image_id: int, s: ServicesDep) -> ImageRecord:
        return image_record(s.store.get(image_id), s.store)

    @app.patch("/v1/images/{image_id}")
    def update_image(image_id: int, update: ImageUpdate, s: ServicesDep) -> ImageRecord:
        return image_record(s.store.set_favourite(image_id, update.favourite), s.store)

    @app.delete("/v1/images/{image_id}")
    def delete_image(image_id: int, s: ServicesDep) -> ImageRecord:
        image = s.store.soft_delete(image_id)
        s.indexer.index.delete([image_id])
        return image_record(image, s.store)

    @app.get("/v1/search")
    def search_text(q: str, s: ServicesDep, filters: FiltersDep, limit: int = 20, offset: int = 0) -> SearchResults:
        return search_results(s.search.by_text(query=q, limit=limit, offset=offset, filters=filters), s.store)

    @app.post("/v1/search/image", openapi_extra={"requestBody": {"content": {"image/*": {}}, "required": True}})
    async def search_image(
        request: Request, s: ServicesDep, filters: FiltersDep, limit: int = 20, offset: int = 0
    ) -> SearchResults:
        image = decode_image(await request.body())
        page = await asyncio.to_thread(s.search.by_image, image=image, limit=limit, offset=offset, filters=filters)
        return search_results(page, s.store)

    @app.post("/v1/gallery/import", openapi_extra={"requestBody": {"content": {"image/*": {}}, "required": True}})
    async def gallery_import(request: Request, s: ServicesDep, filename: str = "") -> ImportResult:
        data = await request.body()
        result = await asyncio.to_thread(s.upkeep.import_image, data, filename=filename)
        return ImportResult.model_validate(result.model_dump())

    @app.post("/v1/gallery/check")
    def gallery_check(s: ServicesDep, repair: bool = False) -> GalleryCheck:
        return GalleryCheck.model_validate(s.upkeep.check(repair=repair).model_dump())

    @app.post("/v1/gallery/reindex")
    def gallery_reindex(s: ServicesDep) -> ReindexResult:
        s.indexer.index.clear()
        report = s.indexer.reconcile()
        return ReindexResult(embedded=report.embedded, unreadable=report.unreadable)

    @app.get("/v1/images/{image_id}/similar")
    def similar(image_id: int, s: ServicesDep, filters: FiltersDep, limit: int = 20, offset: int = 0) -> SearchResults:
        return search_results(s.search.similar(image_id=image_id, limit=limit, offset=offset, filters=filters), s.store)

    @app.get("/v1/images/{image_id}/file", response_class=FileResponse)
    def image_file(image_id: int, s: ServicesDep) -> FileResponse:
        return FileResponse(s.store.file_path(s.store.get(image_id)), media_type="image/png")

    return app


def make_grid(paths: list[Path]) -> bytes:
    """Tile images into a near-square grid (the dreambot's default reply)."""
    images = [Image.open(p).convert("RGB") for p in paths]
    cols = 1
    while cols * cols < len(images):
        cols += 1
    rows = (len(images) + cols - 1) // cols
    w, h = images[0].size
    sheet = Image.new("RGB", (cols * w, rows * h), (0, 0, 0))
    for i, im in enumerate(images):
        sheet.paste(im, ((i % cols) * w, (i // cols) * h))
    buf = io.BytesIO()
    sheet.save(buf, format="PNG")
    return buf.getvalue()


class DeclaredBodyLimit:
    """Refuse a body whose Content-Length is over the limit with our JSON error, before reading it.

    FastAPI's max_body_size still guards bodies that declare no length (chunked).
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            declared = dict(scope["headers"]).get(b"content-length", b"0")
            if declared.isdigit() and int(declared) > self.max_bytes:
                message = f"request body too large ({int(declared)} bytes; limit {self.max_bytes})"
                await _error(413, message)(scope, receive, send)
                return
        await self.app(scope, receive, send)


class TokenGuard:
    """ASGI middleware for the TCP listener: every request needs `Authorization: Bearer <token>`."""

    def __init__(self, app: ASGIApp, token: str) -> None:
        self.app = app
        self.token = token.encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            given = dict(scope["headers"]).get(b"authorization", b"")
            if not hmac.compare_digest(given, b"Bearer " + self.token):
                await JSONResponse(ErrorBody(error="missing or wrong token").model_dump(exclude_none=True), 401)(
                    scope, receive, send
                )
                return
        await self.app(scope, receive, send)


class EngineAlreadyRunning(RuntimeError):
    pass


def bind_unix_socket(path: Path) -> socket.socket:
    """Bind the API socket with mode 0600 (only this user may drive the GPU)."""
    if len(str(path).encode()) > 100:
        raise OSError(f"socket path too long for a Unix socket ({len(str(path))} chars): {path}; set DREAMHALL_HOME")
    if path.exists():
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(str(path))
        except OSError:
            path.unlink()  # a stale socket from an engine that died
        else:
            raise EngineAlreadyRunning(f"an engine is already listening on {path}")
        finally:
            probe.close()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o177)
    try:
        sock.bind(str(path))
    finally:
        os.umask(old)
    os.chmod(path, 0o600)
    return sock


def serve(settings: Settings) -> None:
    """Run the engine until SIGTERM/SIGINT."""
    settings.home.mkdir(parents=True, exist_ok=True, mode=0o700)
    sock = bind_unix_socket(settings.socket_path)
    try:
        services = build_services(settings)
        resumed = services.queue.requeue_interrupted()
        if resumed:
            log.info("resuming %d job(s) left running by the last engine", resumed)
        queued = len(services.queue.positions())
        log.info(
            "engine %s on %s, device %s, %d job(s) queued",
            __version__,
            settings.socket_path,
            services.device.describe(),
            queued,
        )
        app = create_app(services)
        settings.pid_file.write_text(str(os.getpid()))
        asyncio.run(_serve(app, services, sock))
    finally:
        sock.close()
        settings.socket_path.unlink(missing_ok=True)
        settings.pid_file.unlink(missing_ok=True)


class _Server(uvicorn.Server):
    """uvicorn.Server without its own signal capture: serve() handles signals for all listeners."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


async def _serve(app: FastAPI, services: Services, sock: socket.socket) -> None:
    common = dict(log_config=None, timeout_graceful_shutdown=3, h11_max_incomplete_event_size=64 * 1024)
    # Outermost, so an oversized declared body gets our JSON error before FastAPI reads anything.
    asgi = DeclaredBodyLimit(app, max_bytes=services.settings.max_body_bytes)
    servers = [_Server(uvicorn.Config(asgi, lifespan="on", **common))]
    sockets = [[sock]]
    settings = services.settings
    if settings.tcp_port is not None:
        if settings.token is None or not settings.token.get_secret_value():
            raise ValueError("tcp_port is set but no token: the TCP listener requires DREAMHALL_TOKEN")
        tcp = socket.create_server((settings.tcp_host, settings.tcp_port))
        guarded = TokenGuard(asgi, settings.token.get_secret_value())
        servers.append(_Server(uvicorn.Config(guarded, lifespan="off", **common)))
        sockets.append([tcp])
        log.info("also listening on tcp://%s:%d (token required)", settings.tcp_host, settings.tcp_port)
    # One SIGTERM must stop both listeners, and then return here (not re-raise) so the socket is removed.
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, lambda: [setattr(s, "should_exit", True) for s in servers])
    await asyncio.gather(*(s.serve(sockets=socks) for s, socks in zip(servers, sockets)))
