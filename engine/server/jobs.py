"""The job service: the one place every API (native, and any later one) submits, cancels and views jobs.

Routes call these methods and map their domain errors to status codes; the
rules of a job's life (limits, input checks, settled seeds, who may cancel)
live here, and its state changes are announced by the queue itself.
"""

from __future__ import annotations

import secrets

from PIL import Image

from engine.client.answers import Accepted, Event, Job, Progress, QueueState, WorkerInfo
from engine.client.errors import InputError, clip_text
from engine.client.limits import Limits
from engine.client.prompts import PromptError
from engine.client.schema import IMPORTED_SOURCES, DreamRequest, Scope
from engine.device.runner import Runner
from engine.device.shelf import Shelf, UnknownModel, default_model_name
from engine.server.inputs import Inputs
from engine.server.metrics import Metrics
from engine.server.prompting import Prompting
from engine.server.queue import JobNotFound, JobQueue, JobRecord
from engine.server.records import image_info
from engine.server.repeats import content_in, request_keys
from gallery.schemas import ImagePublic, SearchFilters
from gallery.store import ImageStore


def draw_seed() -> int:
    return secrets.randbelow(2**32)


class LateRunner:
    """The job service's runner: while the engine starts, jobs queue and nothing runs; once the backend's
    workers attach, every call goes to them."""

    def __init__(self) -> None:
        self._runner: Runner | None = None

    def attach(self, runner: Runner) -> None:
        self._runner = runner

    @property
    def attached(self) -> bool:
        return self._runner is not None

    def stop(self) -> None:
        """Stop the workers, if they run: a job interrupted mid-way goes back to the queue."""
        if self._runner is not None:
            self._runner.stop()

    def wake(self) -> None:
        if self._runner is not None:
            self._runner.wake()

    def cancel(self, job_id: str) -> None:
        if self._runner is not None:  # before that, nothing runs: a queued job's cancel is the queue's
            self._runner.cancel(job_id)

    def finish(self, job_id: str) -> None:
        if self._runner is not None:
            self._runner.finish(job_id)

    def progress_of(self, job_id: str) -> Progress | None:
        return None if self._runner is None else self._runner.progress_of(job_id)

    def loading_for(self, job_id: str) -> str | None:
        return None if self._runner is None else self._runner.loading_for(job_id)

    def preview_of(self, job_id: str) -> str | None:
        return None if self._runner is None else self._runner.preview_of(job_id)

    def running(self) -> list[str]:
        return [] if self._runner is None else self._runner.running()

    def workers(self) -> list[WorkerInfo]:
        return [] if self._runner is None else self._runner.workers()

    def annotate(self, picture: Image.Image, type: str) -> Image.Image:
        if self._runner is None:
            raise InputError(f"the engine is still starting: the {type} annotator runs once its worker is up; "
                             "try again in a moment")  # fmt: skip
        return self._runner.annotate(picture, type)


def settle(request: DreamRequest, parent: ImagePublic | None) -> DreamRequest:
    """Fill in at submit time what the parent image decides, so the stored request replays exactly.

    A variation starts from the parent's seed, at the parent's size, with new noise from a drawn
    seed; an upscale without a prompt keeps the parent's.
    """
    update: dict = {}
    if request.mode == "upscale" and not request.prompt and parent is not None:
        update["prompt"] = parent.prompt
    if request.mode == "variation":
        if parent is not None and parent.source in IMPORTED_SOURCES:
            raise InputError(
                f"image {parent.id} was imported, not made here: its seed does not remake it with this engine's "
                f"model, so there is nothing to vary; try -I {parent.id} -f 0.3 (img2img) instead"
            )
        if request.seed is None and parent is not None:
            update["seed"] = parent.seed
        if parent is not None and request.width is None and request.height is None and request.aspect_ratio is None:
            update |= {"width": parent.width, "height": parent.height}
        if request.variation_amount is not None and request.variation_seed is None:
            update["variation_seed"] = draw_seed()
    return request.model_copy(update=update) if update else request


