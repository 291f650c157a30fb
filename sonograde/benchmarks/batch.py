"""Archive grading throughput: one process, the local process pool per worker count, and Ray Data, side by
side on the same images, each checked to give the same categories as one process.

For each engine: the start (loading the models in one process or in every pool worker; for Ray,
starting the local Ray instance, whose actors load their models inside the total), images per second end
to end (start included: what a run of this size takes) and in the steady state (over the last three
quarters of the images: what a large archive approaches). Images come from a folder or manifest folder
(--data), or are phantom frames written to a temporary folder.

Examples ($DATA: the folder with the public datasets; any folder of images works):
  sonograde bench batch                                  # 60 phantom frames; workers 1..cores; Ray
  sonograde bench batch --data $DATA/busi --images 200 --workers 1 2 4
  sonograde bench batch --data DIR --no-ray --json
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

from sonograde import RESEARCH_USE_ONLY


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", type=Path, default=None, metavar="DIR",
                        help="a folder of images or a manifest folder (default: phantom frames)")
    parser.add_argument("--images", type=int, default=60, metavar="N", help="images to grade (default 60)")
    parser.add_argument("--workers", type=int, nargs="+", default=None, metavar="N",
                        help="local pool sizes to compare (default: 1 up to this machine's cores)")
    parser.add_argument("--ray-workers", type=int, default=None, metavar="N",
                        help="Ray actors (default: the largest --workers)")
    parser.add_argument("--no-ray", action="store_true", help="leave Ray out")
    parser.add_argument("--models", type=Path, default=None, metavar="DIR",
                        help="folder with roi_cnn[.P].onnx and g_cnn[.P].onnx (default: the shipped models/)")
    parser.add_argument("--precision", choices=("fp32", "int8", "fp16"), default="fp32")
    parser.add_argument("--seed", type=int, default=0, help="phantom seed / image choice (default 0)")
    parser.add_argument("--rounds", type=int, default=2, metavar="N",
                        help="rounds, the engines taking turns; each shows its best (default 2)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")


def _items(data: Path | None, count: int, seed: int, scratch: Path):
    """``count`` archive items from ``data`` (a random choice, seeded), or phantom frames in ``scratch``."""
    import cv2
    import numpy as np

    from sonograde.archive.sources import discover

    if data is not None:
        found = discover([str(data)])
        order = np.random.default_rng(seed).permutation(len(found))[:count]
        return [found[i] for i in sorted(order)], f"{data} ({len(order)} of {len(found)} images)"
    from capture.phantom import PhantomScanner

    scanner = PhantomScanner(seed)
    for i in range(count):
        cv2.imwrite(str(scratch / f"phantom_{i:05d}.png"), scanner.sample_at(i).image)
    return discover([str(scratch)]), f"{count} phantom frames (seed {seed})"


def _timed(start, grade, stop, total: int) -> dict:
    """Run one engine (``start()`` -> engine, ``grade(engine)`` -> row batches, ``stop(engine)``): its
    start in seconds, images/s end to end and in the steady state (over the last three quarters of the
    images, by when their rows came back: past every worker's start), and its rows."""
    t0 = time.perf_counter()
    engine = start()
    t_ready = time.perf_counter()
    rows: list[dict] = []
    done, quarter_at, quarter_done = 0, None, 0
    try:
        for batch in grade(engine):
            rows.extend(batch)
            done += len({r["path"] for r in batch})
            if quarter_at is None and done >= total / 4:
                quarter_at, quarter_done = time.perf_counter(), done
    finally:
        stop(engine)
    t_end = time.perf_counter()
    steady = (total - quarter_done) / (t_end - quarter_at) if quarter_at and total > quarter_done else None
    return {"start_s": round(t_ready - t0, 2), "total_s": round(t_end - t0, 2),
            "images_per_s": round(total / (t_end - t0), 2),
            "steady_images_per_s": round(steady, 2) if steady else None, "rows": rows}


def _agreement(rows: list[dict], reference: dict) -> int:
    return sum(1 for row in rows if reference.get((row["path"], row["frame"])) == row["category"])


def run(args: argparse.Namespace) -> int:
    from engine.backends import ModelLoadError
    from engine.machine import describe_machine
    from sonograde.archive.local_engine import LocalPool
    from sonograde.archive.ray_engine import RayUnavailableError
    from sonograde.archive.runner import available_cores
    from sonograde.archive.worker import ArchiveWorker, GradeSettings

    cores = available_cores()
    pool_sizes = args.workers or list(range(1, cores + 1))
    if args.images < 1 or args.rounds < 1 or any(n < 1 for n in pool_sizes) or (args.ray_workers or 1) < 1:
        print("sonograde bench batch: --images, --rounds, --workers and --ray-workers must be >= 1",
              file=sys.stderr)
        return 2
    settings = GradeSettings(models_dir=str(args.models) if args.models else None, precision=args.precision)
    scratch = Path(tempfile.mkdtemp(prefix="sonograde-bench-batch-"))
    try:
        try:
            items, source = _items(args.data, args.images, args.seed, scratch)
        except (OSError, ValueError) as exc:
            print(f"sonograde bench batch: cannot read images: {exc}", file=sys.stderr)
            return 2
        if not items:
            print(f"sonograde bench batch: no images in {args.data}", file=sys.stderr)
            return 2
        total = len(items)
        try:
            ArchiveWorker(settings)  # a missing or damaged model: one line, before any engine starts
        except (ModelLoadError, ValueError) as exc:
            print(f"sonograde bench batch: {exc}", file=sys.stderr)
            return 2
        engines = [("one process", 1, lambda: ArchiveWorker(settings),
                    lambda worker: map(worker.grade, items), lambda worker: None)]
        for size in pool_sizes:
            engines.append(("local pool", size, lambda size=size: LocalPool(settings, size).start(),
                            lambda pool: pool.grade(items), LocalPool.close))
        if not args.no_ray:
            from sonograde.archive.ray_engine import RaySession, grade_ray

            ray_workers = args.ray_workers or max(pool_sizes)
            engines.append(("ray", ray_workers, lambda: RaySession(None, ray_workers).__enter__(),
                            lambda session: grade_ray(items, settings, ray_workers),
                            lambda session: session.__exit__(None, None, None)))
        # Engines take turns, round after round, so a change in the machine's load hits all of them; each
        # reports its best round (the least disturbed) and the spread over rounds.
        measured: dict[int, list[dict]] = {index: [] for index in range(len(engines))}
        for _round in range(args.rounds):
            for index, (_, _, start, grade, stop) in enumerate(engines):
                if index not in measured:  # Ray, when it could not start
                    continue
                try:
                    measured[index].append(_timed(start, grade, stop, total))
                except RayUnavailableError as exc:  # only Ray's start raises it
                    print(f"sonograde bench batch: Ray left out: {exc}", file=sys.stderr)
                    del measured[index]
        reference = {(r["path"], r["frame"]): r["category"] for r in measured[0][0]["rows"]}
        results = []
        for index, (name, workers, *_) in enumerate(engines):
            rounds = measured.get(index)
            if not rounds:
                continue
            best = max(rounds, key=lambda r: r["steady_images_per_s"] or r["images_per_s"])
            steady = [r["steady_images_per_s"] for r in rounds if r["steady_images_per_s"]]
            results.append({"engine": name, "workers": workers, **best,
                            "steady_range": [min(steady), max(steady)] if steady else None,
                            "same_category": min(_agreement(r["rows"], reference) for r in rounds)})
            for r in rounds:
                r.pop("rows")
            results[-1].pop("rows", None)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    base = results[0]["steady_images_per_s"] or results[0]["images_per_s"]
    report = {"models_precision": args.precision, "source": source, "images": total,
              "machine": describe_machine().description(), "results": results}
    if args.json:
        print(json.dumps(report))
        return 0
    print(RESEARCH_USE_ONLY)
    print(f"images: {source}; models {args.precision}, one ONNX Runtime thread per worker")
    print(f"machine: {report['machine']}")
    print(f"best of {args.rounds} round(s), the engines taking turns")
    print(f"{'engine':<12} {'workers':>7} {'start s':>8} {'total s':>8} {'images/s':>9} {'steady':>9} "
          f"{'(rounds)':>13} {'x one':>6} {'same category':>14}")
    for r in results:
        steady = r["steady_images_per_s"]
        ratio = f"{steady / base:.2f}" if steady and base else "-"
        spread = "{:.1f}-{:.1f}".format(*r["steady_range"]) if r["steady_range"] else "-"
        print(f"{r['engine']:<12} {r['workers']:>7} {r['start_s']:>8.2f} {r['total_s']:>8.2f} "
              f"{r['images_per_s']:>9.2f} {steady if steady else '-':>9} {spread:>13} {ratio:>6} "
              f"{r['same_category']:>7}/{total:<6}")
    print("images/s: end to end, the start included; steady: over the last three quarters of the images "
          "(what a large archive approaches); x one: steady against one process; same category: rows "
          "equal to one process's, in every round")
    busy = _busy_note(cores)
    if busy:
        print(busy)
    return 0


def _busy_note(cores: int) -> str | None:
    """Why speed-ups measured on a busy machine say little about the engines, or None when it is idle."""
    import os

    load = os.getloadavg()[0]
    if load < cores / 2:
        return None
    note = f"note: the machine is busy (load {load:.1f} on {cores} cores): the speed-ups are not the engines'"
    try:
        autogroup = Path("/proc/sys/kernel/sched_autogroup_enabled").read_text().strip() == "1"
    except OSError:
        autogroup = False
    if autogroup:
        note += ("; with sched_autogroup the CPU is shared per session, so the pool's workers share one "
                 "session's part while Ray's daemons run in sessions of their own")
    return note
