"""ROI-CNN training: Dice (+ BCE) loss on S x S lesion masks (S = ``TrainConfig.roi_size``, 288 for the
paper's network), the paper's augmentation, per-epoch
validation DSC on held-out patients, checkpoints and resume."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as nnf

from engine.augment import augment_roi
from engine.data.datasets import RoiArrays, load_records, load_roi_arrays, phantom_roi_arrays
from engine.networks import RoiConfig, RoiLite0, build_roi
from engine.preprocess import ROI_INPUT_SIZE, standardize
from engine.splits import make_split
from engine.training.common import (
    MetricsLog,
    RunState,
    TrainConfig,
    TrainingError,
    initial_weights,
    is_onnx_file,
    load_resume_checkpoint,
    make_optimizer,
    train_epochs,
    training_device,
    write_json,
)
from engine.training.from_onnx import init_roi_from_onnx

ONNX_CALIBRATION_IMAGES = 32  # images whose statistics re-express the ONNX file's folded batch norms


def dice_loss(logits: torch.Tensor, target: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    """Soft Dice loss over the whole batch (so images without a lesion do not divide by zero)."""
    prob = torch.sigmoid(logits)
    intersection = (prob * target).sum()
    return 1.0 - (2.0 * intersection + eps) / (prob.sum() + target.sum() + eps)


def roi_loss(logits: torch.Tensor, target: torch.Tensor, kind: str) -> torch.Tensor:
    """"dice" or "dice+bce" (Dice plus binary cross-entropy, which gives gradients far from the lesion)."""
    loss = dice_loss(logits, target)
    if kind == "dice+bce":
        loss = loss + nnf.binary_cross_entropy_with_logits(logits, target)
    elif kind != "dice":
        raise TrainingError(f"unknown ROI loss {kind!r}; use dice or dice+bce")
    return loss


def dice_score(pred: np.ndarray, truth: np.ndarray) -> float:
    """DSC of two bool masks; 1.0 when both are empty."""
    total = int(pred.sum()) + int(truth.sum())
    if total == 0:
        return 1.0
    return 2.0 * int(np.logical_and(pred, truth).sum()) / total


def batch_tensors(images: np.ndarray, masks: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    x = np.stack([standardize(image) for image in images])[:, None]
    y = masks[:, None].astype(np.float32)
    # channels_last: oneDNN's convolutions run about twice as fast per CPU second in this layout.
    return torch.from_numpy(x).contiguous(memory_format=torch.channels_last), torch.from_numpy(y)


@torch.no_grad()
def predict_probabilities(net: torch.nn.Module, images: np.ndarray, batch_size: int = 16) -> np.ndarray:
    """Sigmoid maps (N, S, S) float32 for uint8 images (N, S, S), in eval mode, on the network's device."""
    net.eval()
    device = next(net.parameters()).device
    out = []
    for start in range(0, len(images), batch_size):
        x = torch.from_numpy(np.stack([standardize(i) for i in images[start:start + batch_size]])[:, None])
        x = x.to(device).contiguous(memory_format=torch.channels_last)
        out.append(torch.sigmoid(net(x))[:, 0].cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, *images.shape[1:]), np.float32)


def evaluate_arrays(net: torch.nn.Module, arrays: RoiArrays, loss_kind: str) -> dict[str, float]:
    """Validation loss and per-image DSC (threshold 0.5) at the network's input size."""
    probs = predict_probabilities(net, arrays.images)
    dices = [dice_score(p > 0.5, m) for p, m in zip(probs, arrays.masks, strict=True)]
    logits = torch.logit(torch.from_numpy(probs).clamp(1e-6, 1 - 1e-6))[:, None]
    loss = float(roi_loss(logits, torch.from_numpy(arrays.masks[:, None].astype(np.float32)), loss_kind))
    return {"val_loss": loss, "val_dice_mean": float(np.mean(dices)),
            "val_dice_median": float(np.median(dices))}


def _subset(arrays: RoiArrays, index: np.ndarray) -> RoiArrays:
    return RoiArrays(arrays.images[index], arrays.masks[index], [arrays.ids[i] for i in index])


def _concat(parts: list[RoiArrays]) -> RoiArrays:
    parts = [p for p in parts if len(p)]
    if not parts:
        return RoiArrays(np.zeros((0, ROI_INPUT_SIZE, ROI_INPUT_SIZE), np.uint8),
                         np.zeros((0, ROI_INPUT_SIZE, ROI_INPUT_SIZE), bool), [])
    return RoiArrays(np.concatenate([p.images for p in parts]), np.concatenate([p.masks for p in parts]),
                     [i for p in parts for i in p.ids])


