"""Step 2 of INT8 calibration: static post-training quantization to an explicit Q/DQ ONNX model.

ONNX Runtime's ``quantize_static`` in QDQ format with per-channel symmetric int8 weights. Activations:

- target ``cpu``: unsigned 8-bit (QUInt8, asymmetric). On x86 with AVX-512 VNNI, ONNX Runtime's u8 x s8
  kernels are the fast path (measured in docs/calibration.md);
- target ``tensorrt``: signed 8-bit, symmetric (zero point 0), the only form TensorRT accepts for
  explicit quantization; biases stay float (TensorRT's Q/DQ layers are 8-bit). The same file also runs
  on ONNX Runtime.

Calibration methods: ``percentile`` (default: the 99.999th percentile of absolute values; it gave the
closest agreement with FP32 on the shipped models, docs/calibration.md), ``entropy`` (KL divergence of
histograms), ``minmax``. The model first goes through
``onnxruntime.quantization.shape_inference.quant_pre_process`` (shape inference, Conv+BatchNorm fusion),
which gives the quantizer full shapes and fewer tensors to calibrate.

Numerically sensitive tail operations can stay in float (``float_ops``): the final Sigmoid/Softmax
(its output quantized to 8 bits would make every probability a multiple of 1/255 and round small
ones to 0), with whatever arithmetic leads to it from the last layers with weights (an ensemble's mean
and an ordinal head, ``float_nodes``), and Resize (bilinear upsampling of the score map). Which helps
is measured, not assumed: see docs/calibration.md.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from engine import contract
from engine.checksums import sha256_file as sha256_file  # re-exported: the sidecar and builds use it

METHODS = ("entropy", "percentile", "minmax")
TARGETS = ("cpu", "tensorrt")
FLOAT_OP_CHOICES = ("Sigmoid", "Softmax", "Resize")
# Default, chosen by measurement (docs/calibration.md): final probability op in float.
DEFAULT_FLOAT_OPS = ("Sigmoid", "Softmax")


@dataclass(frozen=True)
class QuantizeConfig:
    """How to quantize.

    method: percentile | entropy | minmax. target: cpu (u8 activations) | tensorrt (s8 symmetric).
    per_channel: per-output-channel weight scales (default True). float_ops: op types kept in float
    where they are the model's tail (Sigmoid/Softmax producing a graph output, with the weight-free
    arithmetic before it) or anywhere (Resize).
    preprocess: run quant_pre_process first. stride: frames per calibration collection step (memory).
    percentile: for method percentile, in percent. float_first_convs: keep the first N convolutions and
    the nodes between them (``stem_nodes``) in float: full-resolution layers with few channels run
    slower in ONNX Runtime's int8 kernels than in its float ones on x86 (measured, docs/calibration.md).
    """

    method: str = "percentile"
    target: str = "cpu"
    per_channel: bool = True
    float_ops: tuple[str, ...] = DEFAULT_FLOAT_OPS
    preprocess: bool = True
    stride: int = 8
    percentile: float = 99.999
    float_first_convs: int = 0

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"unknown calibration method {self.method!r}; choose one of "
                             f"{', '.join(METHODS)}")
        if self.target not in TARGETS:
            raise ValueError(f"unknown target {self.target!r}; choose one of {', '.join(TARGETS)}")
        unknown = [op for op in self.float_ops if op not in FLOAT_OP_CHOICES]
        if unknown:
            raise ValueError(f"float_ops may name {', '.join(FLOAT_OP_CHOICES)}; got {', '.join(unknown)}")


@dataclass(frozen=True)
class QuantizeResult:
    """What the quantizer produced: output path, calibration size, Q/DQ node counts, excluded nodes."""

    path: Path
    n_calibration: int
    quantize_nodes: int
    dequantize_nodes: int
    float_nodes: tuple[str, ...]
    preprocessed: bool
    config: QuantizeConfig
    notes: tuple[str, ...] = field(default_factory=tuple)

    def as_dict(self) -> dict:
        out = asdict(self)
        out["path"] = str(self.path)
        return out


# Where the walk back from a float tail stops: layers with weights (what int8 is for), and Resize, which
# has its own --float-ops choice.
_TAIL_STOP = ("Conv", "ConvTranspose", "Gemm", "MatMul", "Resize")


def float_nodes(model, float_ops: tuple[str, ...]) -> list[str]:  # model: onnx.ModelProto
    """Names of nodes to keep in float: Sigmoid/Softmax whose output is a graph output together with the
    arithmetic that leads to it from the last layers with weights (for a plain network nothing; for an
    ensemble read through an ordinal head, ``engine.networks.OrdinalReading``, the members' softmaxes,
    their mean, the suspicion score and the head, where 8-bit steps would move lesions across cut
    points), and every Resize if named."""
    outputs = {o.name for o in model.graph.output}
    producer = {o: node for node in model.graph.node for o in node.output}
    names: list[str] = []
    tail: list = []
    for node in model.graph.node:
        if node.op_type not in float_ops:
            continue
        if node.op_type == "Resize":
            names.append(node.name)
        elif any(o in outputs for o in node.output):
            tail.append(node)
    seen = {node.name for node in tail}
    while tail:
        node = tail.pop()
        names.append(node.name)
        for tensor in node.input:
            parent = producer.get(tensor)
            if parent is not None and parent.name not in seen and parent.op_type not in _TAIL_STOP:
                seen.add(parent.name)
                tail.append(parent)
    return names


def stem_nodes(model, convolutions: int) -> list[str]:
    """Names of the nodes before the (convolutions + 1)-th Conv in graph order: the first convolutions and
    the activations and poolings between them, so the float-to-int8 switch happens after the stem's last
    pooling (on a quarter of the pixels) rather than before it."""
    if convolutions <= 0:
        return []
    names, seen = [], 0
    for node in model.graph.node:
        if node.op_type == "Conv":
            if seen == convolutions:
                break
            seen += 1
        names.append(node.name)
    return names


def _name_nodes(model) -> None:
    """Give every unnamed node a unique name: nodes_to_exclude works by name."""
    seen: set[str] = set()
    for index, node in enumerate(model.graph.node):
        if not node.name or node.name in seen:
            node.name = f"{node.op_type}_{index}"
        seen.add(node.name)


def count_qdq(model) -> tuple[int, int]:
    """(QuantizeLinear, DequantizeLinear) node counts of a model."""
    ops = [n.op_type for n in model.graph.node]
    return ops.count("QuantizeLinear"), ops.count("DequantizeLinear")


def _stride(n: int, wanted: int) -> int:
    """Largest stride <= wanted that divides n (the quantizer requires n % stride == 0)."""
    for stride in range(max(1, min(wanted, n)), 0, -1):
        if n % stride == 0:
            return stride
    return 1


def quantize_int8(model_path: str | os.PathLike, out_path: str | os.PathLike, inputs: np.ndarray,
                  config: QuantizeConfig | None = None, *, input_name: str | None = None) -> QuantizeResult:
    """Quantize ``model_path`` to ``out_path`` with calibration ``inputs`` (float32 (N, C, S, S)).

    The model's ``sonograde.*`` metadata is kept; ``sonograde.precision`` = ``int8``,
    ``sonograde.quantization`` (method, target, float ops, calibration frames) and
    ``sonograde.source_sha256`` (of the FP32 file) are added.
    """
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    from calibration.reader import ArrayCalibrationReader
    from engine.backends.ort import onnxruntime_module

    onnxruntime_module()  # telemetry off before the quantizer's calibration sessions

    config = config or QuantizeConfig()
    model_path, out_path = Path(model_path), Path(out_path)
    source = onnx.load(str(model_path))
    metadata = contract.read_metadata(source)
    input_name = input_name or next(i.name for i in source.graph.input
                                    if i.name not in {t.name for t in source.graph.initializer})
    notes: list[str] = []
    with tempfile.TemporaryDirectory(prefix="sonograde-quant-") as tmp:
        named = Path(tmp) / "named.onnx"
        _name_nodes(source)
        onnx.save(source, str(named))
        prepared = named
        preprocessed = False
        if config.preprocess:
            from onnxruntime.quantization.shape_inference import quant_pre_process

            candidate = Path(tmp) / "prepared.onnx"
            try:
                quant_pre_process(str(named), str(candidate), skip_symbolic_shape=True)
                prepared, preprocessed = candidate, True
            except Exception as exc:  # shape inference / optimizer failures: quantize the original instead
                notes.append(f"quant_pre_process failed, quantized without it: {str(exc)[:200]}")
        prepared_model = onnx.load(str(prepared))
        _name_nodes(prepared_model)
        onnx.save(prepared_model, str(prepared))
        keep_float = float_nodes(prepared_model, config.float_ops)
        keep_float += stem_nodes(prepared_model, config.float_first_convs)

        calibrate_method = {
            "entropy": CalibrationMethod.Entropy,
            "percentile": CalibrationMethod.Percentile,
            "minmax": CalibrationMethod.MinMax,
        }[config.method]
        signed = config.target == "tensorrt"
        reader = ArrayCalibrationReader(input_name, inputs)
        quantized = Path(tmp) / "quantized.onnx"
        quantize_static(
            str(prepared),
            str(quantized),
            reader,
            quant_format=QuantFormat.QDQ,
            per_channel=config.per_channel,
            activation_type=QuantType.QInt8 if signed else QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=calibrate_method,
            nodes_to_exclude=keep_float,
            extra_options={
                "ActivationSymmetric": signed,
                "WeightSymmetric": True,
                "CalibStridedMinMax": _stride(len(reader), config.stride),
                "CalibPercentile": config.percentile,
                "CalibTensorRangeSymmetric": signed,
                # TensorRT dequantizes int8 only; float biases are fused into its int8 convolutions anyway.
                "QuantizeBias": not signed,
            },
        )
        model = onnx.load(str(quantized))
        metadata.update({
            contract.PRECISION: "int8",
            contract.QUANTIZATION: (
                f"static QDQ, {config.method} calibration on {len(inputs)} frame(s), target {config.target}, "
                f"activations {'s8 symmetric' if signed else 'u8'}, weights s8 per-"
                f"{'channel' if config.per_channel else 'tensor'}, "
                f"float: {', '.join(config.float_ops) or 'none'}"
                + (f" + first {config.float_first_convs} conv(s)" if config.float_first_convs else "")
            ),
            contract.SOURCE_SHA256: sha256_file(model_path),
        })
        contract.write_metadata(model, metadata)
        q, dq = count_qdq(model)
        out_path.parent.mkdir(parents=True, exist_ok=True)
        partial = Path(tmp) / "final.onnx"
        onnx.save(model, str(partial))
        shutil.move(str(partial), str(out_path))
    return QuantizeResult(path=out_path, n_calibration=len(inputs), quantize_nodes=q, dequantize_nodes=dq,
                          float_nodes=tuple(keep_float), preprocessed=preprocessed, config=config,
                          notes=tuple(notes))
