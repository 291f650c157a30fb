"""The ``sonograde`` command line.

Every subcommand lives in its own module under ``sonograde.commands`` with two functions,
``add_arguments(parser)`` and ``run(args) -> int``. Modules import heavy dependencies (torch, onnxruntime,
numba kernels) inside ``run`` so that ``sonograde --help`` stays fast and works without the ``train`` extra.
"""

from __future__ import annotations

import argparse
import sys

from sonograde import RESEARCH_USE_ONLY, __version__
from sonograde.commands.nested import register_commands

# (name, module, one-line help). ``bench``, ``calibrate`` and ``screen`` take a second word, handled by their
# modules.
COMMANDS: list[tuple[str, str, str]] = [
    ("bench", "sonograde.commands.bench", "measure speed: refine, phantom, pipeline"),
    ("run", "sonograde.commands.run", "grade live frames in real time and publish the results (ZeroMQ)"),
    ("overlay", "sonograde.commands.overlay", "show published results over the live image"),
    ("train", "sonograde.commands.train", "train the ROI-CNN or the G-CNN"),
    ("export", "sonograde.commands.export", "export a checkpoint to ONNX and check it against torch"),
    ("grade", "sonograde.commands.grade", "grade images: ROI-CNN -> refine -> G-CNN (JSON, masks, overlays)"),
    ("evaluate", "sonograde.commands.evaluate", "evaluate on labelled datasets: Table 2 / Fig. 4 analogues"),
    ("experiment", "sonograde.commands.experiment", "research, not installed: python -m research.table3"),
    ("calibrate", "sonograde.commands.calibrate", "INT8/FP16 models with an accuracy gate"),
    ("screen", "sonograde.commands.screen", "measure a scanner screen: image rectangle, mm per pixel"),
    ("build-engine", "sonograde.commands.build_engine", "build a TensorRT engine from an ONNX model (GPU)"),
    ("phantom", "sonograde.commands.phantom", "synthetic phantom: dataset, sweep video, contact sheet"),
    ("sources", "sonograde.commands.sources", "list capture devices; try a source string"),
    ("keys", "sonograde.commands.keys", "make CURVE keys: an encrypted stream only your displays can read"),
    ("dicom", "sonograde.commands.dicom", "DICOM node: receive images by C-STORE, send SR + SEG back"),
]

EPILOG = f"""\
{RESEARCH_USE_ONLY}.
Run `sonograde COMMAND --help` for the options of one command.
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sonograde",
        description="Real-time two-stage CNN BI-RADS grading of breast ultrasound "
        "(ROI-CNN -> area filter + Chan-Vese refinement -> G-CNN).",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"sonograde {__version__}")
    register_commands(parser.add_subparsers(dest="command", metavar="COMMAND"), COMMANDS)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "_run", None) is None:
        parser.print_help()
        return 2
    try:
        return int(args._run(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
