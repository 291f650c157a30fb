"""Export a trained ROI-CNN or G-CNN checkpoint to ONNX and check it against torch.

The exported model keeps the contract of ``engine.contract`` (inputs, outputs, dynamic batch, the
``sonograde.*`` metadata, written with ``engine.contract.write_metadata``), at opset 17 or newer. It carries
nothing of the exporter's debugging record (stack traces naming source files, module paths, FX nodes): a
shipped model says where it was built by its model card's commit, not by the builder's file system.
"""

from __future__ import annotations

import datetime as _dt
import json
import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import torch

from engine import contract
from engine.birads import CATEGORIES as GRADER_CATEGORIES
from engine.checksums import sha256_file
from engine.networks import (
    GCNN,
    GraderEnsemble,
    GraderProbabilities,
    OrdinalReading,
    RoiCNN,
    RoiLite0,
)
from engine.networks import RoiProbability as _RoiProbability
from engine.preprocess import ROI_INPUT_SIZE

OPSET = 18
RESEARCH_USE = contract.RESEARCH_USE_TEXT


@dataclass(frozen=True)
class ExportReport:
    """What ``export_onnx`` wrote and how well it matches torch (max abs difference on random inputs)."""

    path: Path
    kind: str
    input_shape: tuple[int, int, int, int]
    max_abs_diff: float
    sha256: str
    size_bytes: int
    exporter: str
    metadata: dict[str, str]


def _wrap(kind: str, net: torch.nn.Module) -> tuple[torch.nn.Module, str, tuple[int, int, int]]:
    if kind == "roi":
        assert isinstance(net, RoiCNN | RoiLite0)
        size = net.config.input_size
        return _RoiProbability(net), "prob", (net.config.in_channels, size, size)
    if kind == "grader":
        assert isinstance(net, GCNN | GraderEnsemble | OrdinalReading)
        size = net.config.input_size
        return GraderProbabilities(net), "probs", (net.config.in_channels, size, size)
    raise ValueError(f"cannot export a {kind!r} network; expected roi or grader")


def metadata_for(kind: str, net: torch.nn.Module, *, model_id: str | None = None,
                 grader_margin: float | None = None, grader_view: str = "crop") -> dict[str, str]:
    """The ``sonograde.*`` metadata of a model (see the module docstring)."""
    date = _dt.date.today().isoformat()
    config = net.config
    meta = {
        contract.MODEL: kind,
        contract.WIDTH: f"{config.width:g}",
        contract.INPUT_CHANNELS: str(config.in_channels),
        contract.RESEARCH_USE: RESEARCH_USE,
    }
    if kind == "roi" and config.architecture != "vgg16":
        del meta[contract.WIDTH]  # the width multiplier is the paper's network's; Lite0 has none
    if kind == "roi":
        meta[contract.INPUT_SIZE] = str(config.input_size)
        meta[contract.ARCHITECTURE] = config.architecture
        tag = f"w{config.width:g}" if config.architecture == "vgg16" else config.architecture
        if config.input_size != ROI_INPUT_SIZE:
            tag += f"-s{config.input_size}"
        meta[contract.MODEL_ID] = model_id or f"roi_cnn-{tag}-{date}"
    else:
        meta[contract.CATEGORY_ORDER] = ",".join(GRADER_CATEGORIES)
        margin = grader_margin if grader_margin is not None else contract.DEFAULT_GRADER_MARGIN
        meta.update(contract.GraderInput(input_size=config.input_size, roi_margin=margin,
                                         mask_channel=config.in_channels == 2,
                                         view=grader_view).to_metadata())
        view_tag = "-frame" if grader_view == "frame" else ""
        inner = net.net if isinstance(net, OrdinalReading) else net
        if isinstance(inner, GraderEnsemble):
            meta[contract.ENSEMBLE_MEMBERS] = str(len(inner.members))
            view_tag += f"-ens{len(inner.members)}"
        if isinstance(net, OrdinalReading):
            meta[contract.ORDINAL_HEAD] = json.dumps({"slope": float(net.slope),
                                                         "cuts": [float(c) for c in net.cuts]})
            view_tag += "-oh"
        meta[contract.MODEL_ID] = (model_id
                                      or f"g_cnn-w{config.width:g}-s{config.input_size}{view_tag}-{date}")
    return meta


def _torch_export(module: torch.nn.Module, example: torch.Tensor, path: Path, output: str,
                  dynamo: bool) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if dynamo:
            batch = torch.export.Dim("N", min=1, max=1024)
            program = torch.onnx.export(module, (example,), input_names=["image"], output_names=[output],
                                        dynamic_shapes={"image": {0: batch}}, opset_version=OPSET,
                                        dynamo=True, external_data=False, verbose=False)
            program.save(str(path), external_data=False)
        else:
            torch.onnx.export(module, (example,), str(path), input_names=["image"], output_names=[output],
                              dynamic_axes={"image": {0: "N"}, output: {0: "N"}}, opset_version=OPSET,
                              dynamo=False)


