"""The engine's native HTTP API, as one module-level router: transport only.

Handlers parse typed requests and call the job service, the gallery and search; their domain
errors become status codes in engine.server.errors. Wiring and sockets are engine.server.app's.

    curl --unix-socket ~/.local/share/dreamhall/engine.sock http://engine/v1/health
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import AsyncIterator
from contextlib import aclosing
from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi.responses import FileResponse, PlainTextResponse, Response
from fastapi.sse import EventSourceResponse, ServerSentEvent
from PIL import Image
from prometheus_client import CONTENT_TYPE_LATEST

from engine import __version__
from engine.client.answers import (
    Accepted,
    CheckReport,
    Description,
    Health,
    ImagePage,
    ImageRecord,
    ImageUpdate,
    ImportResult,
    Job,
    ModelList,
    PromptStyle,
    QueueState,
    ReconcileReport,
    SearchResults,
    Upload,
)
from engine.client.errors import clip_text
from engine.client.grid import tile
from engine.client.schema import ControlPreview, DreamRequest
from engine.server.describing import describe_picture
from engine.server.inputs import png_bytes
from engine.server.queries import BrowseQuery, ImageId, ScopeQuery, SearchQuery, TextSearchQuery
from engine.server.records import image_record, scoped_image, search_results
from engine.server.services import Services, ServicesDep
from gallery.files import decode_image
from gallery.likeness import SIMILAR_WINDOW

router = APIRouter()


def _existing_job(job_id: str, s: ServicesDep) -> str:
    # A dependency, so an unknown id is a 404 before the event stream starts.
    return s.queue.get(job_id).id


ExistingJob = Annotated[str, Depends(_existing_job)]


@router.get("/v1/health")
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


@router.get("/v1/models")
def models(s: ServicesDep) -> ModelList:
    """The model shelf: checkpoints (by the names requests use), LoRAs and embeddings."""
    return s.shelf.listing().model_copy(update={"default": s.default_model()})


@router.get("/v1/styles")
def styles(s: ServicesDep) -> list[PromptStyle]:
    """The styles of the engine's styles.csv, for --style (A1111's format)."""
    return [PromptStyle(name=st.name, prompt=st.prompt, negative_prompt=st.negative_prompt)
            for st in s.prompting.styles()]  # fmt: skip


@router.post("/v1/models/scan")
def scan_models(s: ServicesDep) -> ModelList:
    """Look at the shelf's folders again (new files appear, removed ones go)."""
    return s.shelf.scan().model_copy(update={"default": s.default_model()})


@router.post("/v1/dreams", status_code=202)
def submit(request: DreamRequest, s: ServicesDep) -> Accepted:
    return s.jobs.submit(request)


@router.post("/v1/uploads", openapi_extra={"requestBody": {"content": {"image/*": {}}, "required": True}})
async def upload(request: Request, s: ServicesDep) -> Upload:
    """An input image for img2img, inpaint (image or mask), outpaint or upscale; name it by `ref`."""
    return await asyncio.to_thread(s.inputs.save_upload, await request.body())


@router.post("/v1/controls/preview", response_class=Response, responses={200: {"content": {"image/png": {}}}})
def control_preview(body: ControlPreview, s: ServicesDep) -> Response:
    """The preprocessed map of a control (its image read by its type), as PNG: what the ControlNet will see."""
    control_map = s.inputs.control_map(body.control, body.requester)
    return Response(png_bytes(control_map), media_type="image/png")


@router.get("/v1/dreams/{job_id}")
def get_job(job_id: str, s: ServicesDep, scope: ScopeQuery) -> Job:
    return s.jobs.get(job_id, scope)


@router.delete("/v1/dreams/{job_id}")
def cancel(job_id: str, s: ServicesDep) -> Job:
    return s.jobs.cancel(job_id)


@router.get("/v1/dreams/{job_id}/events", response_class=EventSourceResponse)
async def events(job_id: ExistingJob, s: ServicesDep) -> AsyncIterator[ServerSentEvent]:
    # aclosing: a client that goes away unsubscribes at once, not when the generator is collected.
    async with aclosing(s.hub.follow(job_id, functools.partial(s.jobs.snapshot, job_id))) as events:
        async for event in events:
            yield ServerSentEvent(data=event.model_dump(exclude_none=True), event=event.type)


@router.get("/v1/dreams/{job_id}/grid", response_class=Response, responses={200: {"content": {"image/png": {}}}})
def grid(job_id: str, s: ServicesDep) -> Response:
    images = s.jobs.images_of(job_id)
    if not images:
        raise HTTPException(409, f"job {clip_text(job_id, 60)} has no images yet")
    return Response(tile([s.store.file_path(i).read_bytes() for i in images]), media_type="image/png")


@router.get("/v1/queue")
def queue_state(s: ServicesDep, scope: ScopeQuery) -> QueueState:
    return s.jobs.queue_state(scope)


@router.get("/v1/images")
def list_images(s: ServicesDep, query: Annotated[BrowseQuery, Query()]) -> ImagePage:
    """The gallery newest first (what a gallery grid pages through); same filters as search."""
    filters = query.filters()
    if query.stacks:
        stacked, total = s.store.stacked_page(filters=filters, limit=query.limit, offset=query.offset, sort=query.sort)
        records = [image_record(i, s.store).model_copy(update={"stack_size": n}) for i, n in stacked]
    else:
        images, total = s.store.page(filters=filters, limit=query.limit, offset=query.offset, sort=query.sort)
        records = [image_record(i, s.store) for i in images]
    return ImagePage(images=with_tags(s, records), total=total, offset=query.offset, limit=query.limit)


