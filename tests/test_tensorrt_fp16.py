"""FP16 models for strongly typed TensorRT builds: the weight-free tail really stays float32 (no
float16 round trip between its nodes or at the output) and the result passes ONNX's full check."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper

from calibration.fp16 import convert_fp16, remove_cast_round_trips
from calibration.quantize import float_nodes

MODELS = Path(__file__).resolve().parents[1] / "models"


def _types(model: onnx.ModelProto) -> dict[str, int]:
    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    return {v.name: v.type.tensor_type.elem_type
            for v in (*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output)}


def _round_trips(model: onnx.ModelProto) -> list[str]:
    def to(node):
        return next((a.i for a in node.attribute if a.name == "to"), None) if node.op_type == "Cast" else None

    halves = {n.output[0] for n in model.graph.node if to(n) == TensorProto.FLOAT16}
    return [n.name for n in model.graph.node if to(n) == TensorProto.FLOAT and n.input[0] in halves]


def test_cast_round_trips_removed_from_a_small_graph():
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
    z = helper.make_tensor_value_info("z", TensorProto.FLOAT, [1, 4])
    nodes = [
        helper.make_node("Sigmoid", ["x"], ["s"], name="tail"),
        helper.make_node("Cast", ["s"], ["s16"], to=TensorProto.FLOAT16, name="to_half"),
        helper.make_node("Cast", ["s16"], ["y"], to=TensorProto.FLOAT, name="to_float_out"),
        helper.make_node("Cast", ["s16"], ["s32"], to=TensorProto.FLOAT, name="to_float_mid"),
        helper.make_node("Relu", ["s16"], ["r16"], name="half_user"),
        helper.make_node("Cast", ["r16"], ["r32"], to=TensorProto.FLOAT, name="needed_cast"),
        helper.make_node("Add", ["s32", "r32"], ["z"], name="add"),
    ]
    model = helper.make_model(helper.make_graph(nodes, "g", [x], [y, z]),
                              opset_imports=[helper.make_opsetid("", 17)])
    assert _round_trips(model) == ["to_float_out", "to_float_mid"]
    assert remove_cast_round_trips(model) == 2  # both float casts; the half cast still feeds Relu
    assert _round_trips(model) == []
    names = [n.name for n in model.graph.node]
    assert "to_half" in names and "needed_cast" in names
    onnx.checker.check_model(model, full_check=True)
    add = next(n for n in model.graph.node if n.name == "add")
    assert list(add.input) == ["s", "r32"]  # reads the float32 Sigmoid output directly
    feeds = {"x": np.linspace(-3, 3, 4, dtype=np.float32)[None]}
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    y_out, _ = session.run(None, feeds)
    exact = 1 / (1 + np.exp(-feeds["x"]))
    np.testing.assert_allclose(y_out, exact, rtol=1e-6)  # float32 precision ...
    assert np.abs(exact.astype(np.float16).astype(np.float32) - exact).max() > 1e-5  # ... which fp16 lacks


def test_shipped_grader_tail_stays_float32(tmp_path):
    out = tmp_path / "g_cnn.fp16.onnx"
    result = convert_fp16(MODELS / "g_cnn.onnx", out)
    model = onnx.load(str(out))
    onnx.checker.check_model(model, full_check=True)
    assert _round_trips(model) == []
    types = _types(model)
    tail = set(float_nodes(onnx.load(str(MODELS / "g_cnn.onnx")), ("Sigmoid", "Softmax")))
    assert tail == set(result.float_nodes) and len(tail) > 1
    tail_nodes = [n for n in model.graph.node if n.name in tail]
    assert len(tail_nodes) == len(tail)
    for node in tail_nodes:
        for name in (*node.input, *node.output):
            if name in types:
                assert types[name] != TensorProto.FLOAT16, (node.name, name)
    assert all(types[o.name] == TensorProto.FLOAT for o in model.graph.output)
    assert result.fp16_initializers > 0 and result.smoke_max_diff < 0.01
