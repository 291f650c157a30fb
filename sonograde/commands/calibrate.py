"""Bench calibration: fast models that still agree with the reference (INT8, FP16, the accuracy gate).

INT8 in three steps (calibration reader -> quantizer -> accuracy gate), as ONNX Runtime's tools
($DATA: the folder with the public datasets; any manifest folder DIR works, docs/data.md):
  sonograde calibrate int8 --model models/roi_cnn.onnx --data $DATA/busbra \\
      --out models/roi_cnn.int8.onnx                     # calibrates, runs the gate, writes if it passes
  sonograde calibrate int8 --model models/g_cnn.onnx --data $DATA/busbra --target tensorrt \\
      --out models/g_cnn.int8.trt.onnx                   # symmetric int8 for TensorRT
  sonograde calibrate fp16 --model models/roi_cnn.onnx --out models/roi_cnn.fp16.onnx
  sonograde calibrate verify --reference models/roi_cnn.onnx --candidate models/roi_cnn.int8.onnx \\
      --data $DATA/busbra --json                # the gate alone

Measuring a scanner's screen is `sonograde screen measure` (`calibrate geometry` still works, deprecated).

See docs/calibration.md.
"""

from __future__ import annotations

import argparse

from sonograde.commands.nested import add_nested_commands

SUBCOMMANDS: list[tuple[str, str, str]] = [
    ("int8", "sonograde.commands.calibrate_int8", "static INT8 (Q/DQ) model, gated against FP32"),
    ("fp16", "sonograde.commands.calibrate_fp16", "FP16-typed model with float32 inputs/outputs"),
    ("verify", "sonograde.commands.calibrate_verify", "accuracy gate: candidate model against FP32"),
    ("geometry", "sonograde.commands.calibrate_geometry", "deprecated: use `sonograde screen measure`"),
]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_nested_commands(parser, SUBCOMMANDS)


def run(args: argparse.Namespace) -> int:  # pragma: no cover - dispatch replaces it with the child's run
    raise SystemExit("choose one of: " + ", ".join(name for name, _, _ in SUBCOMMANDS))
