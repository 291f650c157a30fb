"""Conformance rules an ONNX model must meet before it ships: ONNX's own full check for every model, and
for TensorRT-target INT8 models (``*.int8.trt.onnx``) the rules of TensorRT's ONNX parser for explicit
quantization.

TensorRT's explicit quantization (onnx-tensorrt's QuantizeLinear / DequantizeLinear importers):
- opset 13 or newer (per-channel ``axis`` arrived in opset 13);
- int8 quantization with a zero point tensor that is present, int8 and all 0 (symmetric only; a missing
  zero point means uint8);
- scales finite and positive;
- activations per tensor (scalar scale); weights per tensor or per channel along the output-channel axis:
  axis 0 for a Conv weight, 1 for ConvTranspose, for Gemm's B axis 0 with transB=1 else 1, for MatMul's
  B its last axis; one scale per channel;
- standard-domain operators only (no custom or ONNX Runtime contrib ops, which the parser cannot import).

Each function returns a list of problems, each one line naming the node; empty means conformant.
"""

from __future__ import annotations

import os

import numpy as np

STANDARD_DOMAINS = ("", "ai.onnx")
MIN_TENSORRT_OPSET = 13
QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")


def full_check_problems(path: str | os.PathLike) -> list[str]:
    """``onnx.checker.check_model(full_check=True)``: structure, then shape and type inference over the
    whole graph against the types the file declares."""
    import onnx

    try:
        onnx.checker.check_model(onnx.load(str(path)), full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        return [f"{os.fspath(path)}: {str(exc).strip().splitlines()[0]}"]
    return []


def _attribute(node, name: str, default: int) -> int:
    return next((a.i for a in node.attribute if a.name == name), default)


def _channel_axis(consumer, input_index: int, rank: int) -> int | None:
    """The output-channel axis TensorRT needs for a weight read by ``consumer`` at ``input_index``;
    None where the consumer takes no per-channel weight there."""
    if consumer.op_type == "Conv" and input_index == 1:
        return 0
    if consumer.op_type == "ConvTranspose" and input_index == 1:
        return 1
    if consumer.op_type == "Gemm" and input_index == 1:
        return 0 if _attribute(consumer, "transB", 0) else 1
    if consumer.op_type == "MatMul" and input_index == 1:
        return rank - 1
    return None


def tensorrt_int8_problems(model) -> list[str]:  # model: onnx.ModelProto
    """Problems of ``model`` as a TensorRT explicit-quantization (Q/DQ) model; see the module docstring."""
    from onnx import numpy_helper

    problems = []
    graph = model.graph
    opset = max((o.version for o in model.opset_import if o.domain in STANDARD_DOMAINS), default=0)
    if opset < MIN_TENSORRT_OPSET:
        problems.append(f"opset {opset} < {MIN_TENSORRT_OPSET}: TensorRT's per-channel Q/DQ needs opset 13")
    weights = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    consumers: dict[str, list[tuple[object, int]]] = {}
    for node in graph.node:
        for index, name in enumerate(node.input):
            consumers.setdefault(name, []).append((node, index))
    quantize_nodes = 0
    for node in graph.node:
        where = f"{node.op_type} {node.name or node.output[0]!r}"
        if node.domain not in STANDARD_DOMAINS:
            problems.append(f"{where}: operator of domain {node.domain!r}; TensorRT imports standard "
                            "ops only")
            continue
        if node.op_type not in QDQ_OPS:
            continue
        quantize_nodes += 1
        scale = weights.get(node.input[1]) if len(node.input) > 1 else None
        zero = weights.get(node.input[2]) if len(node.input) > 2 and node.input[2] else None
        if scale is None:
            problems.append(f"{where}: scale is not a constant initializer")
            continue
        if not np.all(np.isfinite(scale)) or not np.all(scale > 0):
            problems.append(f"{where}: scales must be finite and positive (min {float(np.min(scale)):g})")
        if zero is None:
            problems.append(f"{where}: no zero point (it then means uint8); TensorRT needs an int8 zero "
                            "point 0")
        elif zero.dtype != np.int8:
            problems.append(f"{where}: zero point of type {zero.dtype}; TensorRT needs int8")
        elif np.any(zero != 0):
            problems.append(f"{where}: zero point {int(zero.flat[np.flatnonzero(zero)[0]])} != 0; TensorRT "
                            "quantizes symmetrically")
        if zero is not None and zero.shape != scale.shape:
            problems.append(f"{where}: zero point shape {zero.shape} differs from scale shape {scale.shape}")
        if scale.ndim == 0 or scale.size == 1:
            continue  # per tensor
        # Per channel: only for a weight (a DequantizeLinear of an initializer) read by Conv/Gemm/MatMul.
        data = weights.get(node.input[0])
        if node.op_type != "DequantizeLinear" or data is None:
            problems.append(f"{where}: per-channel scales on an activation; TensorRT quantizes activations "
                            "per tensor")
            continue
        axis = _attribute(node, "axis", 1)
        axis = axis + data.ndim if axis < 0 else axis
        if not 0 <= axis < data.ndim or data.shape[axis] != scale.size:
            problems.append(f"{where}: {scale.size} scales along axis {axis} of a weight of shape "
                            f"{data.shape}")
            continue
        for consumer, index in consumers.get(node.output[0], []):
            wanted = _channel_axis(consumer, index, data.ndim)
            if wanted is None:
                problems.append(f"{where}: per-channel weight read by {consumer.op_type} input {index}; "
                                "TensorRT takes per-channel weights in Conv, ConvTranspose, Gemm and MatMul "
                                "only")
            elif wanted != axis:
                problems.append(f"{where}: per-channel axis {axis}, but {consumer.op_type} "
                                f"{consumer.name!r} needs its output-channel axis {wanted}")
    if quantize_nodes == 0:
        problems.append("no QuantizeLinear/DequantizeLinear nodes: not an explicitly quantized model")
    return problems
