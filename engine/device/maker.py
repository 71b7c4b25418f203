"""One job's images on one device: model -> plan -> batches -> safety flags -> records -> PNG -> CLIP vectors.

The device half of a job. It reads no gallery and writes nothing: its input images arrive
decoded, and what it makes (PNG bytes with their records, and their vectors) goes back to the
front, which stores it. The engine's own worker thread runs a Maker in-process; a Ray worker
runs one in its actor (engine.device.ray_workers), so the same code makes every image.
"""

from __future__ import annotations

import base64
import dataclasses
import io
import itertools
import logging
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from PIL import Image

from engine.client.answers import Event
from engine.client.controls import A1111_MODULES
from engine.client.errors import UserError, error_line
from engine.client.schema import DreamRequest
from engine.client.settings import Settings
from engine.device import modes
from engine.device.device import Device
from engine.device.families import addon_family
from engine.device.pipelines import LoadedModel, PipelineCache, StepCallback
from engine.device.pipelines.model import Control, Unbatchable
from engine.device.runner import (
    Cancelled,
    Interrupted,
    JobFailed,
    JobRecord,
    Made,
    Report,
    Resolved,
    Stopwatch,
    images_per_call,
)
from engine.device.shelf import Item, Shelf, encoder_of
from gallery.embeddings import Embedder
from gallery.files import encode_png
from gallery.schemas import ImagePublic

log = logging.getLogger(__name__)

PREVIEW_INTERVAL_S = 0.5
# A step event at most this often is plenty for a progress bar; each one wakes the event loop, the
# subscribers (and on Ray makes an object), and on a CPU-bound box that work comes out of the steps.
STEP_EVENT_INTERVAL_S = 0.1


