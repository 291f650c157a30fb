"""INT8 calibration end to end on small torch-exported models, the accuracy gate, FP16 conversion, CLI."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="the small test models are exported with torch (train extra)")
onnx = pytest.importorskip("onnx")

from calibration.frames import LabelledFrame  # noqa: E402
from calibration.inputs import grader_inputs, roi_inputs  # noqa: E402
from calibration.modelinfo import read_model_info  # noqa: E402
from calibration.quantize import QuantizeConfig, count_qdq, quantize_int8  # noqa: E402
from calibration.verify import GateThresholds, verify  # noqa: E402
from engine.backends import load_backend  # noqa: E402

ROI_SIZE = 96
GRADER_SIZE = 32


class TinyRoi(torch.nn.Module):
    """Marks dark smooth regions (hypoechoic blobs) as lesion: blur -> split signs -> mix -> sigmoid.

    Weights are set by hand (plus small noise) so the mask means something and quantization error is
    small against the signal, as in a trained network."""

    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.c1 = torch.nn.Conv2d(1, 8, 5, padding=2)
        self.c2 = torch.nn.Conv2d(8, 8, 3, padding=1)
        self.c3 = torch.nn.Conv2d(8, 1, 1)
        with torch.no_grad():
            blur = torch.full((5, 5), 1 / 25)
            for k in range(8):
                self.c1.weight[k, 0] = (blur if k < 4 else -blur) + 0.005 * torch.randn(5, 5, generator=g)
            self.c1.bias.zero_()
            self.c2.weight.copy_(0.01 * torch.randn(8, 8, 3, 3, generator=g))
            for k in range(8):
                self.c2.weight[k, k, 1, 1] += 1.0
            self.c2.bias.zero_()
            self.c3.weight.copy_(torch.tensor([0.0] * 4 + [1.5] * 4).view(1, 8, 1, 1))
            self.c3.bias.fill_(-5.0)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.c2(torch.relu(self.c1(image))))
        x = torch.nn.functional.max_pool2d(x, 2)
        x = torch.nn.functional.interpolate(self.c3(x), scale_factor=2.0, mode="bilinear",
                                            align_corners=False)
        return torch.sigmoid(x)


class TinyGrader(torch.nn.Module):
    """A small conv classifier with a softmax over the five categories (random weights, fixed seed)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(1)
        self.c1 = torch.nn.Conv2d(1, 8, 3, padding=1)
        self.c2 = torch.nn.Conv2d(8, 16, 3, padding=1)
        self.fc = torch.nn.Linear(16, 5)
        with torch.no_grad():
            self.fc.weight.mul_(8.0)  # decisive logits: the argmax should not hinge on rounding

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        x = torch.nn.functional.max_pool2d(torch.relu(self.c1(image)), 2)
        x = torch.relu(self.c2(x)).mean(dim=(2, 3))
        return torch.softmax(self.fc(x), dim=1)


def _export(net: torch.nn.Module, path: Path, shape: tuple[int, ...], output: str, metadata: dict) -> Path:
    net.eval()
    torch.onnx.export(net, (torch.randn(*shape),), str(path), input_names=["image"], output_names=[output],
                      dynamic_axes={"image": {0: "N"}, output: {0: "N"}}, opset_version=17, dynamo=False)
    model = onnx.load(str(path))
    onnx.helper.set_model_props(model, {k: str(v) for k, v in metadata.items()})
    onnx.save(model, str(path))
    return path


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("models")
    return {
        "roi": _export(TinyRoi(), folder / "roi_cnn.onnx", (1, 1, ROI_SIZE, ROI_SIZE), "prob",
                       {"sonograde.model": "roi", "sonograde.input_size": ROI_SIZE,
                        "sonograde.input_channels": 1, "sonograde.model_id": "test-roi"}),
        "grader": _export(TinyGrader(), folder / "g_cnn.onnx", (1, 1, GRADER_SIZE, GRADER_SIZE), "probs",
                          {"sonograde.model": "grader", "sonograde.input_size": GRADER_SIZE,
                           "sonograde.input_channels": 1, "sonograde.roi_margin": 0.25,
                           "sonograde.mask_channel": 0, "sonograde.categories": "3,4A,4B,4C,5",
                           "sonograde.model_id": "test-grader"}),
    }


