"""Start a training run from a shipped ``.onnx`` model (``--init-from models/roi_cnn.onnx``).

The shipped models are ONNX files only: their torch checkpoints stay on the machine that trained them. The
exporter folds each batch norm into the convolution before it (weight scaled, a bias ``<conv>.weight_bias``
added), so the batch-norm parameters themselves are gone. This module puts the folded weights back into a
torch network and re-expresses every folded batch norm so that the network computes exactly what the ONNX
file computes (eval mode) and nearly that in training mode:

- the convolution takes the folded weight ``W'`` (no bias: it had none in torch);
- its batch norm gets ``running_mean = m``, ``running_var = s**2``, ``weight = sqrt(s**2 + eps)`` and
  ``bias = m + b'``, where ``m`` and ``s`` are the per-channel mean and standard deviation of ``W' x`` over
  calibration images (the run's own training images) and ``b'`` is the folded bias. In eval mode the batch
  norm is then the identity plus ``b'``; in training mode it normalizes with batch statistics close to ``m``
  and ``s``, so fine-tuning starts where the shipped model is instead of at a rescaled network.

Only the ROI-CNN is supported (the G-CNN's ONNX does not record everything its training configuration
needs; fine-tune a grader from its ``.pt`` checkpoint).
"""

from __future__ import annotations

from itertools import pairwise
from pathlib import Path

import numpy as np
import torch

from engine import contract
from engine.networks import RoiCNN, RoiConfig
from engine.training.common import TrainingError

ONNX_PREFIX = "net."  # the export wrapper (RoiProbability) holds the network as ``net``
FOLDED_BIAS_SUFFIX = "_bias"


def read_onnx_roi(path: str | Path) -> tuple[RoiConfig, dict[str, np.ndarray]]:
    """The ROI-CNN configuration and weights stored in a ``sonograde export``-ed ONNX file; TrainingError
    when the file is missing, not ONNX, or not a Sonograde ROI-CNN."""
    import onnx
    from onnx import numpy_helper

    path = Path(path)
    if not path.is_file():
        raise TrainingError(f"--init-from {path}: no such file")
    try:
        model = onnx.load(str(path))
    except Exception as exc:  # onnx raises DecodeError, ValueError, ... for corrupt files
        raise TrainingError(f"--init-from {path}: not a readable ONNX file ({exc}); re-export it with "
                            "`sonograde export` or give the run's last.pt") from exc
    meta = contract.read_metadata(model)
    kind = meta.get(contract.MODEL)
    if kind != "roi":
        what = f"a {kind} model" if kind else "not a Sonograde export (no sonograde.model metadata)"
        raise TrainingError(f"--init-from {path}: {what}; only a ROI-CNN starts from an ONNX file, a G-CNN "
                            "fine-tunes from its .pt checkpoint")
    architecture = meta.get(contract.ARCHITECTURE, contract.DEFAULT_ROI_ARCHITECTURE)
    if architecture != "vgg16":
        raise TrainingError(f"--init-from {path}: a {architecture} ROI-CNN; only the paper's (vgg16) network "
                            "starts from an ONNX file (e.g. models/roi_cnn_vgg16.onnx); start a "
                            f"{architecture} network from its training checkpoint (.pt)")
    config = RoiConfig(width=float(meta.get(contract.WIDTH, 0)),
                       in_channels=int(meta.get(contract.INPUT_CHANNELS, 1)),
                       input_size=contract.roi_input_size(meta))
    weights = {t.name.removeprefix(ONNX_PREFIX): numpy_helper.to_array(t) for t in model.graph.initializer
               if t.name.startswith(ONNX_PREFIX)}
    if not weights:
        raise TrainingError(f"--init-from {path}: holds none of the ROI-CNN's weights by name (not written "
                            "by `sonograde export` from a trained network, or exported with --no-dynamo); "
                            "give the run's last.pt, or re-export it without --no-dynamo")
    return config, weights


def _conv_bn_pairs(net: torch.nn.Module) -> list[tuple[str, str, torch.nn.Conv2d, torch.nn.BatchNorm2d]]:
    """(conv name, batch-norm name, conv, batch norm) for every convolution directly followed by a batch
    norm."""
    pairs = []
    for name, module in net.named_modules():
        if isinstance(module, torch.nn.Sequential):
            prefix = f"{name}." if name else ""
            for (conv_name, conv), (bn_name, bn) in pairwise(module.named_children()):
                if isinstance(conv, torch.nn.Conv2d) and isinstance(bn, torch.nn.BatchNorm2d):
                    pairs.append((prefix + conv_name, prefix + bn_name, conv, bn))
    return pairs


