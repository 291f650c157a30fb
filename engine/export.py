"""Export a trained ROI-CNN or G-CNN checkpoint to ONNX and check it against torch.

The ONNX contract (relied on by the inference backends, calibration and the pipeline):
- ROI-CNN: input "image" float32 (N, 1, 288, 288) from ``engine.preprocess.roi_input``, output "prob"
  float32 (N, 1, 288, 288), the sigmoid lesion probability.
- G-CNN: input "image" float32 (N, C, S, S) from ``engine.preprocess.grader_input``, output "probs"
  float32 (N, 5), softmax over ("3", "4A", "4B", "4C", "5").
- Dynamic batch axis N, opset 17 or newer, and metadata_props: ``sonograde.model`` ("roi" | "grader"),
  ``sonograde.input_size``, ``sonograde.input_channels``, ``sonograde.width``, ``sonograde.categories``
  (grader), ``sonograde.roi_margin``, ``sonograde.mask_channel`` and ``sonograde.grader_view`` ("crop" or
  "frame", grader), ``sonograde.ensemble_members`` (grader exported from several checkpoints, whose
  output is the mean of the members' probabilities), ``sonograde.ordinal_head`` (grader read through an
  ordinal head, ``engine.training.ordinal``: JSON slope and cuts), ``sonograde.model_id``,
  ``sonograde.research_use``.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import torch

from engine.networks import (
    GCNN,
    GRADER_CATEGORIES,
    GraderConfig,
    GraderEnsemble,
    GraderProbabilities,
    OrdinalReading,
    RoiCNN,
    RoiConfig,
    build,
)
from engine.networks import RoiProbability as _RoiProbability
from engine.preprocess import ROI_INPUT_SIZE

OPSET = 18
RESEARCH_USE = "research use only, not for diagnosis"


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


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _wrap(kind: str, net: torch.nn.Module) -> tuple[torch.nn.Module, str, tuple[int, int, int]]:
    if kind == "roi":
        assert isinstance(net, RoiCNN)
        return _RoiProbability(net), "prob", (net.config.in_channels, ROI_INPUT_SIZE, ROI_INPUT_SIZE)
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
        "sonograde.model": kind,
        "sonograde.width": f"{config.width:g}",
        "sonograde.input_channels": str(config.in_channels),
        "sonograde.research_use": RESEARCH_USE,
    }
    if kind == "roi":
        meta["sonograde.input_size"] = str(ROI_INPUT_SIZE)
        meta["sonograde.model_id"] = model_id or f"roi_cnn-w{config.width:g}-{date}"
    else:
        meta["sonograde.input_size"] = str(config.input_size)
        meta["sonograde.categories"] = ",".join(GRADER_CATEGORIES)
        meta["sonograde.roi_margin"] = f"{grader_margin if grader_margin is not None else 0.25:g}"
        meta["sonograde.mask_channel"] = "1" if config.in_channels == 2 else "0"
        meta["sonograde.grader_view"] = grader_view
        view_tag = "-frame" if grader_view == "frame" else ""
        inner = net.net if isinstance(net, OrdinalReading) else net
        if isinstance(inner, GraderEnsemble):
            meta["sonograde.ensemble_members"] = str(len(inner.members))
            view_tag += f"-ens{len(inner.members)}"
        if isinstance(net, OrdinalReading):
            meta["sonograde.ordinal_head"] = json.dumps({"slope": float(net.slope),
                                                         "cuts": [float(c) for c in net.cuts]})
            view_tag += "-oh"
        meta["sonograde.model_id"] = (model_id
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


def export_onnx(kind: str, net: torch.nn.Module, out: str | Path, *, model_id: str | None = None,
                grader_margin: float | None = None, grader_view: str = "crop", dynamo: bool = True,
                check_batch: int = 3, seed: int | None = None) -> ExportReport:
    """Write ``net`` (eval mode) as ONNX to ``out`` with the contract's names, dynamic batch and metadata,
    then run it in ONNX Runtime on fresh random inputs (batch ``check_batch`` and 1) and compare with torch.

    ``dynamo=True`` uses the torch.export-based exporter (needs onnxscript); if it fails, the TorchScript
    exporter is used and ``ExportReport.exporter`` says so.
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
    meta = metadata_for(kind, net, model_id=model_id, grader_margin=grader_margin, grader_view=grader_view)
    meta["sonograde.exporter"] = exporter
    del model.metadata_props[:]
    for key, value in meta.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
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


def with_ordinal_head(net: torch.nn.Module, head: dict) -> OrdinalReading:
    """``net`` (a G-CNN or an ensemble) read through the ordinal head ``head`` ({"slope", "cuts"}, as in
    the head.json of ``sonograde train head``); ValueError for a malformed head."""
    from engine.training.ordinal import OrdinalHead

    if isinstance(net, OrdinalReading):
        raise ValueError("this network already carries an ordinal head")
    checked = OrdinalHead.from_dict(head)
    return OrdinalReading(net, checked.slope, checked.cuts).eval()


