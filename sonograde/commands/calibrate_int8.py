"""Static post-training INT8 quantization to an explicit Q/DQ ONNX model, gated against the FP32 model.

Three steps, as ONNX Runtime's quantization tools: (1) a calibration reader runs frames through the
inference preprocessing (grader: refined ROIs from the real first stage, ROI-CNN + area filter +
Chan–Vese, with the FP32 ROI-CNN beside the model or --roi-model); (2) quantize_static in QDQ format,
per-channel int8 weights, u8 activations for --target cpu (fast on VNNI CPUs) or symmetric s8 for
--target tensorrt; (3) the accuracy gate (`sonograde calibrate verify`) on held-out frames. The output is
written only when the gate passes (or with --force), and the gate report is printed either way.

Calibration frames come from the training side of the split (--split train), gate frames from the test
side (--verify-split test) of the same folders unless --verify-data is given. With --source, the first
--count frames calibrate and the next --verify-count frames verify.

Examples ($DATA: the folder with the public datasets; any manifest folder DIR works, docs/data.md):
  sonograde calibrate int8 --model models/roi_cnn.onnx --data $DATA/busbra $DATA/busi \\
      --out models/roi_cnn.int8.onnx
  sonograde calibrate int8 --model models/g_cnn.onnx --data $DATA/busbra --method entropy \\
      --out models/g_cnn.int8.onnx --json
  sonograde calibrate int8 --model models/roi_cnn.onnx --source phantom:seed=2 --count 64 \\
      --target tensorrt --out /tmp/roi_cnn.int8.trt.onnx
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import tempfile
from pathlib import Path

from sonograde.commands.calibrate_common import (
    DEFAULT_VERIFY_COUNT,
    add_data_arguments,
    fail,
    load_frames,
    print_report,
)
from sonograde.commands.calibrate_verify import add_gate_arguments, gate

DEFAULT_CALIBRATION_COUNT = 128


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from calibration.quantize import DEFAULT_FLOAT_OPS, FLOAT_OP_CHOICES, METHODS, TARGETS

    parser.add_argument("--model", type=Path, required=True, help="the FP32 ONNX model")
    parser.add_argument("--out", type=Path, required=True, help="where to write the INT8 model (.onnx)")
    add_data_arguments(parser, split="train", count=DEFAULT_CALIBRATION_COUNT, what="calibration")
    add_data_arguments(parser, prefix="verify-", split="test", count=DEFAULT_VERIFY_COUNT, what="the gate")
    parser.add_argument("--seed", type=int, default=0, help="frame sampling seed (default 0)")
    quant = parser.add_argument_group("quantization")
    quant.add_argument("--method", choices=METHODS, default="percentile",
                       help="calibration method (default percentile: closest agreement measured)")
    quant.add_argument("--target", choices=TARGETS, default="cpu",
                       help="cpu: u8 activations (ONNX Runtime on x86); tensorrt: symmetric s8 (default cpu)")
    quant.add_argument("--float-ops", default=",".join(DEFAULT_FLOAT_OPS),
                       help=f"op types kept in float: final {'/'.join(FLOAT_OP_CHOICES[:2])} and every "
                            f"Resize may be named, comma-separated, or 'none' (default "
                            f"{','.join(DEFAULT_FLOAT_OPS)})")
    quant.add_argument("--float-first-convs", type=int, default=0, metavar="N",
                       help="keep the first N convolutions in float (full-resolution layers with few "
                            "channels can be slower in int8 on the CPU; default 0)")
    quant.add_argument("--per-tensor", action="store_true",
                       help="per-tensor weight scales instead of per-channel")
    quant.add_argument("--no-preprocess", action="store_true",
                       help="skip quant_pre_process (shape inference, Conv+BatchNorm fusion)")
    add_gate_arguments(parser)
    parser.add_argument("--force", action="store_true", help="write the output even if the gate refuses it")
    parser.add_argument("--json", action="store_true", help="print the gate report as one JSON object")


def run(args: argparse.Namespace) -> int:
    from calibration.inputs import model_inputs
    from calibration.modelinfo import ModelInfoError, read_model_info
    from calibration.quantize import QuantizeConfig, quantize_int8
    from engine.backends import InputSpecError, ModelLoadError
    from engine.data.manifest import ManifestError

    if args.out.resolve() == args.model.resolve():
        return fail("--out must differ from --model (the FP32 model stays the reference)")
    float_ops = () if args.float_ops.strip().lower() == "none" else tuple(
        op.strip() for op in args.float_ops.split(",") if op.strip())
    try:
        config = QuantizeConfig(method=args.method, target=args.target, per_channel=not args.per_tensor,
                                float_ops=float_ops, preprocess=not args.no_preprocess,
                                float_first_convs=args.float_first_convs)
        info = read_model_info(args.model)
        frames, calib_text = load_frames(args.data, args.source, args.split, args.count, args.seed)
        calib = model_inputs(info, frames, roi_model=args.roi_model, threads=args.threads, total=len(frames))
        del frames
        print(f"calibrating {info.kind} model {args.model} on {len(calib)} input(s): {calib_text}",
              file=sys.stderr)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix="sonograde-int8-", dir=args.out.parent) as tmp:
            staged = Path(tmp) / args.out.name
            # ONNX Runtime's calibrators print progress to stdout; keep stdout for the report.
            with contextlib.redirect_stdout(sys.stderr):
                result = quantize_int8(args.model, staged, calib.batch, config, input_name=info.input_name)
            del calib
            print(f"quantized: {result.quantize_nodes} QuantizeLinear / {result.dequantize_nodes} "
                  f"DequantizeLinear nodes; kept in float: {', '.join(result.float_nodes) or 'none'}",
                  file=sys.stderr)
            for note in result.notes:
                print(f"note: {note}", file=sys.stderr)
            verify_data = args.verify_data or args.data
            verify_source = args.verify_source or (args.source if not args.verify_data else None)
            skip = args.count if verify_source and verify_source == args.source else 0
            frames, verify_text = load_frames(verify_data, verify_source, args.verify_split,
                                              args.verify_count, args.seed, skip_source=skip or 0)
            report = gate(args.model, staged, frames, verify_text, args, display_name=str(args.out))
            print_report(report.as_dict(), args.json)
            if not report.passed and not args.force:
                print(f"REFUSED: {args.out} not written: the INT8 model does not agree with {args.model}: "
                      f"{report.reason}. Try another --method, more --count frames, --float-ops with "
                      "Resize, or --force to write it anyway", file=sys.stderr)
                return 1
            staged.replace(args.out)
    except (ValueError, ModelInfoError, ModelLoadError, InputSpecError, ManifestError) as exc:
        return fail(str(exc))
    status = ("passed the gate" if report.passed
              else f"FAILED the gate ({report.reason}), written because of --force")
    print(f"wrote {args.out}: {status}", file=sys.stderr)
    return 0