@torch.no_grad()
def load_onnx_roi_weights(net: RoiCNN, weights: dict[str, np.ndarray], calibration: torch.Tensor) -> None:
    """Fill ``net`` from ONNX ``weights`` (see the module docstring); ``calibration``: standardized training
    images (N, C, H, W) whose conv statistics set the re-expressed batch norms. TrainingError when a
    weight is missing or of another shape (the file holds another network)."""
    pairs = _conv_bn_pairs(net)
    batch_norms = {bn_name for _, bn_name, _, _ in pairs}
    for key, tensor in net.state_dict().items():
        if key.rsplit(".", 1)[0] in batch_norms:
            continue  # re-expressed below from the folded bias and the calibration statistics
        source = weights.get(key)
        if source is None:
            raise TrainingError(f"the ONNX file has no weight {ONNX_PREFIX}{key}: it holds another network")
        if tuple(source.shape) != tuple(tensor.shape):
            raise TrainingError(f"{ONNX_PREFIX}{key} is {tuple(source.shape)} in the ONNX file, "
                                f"{tuple(tensor.shape)} here: it holds another network")
        tensor.copy_(torch.from_numpy(np.array(source)))
    for name, _, _, _ in pairs:
        if f"{name}.weight{FOLDED_BIAS_SUFFIX}" not in weights:
            raise TrainingError(f"the ONNX file has no folded bias for {name}: it holds another network")

    # Batch norms as identity plus the folded bias, so one eval-mode pass computes the ONNX network and
    # the hooks see each convolution's output as the ONNX file would produce it.
    for name, _, _, bn in pairs:
        bn.running_mean.zero_()
        bn.running_var.fill_(1.0 - bn.eps)
        bn.weight.fill_(1.0)
        bn.bias.copy_(torch.from_numpy(np.array(weights[f"{name}.weight{FOLDED_BIAS_SUFFIX}"])))
    moments: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    hooks = [conv.register_forward_hook(
        lambda _m, _i, out, name=name: moments.__setitem__(name, (out.mean(dim=(0, 2, 3)),
                                                                  out.var(dim=(0, 2, 3), unbiased=False))))
        for name, _, conv, _ in pairs]
    was_training = net.training
    net.eval()
    try:
        net(calibration)
    finally:
        for hook in hooks:
            hook.remove()
        net.train(was_training)
    for name, _, _, bn in pairs:
        mean, var = moments[name]
        bn.running_mean.copy_(mean)
        bn.running_var.copy_(var)
        bn.weight.copy_(torch.sqrt(var + bn.eps))
        bn.bias.add_(mean)


@torch.no_grad()
def onnx_agreement(net: RoiCNN, path: str | Path, images: torch.Tensor) -> float:
    """Max absolute difference between the torch network's lesion probabilities (eval mode) and the ONNX
    file's on ``images``: the check that the weights were put back right."""
    from engine.backends.ort import cpu_session

    session = cpu_session(path)
    name = session.get_inputs()[0].name
    expected = session.run(None, {name: images.numpy().astype(np.float32)})[0]
    was_training = net.training
    net.eval()
    try:
        got = torch.sigmoid(net(images)).numpy()
    finally:
        net.train(was_training)
    return float(np.abs(got - expected).max())


def init_roi_from_onnx(net: RoiCNN, path: str | Path, calibration: torch.Tensor) -> float:
    """``--init-from MODEL.onnx`` for a ROI-CNN: check the file holds a network of ``net``'s configuration,
    load its weights (see the module docstring) and return the max abs difference to the ONNX file's output
    on the calibration images (printed by the caller: about 1e-6 when all went right)."""
    config, weights = read_onnx_roi(path)
    if config != net.config:
        raise TrainingError(f"--init-from {path} holds a ROI-CNN of width {config.width} with "
                            f"{config.in_channels} input channel(s) at {config.input_size} px; this run "
                            f"builds width {net.config.width} with {net.config.in_channels} at "
                            f"{net.config.input_size} px: give --width {config.width} "
                            f"--roi-size {config.input_size}")
    load_onnx_roi_weights(net, weights, calibration)
    return onnx_agreement(net, path, calibration[:4])
