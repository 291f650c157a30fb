"""ONNX export of both networks: the contract (names, dynamic batch, opset, metadata) and agreement with
torch on fresh random inputs in ONNX Runtime; the export command from a checkpoint; clear errors."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from engine.export import export_onnx
from engine.networks import GCNN, GCNNConfig, GraderProbabilities, RoiCNN, RoiConfig, RoiProbability
from engine.training.common import RunState, TrainConfig, make_optimizer, save_checkpoint
from sonograde.commands import export as export_command


def _session(path: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


REPO_ROOT = Path(__file__).resolve().parents[1]


def _node_records(model: onnx.ModelProto) -> list[str]:
    """Every metadata value and doc string below the model level: nodes (also in subgraphs and local
    functions), graphs, values."""
    found: list[str] = []

    def graph_records(graph: onnx.GraphProto) -> None:
        found.extend([graph.doc_string, *(p.value for p in graph.metadata_props)])
        for value in (*graph.input, *graph.output, *graph.value_info, *graph.initializer):
            found.extend([value.doc_string, *(p.value for p in value.metadata_props)])
        node_records(graph.node)

    def node_records(nodes: list[onnx.NodeProto]) -> None:
        for node in nodes:
            found.extend([node.doc_string, *(p.value for p in node.metadata_props)])
            for attribute in node.attribute:
                for subgraph in ([attribute.g] if attribute.HasField("g") else []) + list(attribute.graphs):
                    graph_records(subgraph)

    graph_records(model.graph)
    for function in model.functions:
        found.extend([function.doc_string, *(p.value for p in function.metadata_props)])
        node_records(function.node)
    return found


def _assert_no_source_paths(path: Path) -> None:
    """No file path of the machine the model was exported on: not in any node's metadata, not anywhere in
    the file; the exporter's per-node record (stack traces, namespaces) is gone entirely."""
    model = onnx.load(str(path))
    records = [r for r in _node_records(model) if r]
    assert not [r for r in records if re.search(r"/\S+\.py|File \"", r)], records[:3]
    assert records == []
    assert str(REPO_ROOT).encode() not in path.read_bytes()
    assert b"stack_trace" not in path.read_bytes()


def _randomize_bn(net: torch.nn.Module, rng: np.random.Generator) -> None:
    """Non-trivial batch-norm statistics, so the export is checked on more than identity BN."""
    for module in net.modules():
        if isinstance(module, torch.nn.BatchNorm2d | torch.nn.BatchNorm1d):
            module.running_mean.copy_(torch.from_numpy(rng.normal(0, 0.1, module.num_features)))
            module.running_var.copy_(torch.from_numpy(rng.uniform(0.5, 2.0, module.num_features)))