@pytest.fixture(scope="module")
def phantom_frames() -> list[LabelledFrame]:
    from capture.phantom import PhantomScanner

    scanner = PhantomScanner(7, (192, 160))
    return [LabelledFrame(f"phantom#{i}", scanner.sample().image) for i in range(24)]


def test_model_info_reads_kind_and_input(models):
    roi, grader = read_model_info(models["roi"]), read_model_info(models["grader"])
    assert (roi.kind, roi.input_size, roi.input_channels, roi.output_name) == ("roi", ROI_SIZE, 1, "prob")
    assert (grader.kind, grader.input_size, grader.categories[0]) == ("grader", GRADER_SIZE, "3")


def test_roi_int8_end_to_end_passes_gate(models, phantom_frames, tmp_path):
    info = read_model_info(models["roi"])
    calib = roi_inputs(phantom_frames[:16], size=info.input_size)
    held_out = roi_inputs(phantom_frames[16:], size=info.input_size)
    out = tmp_path / "roi_cnn.int8.onnx"
    result = quantize_int8(models["roi"], out, calib.batch, QuantizeConfig(method="entropy", stride=4))
    model = onnx.load(str(out))
    ops = Counter(n.op_type for n in model.graph.node)
    assert ops["QuantizeLinear"] > 0 and ops["DequantizeLinear"] > 0
    assert (result.quantize_nodes, result.dequantize_nodes) == count_qdq(model)
    # Per-channel weights: the first conv's weight scale has one entry per output channel (8).
    scales = [t for t in model.graph.initializer if t.name.endswith("_scale") and tuple(t.dims) == (8,)]
    assert scales, "expected per-channel (8,) weight scales"
    # The final Sigmoid stays float: its output (the graph output) is not quantized.
    sigmoid = next(n for n in model.graph.node if n.op_type == "Sigmoid")
    assert sigmoid.output[0] == "prob"
    assert not any(n.op_type == "QuantizeLinear" and "prob" in n.input for n in model.graph.node)
    meta = {p.key: p.value for p in model.metadata_props}
    assert meta["sonograde.model"] == "roi" and meta["sonograde.precision"] == "int8"
    assert "u8" in meta["sonograde.quantization"]

    report = verify("roi", load_backend(models["roi"], threads=1), load_backend(out, threads=1), held_out,
                    threads=1)
    assert report.passed, report.reason
    assert report.n == len(held_out) and report.dsc_agreement_mean >= 0.98
    assert report.reference_ms > 0 and report.candidate_ms > 0
    # The masks are not trivially empty or full: the gate compared real lesion masks.
    probs = load_backend(models["roi"]).run(held_out.batch)
    assert 0.01 < float((probs > 0.5).mean()) < 0.9


def test_gate_refuses_damaged_model(models, phantom_frames, tmp_path, rng):
    model = onnx.load(str(models["roi"]))
    for tensor in model.graph.initializer:
        weights = onnx.numpy_helper.to_array(tensor)
        if weights.ndim == 4:  # conv kernels: perturb by noise as large as the weights themselves
            noise = rng.normal(0, 1.0, weights.shape).astype(np.float32)
            noisy = weights + noise * np.abs(weights).mean() * 3
            tensor.CopyFrom(onnx.numpy_helper.from_array(noisy.astype(np.float32), tensor.name))
    damaged = tmp_path / "damaged.onnx"
    onnx.save(model, str(damaged))
    inputs = roi_inputs(phantom_frames[16:], size=ROI_SIZE)
    report = verify("roi", load_backend(models["roi"]), load_backend(damaged), inputs)
    assert not report.passed
    assert "mean mask DSC agreement" in report.reason and report.dsc_agreement_mean < 0.98
    assert report.as_dict()["passed"] is False and "reason" in report.as_dict()


def test_gate_grader_fields_and_refusal(models, rng):
    batch = rng.standard_normal((12, 1, GRADER_SIZE, GRADER_SIZE)).astype(np.float32)
    from calibration.inputs import ModelInputs

    inputs = ModelInputs(batch, tuple(f"x{i}" for i in range(len(batch))))
    same = load_backend(models["grader"])
    report = verify("grader", same, load_backend(models["grader"]), inputs)
    assert report.passed and report.top1_agreement == 1.0 and report.max_prob_diff < 1e-6
    fields = report.as_dict()
    assert {"top1_agreement", "max_prob_diff", "speedup"} <= set(fields)
    assert "dsc_agreement_mean" not in fields
    strict = verify("grader", same, same, inputs, thresholds=GateThresholds(top1=1.01))
    assert not strict.passed and "top-1 agreement" in strict.reason


