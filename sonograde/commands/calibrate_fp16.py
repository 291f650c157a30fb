"""FP16 model: weights and activations in float16, inputs and outputs still float32.

For strongly typed TensorRT builds (`sonograde build-engine`), where precision comes from the ONNX
types. The final Sigmoid/Softmax stays float32. The result is checked with the ONNX checker and by
running it in ONNX Runtime against the FP32 model; with --data or --source the accuracy gate
(`sonograde calibrate verify`) runs too and the file is written only if it passes (or with --force).
On a CPU the FP16 model is not faster (ONNX Runtime casts around float16 ops it lacks); it is for GPUs.

Examples ($DATA: the folder with the public datasets; any manifest folder DIR works, docs/data.md):
  sonograde calibrate fp16 --model models/roi_cnn.onnx --out models/roi_cnn.fp16.onnx
  sonograde calibrate fp16 --model models/g_cnn.onnx --out models/g_cnn.fp16.onnx --data $DATA/busbra
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from sonograde.commands.calibrate_common import add_data_arguments, fail, load_frames, print_report
from sonograde.commands.calibrate_verify import add_gate_arguments, gate


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", type=Path, required=True, help="the FP32 ONNX model")
    parser.add_argument("--out", type=Path, required=True, help="where to write the FP16 model (.onnx)")
    parser.add_argument("--all-fp16", action="store_true",
                        help="convert the final Sigmoid/Softmax to float16 too (default: kept float32)")
    add_data_arguments(parser, split="test", count=100, what="the optional accuracy gate")
    parser.add_argument("--seed", type=int, default=0, help="frame sampling seed (default 0)")
    add_gate_arguments(parser)
    parser.add_argument("--force", action="store_true", help="write the output even if the gate refuses it")
    parser.add_argument("--json", action="store_true", help="print the result as one JSON object")


def run(args: argparse.Namespace) -> int:
    from calibration.fp16 import Fp16ConversionError, convert_fp16
    from calibration.modelinfo import ModelInfoError, read_model_info
    from engine.backends import InputSpecError, ModelLoadError
    from engine.data.manifest import ManifestError

    if not args.model.is_file():
        return fail(f"model file not found: {args.model}")
    if args.out.resolve() == args.model.resolve():
        return fail("--out must differ from --model (the FP32 model stays the reference)")
    try:  # a truncated or foreign file: one line here, not a protobuf traceback from the converter
        read_model_info(args.model)
    except ModelInfoError as exc:
        return fail(str(exc))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    try:
        with tempfile.TemporaryDirectory(prefix="sonograde-fp16-", dir=args.out.parent) as tmp:
            staged = Path(tmp) / args.out.name
            result = convert_fp16(args.model, staged, keep_tail_float=not args.all_fp16)
            report = {"model": str(args.model), "out": str(args.out),
                      "fp16_initializers": result.fp16_initializers,
                      "fp32_initializers": result.fp32_initializers,
                      "float32_nodes": list(result.float_nodes),
                      "smoke_max_diff": round(result.smoke_max_diff, 6)}
            passed = True
            if args.data or args.source:
                frames, text = load_frames(args.data, args.source, args.split, args.count, args.seed)
                verdict = gate(args.model, staged, frames, text, args, display_name=str(args.out))
                report["gate"] = verdict.as_dict()
                passed = verdict.passed
            print_report(report, args.json)
            if not passed and not args.force:
                print(f"REFUSED: {args.out} not written: {report['gate'].get('reason')}", file=sys.stderr)
                return 1
            staged.replace(args.out)
    except (ValueError, ModelInfoError, ModelLoadError, InputSpecError, ManifestError,
            Fp16ConversionError) as exc:
        return fail(str(exc))
    print(f"wrote {args.out}", file=sys.stderr)
    return 0