def prepare_roi_data(config: TrainConfig, out: Path) -> tuple[RoiArrays, RoiArrays, dict]:
    """Train and validation arrays from the data folders (split by patient) plus phantom samples."""
    train_parts, val_parts, split_info = [], [], {}
    if config.data:
        records = load_records(config.data)
        split = make_split(records, config.split_config())
        split_info = {"summary": split.summary(), "test_fold": config.test_fold,
                      "val_ids": [f"{r.dataset}/{r.id}" for r in split.val],
                      "test_ids": [f"{r.dataset}/{r.id}" for r in split.test]}
        if not split.train:
            raise TrainingError("the data folders give no training images")
        train_parts.append(load_roi_arrays(split.train, size=config.roi_size, cache_dir=config.cache_dir,
                                           progress=config.progress))
        if split.val:
            val_parts.append(load_roi_arrays(split.val, size=config.roi_size, cache_dir=config.cache_dir,
                                             progress=config.progress))
    if config.phantom:
        phantom = phantom_roi_arrays(config.phantom, seed=config.seed, size=config.roi_size)
        cut = max(1, len(phantom) // 5) if not val_parts else 0
        val_parts.append(_subset(phantom, np.arange(cut)))
        train_parts.append(_subset(phantom, np.arange(cut, len(phantom))))
    if not train_parts:
        raise TrainingError("nothing to train on: give --data DIR (a folder with manifest.csv) "
                            "or --phantom N")
    write_json(out / "split.json", split_info)
    return _concat(train_parts), _concat(val_parts), split_info


def train_roi(config: TrainConfig, *, resume: bool = False) -> RunState:
    """Train (or resume) a ROI-CNN into ``config.out``; returns the final run state."""

    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    device = training_device(config.device)
    torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed)
    try:
        net = build_roi(RoiConfig(width=config.width, architecture=config.architecture,
                                  input_size=config.roi_size))
    except ValueError as error:
        raise TrainingError(f"{error} (--architecture / --roi-size)") from error
    if isinstance(net, RoiLite0) and is_onnx_file(config.init_from):
        raise TrainingError(f"--init-from {config.init_from}: a lite0 ROI-CNN starts from a .pt checkpoint "
                            "(best.pt / last.pt of its first step), not from an ONNX file")
    if not resume:
        if isinstance(net, RoiLite0) and config.init_from is None:
            from engine.training.efficientnet_lite import load_pretrained

            net.load_imagenet(load_pretrained().state_dict())  # ImageNet encoder, random head
        initial_weights(config, net)
    state = RunState()
    last = out / "last.pt"
    payload = None
    if resume:
        payload = load_resume_checkpoint(config, last)
        net = build_roi(RoiConfig(**payload["net_config"]))
        net.load_state_dict(payload["model"])
        state = RunState(**payload["state"])
    net = net.to(device=device, memory_format=torch.channels_last)
    optimizer = make_optimizer(config, net.parameters())
    if payload is not None:
        optimizer.load_state_dict(payload["optimizer"])  # moves its state to the parameters' device
    train, val, _ = prepare_roi_data(config, out)
    if not resume and is_onnx_file(config.init_from):
        calibration, _ = batch_tensors(train.images[:ONNX_CALIBRATION_IMAGES],
                                       train.masks[:ONNX_CALIBRATION_IMAGES])
        net = net.to("cpu")
        difference = init_roi_from_onnx(net, config.init_from, calibration.contiguous())
        print(f"started from {config.init_from}: batch norms re-expressed on {len(calibration)} training "
              f"images; max abs difference to the ONNX file {difference:.1e}", file=sys.stderr)
        net = net.to(device=device, memory_format=torch.channels_last)
        optimizer = make_optimizer(config, net.parameters())
    described = f"width {config.width}" if config.architecture == "vgg16" else config.architecture
    print(f"ROI-CNN {described} at {config.roi_size} px: {len(train)} training, {len(val)} validation "
          f"images; {sum(p.numel() for p in net.parameters())} parameters", file=sys.stderr)

    def batch_loss(index: np.ndarray, rng: np.random.Generator) -> torch.Tensor:
        pairs = [augment_roi(train.images[i], train.masks[i], rng) for i in index]
        x, target = batch_tensors(np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs]))
        return roi_loss(net(x.to(device)), target.to(device), config.loss)

    return train_epochs(
        config, state, name="roi", net=net, optimizer=optimizer, out=out, log=MetricsLog(out),
        epoch_order=lambda rng: rng.permutation(len(train)), batch_loss=batch_loss,
        validate=lambda: evaluate_arrays(net, val, config.loss) if len(val) else {},
        score=lambda row: row.get("val_dice_mean", -row["train_loss"]))
