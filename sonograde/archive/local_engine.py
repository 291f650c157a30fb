"""Grading an archive on this machine: one process, or a process pool over its cores.

Each pool worker is a fresh interpreter (forkserver where the platform has it, else spawn: no fork of a
parent that holds ONNX Runtime threads) that loads the models once, in its initializer, with one ONNX
Runtime intra-op thread and one OpenCV thread, so N workers use N cores without oversubscribing them.
Work goes out in small chunks, a bounded number at a time, and rows come back as chunks finish. A worker
that dies (a decoder crash on a damaged file) does not end the run: the pool is restarted and the files
it had are regraded one at a time, so only the file that kills a worker again gets an error row.
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from typing import Any

from sonograde.archive.rows import error_row
from sonograde.archive.sources import ArchiveItem
from sonograde.archive.worker import ArchiveWorker, GradeSettings

_WORKER: ArchiveWorker | None = None  # the models of this pool process, loaded by _start_worker


def _start_worker(settings: GradeSettings) -> None:  # runs in each pool process
    import cv2

    global _WORKER
    cv2.setNumThreads(1)
    _WORKER = ArchiveWorker(settings)


def _grade_chunk(items: list[ArchiveItem]) -> list[dict[str, Any]]:  # runs in each pool process
    if _WORKER is None:  # pragma: no cover - the initializer always ran first
        raise RuntimeError("pool worker without models")
    return _WORKER.grade_many(items)


def _ready() -> bool:  # runs in each pool process: the initializer has loaded the models
    return _WORKER is not None


def pool_context() -> multiprocessing.context.BaseContext:
    methods = multiprocessing.get_all_start_methods()
    return multiprocessing.get_context("forkserver" if "forkserver" in methods else "spawn")


def grade_in_process(items: list[ArchiveItem], settings: GradeSettings,
                     worker: ArchiveWorker | None = None) -> Iterator[list[dict[str, Any]]]:
    """Rows of each file in turn, graded in this process (for one file, tests and the benchmark)."""
    worker = worker or ArchiveWorker(settings)
    for item in items:
        yield worker.grade(item)


class LocalPool:
    """A pool of ``workers`` processes with the models loaded (``start`` waits until they are)."""

    def __init__(self, settings: GradeSettings, workers: int) -> None:
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        self.settings = settings
        self.workers = workers
        self._pool: ProcessPoolExecutor | None = None

    def start(self) -> LocalPool:
        """Start the processes and load the models in each; ModelLoadError / ValueError from a worker
        (a missing or damaged model) is raised here, before any image is graded."""
        self._pool = ProcessPoolExecutor(self.workers, mp_context=pool_context(), initializer=_start_worker,
                                         initargs=(self.settings,))
        try:
            for future in [self._pool.submit(_ready) for _ in range(self.workers)]:
                future.result()
        except BrokenProcessPool:
            self.close()
            # the initializer's own error is only on the workers' stderr; load once here to name it
            ArchiveWorker(self.settings)
            raise
        return self

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def __enter__(self) -> LocalPool:
        return self.start() if self._pool is None else self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def grade(self, items: list[ArchiveItem], chunk: int = 4) -> Iterator[list[dict[str, Any]]]:
        """Rows of every item, a chunk's at a time, in the order chunks finish."""
        chunks = [items[i:i + chunk] for i in range(0, len(items), chunk)]
        while chunks:
            broken = yield from self._run(chunks, self.workers * 3)
            if broken is None:
                return
            in_flight, chunks = broken
            # A worker died on one of the files in flight: regrade them one at a time, so that only a
            # file that kills a worker on its own gets an error row.
            self.close()
            self.start()
            for item in (item for items in in_flight for item in items):
                if (yield from self._run([[item]], 1)) is not None:
                    self.close()
                    self.start()
                    yield [error_row(item.path, item.id, "the grading process died on this file "
                                                         "(a crash in an image decoder?)")]

    def _run(self, chunks: list[list[ArchiveItem]], limit: int):
        """Generator: yields each chunk's rows, at most ``limit`` chunks in flight; returns None when all
        are done, or (the chunks in flight, the chunks not started) when a worker died."""
        if self._pool is None:
            self.start()
        queue = list(reversed(chunks))
        running: dict[Future, list[ArchiveItem]] = {}
        while queue or running:
            while queue and len(running) < limit:
                items = queue.pop()
                try:
                    running[self._pool.submit(_grade_chunk, items)] = items
                except BrokenProcessPool:
                    return [items, *running.values()], list(reversed(queue))
            done, _ = wait(running, return_when=FIRST_COMPLETED)
            broken: list[list[ArchiveItem]] = []
            for future in done:
                items = running.pop(future)
                try:
                    rows = future.result()
                except BrokenProcessPool:
                    broken.append(items)
                    continue
                yield rows
            if broken:
                return [*broken, *running.values()], list(reversed(queue))
        return None