@router.get("/v1/images/{image_id}")
def get_image(image_id: ImageId, s: ServicesDep, scope: ScopeQuery) -> ImageRecord:
    return with_tags(s, [image_record(scoped_image(s.store, image_id, scope), s.store)])[0]


def with_tags(s: Services, records: list[ImageRecord]) -> list[ImageRecord]:
    """The records with their tags (one query for the page)."""
    tags = s.organiser.tags_of([r.id for r in records])
    return [r.model_copy(update={"tags": tags[r.id]}) for r in records]


@router.patch("/v1/images/{image_id}")
def update_image(image_id: ImageId, update: ImageUpdate, s: ServicesDep) -> ImageRecord:
    """Favourite and rate an image (1-5; 0 clears the rating)."""
    if update.favourite is not None:
        s.store.set_favourite(image_id, update.favourite)
    if update.rating is not None:
        s.organiser.rate(image_id, update.rating or None)
    return with_tags(s, [image_record(s.store.get(image_id), s.store)])[0]


@router.delete("/v1/images/{image_id}")
def delete_image(image_id: ImageId, s: ServicesDep) -> ImageRecord:
    image = s.store.soft_delete(image_id)
    s.indexer.forget([image])
    return image_record(image, s.store)


@router.get("/metrics", response_class=PlainTextResponse, tags=["metrics"])
def metrics(s: ServicesDep) -> PlainTextResponse:
    """Prometheus' text format: jobs, images, stages, searches, the queue, workers, model caches, device memory."""
    return PlainTextResponse(s.metrics.exposition(), media_type=CONTENT_TYPE_LATEST)


@router.get("/v1/search")
def search_text(s: ServicesDep, query: Annotated[TextSearchQuery, Query()]) -> SearchResults:
    filters = query.filters()
    with s.metrics.search_seconds.labels(kind="text").time():
        page = s.search.by_text(query=query.q, limit=query.wanted, offset=query.offset, filters=filters,
                                nearest=query.nearest)  # fmt: skip
    return search_results(page, s.store, stacks_within=filters if query.stacks else None, limit=query.limit)


@router.post("/v1/search/image", openapi_extra={"requestBody": {"content": {"image/*": {}}, "required": True}})
async def search_image(request: Request, s: ServicesDep, query: Annotated[SearchQuery, Query()]) -> SearchResults:
    image, filters = decode_image(await request.body()), query.filters()
    with s.metrics.search_seconds.labels(kind="image").time():
        page = await asyncio.to_thread(s.search.by_image, image=image, limit=query.wanted, offset=query.offset,
                                       filters=filters)  # fmt: skip
    return search_results(page, s.store, stacks_within=filters if query.stacks else None, limit=query.limit)


@router.post("/v1/describe", openapi_extra={"requestBody": {"content": {"image/*": {}}, "required": True}})
async def describe(request: Request, s: ServicesDep, scope: ScopeQuery) -> Description:
    """Four candidate prompts for a picture (Midjourney's /describe), from the vocabularies ranked by CLIP and the
    prompts of the nearest gallery images the asker may see."""
    image = decode_image(await request.body())
    return await asyncio.to_thread(describe_picture, s, image, scope)


@router.get("/v1/images/{image_id}/describe")
async def describe_gallery_image(image_id: ImageId, s: ServicesDep, scope: ScopeQuery) -> Description:
    record = scoped_image(s.store, image_id, scope)
    with Image.open(s.store.file_path(record)) as im:
        image = im.convert("RGB")
    return await asyncio.to_thread(describe_picture, s, image, scope, record.id)


@router.post("/v1/gallery/import", openapi_extra={"requestBody": {"content": {"image/*": {}}, "required": True}})
async def gallery_import(request: Request, s: ServicesDep, filename: str = "") -> ImportResult:
    data = await request.body()
    return await asyncio.to_thread(s.upkeep.import_image, data, filename=filename)


@router.post("/v1/gallery/check")
def gallery_check(
    s: ServicesDep,
    repair: bool = False,
    similar_window: Annotated[int, Query(ge=0, le=20_000, description="newest images compared for `similar`")] = (
        SIMILAR_WINDOW
    ),
) -> CheckReport:
    return s.upkeep.check(repair=repair, similar_window=similar_window)


@router.post("/v1/gallery/reindex")
def gallery_reindex(s: ServicesDep) -> ReconcileReport:
    return s.indexer.rebuild()


@router.get("/v1/images/{image_id}/similar")
def similar(image_id: ImageId, s: ServicesDep, query: Annotated[SearchQuery, Query()]) -> SearchResults:
    with s.metrics.search_seconds.labels(kind="similar").time():
        page = s.search.similar(image_id=image_id, limit=query.limit, offset=query.offset, filters=query.filters())
    return search_results(page, s.store)


@router.get("/v1/images/{image_id}/file", response_class=FileResponse)
def image_file(image_id: ImageId, s: ServicesDep, scope: ScopeQuery) -> FileResponse:
    return FileResponse(s.store.file_path(scoped_image(s.store, image_id, scope)), media_type="image/png")