class JobService:
    """Submit, cancel and view jobs over the queue, the gallery and the runner."""

    def __init__(
        self, *, queue: JobQueue, store: ImageStore, inputs: Inputs, runner: LateRunner, limits: Limits,
        shelf: Shelf | None = None, default_model: str | None = None, prompting: Prompting | None = None,
        metrics: Metrics | None = None,
    ) -> None:  # fmt: skip
        self.metrics = metrics
        self.shelf = shelf
        self.prompting = prompting
        self.default_model = default_model_name(default_model)
        self.queue = queue
        self.store = store
        self.inputs = inputs
        self.runner = runner
        self.limits = limits

    def submit(self, request: DreamRequest) -> Accepted:
        """Check the request and its inputs, settle its seeds, queue it (raises InputError, TooManyQueued...)."""
        self.limits.check_n(request.n)
        self.limits.check_asked(request.width, request.height)
        if self.shelf is not None:
            self.shelf.check_model(request.model, request.requester.source)
            if request.refiner is not None:
                try:
                    self.shelf.check_model(request.refiner, request.requester.source)
                except UnknownModel as e:
                    raise UnknownModel(f"--refiner: {e}") from None
            if request.controls:
                self.shelf.check_controls([c.model for c in request.controls], request.model or self.default_model)
            if request.references:
                self.shelf.check_references(request.model or self.default_model)
        parent, init_size = self.inputs.check(request)
        # The size the plan will make, by the rule the plan itself uses: refused now, with a sentence naming
        # the limit, rather than failing after the 202.
        self.limits.check_output(request, init_size)
        request = settle(request, parent)
        seed = request.seed if request.seed is not None else draw_seed()
        if self.prompting is not None:  # styles and wildcards: each image's prompt, chosen by its seed
            request = self.prompting.settle(request, seed)
        elif request.styles:
            raise InputError("--style: this engine has no styles (no styles.csv)")
        made_with: dict = {}
        if self.shelf is not None:  # LoRA tags and embeddings, as styles and wildcards resolved the prompt
            try:
                loras, embeddings = self.shelf.addons_of(request.drawn_prompts_text(), request.drawn_negative_prompt)
            except PromptError as e:
                raise InputError(f"prompt: {e}") from e
            made_with = self.shelf.made_with(loras, embeddings)
        found = None if request.fresh else self._found(request, seed, made_with)
        if found is not None:  # find before you draw: every image is already in the asker's gallery
            record = self.queue.put_found(request, seed=seed, image_ids=[i.id for i in found])
            if self.metrics is not None:
                self.metrics.job_ended(request.requester.source, "found")
            return Accepted(id=record.id, status=record.status, position=None, seed=seed, found=found[0].created_at)
        record, position = self.queue.put(request, seed=seed)
        self.runner.wake()
        return Accepted(id=record.id, status=record.status, position=position, seed=seed)

    def _found(self, request: DreamRequest, seed: int, made_with: dict) -> list[ImagePublic] | None:
        """The asker's gallery images this request would make, in order, if it holds every one (an index lookup
        by repeat key; engine.server.repeats says which requests can be found). `made_with`: its add-ons, as an
        image records them."""
        if self.shelf is None:
            return None
        try:
            item = self.shelf.find("checkpoint", request.model or self.default_model)
        except UnknownModel:
            return None  # a path or a hub id: no hash to key it by
        keys = request_keys(request, seed=seed, model=item.name, model_hash=self.shelf.hash(item, compute=False),
                            made_with=made_with, content_of=content_in(self.store))  # fmt: skip
        if keys is None:
            return None
        scope = Scope.of(request.requester)
        tenant = SearchFilters(guild=scope.guild, dm_of=scope.dm_of) if scope is not None else SearchFilters()
        hits = self.store.find_repeats(keys, tenant)
        return [hits[k] for k in keys] if all(k in hits for k in keys) else None

    def cancel(self, job_id: str) -> Job:
        """Cancel a queued or running job (recorded at once); a finished job is returned as it is."""
        record = self.queue.cancel(job_id)
        if record.status == "cancelled":
            self.runner.cancel(job_id)
        return self.view(record)

    def interrupt(self, job_id: str) -> Job:
        """A1111's interrupt: a running job ends at its next step and keeps its images as far as they got
        (their params say `interrupted`); a queued one is cancelled."""
        record = self.queue.get(job_id)
        if record.status == "running":
            self.runner.finish(job_id)
            return self.view(record)
        return self.cancel(job_id)

    def get(self, job_id: str, scope: Scope | None = None) -> Job:
        """A job; with a scope, only a job asked for from inside it (else JobNotFound, as if there were none)."""
        record = self.queue.get(job_id)
        if scope is not None and not scope.allows(record.request.requester):
            raise JobNotFound(f"no job {clip_text(job_id, 60)}")
        return self.view(record)

    def view(self, record: JobRecord, position: int | None = None) -> Job:
        """A job as clients see it: position while queued, progress while running, images once done."""
        if record.status == "queued" and position is None:
            position = self.queue.position(record.id)
        progress = (self.runner.progress_of(record.id) if record.status == "running" else None) or Progress()
        own = self._images(record) if record.status == "done" else []
        images = [image_info(i, self.store) for i in own]
        return Job(
            id=record.id,
            status=record.status,
            position=position if record.status == "queued" else None,
            progress=progress,
            seed=record.seed,
            images=images,
            error=record.error,
            request=record.request,
            created_at=record.created_at,
            started_at=record.started_at,
            finished_at=record.finished_at,
            found=own[0].created_at if record.found and own else None,
        )

    def snapshot(self, job_id: str) -> list[Event]:
        """What a subscriber arriving now needs to catch up."""
        job = self.get(job_id)
        if job.status == "queued":
            return [Event(type="queued", job=job.id, position=job.position)]
        if job.status == "running":
            started = Event(type="started", job=job.id, step=job.progress.step, total=job.progress.total)
            model = self.runner.loading_for(job.id)
            return [started] + ([Event(type="loading", job=job.id, model=model)] if model else [])
        if job.status == "done":
            return [Event(type="image", job=job.id, image=i) for i in job.images] + [Event(type="done", job=job.id)]
        return [Event(type=job.status, job=job.id, error=job.error)]

    def queue_state(self, scope: Scope | None = None) -> QueueState:
        """Running and queued jobs (with a scope: only those asked for from inside it), in queue order."""
        positions = self.queue.positions()

        def inside(record: JobRecord) -> bool:
            return scope is None or scope.allows(record.request.requester)

        return QueueState(
            running=[self.view(r) for r in self.queue.jobs("running") if inside(r)],
            queued=sorted(
                (self.view(r, positions[r.id]) for r in self.queue.jobs("queued") if r.id in positions and inside(r)),
                key=lambda j: j.position or 0,
            ),
            workers=self.runner.workers(),
        )

    def images_of(self, job_id: str) -> list[ImagePublic]:
        """A job's images (raises JobNotFound for an unknown job)."""
        return self._images(self.queue.get(job_id))

    def _images(self, record: JobRecord) -> list[ImagePublic]:
        """Its own images, or the gallery's it was answered with."""
        return self.store.get_many(record.found) if record.found else self.store.for_job(record.id)