def _strip_nodes(nodes: Iterable[onnx.NodeProto]) -> None:
    for node in nodes:
        del node.metadata_props[:]
        node.doc_string = ""
        for attribute in node.attribute:
            subgraphs = [attribute.g] if attribute.HasField("g") else []
            for subgraph in (*subgraphs, *attribute.graphs):
                _strip_graph(subgraph)


def _strip_values(values: Iterable[onnx.ValueInfoProto | onnx.TensorProto]) -> None:
    for value in values:
        del value.metadata_props[:]
        value.doc_string = ""


def _strip_graph(graph: onnx.GraphProto) -> None:
    del graph.metadata_props[:]
    graph.doc_string = ""
    _strip_values((*graph.input, *graph.output, *graph.value_info, *graph.initializer))
    _strip_nodes(graph.node)


def strip_exporter_record(model: onnx.ModelProto) -> None:
    """Remove, in place, what the torch exporters record for debugging below the model level.

    The dynamo exporter annotates every node with its Python stack trace (``pkg.torch.onnx.stack_trace``:
    absolute paths of the source files), module namespaces, class hierarchies and FX nodes, and the graph
    and values with the exported program's signature; the TorchScript exporter can write source lines
    into doc strings. None of it is needed to run the model, and the paths name the machine it was built
    on. Node, graph, value and function metadata and doc strings go; the model-level ``metadata_props``
    (the ``sonograde.*`` contract) stay.
    """
    _strip_graph(model.graph)
    for function in model.functions:
        del function.metadata_props[:]
        function.doc_string = ""
        _strip_values(function.value_info)
        _strip_nodes(function.node)


def export_onnx(kind: str, net: torch.nn.Module, out: str | Path, *, model_id: str | None = None,
                grader_margin: float | None = None, grader_view: str = "crop", dynamo: bool = True,
                check_batch: int = 3, seed: int = 0) -> ExportReport:
    """Write ``net`` (eval mode) as ONNX to ``out`` with the contract's names, dynamic batch and metadata
    and without the exporter's debugging record (``strip_exporter_record``), then run it in ONNX Runtime
    on fresh random inputs (batch ``check_batch`` and 1) and compare with torch.

    ``dynamo=True`` uses the torch.export-based exporter (needs onnxscript); if it fails, the TorchScript
    exporter is used and ``ExportReport.exporter`` says so. ``seed`` draws the check's inputs, so the same
    network always reports the same difference (a check that passes once passes again).
    """
    from engine.backends.ort import cpu_session

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    net = net.eval()
    module, output, shape = _wrap(kind, net)
    module = module.eval()  # a new wrapper is in training mode; the TorchScript exporter restores that mode
    example = torch.randn(2, *shape)
    exporter = "dynamo" if dynamo else "torchscript"
    try:
        _torch_export(module, example, out, output, dynamo)
    except Exception as error:  # the dynamo exporter raises many error types
        if not dynamo:
            raise
        warnings.warn(f"dynamo ONNX export failed ({type(error).__name__}: {error}); using TorchScript",
                      stacklevel=2)
        exporter = "torchscript (dynamo failed)"
        _torch_export(module, example, out, output, False)
    model = onnx.load(str(out))
    strip_exporter_record(model)
    meta = metadata_for(kind, net, model_id=model_id, grader_margin=grader_margin, grader_view=grader_view)
    meta[contract.EXPORTER] = exporter
    contract.write_metadata(model, meta)
    onnx.checker.check_model(model)
    onnx.save(model, str(out))
    generator = np.random.default_rng(seed)
    session = cpu_session(out)
    worst = 0.0
    for batch in (check_batch, 1):
        x = generator.standard_normal((batch, *shape)).astype(np.float32)
        if kind == "grader" and shape[0] == 2:
            x[:, 1] = (x[:, 1] > 0).astype(np.float32)  # the mask channel is 0/1
        got = session.run(None, {"image": x})[0]
        with torch.no_grad():
            want = module(torch.from_numpy(x)).numpy()
        if got.shape != want.shape:
            raise RuntimeError(f"ONNX output shape {got.shape} != torch {want.shape} at batch {batch}")
        worst = max(worst, float(np.abs(got - want).max()))
    return ExportReport(out, kind, (1, *shape), worst, sha256_file(out), out.stat().st_size, exporter, meta)