class Maker:
    """Makes jobs' images on one device, one job at a time. `cancel` and `stop` may come from any thread."""

    def __init__(
        self, *, pipelines: PipelineCache, device: Device, worker_id: str, embedder: Embedder | None = None,
        max_batch_pixels: int | None = None, between_steps: Callable[[], None] | None = None, batch_max: int = 1,
    ) -> None:  # fmt: skip
        self.pipelines = pipelines
        self.batch_max = batch_max  # images per call for jobs that share it (1: every job alone)
        self.device = device
        self.worker_id = worker_id
        self.embedder = embedder
        self.max_batch_pixels = max_batch_pixels
        self.between_steps = between_steps or (lambda: None)
        self._cancel: set[str] = set()
        self._finish: set[str] = set()
        self._stopping = threading.Event()

    def cancel(self, job_id: str) -> None:
        """Stop this job at its next step (if it runs here), and store nothing of it."""
        self._cancel.add(job_id)

    def finish(self, job_id: str) -> None:
        """End this job's sampling at its next step and keep its images as far as they got (A1111's interrupt):
        the batch running now is decoded as it is, later batches and passes (hires fix, refiner) are skipped."""
        self._finish.add(job_id)

    def forget(self, job_id: str) -> None:
        self._cancel.discard(job_id)
        self._finish.discard(job_id)

    def stop(self) -> None:
        """Stop the running job at its next step; it goes back to the queue."""
        self._stopping.set()

    def run(self, job: JobRecord, inputs: Resolved, report: Callable[[Event], None]) -> Made:
        """`make`, with every failure as JobFailed(one sentence): what the local worker and a Ray actor hand the
        front. A user's mistake is logged on one line; anything else with its traceback. Raises Cancelled,
        Interrupted."""
        try:
            return self.make(job, inputs, report)
        except (Cancelled, Interrupted):
            raise
        except UserError as e:
            log.warning("job %s failed: %s", job.id, e)
            raise JobFailed(str(e)) from e
        except Exception as e:  # one bad job must never take the worker down
            message = failure_sentence(e)
            log.exception("job %s failed on %s: %s", job.id, self.worker_id, message)
            raise JobFailed(message) from e
        finally:
            self.forget(job.id)

    def make(self, job: JobRecord, inputs: Resolved, report: Callable[[Event], None]) -> Made:
        """Raises Cancelled, Interrupted, or whatever failed (ModelLoadError, out of memory...)."""
        req = job.request
        watch = Stopwatch()
        # 1. the model (say so when it must be loaded: that can take minutes)
        model = self._loaded(req.model, [(job, report)])
        watch.lap("model")
        # 2. the plan: size, seeds, and which single call makes its images
        work = modes.plan(req, inputs, job_seed=job.seed, native_size=model.native_size,
                          upscaler=self.pipelines.upscaler)  # fmt: skip
        shelf = self.pipelines.shelf
        if req.controls:
            work = self._with_controls(work, model, inputs)
        watch.lap("plan")
        # 3. batches that fit, with the job's LoRAs and embeddings (unloaded after it)
        # LoRA tags and embeddings as the prompts were resolved (a style or a wildcard may bring them): a tag
        # that one image's wildcard chose applies to the whole job, which is one set of weights
        loras, embeddings = shelf.addons_of(req.drawn_prompts_text(), req.drawn_negative_prompt)
        started = time.perf_counter()

        def run(indices: list[int], chunk: int, chunks: int):
            if job.id in self._finish and chunk > 0:
                return []  # interrupted: the images made so far are the job's
            return work.run(model, indices, self._on_step(job, model, chunk, chunks, report))

        adapter, encoder = self._reference_adapter(req, model)
        scale = req.style_weight / 100
        if adapter is not None:  # A1111's ControlNet extension records an IP-Adapter as one more unit
            ip_unit = {"module": "ip-adapter_clip", "model": adapter.name, "hash": shelf.hash(adapter), "weight": scale,
                       "start": 0.0, "end": 1.0}  # fmt: skip
            units = [*work.notes.get("controlnets", []), ip_unit]
            work = dataclasses.replace(work, notes={**work.notes, "controlnets": units})
        with (
            model.addons(loras, embeddings),
            model.references(adapter, encoder, inputs.references, [r.weight for r in req.references], scale),
        ):
            images = modes.run_batched(
                len(work.seeds),
                run,
                max_batch=self._max_batch(work),
                is_out_of_memory=self._out_of_memory,
                on_retry=lambda batch: log.warning("job %s: out of memory, retrying in batches of %d", job.id, batch),
            )
        made_with = ({"model_hash": model.hash} if model.hash else {}) | shelf.made_with(loras, embeddings)
        if req.hires is not None and job.id not in self._finish:  # 3b. A1111's hires fix: upscale, then repaint
            with model.addons(loras, embeddings):
                images = modes.hires(model, images, work, lambda i: self._on_step(job, model, i, len(images), report))
            made_with["hires_upscaler"] = modes.hires_note(req.hires)
        if req.refiner is not None and job.id not in self._finish:  # 3c. a second model finishes each image
            refiner = self._loaded(req.refiner, [(job, report)])
            images = modes.refine(refiner, images, work, req.refiner_switch,
                                  lambda i: self._on_step(job, refiner, i, len(images), report))  # fmt: skip
            made_with["refiner"] = refiner.name  # its shelf name, never a path
        watch.lap("steps")
        log.info("job %s on %s: %s, %d image(s) %dx%d, %d steps in %.2f s", job.id, self.worker_id, req.mode, req.n,
                 work.width, work.height, req.steps, time.perf_counter() - started)  # fmt: skip
        if job.id in self._cancel:
            raise Cancelled()  # asked for during the last step: store nothing
        if job.id in self._finish:
            made_with["interrupted"] = True  # the images as far as they got (A1111's interrupt)
        return self._finished(job, work, images, model, made_with, inputs.parent, watch)

    def _finished(
        self, job: JobRecord, work: modes.Plan, images: list[Image.Image], model: LoadedModel, made_with: dict,
        parent: ImagePublic | None, watch: Stopwatch,
    ) -> Made:  # fmt: skip
        """4. safety flags, 5. records and PNG bytes, 6. CLIP vectors: what the front stores."""
        flags = model.safety_flags(images)
        watch.lap("safety")
        origin = modes.Origin(job_id=job.id, model=model.name, worker=self.worker_id, parent=parent,
                              made_with=made_with)  # fmt: skip
        records = work.records(images, nsfw=flags, origin=origin)
        items = [(record, encode_png(img, record)) for record, img in zip(records, images)]
        watch.lap("png")
        vectors = None
        if self.embedder is not None:
            try:
                vectors = [v.tolist() for v in self.embedder.embed_images([img.convert("RGB") for img in images])]
            except Exception:  # search freshness, never the job: the front's indexer embeds them later
                log.exception("job %s: could not embed its images here", job.id)
        watch.lap("clip")
        return Made(items=items, vectors=vectors, loaded=self.pipelines.loaded(), affinity=self.pipelines.affinity(),
                    stages=dict(watch.spent), cache=self.pipelines.stats())  # fmt: skip

    # --- cross-user batching ----------------------------------------------------------------
    def room(self, job: JobRecord) -> int:
        """How many images the call that starts with `job` may make: the queue adds jobs that share it."""
        req = job.request
        native = self.pipelines.native_sizes().get(req.model or self.pipelines.default_name())
        return images_per_call(req, batch_max=self.batch_max, batch_pixels=self.max_batch_pixels, native_size=native)

    def run_batch(self, jobs: Sequence[JobRecord], inputs: Sequence[Resolved],
                  reports: Sequence[Report]) -> list[Made | Exception]:  # fmt: skip
        """The jobs the queue gave one call (see engine.device.runner.batch_key): each job's Made, or Cancelled
        or JobFailed. They share one pipeline call where they can; where they cannot (their LoRAs differ, their
        prompts' lengths do, the call failed), each runs alone, as it would have. Raises Interrupted."""
        try:
            if len(jobs) > 1:
                try:
                    return self._together(jobs, inputs, reports)
                except (Interrupted, Cancelled):
                    raise
                except Exception as e:
                    log.info("jobs %s run one by one: %s", ", ".join(job.id for job in jobs), failure_sentence(e))
            return [self._alone(job, one, report) for job, one, report in zip(jobs, inputs, reports, strict=True)]
        except Cancelled:  # every job of the shared call was cancelled
            return [Cancelled() for _ in jobs]
        finally:
            for job in jobs:
                self.forget(job.id)

    def _alone(self, job: JobRecord, inputs: Resolved, report: Report) -> Made | Exception:
        if job.id in self._cancel:
            return Cancelled()  # during a shared call that could not finish
        try:
            return self.run(job, inputs, report)
        except (Cancelled, JobFailed) as e:
            return e

    def _together(self, jobs: Sequence[JobRecord], inputs: Sequence[Resolved],
                  reports: Sequence[Report]) -> list[Made | Exception]:  # fmt: skip
        """Every job's images from one pipeline call per pixel budget (whole jobs in each), each image with its
        own prompt, negative and seed. A job cancelled meanwhile keeps its rows to the end of the call and its
        images are discarded. Raises Unbatchable (and whatever failed) before anything is returned."""
        first = jobs[0].request
        watch = Stopwatch()
        model = self._loaded(first.model, list(zip(jobs, reports, strict=True)))
        watch.lap("model")
        works = [modes.plan(job.request, one, job_seed=job.seed, native_size=model.native_size)
                 for job, one in zip(jobs, inputs, strict=True)]  # fmt: skip
        addons = [self.pipelines.shelf.addons_of(job.request.drawn_prompts_text(), job.request.drawn_negative_prompt)
                  for job in jobs]  # fmt: skip
        size = (works[0].width, works[0].height)
        if any(not isinstance(w, modes.Txt2ImgPlan) or w.variations or (w.width, w.height) != size for w in works):
            raise Unbatchable("only plain txt2img jobs of one size share a call")
        if any(a != addons[0] for a in addons):
            raise Unbatchable("their LoRAs or embeddings differ")
        watch.lap("plan")
        per_call = self._max_batch(works[0]) or sum(w.request.n for w in works)
        calls = pack([w.request.n for w in works], per_call)
        made: dict[int, list[Image.Image]] = {}
        started = time.perf_counter()
        loras, embeddings = addons[0]
        with model.addons(loras, embeddings):
            for call in calls:
                members = [works[i] for i in call]
                offsets = list(itertools.accumulate((w.request.n for w in members), initial=0))
                s = members[0].sampling
                try:
                    images = model.txt2img(
                        width=size[0], height=size[1], seeds=[seed for w in members for seed in w.seeds],
                        prompt=[w.prompt_of(i) for w in members for i in range(w.request.n)],
                        negative_prompt=[w.sampling.negative_prompt for w in members for _ in range(w.request.n)],
                        steps=s.steps, cfg_scale=s.cfg_scale, sampler=s.sampler, clip_skip=s.clip_skip,
                        tiling=s.tiling, eta=s.eta, on_step=self._on_shared_step([jobs[i] for i in call], offsets,
                                                                                 model, [reports[i] for i in call]),
                    )  # fmt: skip
                except Cancelled:
                    continue  # every job of this call was cancelled: the next call's jobs go on
                for i, start, end in zip(call, offsets, offsets[1:]):
                    made[i] = images[start:end]
        watch.lap("steps")
        log.info("jobs %s on %s: one call for %d jobs, %d image(s) %dx%d, %d steps in %.2f s",
                 ", ".join(job.id for job in jobs), self.worker_id, len(jobs), sum(len(v) for v in made.values()),
                 *size, first.steps, time.perf_counter() - started)  # fmt: skip
        made_with = ({"model_hash": model.hash} if model.hash else {}) | self.pipelines.shelf.made_with(
            loras, embeddings
        )
        out: list[Made | Exception] = []
        for i, job in enumerate(jobs):
            if job.id in self._cancel:
                out.append(Cancelled())  # its rows ran with the others; its images are discarded
                continue
            mine = Stopwatch()
            mine.spent = dict(watch.spent)
            out.append(self._finished(job, works[i], made[i], model, dict(made_with), inputs[i].parent, mine))
        return out

    def _on_shared_step(self, jobs: list[JobRecord], offsets: list[int], model: LoadedModel,
                        reports: list[Report]) -> StepCallback:  # fmt: skip
        """A shared call's steps: each job's own events (and its own image's previews); the call stops only when
        every job in it is cancelled, or the worker stops."""
        last_preview, last_event = [0.0], [0.0]

        def on_step(step: int, total: int, latents) -> bool:
            self.between_steps()
            if all(job.id in self._cancel for job in jobs):
                raise Cancelled()
            if self._stopping.is_set():
                raise Interrupted()
            now = time.monotonic()
            previews = (step < total and now - last_preview[0] >= PREVIEW_INTERVAL_S
                        and any(job.request.preview for job in jobs))  # fmt: skip
            if not previews and step < total and now - last_event[0] < STEP_EVENT_INTERVAL_S:
                return False
            last_event[0] = now
            if previews:
                last_preview[0] = now
            for job, offset, report in zip(jobs, offsets, reports):
                if job.id in self._cancel:
                    continue
                preview = None
                if previews and job.request.preview:
                    picture = model.preview(latents[offset : offset + 1])
                    preview = data_url(picture) if picture is not None else None
                report(Event(type="step", job=job.id, step=step, total=total, preview=preview))
            return False

        return on_step

    def _loaded(self, ref: str | None, waiting: list[tuple[JobRecord, Report]]) -> LoadedModel:
        """The model `ref` (None: the default); the jobs waiting for it hear first when it must be loaded (that can
        take minutes)."""
        if not self.pipelines.is_loaded(ref):
            for job, report in waiting:
                report(Event(type="loading", job=job.id, model=ref or self.pipelines.default_name()))
        return self.pipelines.model(ref)

    def _reference_adapter(self, req: DreamRequest, model: LoadedModel) -> tuple[Item | None, Path | None]:
        if not req.references:
            return None, None
        adapter = self.pipelines.shelf.reference_adapter(addon_family(model.family), model.text_width)
        return adapter, encoder_of(adapter)

    def _with_controls(self, work: modes.Plan, model: LoadedModel, inputs: Resolved) -> modes.Plan:
        """The plan with its ControlNets loaded and their maps fitted to the output; each image records the
        ControlNet it used by name (so reusing its parameters picks the same one) and in A1111's form."""
        shelf = self.pipelines.shelf
        family = addon_family(model.family)
        controls, units, a1111 = [], [], []
        for unit, picture in zip(work.request.controls, inputs.controls, strict=True):
            item = shelf.controlnet_for(unit.model, family)
            net = self.pipelines.controlnet(item)
            model.check_control(net, item.name)
            fitted = modes.fit(picture, work.width, work.height, unit.resize)
            controls.append(Control(net, fitted, unit.weight, unit.start, unit.end, kind=unit.type, name=item.name))
            units.append(unit.model_copy(update={"model": item.name}).model_dump(mode="json", exclude_none=True))
            a1111.append({"module": A1111_MODULES[unit.type], "model": item.name, "hash": shelf.hash(item),
                          "weight": unit.weight, "start": unit.start, "end": unit.end})  # fmt: skip
        notes = {**work.notes, "controls": units, "controlnets": a1111}
        return dataclasses.replace(work, controls=tuple(controls), notes=notes)

    def _max_batch(self, work: modes.Plan) -> int | None:
        """How many images of this size fit one batch under the pixel budget (None: no budget)."""
        if self.max_batch_pixels is None:
            return None
        return max(1, self.max_batch_pixels // (work.width * work.height))

    def _out_of_memory(self, e: BaseException) -> bool:
        if not Device.is_out_of_memory(e):
            return False
        self.device.free_memory()
        return True

    def _on_step(
        self, job: JobRecord, model: LoadedModel, chunk_no: int, chunks: int, report: Callable[[Event], None]
    ) -> StepCallback:
        last_preview, last_event = [0.0], [0.0]

        def on_step(step: int, total: int, latents) -> bool:
            self.between_steps()
            if job.id in self._cancel:
                raise Cancelled()
            if self._stopping.is_set():
                raise Interrupted()
            if job.id in self._finish:
                return True
            done, all_steps = chunk_no * total + step, chunks * total
            preview = None
            now = time.monotonic()
            if job.request.preview and now - last_preview[0] >= PREVIEW_INTERVAL_S and step < total:
                last_preview[0] = now
                picture = model.preview(latents)
                preview = data_url(picture) if picture is not None else None
            if preview is None and step < total and now - last_event[0] < STEP_EVENT_INTERVAL_S:
                return False  # the next step's event says more; a chunk's last step and previews always go
            last_event[0] = now
            report(Event(type="step", job=job.id, step=done, total=all_steps, preview=preview))
            return False

        return on_step


def data_url(img) -> str:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def failure_sentence(e: BaseException) -> str:
    """One line for the user about a failure that is not their mistake; the traceback stays in the log."""
    if isinstance(e, UserError):
        return str(e)
    if Device.is_out_of_memory(e):
        return "out of memory even for a single image; try a smaller size or fewer steps"
    return error_line(e)


def build_maker(
    settings: Settings, *, device: Device, shelf: Shelf, worker_id: str, embedder: Embedder | None = None,
    between_steps: Callable[[], None] | None = None,
) -> Maker:  # fmt: skip
    """A worker's maker and its pipeline cache, from the settings: the local worker's and each Ray actor's."""
    budget = None if settings.model_cache_gb is None else int(settings.model_cache_gb * 1e9)
    pipelines = PipelineCache(device, settings.model, safety_check=settings.safety_check, upscaler=settings.upscaler,
                              shelf=shelf, budget_bytes=budget, compile=settings.compile)  # fmt: skip
    max_batch_pixels = settings.batch_pixels or device.batch_pixels()
    return Maker(pipelines=pipelines, device=device, worker_id=worker_id, embedder=embedder,
                 max_batch_pixels=max_batch_pixels, between_steps=between_steps,
                 batch_max=settings.batch_max)  # fmt: skip


def pack(counts: list[int], per_call: int) -> list[list[int]]:
    """Whole jobs (their image counts, in order) into calls of at most `per_call` images (a job larger than that
    gets a call of its own)."""
    calls: list[list[int]] = []
    used = per_call
    for i, count in enumerate(counts):
        if used + count > per_call:
            calls.append([])
            used = 0
        calls[-1].append(i)
        used += count
    return calls
