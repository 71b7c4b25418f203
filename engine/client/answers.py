"""What the engine answers: jobs and their events, images and pages of them, search results, health,
the model shelf, errors. The requests they answer are in engine.client.schema."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from engine.client.schema import DreamRequest, JobStatus
from engine.client.states import TERMINAL

# The gallery's own records (pure pydantic) are the wire records too: one family, never copied.
from gallery.schemas import BoardPublic as BoardPublic
from gallery.schemas import CheckReport as CheckReport
from gallery.schemas import ImagePublic, UtcDateTime
from gallery.schemas import ImportResult as ImportResult
from gallery.schemas import Lineage as Lineage
from gallery.schemas import ReconcileReport as ReconcileReport
from gallery.schemas import SavedSearch as SavedSearch
from gallery.schemas import TagCount as TagCount


class Upload(BaseModel):
    """An input image sent with POST /v1/uploads, to be named in a request by `ref`."""

    ref: str
    sha256: str
    width: int
    height: int


class ImageInfo(BaseModel):
    """One finished image of a job."""

    id: int
    index: int
    seed: int
    width: int
    height: int
    path: str
    sha256: str
    nsfw: bool = False
    worker: str | None = Field(default=None, description="the engine worker that made it")
    variation_seed: int | None = Field(default=None, description="a variation's own noise seed (its last -V term)")


class Progress(BaseModel):
    step: int = 0
    total: int = 0


class Job(BaseModel):
    """A dream request's life in the engine, as clients see it."""

    id: str
    status: JobStatus
    position: int | None = Field(default=None, description="0 = next to run; None once running or finished")
    progress: Progress = Progress()
    seed: int | None = None
    images: list[ImageInfo] = []
    error: str | None = None
    request: DreamRequest
    created_at: UtcDateTime
    started_at: UtcDateTime | None = None
    finished_at: UtcDateTime | None = None
    found: UtcDateTime | None = Field(
        default=None, description="answered from the gallery: when its images were made (nothing was drawn)"
    )


class Accepted(BaseModel):
    """The answer to POST /v1/dreams."""

    id: str
    status: JobStatus
    position: int | None = Field(default=None, description="in the queue; None when answered from the gallery")
    seed: int
    found: UtcDateTime | None = Field(
        default=None, description="found in the gallery, made then: the job is done, nothing was queued (--fresh "
        "draws anew)",
    )  # fmt: skip


class WorkerInfo(BaseModel):
    """One worker that runs jobs: the engine's own thread, or a Ray actor on some node."""

    id: str = Field(description="recorded in every image it makes (params `worker`)")
    node: str = Field(description="the machine it runs on")
    pid: int = Field(description="its process on that machine")
    device: str
    job: str | None = Field(default=None, description="the job it runs now (the first of its call)")
    jobs: list[str] = Field(default_factory=list, description="every job of its pipeline call now (cross-user "
                            "batching: jobs that share a model, size and steps run together)")  # fmt: skip
    loading: str | None = Field(default=None, description="a model it is loading now")
    loaded: list[str] = Field(default_factory=list, description="models in its memory")
    alive: bool = Field(default=True, description="false while Ray restarts it")
    cache: dict[str, float | None] = Field(default_factory=dict, description="its model cache after its last job: "
                                           "bytes, budget, loads, evictions, device_bytes (CUDA)")  # fmt: skip


class QueueState(BaseModel):
    running: list[Job]
    queued: list[Job]
    workers: list[WorkerInfo] = Field(default_factory=list)


class ModelEntry(BaseModel):
    """One thing on the model shelf. `hash`: AUTOMATIC1111's short hash (None until first computed)."""

    name: str
    family: str | None = None
    format: str
    size: int
    hash: str | None = None
    problem: str | None = Field(default=None, description="why it cannot be used, if it cannot")
    filename: str | None = Field(default=None, description="its file or folder, relative to the shelf")
    width: int | None = Field(default=None, description="an embedding's vector width (what A1111 calls its shape)")
    vectors: int | None = Field(default=None, description="an embedding's number of vectors")