def load_trained(checkpoint: str | Path) -> tuple[str, torch.nn.Module, dict]:
    """(kind, network in eval mode, training config dict) from a training checkpoint."""
    from engine.training.common import load_checkpoint

    payload = load_checkpoint(checkpoint)
    kind = payload["kind"]
    if kind == "roi":
        net: torch.nn.Module = RoiCNN(RoiConfig(**payload["net_config"]))
    else:
        net = GCNN(GraderConfig(**payload["net_config"]))
    net.load_state_dict(payload["model"])
    head = payload.get("extra", {}).get("ordinal_head")
    if head:  # written by engine.training.ordinal.fit_head_run
        net = with_ordinal_head(net, head)
    return kind, net.eval(), payload["train_config"]


# What must agree between the members of an exported G-CNN ensemble: they share one input.
# What a G-CNN's input depends on: networks that differ in any of these cannot share an input.
GRADER_INPUT_KEYS = ("view", "input_size", "mask_channel", "margin")


def load_weight_average(checkpoints: list[str | Path]) -> tuple[str, torch.nn.Module, dict]:
    """(kind, one network in eval mode, the last checkpoint's training config) whose parameters and
    batch-norm statistics are the mean of the checkpoints': a weight-space ensemble, as fast as one network.
    With a pretrained network and its fine-tuned descendant this is WiSE-FT (Wortsman et al., "Robust
    fine-tuning of zero-shot models", CVPR 2022) at mixing 0.5, a trade between what fine-tuning gained
    and what it forgot (measured for the grader in commit 4ae05d2, docs/research.md). Only meaningful for
    networks that share an ancestry (one started from the other, or both from one checkpoint).
    TrainingError unless all have the same kind and configuration."""
    from engine.training.common import TrainingError, load_checkpoint

    payloads = [load_checkpoint(path) for path in checkpoints]
    with_head = [str(p) for p, payload in zip(checkpoints, payloads, strict=True)
                 if payload.get("extra", {}).get("ordinal_head")]
    if with_head:
        raise TrainingError(f"{', '.join(with_head)} carry an ordinal head, which does not average: average "
                            "the base networks, then fit one head on the result (sonograde train head)")
    first = payloads[0]
    for path, payload in zip(checkpoints[1:], payloads[1:], strict=True):
        if payload["kind"] != first["kind"] or payload["net_config"] != first["net_config"]:
            raise TrainingError(f"{path} holds another network than {checkpoints[0]} ({payload['kind']} "
                                f"{payload['net_config']} vs {first['kind']} {first['net_config']}): weights "
                                "average only between networks of one configuration")
        differ = [k for k in GRADER_INPUT_KEYS
                  if payload["train_config"].get(k) != first["train_config"].get(k)]
        if differ:
            raise TrainingError(f"{path} was trained on another input than {checkpoints[0]} "
                                f"({', '.join(differ)})")
    averaged = {}
    for key, tensor in first["model"].items():
        if tensor.is_floating_point():
            averaged[key] = torch.stack([p["model"][key] for p in payloads]).mean(dim=0)
        else:  # integer buffers (batch norm's num_batches_tracked): not used in eval mode
            averaged[key] = tensor
    net = build(first["kind"], first["net_config"])
    net.load_state_dict(averaged)
    return first["kind"], net.eval(), payloads[-1]["train_config"]


def load_ensemble(checkpoints: list[str | Path]) -> tuple[str, torch.nn.Module, dict]:
    """("grader", ``GraderEnsemble`` in eval mode, the first member's training config) from several G-CNN
    checkpoints; TrainingError unless all are G-CNNs that take the same input (view, input size, mask
    channel, crop margin)."""
    from engine.training.common import TrainingError

    members, first = [], None
    for path in checkpoints:
        kind, net, train_config = load_trained(path)
        if kind != "grader":
            raise TrainingError(f"{path} is a {kind} checkpoint: only G-CNNs can be exported as an ensemble")
        if isinstance(net, OrdinalReading):
            raise TrainingError(f"{path} carries an ordinal head, which reads one network's output: export "
                                "the base networks as the ensemble and give its head with --ordinal-head")
        if first is None:
            first = train_config
        else:
            differ = [k for k in GRADER_INPUT_KEYS if train_config.get(k) != first.get(k)]
            if differ:
                detail = ", ".join(f"{k} {train_config.get(k)!r} vs {first.get(k)!r}" for k in differ)
                raise TrainingError(f"{path} takes a different input than {checkpoints[0]} ({detail}); "
                                    "ensemble members must share view, input size, mask channel and margin")
        members.append(net)
    assert first is not None
    return "grader", GraderEnsemble(members).eval(), first
