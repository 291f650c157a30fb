"""Every shipped ONNX model passes ONNX's full check, and the TensorRT-target INT8 models meet the rules
of TensorRT's ONNX parser (calibration.onnx_rules); each rule fails on a file broken on purpose."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from calibration.onnx_rules import full_check_problems, tensorrt_int8_problems

MODELS = Path(__file__).resolve().parents[1] / "models"
SHIPPED = sorted(MODELS.glob("*.onnx"))
TENSORRT_INT8 = sorted(MODELS.glob("*.int8.trt.onnx"))


def test_models_are_there():
    names = {p.name for p in SHIPPED}
    assert {"roi_cnn.onnx", "g_cnn.onnx", "roi_cnn.int8.trt.onnx", "g_cnn.int8.trt.onnx",
            "roi_cnn.fp16.onnx", "g_cnn.fp16.onnx"} <= names


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_shipped_model_passes_full_check(path):
    assert full_check_problems(path) == []


@pytest.mark.parametrize("path", TENSORRT_INT8, ids=lambda p: p.name)
def test_tensorrt_int8_model_meets_parser_rules(path):
    assert tensorrt_int8_problems(onnx.load(str(path))) == []


def test_cpu_int8_models_are_not_for_tensorrt():
    """The CPU-target INT8 models (uint8 activations, asymmetric) are refused: the rules can fail."""
    problems = tensorrt_int8_problems(onnx.load(str(MODELS / "roi_cnn.int8.onnx")))
    assert any("zero point of type uint8" in p for p in problems)


# ------------------------------------------------------------------------- deliberately broken files

def _trt_model() -> onnx.ModelProto:
    return onnx.load(str(MODELS / "g_cnn.int8.trt.onnx"))


def _set(model: onnx.ModelProto, name: str, value: np.ndarray) -> None:
    for index, tensor in enumerate(model.graph.initializer):
        if tensor.name == name:
            model.graph.initializer[index].CopyFrom(numpy_helper.from_array(value, name))
            return
    raise KeyError(name)


def _first(model, op_type: str, per_channel: bool):
    weights = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == op_type and (weights[node.input[1]].size > 1) == per_channel:
            return node, weights
    raise LookupError(op_type)


def _break_zero_point(model):
    node, _ = _first(model, "QuantizeLinear", per_channel=False)
    _set(model, node.input[2], np.array(3, np.int8))
    return "!= 0; TensorRT quantizes symmetrically"


def _break_zero_point_type(model):
    node, _ = _first(model, "QuantizeLinear", per_channel=False)
    _set(model, node.input[2], np.array(0, np.uint8))
    return "zero point of type uint8"


def _break_missing_zero_point(model):
    node, _ = _first(model, "QuantizeLinear", per_channel=False)
    del node.input[2]
    return "no zero point"


@pytest.mark.parametrize("bad", [0.0, -0.5, np.nan, np.inf])
def test_broken_scale_refused(bad):
    model = _trt_model()
    node, weights = _first(model, "DequantizeLinear", per_channel=True)
    scale = weights[node.input[1]].copy()
    scale[1] = bad
    _set(model, node.input[1], scale)
    assert any("finite and positive" in p for p in tensorrt_int8_problems(model))


def _break_axis(model):
    node, weights = _first(model, "DequantizeLinear", per_channel=True)
    data = weights[node.input[0]]
    for attribute in node.attribute:
        if attribute.name == "axis":
            attribute.i = 1
    # Keep one scale per channel of axis 1, so only the axis itself is wrong for the Conv.
    _set(model, node.input[1], np.full(data.shape[1], 0.01, np.float32))
    _set(model, node.input[2], np.zeros(data.shape[1], np.int8))
    return "needs its output-channel axis 0"


def _break_scale_count(model):
    node, weights = _first(model, "DequantizeLinear", per_channel=True)
    scale = weights[node.input[1]]
    _set(model, node.input[1], np.concatenate([scale, scale[:1]]))
    _set(model, node.input[2], np.zeros(scale.size + 1, np.int8))
    return "scales along axis 0 of a weight"


def _break_activation_per_channel(model):
    node, _ = _first(model, "QuantizeLinear", per_channel=False)
    _set(model, node.input[1], np.array([0.1, 0.1], np.float32))
    _set(model, node.input[2], np.zeros(2, np.int8))
    return "per-channel scales on an activation"


def _break_opset(model):
    for opset in model.opset_import:
        if opset.domain == "":
            opset.version = 12
    return "opset 12 < 13"


def _break_custom_op(model):
    model.graph.node[5].domain = "com.microsoft"
    return "operator of domain 'com.microsoft'"



@pytest.mark.parametrize("breaker", [_break_zero_point, _break_zero_point_type, _break_missing_zero_point,
                                     _break_axis, _break_scale_count, _break_activation_per_channel,
                                     _break_opset, _break_custom_op], ids=lambda f: f.__name__[7:])
def test_broken_tensorrt_int8_file_refused(tmp_path, breaker):
    model = _trt_model()
    phrase = breaker(model)
    path = tmp_path / "broken.int8.trt.onnx"
    onnx.save(model, str(path))  # through a file, as the check runs in CI
    problems = tensorrt_int8_problems(onnx.load(str(path)))
    assert any(phrase in p for p in problems), problems


def test_model_without_quantization_refused():
    assert any("not an explicitly quantized model" in p
               for p in tensorrt_int8_problems(onnx.load(str(MODELS / "g_cnn.onnx"))))


def test_full_check_refuses_stale_value_info(tmp_path):
    """The fault the old g_cnn.fp16.onnx had: value_info declaring float16 where inference says float."""
    model = onnx.load(str(MODELS / "roi_cnn_vgg16.onnx"))  # its first node is a convolution
    first_output = model.graph.node[0].output[0]
    model.graph.value_info.append(helper.make_tensor_value_info(first_output, TensorProto.FLOAT16, None))
    path = tmp_path / "stale.onnx"
    onnx.save(model, str(path))
    problems = full_check_problems(path)
    assert problems and "elem type" in problems[0]


def test_full_check_refuses_a_broken_graph(tmp_path):
    model = onnx.load(str(MODELS / "g_cnn.onnx"))
    model.graph.node[3].input[0] = "no_such_tensor"
    path = tmp_path / "dangling.onnx"
    onnx.save(model, str(path))
    assert full_check_problems(path)
