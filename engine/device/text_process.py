"""A search's words embedded in a process of its own, when CLIP runs on the CPU.

Two threads that run torch in one process each start an OpenMP team, and libgomp then stops spinning between
parallel regions in both (it throttles once its threads outnumber the cores): CLIP's text tower took 16-20 ms on
the engine's search thread, beside the worker's team, against 11 ms in a process alone (and the worker's steps pay
too). A process has an OpenMP runtime of its own. It reads a text-only copy of the tower through shared memory (bf16:
75 MB for ViT-B-32); words and vectors go through a pipe. It costs ~0.5 GB of RAM (torch and open_clip imported
again): the `search_process` setting turns it off.

It starts at the first search (the engine's start and its first image do not wait for it); until it answers, and
for good if it dies, searches embed on the calling thread as before.
"""

from __future__ import annotations

import contextlib
import logging
from multiprocessing.connection import Connection
from typing import Any

import numpy as np
import torch.multiprocessing

from gallery.embeddings import EmbedderError, TextTower

log = logging.getLogger(__name__)

# One core: the search's own SQLite and LanceDB work runs beside it on the other. With two threads, its team waited
# at every matrix product for a thread the engine's work had preempted (words first time, 1M images, a job running:
# p50 38 ms with two, 27 ms with one).
THREADS = 1


class TextProcess:
    """A child process that embeds texts with `tower` (its weights move to shared memory). Not thread-safe: one
    caller at a time (the engine's search thread)."""

    def __init__(self, tower: TextTower) -> None:
        context = torch.multiprocessing.get_context("spawn")
        self._conn, child = context.Pipe()
        self._process = context.Process(target=_serve, args=(child, tower), name="dreamhall-search-clip",
                                        daemon=True)  # fmt: skip
        self._process.start()
        child.close()
        if self._conn.recv() != "ready":
            raise EmbedderError("the search's CLIP process did not start")

    @property
    def pid(self) -> int | None:
        return self._process.pid

    def embed_texts(self, texts: list[str]) -> np.ndarray:
        """The vectors, or EmbedderError; OSError/EOFError when the process is gone."""
        self._conn.send(texts)
        answer: np.ndarray | str = self._conn.recv()
        if isinstance(answer, str):
            raise EmbedderError(answer)
        return answer

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._conn.send(None)
        self._process.join(timeout=5)
        if self._process.is_alive():
            self._process.kill()


def _serve(conn: Connection, tower: TextTower) -> None:
    torch.set_num_threads(THREADS)  # a process of its own: the setting is its alone
    conn.send("ready")
    while True:
        try:
            texts: Any = conn.recv()
        except EOFError:  # the engine is gone
            return
        if texts is None:
            return
        try:
            conn.send(tower(texts))
        except Exception as e:  # the caller's error; this process keeps serving
            conn.send(f"could not embed the search text: {e}")
