"""The accuracy gate: does a candidate model (INT8, FP16 or a TensorRT engine) agree with the FP32 reference?

Runs both on the same frames in one run, through the inference preprocessing (grader: refined ROIs from
the real first stage with the FP32 ROI-CNN beside the candidate, or --roi-model), and reports agreement
and speed (ms per frame at batch 1, interleaved, same thread count; per input the fastest of --repeats
runs, then the median over inputs):
  ROI-CNN: mean and minimum DSC between the two masks (probability > 0.5), per frame;
  grader:  top-1 agreement and the largest probability difference.
Passes when mean DSC agreement >= 0.98 (ROI-CNN) or top-1 agreement >= 0.97 (grader), unless changed.
Exit status 0 when it passes, 1 when the candidate is refused (the reason is printed), 2 on bad input.

Examples ($DATA: the folder with the public datasets; any manifest folder DIR works, docs/data.md):
  sonograde calibrate verify --reference models/roi_cnn.onnx --candidate models/roi_cnn.int8.onnx \\
      --data $DATA/busbra --json
  sonograde calibrate verify --reference models/g_cnn.onnx --candidate models/g_cnn.int8.onnx \\
      --data $DATA/busbra $DATA/breast_lesions_usg --count 300
  sonograde calibrate verify --reference models/roi_cnn.onnx --candidate models/roi_cnn.int8.plan \\
      --source phantom:seed=4 --count 100            # a TensorRT engine, on a GPU machine
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from sonograde.commands.calibrate_common import (
    DEFAULT_VERIFY_COUNT,
    add_data_arguments,
    fail,
    load_frames,
    print_report,
)


def add_gate_arguments(parser: argparse.ArgumentParser) -> None:
    """Thresholds and measurement options shared with ``calibrate int8``."""
    from calibration.verify import DEFAULT_DSC_MEAN, DEFAULT_TOP1

    gate = parser.add_argument_group("gate")
    gate.add_argument("--min-dsc-mean", type=float, default=DEFAULT_DSC_MEAN,
                      help=f"ROI-CNN: least mean mask DSC agreement (default {DEFAULT_DSC_MEAN})")
    gate.add_argument("--min-dsc", type=float, default=None,
                      help="ROI-CNN: least DSC agreement on any frame (default: not gated)")
    gate.add_argument("--min-top1", type=float, default=DEFAULT_TOP1,
                      help=f"grader: least top-1 agreement (default {DEFAULT_TOP1})")
    gate.add_argument("--max-prob-diff", type=float, default=None,
                      help="grader: largest probability difference allowed (default: not gated)")
    gate.add_argument("--threshold", type=float, default=0.5,
                      help="ROI probability threshold of the masks (default 0.5, as the pipeline)")
    gate.add_argument("--threads", type=int, default=1,
                      help="ONNX Runtime intra-op threads of both models, for the speed comparison "
                           "(default 1: one session per pipeline stage on the cart's two cores)")
    gate.add_argument("--repeats", type=int, default=3,
                      help="timed runs per input and model; the fastest counts (default 3)")
    gate.add_argument("--roi-model", type=Path, default=None,
                      help="grader only: FP32 ROI-CNN of the first stage (default: roi_cnn.onnx beside the "
                           "candidate or the reference)")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--reference", type=Path, required=True, help="the FP32 ONNX model")
    parser.add_argument("--candidate", type=Path, required=True,
                        help="the model to check: .onnx (INT8/FP16) or .plan/.engine (TensorRT)")
    add_data_arguments(parser, split="test", count=DEFAULT_VERIFY_COUNT, what="verification")
    parser.add_argument("--seed", type=int, default=0, help="frame sampling seed (default 0)")
    add_gate_arguments(parser)
    parser.add_argument("--json", action="store_true", help="print one JSON object")


def thresholds_from(args: argparse.Namespace):
    from calibration.verify import GateThresholds

    return GateThresholds(dsc_mean=args.min_dsc_mean, top1=args.min_top1, dsc_min=args.min_dsc,
                          max_prob_diff=args.max_prob_diff)


def gate(reference: Path, candidate: Path, frames, data_text: str, args: argparse.Namespace, *,
         display_name: str | None = None):
    """Build inputs from ``frames`` and run the gate; returns a ``calibration.verify.VerifyReport``.

    ``display_name``: how the candidate is named in the report (default its path)."""
    from calibration.inputs import default_roi_model, model_inputs
    from calibration.modelinfo import model_kind, read_model_info
    from calibration.verify import load_reference, verify
    from engine.backends import load_backend

    info = read_model_info(reference)
    ref_backend = load_reference(reference, threads=args.threads)  # ONNX Runtime FP32 on the CPU only
    cand_backend = load_backend(candidate, threads=args.threads)
    cand_kind = model_kind(cand_backend.metadata, len(cand_backend.input_shape), where=str(candidate))
    if cand_kind != info.kind:
        raise ValueError(f"{candidate} is a {cand_kind!r} model but {reference} is a {info.kind!r} model")
    roi_model = args.roi_model or default_roi_model(candidate, reference)
    inputs = model_inputs(info, frames, roi_model=roi_model, threads=args.threads, total=len(frames))
    return verify(info.kind, ref_backend, cand_backend, inputs, thresholds=thresholds_from(args),
                  threshold=args.threshold, threads=args.threads, repeats=args.repeats,
                  reference_name=str(reference), candidate_name=display_name or str(candidate),
                  data=data_text)


def run(args: argparse.Namespace) -> int:
    from calibration.modelinfo import ModelInfoError
    from engine.backends import InputSpecError, ModelLoadError
    from engine.data.manifest import ManifestError

    for path in (args.reference, args.candidate):
        if not path.exists():
            return fail(f"model file not found: {path}")
    try:
        frames, data_text = load_frames(args.data, args.source, args.split, args.count, args.seed)
        report = gate(args.reference, args.candidate, frames, data_text, args)
    except (ValueError, ModelInfoError, ModelLoadError, InputSpecError, ManifestError) as exc:
        return fail(str(exc))
    print_report(report.as_dict(), args.json)
    if not report.passed:
        print(f"REFUSED: {args.candidate} does not agree with {args.reference}: {report.reason}",
              file=sys.stderr)
        return 1
    return 0