def test_grader_int8_on_first_stage_rois(models, phantom_frames, tmp_path):
    """Grader calibration inputs are refined ROIs from the real first stage (ROI-CNN + refine)."""
    inputs = grader_inputs(phantom_frames, roi_model=models["roi"], grader_model=models["grader"], threads=1)
    assert len(inputs) + len(inputs.skipped) == len(phantom_frames) and len(inputs) >= 8
    assert inputs.batch.shape[1:] == (1, GRADER_SIZE, GRADER_SIZE)
    # Each input is standardized (grader_input), as at inference.
    assert np.allclose(inputs.batch.mean(axis=(1, 2, 3)), 0, atol=1e-3)
    out = tmp_path / "g_cnn.int8.onnx"
    half = len(inputs) // 2
    quantize_int8(models["grader"], out, inputs.batch[:half],
                  QuantizeConfig(method="minmax", target="tensorrt", stride=4))
    model = onnx.load(str(out))
    zero_points = [onnx.numpy_helper.to_array(t) for t in model.graph.initializer
                   if t.name.endswith("zero_point")]
    # TensorRT target: symmetric signed int8 everywhere (zero point 0), biases left in float.
    assert zero_points and all(z.dtype == np.int8 and not z.any() for z in zero_points)
    from calibration.inputs import ModelInputs

    held = ModelInputs(inputs.batch[half:], inputs.keys[half:])
    report = verify("grader", load_backend(models["grader"]), load_backend(out), held,
                    thresholds=GateThresholds(top1=0.75))
    assert report.passed, report.reason
    assert report.max_prob_diff < 0.2


def test_fp16_conversion_runs_and_agrees(models, phantom_frames, tmp_path):
    from calibration.fp16 import convert_fp16

    out = tmp_path / "roi_cnn.fp16.onnx"
    result = convert_fp16(models["roi"], out)
    assert result.fp16_initializers > 0 and result.float_nodes
    model = onnx.load(str(out))
    io_types = {v.type.tensor_type.elem_type for v in list(model.graph.input) + list(model.graph.output)}
    assert io_types == {onnx.TensorProto.FLOAT}
    conv_weights = [t for t in model.graph.initializer if len(t.dims) == 4]
    assert conv_weights and all(t.data_type == onnx.TensorProto.FLOAT16 for t in conv_weights)
    inputs = roi_inputs(phantom_frames[16:], size=ROI_SIZE)
    report = verify("roi", load_backend(models["roi"]), load_backend(out), inputs)
    assert report.passed and report.dsc_agreement_mean > 0.99


def test_cli_int8_refuses_and_writes_nothing_then_passes(models, tmp_path, capsys):
    from sonograde.cli import main

    out = tmp_path / "roi_cnn.int8.onnx"
    common = ["calibrate", "int8", "--model", str(models["roi"]), "--source",
              "phantom:seed=3,size=192x160", "--count", "8", "--verify-count", "6", "--out", str(out),
              "--json"]
    assert main([*common, "--min-dsc-mean", "1.01"]) == 1
    captured = capsys.readouterr()
    assert not out.exists() and "REFUSED" in captured.err and "mean mask DSC agreement" in captured.err
    assert main(common) == 0
    import json

    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out.exists() and report["passed"] is True and report["model"] == "roi" and report["n"] == 6
    expected = {"dsc_agreement_mean", "dsc_agreement_min", "reference_ms", "candidate_ms", "speedup"}
    assert expected <= set(report)


def test_cli_verify_reports_bad_input(models, tmp_path, capsys):
    from sonograde.cli import main

    assert main(["calibrate", "verify", "--reference", str(models["roi"]), "--candidate",
                 str(tmp_path / "missing.onnx"), "--source", "phantom"]) == 2
    assert "not found" in capsys.readouterr().err
    assert main(["calibrate", "verify", "--reference", str(models["roi"]), "--candidate",
                 str(models["grader"]), "--source", "phantom:size=192x160", "--count", "2"]) == 2
    assert "grader" in capsys.readouterr().err


