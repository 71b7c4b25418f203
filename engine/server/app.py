"""The engine's composition root: bind the socket, build the services, serve.

    dreamhall engine  ->  python -m engine.server  ->  serve(settings)

The one place that builds everything, with constructors. The light half first (`build_front`): the
socket answers within a second (`/v1/health` says "starting", jobs queue). Torch, the workers, CLIP
and the vector index load on a thread behind it (`build_backend`).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import signal
import socket
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import uvicorn
from fastapi import FastAPI

from engine import __version__
from engine.client.settings import Settings
from engine.device.runner import Runner
from engine.device.shelf import Shelf
from engine.server.events import EventHub
from engine.server.http import create_app
from engine.server.inputs import Inputs
from engine.server.jobs import JobService, LateRunner
from engine.server.metrics import Metrics
from engine.server.middleware import DeclaredBodyLimit, TokenGuard
from engine.server.prompting import Prompting
from engine.server.queue import SqliteJobQueue
from engine.server.services import Backend, Services
from gallery.boards import Organiser
from gallery.db import open_gallery_db
from gallery.store import SqliteImageStore

if TYPE_CHECKING:  # torch: loaded on the backend's thread, once the socket answers
    from engine.device.worker import Worker
    from gallery.embeddings import Embedder

log = logging.getLogger(__name__)


class EngineAlreadyRunning(RuntimeError):
    pass


class EngineFailed(RuntimeError):
    """The backend could not be built (the log has the traceback)."""


def build_front(settings: Settings) -> Services:
    """The light half, up in well under a second: the gallery's rows and files, the queue, the job
    service and the shelf. Jobs submitted now are queued and run once the backend is up."""
    db = open_gallery_db(settings.db_path)
    store = SqliteImageStore(db, settings.images_dir)
    hub = EventHub()
    queue = SqliteJobQueue(db, max_queued_per_user=settings.max_queued_per_user,
                           model_affinity=settings.model_affinity, events=hub)  # fmt: skip
    shelf = Shelf(settings.shelf_dir, hash_cache=settings.home / "model-hashes.json")
    log.info("model shelf %s: %d checkpoint(s), %d LoRA(s), %d embedding(s), %d ControlNet(s)", settings.shelf_dir,
             *(len(shelf.items(kind)) for kind in ("checkpoint", "lora", "embedding", "controlnet")))  # fmt: skip
    runner = LateRunner()
    inputs = Inputs(store, settings.uploads_dir, annotators=settings.shelf_dir / "annotators", annotate=runner.annotate)
    prompting = Prompting(settings.home)
    metrics = Metrics()
    jobs = JobService(queue=queue, store=store, inputs=inputs, runner=runner, limits=settings.limits, shelf=shelf,
                      default_model=settings.model, prompting=prompting, metrics=metrics)  # fmt: skip
    services = Services(settings=settings, jobs=jobs, queue=queue, store=store, inputs=inputs, shelf=shelf, hub=hub,
                        runner=runner, prompting=prompting, organiser=Organiser(db, store), metrics=metrics,
                        load=build_backend_or_stop)  # fmt: skip
    metrics.watch(queue.depth_by_priority,
                  lambda: services.backend.workers.workers() if services.backend is not None else [])  # fmt: skip
    return services


def build_backend_or_stop(front: Services) -> Backend:
    try:
        return build_backend(front)
    except Exception:
        os.kill(os.getpid(), signal.SIGTERM)  # nothing to serve without a backend: stop (serve() says why)
        raise


def build_backend(front: Services) -> Backend:
    """The heavy half, on a thread while the API already answers: the workers (torch and the models:
    this process's worker thread, or Ray actors), CLIP and the vector index.

    The local worker starts the jobs waiting at start as soon as its model is loaded; CLIP and the vector index
    load once the first of them has run (its images are indexed by the index's check then): the first image waits
    for what it needs and nothing else. Search answers "starting" until then."""
    # Before torch loads: inductor reads it once. Compiled kernels outlive the process, so a
    # `compile` warm-up is paid once per machine (and per image size), not per start.
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(front.settings.home / "inductor"))
    settings, store = front.settings, front.store
    from engine.server.front import Front

    job_front = Front(queue=front.queue, store=store, inputs=front.inputs, events=front.hub, metrics=front.metrics)
    # The workers first: Ray forks its processes, which LanceDB's runtime (imported below) warns against.
    if settings.backend == "ray":
        workers, embedder, device = _ray_workers(settings)
    else:
        workers, device, load_clip = _local_worker(front)
        front.serve(workers, job_front)
        workers.settled.wait()  # the first job has run (or none was waiting): CLIP and the index now
        try:
            embedder = load_clip()
        except BaseException:
            workers.stop()
            raise
    from gallery.describe import Describer
    from gallery.index import LanceIndex
    from gallery.indexer import Indexer
    from gallery.search import GallerySearch
    from gallery.upkeep import Upkeep

    try:
        index, rebuilt = LanceIndex.open_or_rebuild(settings.index_dir, model_id=embedder.model_id, dim=embedder.dim)
    except BaseException:
        workers.stop()
        raise
    if rebuilt:
        log.warning("the vector index was damaged and starts empty; the workers re-embed the gallery")
    indexer = Indexer(engine=store.engine, store=store, embedder=embedder, index=index)
    job_front.attach_indexer(indexer)
    log.info("engine ready: device %s", device)
    return Backend(
        device=device,
        workers=workers,
        front=job_front,
        search=GallerySearch(store=store, embedder=embedder, index=index, min_score=settings.search_min_score),
        describer=functools.cache(lambda: Describer(embedder, describe_vocabulary(settings))),
        indexer=indexer,
        upkeep=Upkeep(store=store, indexer=indexer),
    )


def describe_vocabulary(settings: Settings) -> dict[str, list[str]]:
    """The words `describe` ranks: the toy world's for the built-in CLIP, general ones for a real CLIP; the user's
    `<home>/vocabulary/*.txt` add to them."""
    from gallery.describe import VOCABULARY_DIR, read_vocabulary

    return read_vocabulary(VOCABULARY_DIR / ("toy" if settings.clip_model is None else "general"),
                           settings.home / "vocabulary")  # fmt: skip


def _local_worker(front: Services) -> tuple[Worker, str, Callable[[], Embedder]]:
    """One worker thread on this machine's device, and how to load CLIP on that thread (after the first job)."""
    from engine.device.annotators import Annotators
    from engine.device.device import Device
    from engine.device.maker import build_maker
    from engine.device.worker import TorchThread, Worker, WorkerEmbedder
    from gallery.embeddings import OpenClipEmbedder

    settings = front.settings
    device = Device(settings.device)
    thread = TorchThread()
    thread.start()
    # between_steps: work `call`ed on the thread (CLIP's load, image embeddings) waits one step at most
    maker = build_maker(settings, device=device, shelf=front.shelf, worker_id="local", between_steps=thread.run_tasks)

    def load_clip() -> Embedder:
        # New images are embedded as they are made, on the worker thread; so are searches' pictures.
        def load() -> OpenClipEmbedder:
            maker.embedder = OpenClipEmbedder(settings.clip_model, settings.clip_pretrained,
                                              device=str(device.torch_device))  # fmt: skip
            return maker.embedder

        return WorkerEmbedder(thread.call(load), thread, text_process=settings.search_process and device.type == "cpu")

    annotators = Annotators(settings.shelf_dir / "annotators", device.torch_device)
    return Worker(thread=thread, maker=maker, annotators=annotators), device.describe(), load_clip


def _ray_workers(settings: Settings) -> tuple[Runner, Embedder, str]:
    """`workers` Ray actors, each with its device, models and CLIP; the front loads no model."""
    from engine.device.ray_workers import RayWorkers

    workers = RayWorkers(settings)
    workers.start()
    return workers, workers.embedder(), workers.describe()


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


def private_home(home: Path) -> None:
    """Everything the engine writes is this user's alone: files 0600, folders 0700, the home too."""
    os.umask(0o077)
    home.mkdir(parents=True, exist_ok=True, mode=0o700)
    mode = home.stat().st_mode & 0o777
    if mode & 0o077:
        log.warning("%s was readable by others (mode %o); made it 0700 (prompts and images are private)", home, mode)
        home.chmod(0o700)


def serve(settings: Settings) -> None:
    """Run the engine until SIGTERM/SIGINT."""
    private_home(settings.home)
    sock = bind_unix_socket(settings.socket_path)
    try:
        services = build_front(settings)
        resumed = services.queue.requeue_interrupted()
        if resumed:
            log.info("resuming %d job(s) left running by the last engine", resumed)
        log.info("engine %s on %s, %d job(s) queued; loading torch, the model and the search index",
                 __version__, settings.socket_path, services.queue.count("queued"))  # fmt: skip
        app = create_app(services)
        settings.pid_file.write_text(str(os.getpid()))
        asyncio.run(_serve(app, services, sock))
        if services.failed:
            raise EngineFailed(services.failed)
    finally:
        sock.close()
        settings.socket_path.unlink(missing_ok=True)
        settings.pid_file.unlink(missing_ok=True)


class _Server(uvicorn.Server):
    """uvicorn.Server without its own signal capture: serve() handles signals for all listeners."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def tcp_listener(host: str, port: int) -> socket.socket:
    """The TCP listening socket. Answers are written as headers, then body: with Nagle's algorithm on, a keep-alive
    client's every later request waited ~40 ms for the delayed ACK (each A1111 or OpenAI poll). Connections
    accepted from it inherit TCP_NODELAY."""
    tcp = socket.create_server((host, port))
    tcp.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return tcp


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
        tcp = tcp_listener(settings.tcp_host, settings.tcp_port)
        guarded = TokenGuard(asgi, settings.token.get_secret_value(), settings.openai_prefix)
        servers.append(_Server(uvicorn.Config(guarded, lifespan="off", **common)))
        sockets.append([tcp])
        log.info("also listening on tcp://%s:%d (token required)", settings.tcp_host, settings.tcp_port)
    # One SIGTERM must stop both listeners, and then return here (not re-raise) so the socket is removed.
    loop = asyncio.get_running_loop()

    def stop_all() -> None:
        for server in servers:
            server.should_exit = True

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop_all)
    await asyncio.gather(*(s.serve(sockets=socks) for s, socks in zip(servers, sockets)))
