"""Networks from training checkpoints: one network, its ordinal head, a weight average, an ensemble.

What ``sonograde export`` turns into ONNX and what distillation and head fitting start from. Each loader
returns ``(kind, network in eval mode, training config dict)``; TrainingError names a checkpoint that does
not fit.
"""

from __future__ import annotations

from pathlib import Path

import torch

from engine.networks import GCNN, GCNNConfig, GraderEnsemble, OrdinalReading, RoiConfig, build, build_roi
from engine.ordinal_head import OrdinalHead
from engine.training.common import TrainingError, load_checkpoint


def with_ordinal_head(net: torch.nn.Module, head: dict) -> OrdinalReading:
    """``net`` (a G-CNN or an ensemble) read through the ordinal head ``head`` ({"slope", "cuts"}, as in
    the head.json of ``sonograde train head``); ValueError for a malformed head."""
    if isinstance(net, OrdinalReading):
        raise ValueError("this network already carries an ordinal head")
    checked = OrdinalHead.from_dict(head)
    return OrdinalReading(net, checked.slope, checked.cuts).eval()


def load_trained(checkpoint: str | Path) -> tuple[str, torch.nn.Module, dict]:
    """(kind, network in eval mode, training config dict) from a training checkpoint."""
    payload = load_checkpoint(checkpoint)
    kind = payload["kind"]
    if kind == "roi":
        net: torch.nn.Module = build_roi(RoiConfig(**payload["net_config"]))
    else:
        net = GCNN(GCNNConfig(**payload["net_config"]))
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
