"""Options and helpers shared by ``sonograde calibrate int8`` and ``sonograde calibrate verify``."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

DEFAULT_VERIFY_COUNT = 200


def add_data_arguments(parser: argparse.ArgumentParser, *, prefix: str = "", split: str, count: int | None,
                       what: str) -> None:
    """Options --PREFIXdata DIR [DIR ...], --PREFIXsource SRC, --PREFIXsplit SIDE, --PREFIXcount N."""
    parser.add_argument(f"--{prefix}data", nargs="+", type=Path, metavar="DIR",
                        help=f"dataset folder(s) with a manifest.csv for {what}")
    parser.add_argument(f"--{prefix}source", metavar="SRC",
                        help=f"a frame source instead (video, image folder, DICOM, phantom[:...]) for {what}")
    parser.add_argument(f"--{prefix}split", default=split,
                        choices=("all", "train", "val", "test", "trainval"),
                        help=f"side of the project's patient-disjoint split (engine.splits) to use "
                             f"(default {split})")
    parser.add_argument(f"--{prefix}count", type=int, default=count, metavar="N",
                        help=f"frames for {what}, drawn at random with --seed (default "
                             f"{'all' if count is None else count})")


def fail(message: str) -> int:
    """Print a user error to stderr (no traceback) and return exit status 2."""
    print(f"error: {message}", file=sys.stderr)
    return 2


def load_frames(data, source, split: str, count: int | None, seed: int, *, skip_source: int = 0):
    """Frames from dataset folders (a split side) or a capture source, and a one-line description."""
    from calibration.frames import dataset_frames, describe_data, select_records, source_frames

    if source:
        frames = source_frames(source, (count or DEFAULT_VERIFY_COUNT) + skip_source)[skip_source:]
        if not frames:
            raise ValueError(f"source {source!r} delivered no more than {skip_source} frame(s)")
        return frames, f"{len(frames)} frame(s) of source {source}"
    if not data:
        raise ValueError("give frames: --data DIR (a dataset folder with manifest.csv) or --source SRC")
    records = select_records(data, split=split, count=count, seed=seed)
    return list(dataset_frames(records)), describe_data(data, split, len(records))


def print_report(report: dict, as_json: bool) -> None:
    """The gate report: one JSON object, or aligned lines."""
    if as_json:
        print(json.dumps(report))
        return
    from engine.machine import MachineInfo

    width = max(len(k) for k in report)
    for key, value in report.items():
        if key == "machine" and isinstance(value, dict):  # the one machine line every benchmark prints
            value = MachineInfo.from_dict(value).description()
        print(f"{key:<{width}}  {value}")
