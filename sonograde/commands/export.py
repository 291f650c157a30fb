"""Export a training checkpoint (ROI-CNN or G-CNN) to ONNX and check it against torch.

Examples:
  sonograde export --checkpoint runs/roi/best.pt --out models/roi_cnn.onnx
  sonograde export --checkpoint runs/grader/best.pt --out models/g_cnn.onnx --model-id g_cnn-w0.25-s128
  sonograde export --checkpoint runs/pretrained/last.pt --checkpoint runs/finetuned/last.pt \\
      --average-weights --out g_cnn.onnx     # one network with the mean weights (WiSE-FT at 0.5)
  sonograde export --checkpoint runs/a/last.pt --checkpoint runs/b/last.pt \\
      --ordinal-head runs/oh/head.json --out g_cnn.onnx   # ensemble read through one ordinal head

The ONNX file has input "image" (N, C, S, S) float32 with a dynamic batch N, output "prob" (ROI-CNN, sigmoid
map N x 1 x S x S, S = 224 for the Lite0-encoder network, 288 for the paper's) or "probs" (G-CNN, softmax N
x 5 over 3, 4A, 4B, 4C, 5), opset 17, and sonograde.* metadata (model kind, ROI-CNN architecture, input size
and channels, width, grader margin, mask channel and view, model id). After writing, it runs the file in
ONNX Runtime on fresh random inputs and prints the largest absolute difference from torch; a difference
above --tolerance fails the command (exit 1).
"""

from __future__ import annotations

import argparse
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True, action="append", metavar="PT",
                        help="a best.pt / last.pt written by sonograde train; give it several times to "
                             "export G-CNNs of one recipe (same view, input size, channels and margin) as "
                             "one ensemble model whose output is the mean of the members' probabilities")
    parser.add_argument("--average-weights", action="store_true",
                        help="with several --checkpoint: export one network whose weights are their mean "
                             "(a weight-space ensemble, e.g. a pretrained network and its fine-tuned "
                             "descendant: WiSE-FT at 0.5) instead of an ensemble of outputs")
    parser.add_argument("--ordinal-head", default=None, metavar="JSON",
                        help="read the G-CNN (or the ensemble) through this ordinal head: the head.json of "
                             "sonograde train head (a checkpoint written by train head carries its own)")
    parser.add_argument("--out", required=True, help="ONNX file to write")
    parser.add_argument("--model-id", default=None, help="sonograde.model_id (default kind-width-date)")
    parser.add_argument("--no-dynamo", action="store_true",
                        help="use the TorchScript exporter instead of torch.export (dynamo)")
    parser.add_argument("--tolerance", type=float, default=1e-4,
                        help="largest accepted |onnx - torch| on random inputs (default 1e-4)")


def run(args: argparse.Namespace) -> int:
    try:
        from engine.export import export_onnx
        from engine.training.checkpoints import (
            load_ensemble,
            load_trained,
            load_weight_average,
            with_ordinal_head,
        )
        from engine.training.common import TrainingError
    except ImportError as error:
        print(f"export needs the train extra (pip install 'sonograde[train]'): {error}", file=sys.stderr)
        return 2
    try:
        if len(args.checkpoint) == 1:
            if args.average_weights:
                raise TrainingError("--average-weights needs at least two --checkpoint files")
            kind, net, train_config = load_trained(args.checkpoint[0])
        elif args.average_weights:
            kind, net, train_config = load_weight_average(args.checkpoint)
        else:
            kind, net, train_config = load_ensemble(args.checkpoint)
        if args.ordinal_head is not None:
            if kind != "grader":
                raise TrainingError("--ordinal-head reads a G-CNN; this is a ROI-CNN checkpoint")
            net = with_ordinal_head(net, _read_head(args.ordinal_head))
    except (TrainingError, ValueError) as error:
        print(f"sonograde export: {error}", file=sys.stderr)
        return 2
    report = export_onnx(kind, net, args.out, model_id=args.model_id,
                         grader_margin=train_config.get("margin"),
                         grader_view=train_config.get("view", "crop"), dynamo=not args.no_dynamo)
    print(f"wrote {report.path} ({report.kind}, input {report.input_shape}, "
          f"{report.size_bytes / 1e6:.2f} MB, exporter {report.exporter})")
    print(f"sha256 {report.sha256}")
    print(f"max |onnx - torch| on random inputs: {report.max_abs_diff:.3g}")
    if report.max_abs_diff > args.tolerance:
        print(f"sonograde export: difference {report.max_abs_diff:.3g} exceeds --tolerance {args.tolerance}",
              file=sys.stderr)
        return 1
    return 0


def _read_head(path: str) -> dict:
    import json
    from pathlib import Path

    try:
        values = json.loads(Path(path).read_text())
    except (OSError, ValueError) as error:
        raise ValueError(f"cannot read the ordinal head {path}: {error}") from error
    head = values.get("head", values) if isinstance(values, dict) else None
    if not isinstance(head, dict) or "slope" not in head or "cuts" not in head:
        raise ValueError(f"{path} is not an ordinal head: expected the head.json of sonograde train head "
                         '(or {"slope": a, "cuts": [c1, c2, c3, c4]})')
    return head