def test_float_stem_keeps_first_convolution_in_float(models, phantom_frames, tmp_path):
    info = read_model_info(models["roi"])
    calib = roi_inputs(phantom_frames[:8], size=info.input_size)
    out = tmp_path / "stem.onnx"
    config = QuantizeConfig(method="minmax", float_first_convs=1, stride=4)
    quantize_int8(models["roi"], out, calib.batch, config)
    model = onnx.load(str(out))
    first_conv = next(n for n in model.graph.node if n.op_type == "Conv")
    producers = {o: n.op_type for n in model.graph.node for o in n.output}
    # In float: its input is the graph input itself, not a DequantizeLinear output.
    assert first_conv.input[0] == "image" and producers.get(first_conv.input[0]) is None
    later = [n for n in model.graph.node if n.op_type == "Conv"][1]
    assert producers[later.input[0]] == "DequantizeLinear"
    held_out = roi_inputs(phantom_frames[16:], size=ROI_SIZE)
    report = verify("roi", load_backend(models["roi"]), load_backend(out), held_out)
    assert report.passed, report.reason


def test_grader_inputs_follow_the_models_view(models, phantom_frames, tmp_path):
    """A frame-view grader is calibrated on whole frames with the mask channel, as it runs."""
    from engine.backends.dev_models import make_grader_model
    from engine.preprocess import grader_input, to_gray_u8

    frame_model = make_grader_model(tmp_path / "g_frame.onnx", size=40, channels=2, view="frame")
    inputs = grader_inputs(phantom_frames[:4], roi_model=models["roi"], grader_model=frame_model, threads=1)
    assert len(inputs) >= 1 and inputs.batch.shape[1:] == (2, 40, 40)
    first = next(f for f in phantom_frames[:4] if f.key == inputs.keys[0])
    gray = to_gray_u8(first.image)
    np.testing.assert_allclose(inputs.batch[0, 0], grader_input(gray, np.ones_like(gray, bool), size=40,
                                                                 mask_channel=True, view="frame")[0])


def test_float_tail_follows_an_ensemble_head_back_to_the_last_weighted_layers():
    """Kept in float: the final Softmax and everything between it and the last layers with weights (two
    members' softmaxes, their mean, the head's arithmetic), never a Gemm; a plain network keeps only its
    final Softmax; Resize only when named."""
    from onnx import TensorProto, helper

    from calibration.quantize import float_nodes

    weight = helper.make_tensor("w", TensorProto.FLOAT, [4, 5], np.zeros(20, np.float32).tolist())
    nodes = [
        helper.make_node("Gemm", ["x", "w"], ["za"], name="gemm_a"),
        helper.make_node("Gemm", ["x", "w"], ["zb"], name="gemm_b"),
        helper.make_node("Softmax", ["za"], ["pa"], name="softmax_a"),
        helper.make_node("Softmax", ["zb"], ["pb"], name="softmax_b"),
        helper.make_node("Add", ["pa", "pb"], ["sum"], name="mean"),
        helper.make_node("Log", ["sum"], ["score"], name="score"),
        helper.make_node("Sigmoid", ["score"], ["above"], name="head"),
        helper.make_node("Softmax", ["above"], ["probs"], name="final"),
        helper.make_node("Resize", ["x"], ["up"], name="resize"),
    ]
    graph = helper.make_graph(
        nodes, "ensemble_head", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, [1, 5]),
         helper.make_tensor_value_info("up", TensorProto.FLOAT, None)], initializer=[weight])
    model = helper.make_model(graph)
    kept = set(float_nodes(model, ("Sigmoid", "Softmax")))
    assert kept == {"final", "head", "score", "mean", "softmax_a", "softmax_b"}
    assert "resize" in float_nodes(model, ("Softmax", "Resize"))
    plain = helper.make_model(helper.make_graph(
        [nodes[0], helper.make_node("Softmax", ["za"], ["probs"], name="final")], "plain",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, [1, 5])], initializer=[weight]))
    assert float_nodes(plain, ("Sigmoid", "Softmax")) == ["final"]
    assert float_nodes(model, ()) == []