@pytest.mark.slow
def test_roi_export_matches_torch(tmp_path: Path, rng: np.random.Generator) -> None:
    net = RoiCNN(RoiConfig(width=0.125)).eval()
    _randomize_bn(net, rng)
    report = export_onnx("roi", net, tmp_path / "roi.onnx")
    assert report.max_abs_diff < 1e-4 and report.exporter == "dynamo"
    _assert_no_source_paths(tmp_path / "roi.onnx")
    model = onnx.load(str(tmp_path / "roi.onnx"))
    assert max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) >= 17
    meta = {p.key: p.value for p in model.metadata_props}
    assert meta["sonograde.model"] == "roi" and meta["sonograde.input_size"] == "288"
    assert meta["sonograde.input_channels"] == "1" and meta["sonograde.width"] == "0.125"
    assert meta["sonograde.research_use"] == "research use only, not for diagnosis"
    session = _session(tmp_path / "roi.onnx")
    assert [i.name for i in session.get_inputs()] == ["image"]
    assert [o.name for o in session.get_outputs()] == ["prob"]
    x = rng.standard_normal((2, 1, 288, 288)).astype(np.float32)
    prob = session.run(None, {"image": x})[0]
    assert prob.shape == (2, 1, 288, 288) and prob.dtype == np.float32
    with torch.no_grad():
        np.testing.assert_allclose(prob, RoiProbability(net)(torch.from_numpy(x)).numpy(), atol=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize("mask_channel", [False, True])
def test_grader_export_matches_torch(tmp_path: Path, rng: np.random.Generator, mask_channel: bool) -> None:
    channels = 2 if mask_channel else 1
    net = GCNN(GCNNConfig(width=0.125, in_channels=channels, input_size=64)).eval()
    _randomize_bn(net, rng)
    report = export_onnx("grader", net, tmp_path / "g.onnx", grader_margin=0.2)
    assert report.max_abs_diff < 1e-4
    _assert_no_source_paths(tmp_path / "g.onnx")
    meta = {p.key: p.value for p in onnx.load(str(tmp_path / "g.onnx")).metadata_props}
    assert meta["sonograde.categories"] == "3,4A,4B,4C,5"
    assert meta["sonograde.mask_channel"] == ("1" if mask_channel else "0")
    assert meta["sonograde.roi_margin"] == "0.2" and meta["sonograde.input_size"] == "64"
    session = _session(tmp_path / "g.onnx")
    assert [o.name for o in session.get_outputs()] == ["probs"]
    for batch in (1, 5):  # dynamic batch axis
        x = rng.standard_normal((batch, channels, 64, 64)).astype(np.float32)
        probs = session.run(None, {"image": x})[0]
        assert probs.shape == (batch, 5)
        np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
        with torch.no_grad():
            want = GraderProbabilities(net)(torch.from_numpy(x)).numpy()
        np.testing.assert_allclose(probs, want, atol=1e-5)


def _cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    export_command.add_arguments(parser)
    return export_command.run(parser.parse_args(argv))


@pytest.mark.slow
def test_export_command_from_checkpoint(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    net = GCNN(GCNNConfig(width=0.125, input_size=32))
    config = TrainConfig(kind="grader", margin=0.3, input_size=32, width=0.125)
    save_checkpoint(tmp_path / "best.pt", net=net, optimizer=make_optimizer(config, net.parameters()),
                    config=config, net_config=net.config.__dict__, state=RunState())
    # --no-dynamo: the TorchScript path (the dynamo path is covered above) and faster
    argv = ["--checkpoint", str(tmp_path / "best.pt"), "--out", str(tmp_path / "g.onnx"), "--no-dynamo"]
    assert _cli(argv) == 0
    out = capsys.readouterr().out
    assert "max |onnx - torch|" in out and "sha256" in out and "exporter torchscript" in out
    meta = {p.key: p.value for p in onnx.load(str(tmp_path / "g.onnx")).metadata_props}
    assert meta["sonograde.roi_margin"] == "0.3"
    _assert_no_source_paths(tmp_path / "g.onnx")


def test_export_command_rejects_bad_checkpoint(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "bad.pt").write_bytes(b"\x00corrupt")
    assert _cli(["--checkpoint", str(tmp_path / "bad.pt"), "--out", str(tmp_path / "m.onnx")]) == 2
    assert "cannot read checkpoint" in capsys.readouterr().err
    assert _cli(["--checkpoint", str(tmp_path / "missing.pt"), "--out", str(tmp_path / "m.onnx")]) == 2
    assert "does not exist" in capsys.readouterr().err


@pytest.mark.slow
def test_full_width_roi_cnn_exports(tmp_path: Path) -> None:
    """The paper's configuration (width 1.0, ~20 M parameters) exports and matches torch too."""
    report = export_onnx("roi", RoiCNN(RoiConfig(width=1.0)).eval(), tmp_path / "full.onnx", check_batch=1)
    assert report.max_abs_diff < 1e-4
    assert report.size_bytes > 50e6
    model = onnx.load(str(tmp_path / "full.onnx"), load_external_data=False)
    meta = {p.key: p.value for p in model.metadata_props}
    assert meta["sonograde.width"] == "1"


def _grader_checkpoint(path: Path, seed: int, *, width: float = 0.125) -> GCNN:
    torch.manual_seed(seed)
    net = GCNN(GCNNConfig(width=width, input_size=32))
    with torch.no_grad():  # distinct batch-norm statistics, as after training
        for module in net.modules():
            if isinstance(module, torch.nn.BatchNorm2d | torch.nn.BatchNorm1d):
                module.running_mean.uniform_(-1, 1)
                module.running_var.uniform_(0.5, 2)
    config = TrainConfig(kind="grader", margin=0.3, input_size=32, width=width)
    save_checkpoint(path, net=net, optimizer=make_optimizer(config, net.parameters()), config=config,
                    net_config=net.config.__dict__, state=RunState())
    return net


def test_average_weights_exports_one_network_with_the_mean_weights(
        tmp_path: Path, rng: np.random.Generator, capsys: pytest.CaptureFixture[str]) -> None:
    a = _grader_checkpoint(tmp_path / "a.pt", int(rng.integers(1 << 20)))
    b = _grader_checkpoint(tmp_path / "b.pt", int(rng.integers(1 << 20)))
    argv = ["--checkpoint", str(tmp_path / "a.pt"), "--checkpoint", str(tmp_path / "b.pt"),
            "--average-weights", "--out", str(tmp_path / "avg.onnx"), "--no-dynamo"]
    assert _cli(argv) == 0
    expected = GCNN(GCNNConfig(width=0.125, input_size=32))
    expected.load_state_dict({k: (v + b.state_dict()[k]) / 2 if v.is_floating_point() else v
                              for k, v in a.state_dict().items()})
    x = rng.standard_normal((3, 1, 32, 32)).astype(np.float32)
    with torch.no_grad():
        want = GraderProbabilities(expected.eval())(torch.from_numpy(x)).numpy()
        member = GraderProbabilities(a.eval())(torch.from_numpy(x)).numpy()
    got = ort.InferenceSession(str(tmp_path / "avg.onnx")).run(None, {"image": x})[0]
    assert np.abs(got - want).max() < 1e-4
    assert np.abs(got - member).max() > 1e-3  # not simply the first checkpoint
    meta = {p.key: p.value for p in onnx.load(str(tmp_path / "avg.onnx")).metadata_props}
    assert "sonograde.ensemble_members" not in meta and meta["sonograde.roi_margin"] == "0.3"


def test_average_weights_refuses_other_networks(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _grader_checkpoint(tmp_path / "a.pt", 1)
    _grader_checkpoint(tmp_path / "wide.pt", 2, width=0.25)
    out = ["--out", str(tmp_path / "m.onnx"), "--no-dynamo", "--average-weights"]
    two = ["--checkpoint", str(tmp_path / "a.pt"), "--checkpoint", str(tmp_path / "wide.pt")]
    assert _cli([*two, *out]) == 2
    assert "weights average only between networks of one configuration" in capsys.readouterr().err
    assert _cli(["--checkpoint", str(tmp_path / "a.pt"), *out]) == 2
    assert "needs at least two --checkpoint" in capsys.readouterr().err
