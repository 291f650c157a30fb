"""One archive run: the sources' images -> skip what the table already has -> an engine -> the table,
with a progress bar (images/s and the time left) on stderr and a one-line summary at the end.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sonograde.archive.sources import ArchiveItem
from sonograde.archive.worker import GradeSettings, load_grader

ENGINES = ("local", "ray")


@dataclass(frozen=True, slots=True)
class RunSummary:
    """images: files graded this run; rows: rows they gave; errors: error rows among them; skipped:
    files the table already had; table_rows: rows in the finished table."""

    images: int
    rows: int
    errors: int
    not_gradeable: int
    skipped: int
    table_rows: int


def available_cores() -> int:
    """Cores this process may run on (the affinity mask, not the machine's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def engine_rows(items: list[ArchiveItem], settings: GradeSettings, engine: str, workers: int | None,
                ray_address: str | None = None, gpus_per_worker: float = 0.0
                ) -> Iterator[list[dict[str, Any]]]:
    """Rows of ``items`` from the chosen engine, as they finish (generator; the engine starts on the
    first ``next`` and stops when it is exhausted or closed). ``workers`` None: Ray's cluster CPUs."""
    if engine == "local":
        from sonograde.archive.local_engine import LocalPool

        with LocalPool(settings, workers or available_cores()) as pool:
            yield from pool.grade(items)
    elif engine == "ray":
        from sonograde.archive.ray_engine import RaySession, grade_ray

        with RaySession(ray_address, workers or available_cores()):
            yield from grade_ray(items, settings, workers, gpus_per_worker=gpus_per_worker)
    else:
        raise ValueError(f"unknown engine {engine!r}; choose one of {', '.join(ENGINES)}")


def run_archive(sources: list[str], table: Path, settings: GradeSettings, *, engine: str = "local",
                workers: int | None = None, ray_address: str | None = None, resume: bool = False,
                gpus_per_worker: float = 0.0, progress: bool | None = None) -> RunSummary:
    """Grade every image the sources name into ``table``.

    Raises ValueError (one line: a bad manifest, a table that exists without ``resume``),
    ``engine.backends.ModelLoadError`` and ``ray_engine.RayUnavailableError``; a file that cannot be
    read or graded is an error row, never an exception.
    """
    from tqdm import tqdm

    from sonograde.archive.sources import discover
    from sonograde.archive.table import TableWriter

    if workers is None and (engine == "local" or ray_address is None):
        workers = available_cores()  # on a Ray cluster: its CPUs (grade_ray asks it)
    items = discover(sources)
    writer = TableWriter(table, resume=resume, metadata={"sonograde.engine": engine})
    done = writer.open()
    todo = [item for item in items if item.path not in done]
    images = rows_count = errors = not_gradeable = 0
    bar = tqdm(total=len(todo), desc="grading", unit="image", file=sys.stderr,
               disable=None if progress is None else not progress, smoothing=0.1, dynamic_ncols=True)
    try:
        if todo:
            if engine == "local" or (settings.backend != "tensorrt" and not gpus_per_worker):
                # a missing or damaged model: one clear error before any engine starts (not where the
                # models are GPU engines that only the cluster's GPU workers can load)
                load_grader(settings)
            for rows in engine_rows(todo, settings, engine, workers and min(workers, len(todo)),
                                    ray_address, gpus_per_worker):
                writer.write(rows)
                files = {row["path"] for row in rows}
                rows_count += len(rows)
                errors += sum(1 for row in rows if row.get("error"))
                not_gradeable += sum(1 for row in rows if row.get("not_gradeable"))
                images += len(files)
                bar.update(len(files))
                if errors:
                    bar.set_postfix(errors=errors, refresh=False)
    except BaseException:
        bar.close()
        writer.abandon()  # finished rows stay on disk for --resume; an empty new table is removed
        raise
    bar.close()
    table_rows = writer.close()
    return RunSummary(images, rows_count, errors, not_gradeable, len(items) - len(todo), table_rows)
