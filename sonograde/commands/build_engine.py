"""Build a TensorRT engine from an ONNX model, on the GPU machine that will run it.

Strongly typed network: the precision comes from the ONNX (an INT8 Q/DQ model from
`sonograde calibrate int8 --target tensorrt`, an FP16 model from `sonograde calibrate fp16`, or the FP32
model). One optimization profile over the batch (min 1, opt --opt-batch, max --max-batch). A timing
cache beside the engine (tensorrt.timing.cache) makes rebuilds quick. The sidecar M.plan.json records
the TensorRT version, GPU, compute capability, input shapes and the source ONNX SHA-256; the TensorRT
backend refuses an engine whose sidecar does not match the machine, with this command to rebuild it.
The engine is built on --device (its CUDA context is made current), the GPU it is then tied to.
TensorRT's log goes to stderr; stdout is one JSON object. Needs an NVIDIA GPU and
`pip install 'sonograde[tensorrt]'` (tensorrt, cuda-python).

Examples:
  sonograde build-engine --onnx models/roi_cnn.fp16.onnx --out models/roi_cnn.fp16.plan
  sonograde build-engine --onnx models/g_cnn.int8.trt.onnx --out models/g_cnn.int8.plan --max-batch 8
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from sonograde.commands.calibrate_common import fail


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--onnx", type=Path, required=True, help="the ONNX model (FP32, FP16 or INT8 Q/DQ)")
    parser.add_argument("--out", type=Path, required=True, help="the engine file to write (.plan or .engine)")
    parser.add_argument("--max-batch", type=int, default=4,
                        help="largest batch the engine accepts (default 4)")
    parser.add_argument("--opt-batch", type=int, default=1,
                        help="batch TensorRT optimizes for (default 1: the live pipeline)")
    parser.add_argument("--workspace-mb", type=int, default=1024,
                        help="builder workspace limit in MiB (default 1024)")
    parser.add_argument("--timing-cache", type=Path, default=None,
                        help="timing cache file (default tensorrt.timing.cache beside the engine)")
    parser.add_argument("--device", type=int, default=0, help="CUDA device to build on and for (default 0)")


def run(args: argparse.Namespace) -> int:
    if not args.onnx.is_file():
        return fail(f"ONNX model not found: {args.onnx}")
    if args.out.suffix.lower() not in (".plan", ".engine"):
        return fail(f"--out must end in .plan or .engine (the backends choose TensorRT by it), "
                    f"got {args.out}")
    try:
        from calibration.tensorrt_build import BuildConfig, EngineBuildError, build_engine

        config = BuildConfig(max_batch=args.max_batch, opt_batch=args.opt_batch,
                             workspace_mb=args.workspace_mb, timing_cache=args.timing_cache,
                             device=args.device)
    except ValueError as exc:
        return fail(str(exc))
    try:
        sidecar = build_engine(args.onnx, args.out, config)
    except ImportError as exc:
        return fail(f"TensorRT is not available here ({exc}): building an engine needs an NVIDIA GPU and "
                    "`pip install 'sonograde[tensorrt]'`. On a CPU machine use the .onnx models with ONNX "
                    "Runtime")
    except EngineBuildError as exc:
        return fail(str(exc))
    summary = {"engine": str(args.out), **sidecar.to_dict()}
    summary.pop("metadata", None)  # the model card's business, and long
    print(json.dumps(summary, indent=2))
    return 0
