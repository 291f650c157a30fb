"""Grading an archive with Ray Data: ``map_batches`` over the file list with a fixed pool of actors, each
holding the models (loaded once per actor, ``sonograde.archive.worker``), on an existing Ray cluster
(``address``) or on a Ray instance started on this machine for the run and shut down after it.

Only file paths travel to the actors; each actor reads its files itself, so on a cluster every worker
node must see the archive (and the models) at the same paths, e.g. a shared file system. Ray is the
optional extra ``sonograde[ray]``; nothing outside this module imports it.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import asdict
from typing import Any

from sonograde.archive.sources import ArchiveItem
from sonograde.archive.worker import GradeSettings

# The local instance's shared-memory object store: the rows are small, the file list is the largest object
LOCAL_OBJECT_STORE_BYTES = 256 * 1024 * 1024
BATCHES_PER_BLOCK = 4


class RayUnavailableError(RuntimeError):
    """Ray is not installed or the cluster cannot be reached (one line saying what to do)."""


class RayRunError(RuntimeError):
    """The Ray run failed (an actor could not load its models, the cluster went away): one line."""


class RayGradeActor:
    """The Ray Data UDF: constructed once per actor (the models load here), called once per batch."""

    def __init__(self, settings: GradeSettings) -> None:
        import cv2

        from sonograde.archive.worker import ArchiveWorker

        cv2.setNumThreads(1)
        self.worker = ArchiveWorker(settings)

    def __call__(self, batch: dict[str, Any]):
        import pyarrow as pa

        from sonograde.archive.table import arrow_schema, typed_row

        items = [ArchiveItem(str(path), _text(item_id), _number(size), str(stem))
                 for path, item_id, size, stem in zip(batch["path"], batch["id"], batch["pixel_size_mm"],
                                                      batch["out_stem"], strict=True)]
        rows = [typed_row(row) for row in self.worker.grade_many(items)]
        # A fixed schema: a batch whose rows are all errors has the same column types as any other
        return pa.Table.from_pylist(rows, schema=arrow_schema())


def _text(value: Any) -> str | None:
    return None if value is None or value != value or value == "" else str(value)  # NaN != NaN


def _number(value: Any) -> float | None:
    return None if value is None or value != value else float(value)


class RaySession:
    """``ray.init`` on ``address`` (an existing cluster) or a local instance with ``num_cpus`` CPUs and its
    logs in a temporary folder; ``ray.shutdown`` (and the folder removed) on exit."""

    def __init__(self, address: str | None, num_cpus: int) -> None:
        self.address = address
        self.num_cpus = num_cpus
        self._temp_dir: str | None = None

    def __enter__(self) -> RaySession:
        try:
            import ray
        except ImportError:
            raise RayUnavailableError("--engine ray needs Ray: pip install 'sonograde[ray]'") from None
        import logging

        if self.address:
            _check_reachable(self.address)
            try:
                ray.init(address=self.address, log_to_driver=False, logging_level=logging.WARNING)
            except Exception as exc:  # ConnectionError and Ray's own types
                raise RayUnavailableError(f"cannot connect to the Ray cluster at {self.address}: "
                                          f"{type(exc).__name__}: {str(exc)[:200]}") from exc
        else:
            self._temp_dir = tempfile.mkdtemp(prefix="sonograde-ray-")
            # a private instance on this machine: Ray's notes about its own defaults are not the user's
            ray.init(num_cpus=self.num_cpus, include_dashboard=False, _temp_dir=self._temp_dir,
                     object_store_memory=LOCAL_OBJECT_STORE_BYTES, log_to_driver=False,
                     logging_level=logging.ERROR)
        context = ray.data.DataContext.get_current()
        context.enable_progress_bars = False  # the caller shows one bar for the whole run
        context.print_on_execution_start = False
        # our bar replaces Ray Data's: neither its "execution finished" lines nor its note on its bars
        logging.getLogger("ray.data").setLevel(logging.ERROR)
        return self

    def __exit__(self, *exc: object) -> None:
        import ray

        ray.shutdown()
        if self._temp_dir is not None:
            shutil.rmtree(self._temp_dir, ignore_errors=True)


def _check_reachable(address: str, timeout_s: float = 5.0) -> None:
    """A HOST:PORT address must answer within ``timeout_s`` (Ray itself retries for minutes). "auto" and
    ray:// addresses are left to Ray."""
    import socket

    if address == "auto" or "://" in address or ":" not in address:
        return
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout_s):
            pass
    except (OSError, ValueError) as exc:
        raise RayUnavailableError(
            f"no Ray cluster answers at {address} ({exc.__class__.__name__}): start one with `ray start "
            "--head`, give the head node's HOST:6379, or leave out --ray-address for a local instance"
        ) from None


def grade_ray(items: list[ArchiveItem], settings: GradeSettings, workers: int | None, batch_size: int = 4,
              gpus_per_worker: float = 0.0) -> Iterator[list[dict[str, Any]]]:
    """Rows of every item, a batch's at a time, from ``workers`` actors (None: one per CPU of the
    cluster, or per GPU share with ``gpus_per_worker``) on the connected Ray cluster (``RaySession`` must
    be open), each with one CPU and ``gpus_per_worker`` GPUs (TensorRT engines). An actor that cannot
    load the models fails the run with RayRunError naming the cause."""
    import ray

    if not items:
        return
    if workers is None:
        resources = ray.cluster_resources()
        workers = int(resources.get("CPU", 1))
        if gpus_per_worker:
            workers = min(workers, int(resources.get("GPU", 0) / gpus_per_worker))
        workers = max(1, min(workers, len(items)))
    records = [asdict(item) for item in items]
    # Small blocks: an actor's rows come back when its block is done, so the block size sets how often
    # the progress bar moves and how much a lost node takes with it
    # ... and at least one block per actor where there are enough batches, so that none stands idle
    batches = -(-len(records) // batch_size)
    blocks = max(-(-batches // BATCHES_PER_BLOCK), min(workers, batches))
    dataset = ray.data.from_items(records, override_num_blocks=blocks)
    graded = dataset.map_batches(RayGradeActor, fn_constructor_args=(settings,), batch_size=batch_size,
                                 compute=ray.data.ActorPoolStrategy(size=workers), num_cpus=1,
                                 num_gpus=gpus_per_worker or None, batch_format="numpy")
    try:
        for batch in graded.iter_batches(batch_size=None, batch_format="pyarrow"):
            yield batch.to_pylist()
    except Exception as exc:  # Ray's errors carry the remote traceback; the last line names the cause
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        raise RayRunError(f"the Ray run failed: {lines[-1] if lines else type(exc).__name__}") from exc