class PromptStyle(BaseModel):
    """A style of the engine's styles.csv (A1111's): `{prompt}` in `prompt` is where the user's prompt goes."""

    name: str
    prompt: str
    negative_prompt: str


class ModelList(BaseModel):
    default: str | None = None
    checkpoints: list[ModelEntry]
    loras: list[ModelEntry]
    embeddings: list[ModelEntry]
    controlnets: list[ModelEntry] = Field(default_factory=list)
    ip_adapters: list[ModelEntry] = Field(default_factory=list, description="for reference pictures (--sref)")


class Health(BaseModel):
    status: Literal["ok", "starting"] = Field(
        default="ok", description="starting: torch and the model are still loading; jobs queue meanwhile"
    )
    version: str
    device: str
    model: str
    queued: int
    running: int
    loading: str | None = Field(default=None, description="a model being loaded now; jobs wait for it")
    loaded: list[str] = Field(default_factory=list, description="models in memory, most recently used first")
    workers: list[WorkerInfo] = Field(default_factory=list, description="who runs jobs (one, or a Ray pool)")


EventType = Literal["queued", "started", "loading", "step", "image", "done", "failed", "cancelled"]
TERMINAL_EVENTS = TERMINAL  # the last event of every stream


class Event(BaseModel):
    """One item of a job's event stream."""

    type: EventType
    job: str
    position: int | None = None
    step: int | None = None
    total: int | None = None
    preview: str | None = Field(default=None, description="small PNG preview as a data: URL")
    image: ImageInfo | None = None
    error: str | None = None
    model: str | None = Field(default=None, description="`loading`: the model being loaded (seconds to minutes)")


class ErrorBody(BaseModel):
    """Every error the API returns: one human sentence."""

    error: str
    detail: list[dict[str, Any]] | None = None


class ImageRecord(ImagePublic):
    """An image of the gallery as clients see it: enough to show it, explain it, and make it again."""

    path: str = Field(description="absolute path on the engine's machine")
    tags: list[str] = Field(default_factory=list, description="people's tags first, then the automatic ones")
    stack_size: int | None = Field(default=None, description="stacked listings and searches: how many images of "
                                   "the listing share its stack (expand with stack=its stack_key)")  # fmt: skip


class ImagePage(BaseModel):
    """A page of the gallery, newest first; `total` is how many match the filters."""

    images: list[ImageRecord]
    total: int
    offset: int
    limit: int


class ImageUpdate(BaseModel):
    """What a client may change about an image."""

    model_config = ConfigDict(extra="forbid")

    favourite: bool | None = None
    rating: int | None = Field(default=None, ge=0, le=5, description="1-5; 0 clears it")


class SearchResult(BaseModel):
    image: ImageRecord
    score: float


class DescribedTerm(BaseModel):
    term: str
    score: float


class Description(BaseModel):
    """POST /v1/describe: four candidate prompts for a picture (best first), how its vocabulary ranked, and
    the nearest images of the gallery the asker may see (their prompts are candidates too)."""

    prompts: list[str]
    terms: dict[str, list[DescribedTerm]] = Field(default_factory=dict)
    similar: list[SearchResult] = Field(default_factory=list)


class SearchResults(BaseModel):
    """Best first."""

    results: list[SearchResult]
    offset: int
    limit: int


class BoardCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=200)
    shared: bool = Field(default=False, description="in a Discord server: the whole server sees it")


class BoardRename(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=200)


class BoardImages(BaseModel):
    model_config = ConfigDict(extra="forbid")

    image_ids: list[Annotated[int, Field(ge=1, le=2**63 - 1)]] = Field(min_length=1, max_length=1000)


class TagChange(BaseModel):
    model_config = ConfigDict(extra="forbid")

    add: list[Annotated[str, Field(max_length=200)]] = Field(default_factory=list, max_length=32)
    remove: list[Annotated[str, Field(max_length=200)]] = Field(default_factory=list, max_length=32)


class SearchSave(BaseModel):
    """POST /v1/searches: a search to save by name (its text may hold `tag:` and `derived_from:` words)."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=200)
    q: str = Field(min_length=1, max_length=1000)
    filters: dict[str, Any] = Field(default_factory=dict, description="as the search routes' query parameters")
    shared: bool = False
