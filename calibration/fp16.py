"""FP16 conversion: an FP16-typed ONNX model with float32 inputs and outputs.

For strongly typed TensorRT builds (TensorRT 11 takes precision from the ONNX types, not from builder
flags). Weights and activations become float16; Cast nodes at the graph's input and outputs keep the
interface float32, so the same preprocessing and postprocessing work unchanged. The conversion is ONNX
Runtime's own converter (``onnxruntime.transformers.float16``, shipped inside the onnxruntime wheel, so
no new dependency); the weight-free tail (the final Sigmoid/Softmax and the arithmetic back to the last
weighted layer, as in the INT8 models) stays in float32 so small probabilities keep their precision.

The converter wraps every node it leaves in float32 in a Cast to float16 after it and a Cast back to
float32 before the next one, so a tail of several nodes would be rounded to float16 between each of them
and at the output: ``remove_cast_round_trips`` removes those Cast pairs, which keeps the tail float32 from
the first tail node to the graph's outputs. The converter's value_info (types from before the conversion)
is dropped and the model must pass ``onnx.checker.check_model(full_check=True)`` (shape and type
inference over the whole graph); it is also run in ONNX Runtime against the FP32 model on one input. On
the CPU ONNX Runtime runs it (inserting casts where it lacks float16 kernels) but not faster: FP16 is for
GPUs.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from calibration.quantize import float_nodes, sha256_file

SMOKE_TOLERANCE = 0.05  # largest |fp16 - fp32| output difference accepted on the smoke input


class Fp16ConversionError(RuntimeError):
    """The converted model is malformed or disagrees grossly with FP32 on the smoke input."""


@dataclass(frozen=True)
class Fp16Result:
    """path: written model. fp16_initializers / fp32_initializers: weight tensors of each type.
    smoke_max_diff: largest output difference against FP32 on one standardized random input."""

    path: Path
    fp16_initializers: int
    fp32_initializers: int
    float_nodes: tuple[str, ...]
    smoke_max_diff: float


def topological_sort(graph) -> None:  # graph: onnx.GraphProto, sorted in place
    """Order ``graph.node`` so every node comes after the producers of its inputs (stable otherwise)."""
    available = {i.name for i in graph.input} | {t.name for t in graph.initializer} | {""}
    pending = list(graph.node)
    ordered = []
    while pending:
        progressed = False
        rest = []
        for node in pending:
            if all(name in available for name in node.input):
                ordered.append(node)
                available.update(node.output)
                progressed = True
            else:
                rest.append(node)
        if not progressed:
            missing = sorted({n for node in rest for n in node.input if n not in available})[:5]
            raise Fp16ConversionError(f"graph has a cycle or dangling inputs: {', '.join(missing)}")
        pending = rest
    del graph.node[:]
    graph.node.extend(ordered)


def _cast_to(node) -> int | None:
    return next((a.i for a in node.attribute if a.name == "to"), None) if node.op_type == "Cast" else None


def remove_cast_round_trips(model) -> int:  # model: onnx.ModelProto, changed in place
    """Remove Cast(float32 -> float16) -> Cast(float16 -> float32) pairs; returns how many Casts went.

    The second Cast's consumers read the first Cast's float32 input directly; a second Cast that names a
    graph output becomes an Identity (the output keeps its name). The first Cast goes when nothing else
    reads it."""
    import onnx
    from onnx import TensorProto

    graph = model.graph
    inferred = onnx.shape_inference.infer_shapes(model)
    types = {v.name: v.type.tensor_type.elem_type
             for v in (*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output)}
    types.update({t.name: t.data_type for t in graph.initializer})
    graph_outputs = {o.name for o in graph.output}
    removed = 0
    for first in list(graph.node):
        if _cast_to(first) != TensorProto.FLOAT16 or types.get(first.input[0]) != TensorProto.FLOAT:
            continue
        source, half = first.input[0], first.output[0]
        for second in [n for n in graph.node if half in n.input and _cast_to(n) == TensorProto.FLOAT]:
            if second.output[0] in graph_outputs:
                identity = onnx.helper.make_node("Identity", [source], [second.output[0]],
                                                 name=f"{second.name or second.output[0]}_float")
                graph.node.insert(list(graph.node).index(second), identity)
            else:
                for node in graph.node:
                    for index, name in enumerate(node.input):
                        if name == second.output[0]:
                            node.input[index] = source
            graph.node.remove(second)
            removed += 1
        if half not in graph_outputs and not any(half in n.input for n in graph.node):
            graph.node.remove(first)
            removed += 1
    return removed


def _smoke_input(model, rng: np.random.Generator) -> tuple[str, np.ndarray]:
    weights = {t.name for t in model.graph.initializer}
    graph_input = next(i for i in model.graph.input if i.name not in weights)
    dims = [d.dim_value if d.dim_value > 0 else 1 for d in graph_input.type.tensor_type.shape.dim]
    return graph_input.name, rng.standard_normal(dims).astype(np.float32)


def convert_fp16(model_path: str | os.PathLike, out_path: str | os.PathLike, *, keep_tail_float: bool = True,
                 seed: int = 0) -> Fp16Result:
    """Convert ``model_path`` to FP16 at ``out_path`` (see the module docstring).

    Raises Fp16ConversionError when the result is malformed or disagrees with FP32 on a smoke input."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto
    from onnxruntime.transformers.float16 import convert_float_to_float16

    from engine.backends.ort import cpu_session

    model_path, out_path = Path(model_path), Path(out_path)
    model = onnx.load(str(model_path))
    metadata = {p.key: p.value for p in model.metadata_props}
    for index, node in enumerate(model.graph.node):  # node_block_list works by name
        if not node.name:
            node.name = f"{node.op_type}_{index}"
    tail = float_nodes(model, ("Sigmoid", "Softmax")) if keep_tail_float else []
    converted = convert_float_to_float16(model, keep_io_types=True, node_block_list=tail or None)
    topological_sort(converted.graph)  # the converter appends its Casts at the end; TensorRT wants order
    del converted.graph.value_info[:]  # the types of before the conversion: inference redoes them
    remove_cast_round_trips(converted)
    metadata.update({"sonograde.precision": "fp16", "sonograde.source_sha256": sha256_file(model_path)})
    onnx.helper.set_model_props(converted, metadata)
    try:
        onnx.checker.check_model(converted, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        raise Fp16ConversionError(f"FP16 model of {model_path} fails the ONNX checker: {exc}") from exc
    for value in list(converted.graph.input) + list(converted.graph.output):
        if value.type.tensor_type.elem_type != TensorProto.FLOAT:
            raise Fp16ConversionError(f"FP16 model of {model_path}: {value.name} is not float32")
    types = [t.data_type for t in converted.graph.initializer]

    with tempfile.TemporaryDirectory(prefix="sonograde-fp16-") as tmp:
        staged = Path(tmp) / "model.onnx"
        onnx.save(converted, str(staged))
        name, x = _smoke_input(model, np.random.default_rng(seed))
        options = ort.SessionOptions()
        options.log_severity_level = 3
        try:
            outputs = [cpu_session(p, options).run(None, {name: x})[0] for p in (model_path, staged)]
        except Exception as exc:  # onnxruntime's own exception types
            raise Fp16ConversionError(f"ONNX Runtime cannot run the FP16 model of {model_path}: {exc}") \
                from exc
        diff = float(np.abs(outputs[0].astype(np.float32) - outputs[1].astype(np.float32)).max())
        if not np.isfinite(diff) or diff > SMOKE_TOLERANCE:
            raise Fp16ConversionError(
                f"FP16 model of {model_path} differs from FP32 by {diff:.4f} (> {SMOKE_TOLERANCE}) on a test "
                "input: some activation probably overflows float16; it was not written"
            )
        out_path.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(staged), str(out_path))
    return Fp16Result(path=out_path, fp16_initializers=types.count(TensorProto.FLOAT16),
                      fp32_initializers=types.count(TensorProto.FLOAT), float_nodes=tuple(tail),
                      smoke_max_diff=diff)
