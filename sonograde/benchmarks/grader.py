"""Where a frame's time goes in the two-stage grader (ROI-CNN, refinement, G-CNN), per ORT thread count.

Frames come from the phantom scanner (default, no data needed) or from a manifest folder (--data). Each
frame runs through ``locate``, ``refine`` and ``classify`` one after another; every stage is timed with
two clocks: the CPU time of this process (the work, even on a busy shared machine) and wall time (what a
user waits, which on a shared machine also measures the scheduler). Medians over the frames; the G-CNN
median counts only frames with a lesion. Each thread count gets its own freshly loaded, warmed-up models,
and thread counts are measured alternately (--rounds) so a change in machine load hits all of them.

Examples ($DATA: the folder with the public datasets; any manifest folder DIR works, docs/data.md):
  sonograde bench grader                             # shipped models, 20 phantom frames, threads 1 and 2
  sonograde bench grader --data $DATA/busbra --frames 30 --json
  sonograde bench grader --models my_models/ --precision int8 --threads 1
  sonograde bench grader --precision int8 --threads 1 --descriptors both   # classify with vs without
                                                     # the explained assessment (models/descriptors.json)
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

from sonograde import RESEARCH_USE_ONLY

STAGES = ("roi_cnn", "refine", "g_cnn", "total")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--models", type=Path, default=None, metavar="DIR",
                        help="folder with roi_cnn[.P].onnx and g_cnn[.P].onnx (default: the shipped models/)")
    parser.add_argument("--roi-model", type=Path, default=None, metavar="ONNX",
                        help="ROI-CNN file used instead of the models folder's roi_cnn[.P].onnx, e.g. "
                             "models/roi_cnn_vgg16.int8.onnx (the paper's network)")
    parser.add_argument("--precision", choices=("fp32", "int8", "fp16"), default="fp32")
    parser.add_argument("--backend", choices=("auto", "onnxruntime", "tensorrt"), default="auto")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2], metavar="N",
                        help="ONNX Runtime intra-op thread counts to compare (default: 1 2)")
    parser.add_argument("--data", type=Path, default=None, metavar="DIR",
                        help="a manifest folder (id,image,mask,...) to take frames from, not the phantom")
    parser.add_argument("--frames", type=int, default=20, metavar="N", help="frames per round (default 20)")
    parser.add_argument("--rounds", type=int, default=2, metavar="N",
                        help="alternating rounds over the thread counts (default 2)")
    parser.add_argument("--seed", type=int, default=0, help="phantom seed / image choice (default 0)")
    parser.add_argument("--descriptors", choices=("with", "without", "both"), default="with",
                        help="classify stage with the descriptor model (descriptors.json in the models "
                             "folder: descriptors, size, malignancy probability), without it, or both "
                             "side by side (default: with, where the file exists)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")


def load_frames(data: Path | None, count: int, seed: int) -> tuple[list, str]:
    """``count`` uint8 gray frames and a description of where they came from."""
    import numpy as np

    if data is None:
        from capture.phantom import PhantomScanner

        scanner = PhantomScanner(seed)
        return [scanner.sample_at(i).image for i in range(count)], f"phantom seed {seed}"
    from engine.data.manifest import load_gray, read_manifest

    records = [r for r in read_manifest(data)]
    order = np.random.default_rng(seed).permutation(len(records))[:count]
    return [load_gray(records[i].image) for i in order], f"{data} ({len(order)} of {len(records)} images)"


def measure(grader, frames: list) -> dict[str, list[float]]:
    """Per-stage CPU and wall milliseconds for each frame."""
    samples: dict[str, list[float]] = {f"{s}_{c}": [] for s in STAGES for c in ("cpu", "wall")}
    samples["found"] = []
    for frame in frames:
        c0, w0 = time.process_time(), time.perf_counter()
        roi = grader.locate(frame)
        c1, w1 = time.process_time(), time.perf_counter()
        refined = grader.refine(frame, roi)
        c2, w2 = time.process_time(), time.perf_counter()
        grader.classify(frame, refined)
        c3, w3 = time.process_time(), time.perf_counter()
        for stage, (ca, cb, wa, wb) in {"roi_cnn": (c0, c1, w0, w1), "refine": (c1, c2, w1, w2),
                                        "g_cnn": (c2, c3, w2, w3), "total": (c0, c3, w0, w3)}.items():
            if stage == "g_cnn" and not refined.lesion_found:
                continue
            samples[f"{stage}_cpu"].append((cb - ca) * 1e3)
            samples[f"{stage}_wall"].append((wb - wa) * 1e3)
        samples["found"].append(float(refined.lesion_found))
    return samples


def run(args: argparse.Namespace) -> int:
    from engine.backends import ModelLoadError
    from engine.grader import TwoStageGrader
    from engine.machine import describe_machine

    if any(t < 1 for t in args.threads) or args.frames < 1 or args.rounds < 1:
        print("sonograde bench grader: --threads, --frames and --rounds must be >= 1", file=sys.stderr)
        return 2
    try:
        frames, source = load_frames(args.data, args.frames, args.seed)
    except (OSError, ValueError) as exc:
        print(f"sonograde bench grader: cannot read frames: {exc}", file=sys.stderr)
        return 2
    graders = {}
    variants = {"with": (True,), "without": (False,), "both": (False, True)}[args.descriptors]
    try:
        for threads in args.threads:
            for with_descriptors in variants:
                grader = TwoStageGrader.from_models_dir(args.models, precision=args.precision,
                                                        backend=args.backend, threads=threads,
                                                        descriptors=with_descriptors,
                                                        roi_model=args.roi_model)
                grader.warm_up()
                graders[(threads, with_descriptors)] = grader
    except (ModelLoadError, ValueError) as exc:
        print(f"sonograde bench grader: {exc}", file=sys.stderr)
        return 2
    collected: dict[tuple, dict[str, list[float]]] = {key: {} for key in graders}
    for _ in range(args.rounds):
        for key, grader in graders.items():
            for name, values in measure(grader, frames).items():
                collected[key].setdefault(name, []).extend(values)
    any_grader = next(iter(graders.values()))
    machine = describe_machine()  # after the runs: the load average covers them
    report = {
        "models": any_grader.model_ids, "precision": args.precision, "backend": any_grader.roi.name,
        "source": source, "frames": len(frames), "rounds": args.rounds, "results": [],
        "machine": machine.as_dict(),
    }
    for (threads, _), samples in collected.items():
        grader = graders[(threads, _)]
        row: dict = {"threads": threads, "descriptors": grader.descriptors is not None,
                     "lesions_found": int(sum(samples["found"]))}
        for key, values in samples.items():
            if key != "found":
                row[f"{key}_ms"] = round(statistics.median(values), 2) if values else None
        report["results"].append(row)
    if args.json:
        print(json.dumps(report))
        return 0
    print(RESEARCH_USE_ONLY)
    print(f"models {report['models']['roi']} + {report['models']['grader']} ({args.precision}, "
          f"{report['backend']}); frames: {source}, {args.rounds} round(s)")
    print(machine.line())
    print("median ms per frame, CPU time of this process / wall time (g_cnn = the classify stage: G-CNN "
          "and, with descriptors, the explained assessment)")
    print(f"{'threads':>7} {'descr':>5} {'found':>6} " + " ".join(f"{s:>17}" for s in STAGES))
    for row in report["results"]:
        cells = " ".join(f"{_fmt(row[f'{s}_cpu_ms']):>8}/{_fmt(row[f'{s}_wall_ms']):<8}" for s in STAGES)
        descr = "yes" if row["descriptors"] else "no"
        print(f"{row['threads']:>7} {descr:>5} {row['lesions_found']:>6} {cells}")
    return 0


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"
