"""Training machinery shared by the ROI-CNN and the G-CNN: configuration, optimizer and learning-rate
schedule, the epoch loop (``train_epochs``), checkpoints (last + best, resumable), metrics CSV and plot."""

from __future__ import annotations

import csv
import json
import math
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from engine.networks import config_dict
from engine.splits import SplitConfig


class TrainingError(ValueError):
    """A training request that cannot run (bad data folder, nothing to train on, bad resume)."""


@dataclass
class TrainConfig:
    """Everything a training run depends on (saved in every checkpoint).

    kind: "roi" or "grader". data: manifest folders. out: run folder (checkpoints, metrics).
    epochs: passes over the training set. width: network width multiplier. batch_size: images per step.
    lr: learning rate (None = the optimizer's default here: SGD as the paper, 1e-4 ROI / 1e-3 grader
    with momentum 0.9; AdamW 1e-3 for both). optimizer: "sgd" or "adamw". weight_decay: L2 (SGD) or
    decoupled decay (AdamW). seed: seeds the split, initialisation and augmentation. max_steps: stop
    after this many optimizer steps in total (smoke runs). phantom: number of phantom samples to add
    (used alone when no data folder is given). cache_dir: where decoded arrays are cached (outside the
    repository). threads: torch intra-op threads. device: where the network trains, "cpu" or "cuda"
    (an NVIDIA GPU through PyTorch; ``load_checkpoint`` maps every tensor to the CPU, so a run trained on a
    GPU resumes and exports on a CPU). loss (ROI): "dice" or "dice+bce".
    input_size, margin, mask_channel, view (grader): what the G-CNN sees, see
    engine.preprocess.grader_input ("crop": the lesion box with margin; "frame": the whole frame).
    test_fold, val_fraction, test_fraction, cv_folds: the split, see engine.splits (cv_folds 0: a fixed
    test fraction; K: cross-validation fold ``test_fold`` of K).
    fine_repeat (grader): times each five-way (4A/4B/4C-labelled dataset) sample is seen per epoch.
    malignancy_weight (grader): weight of the pathology term
    (``engine.training.grader_objective.malignancy_loss``) added to the category loss for lesions whose
    pathology is known; 0 trains on categories alone.
    init_from: a checkpoint (best.pt / last.pt of another run) whose network weights start this run
    (fine-tuning: new optimizer, schedule and epochs; the network configuration must match); for the
    ROI-CNN also an exported ``.onnx`` such as the shipped ``models/roi_cnn.onnx``
    (``engine.training.from_onnx``).
    coarse_bias (grader): learn a separate logit offset for datasets without five-way labels (training
    only; the exported model carries the five-way datasets' base rates), see ``engine.training.grader``.
    distill_from (grader): checkpoints of trained G-CNNs (the teacher: the mean of their probabilities)
    whose outputs the network also learns to match, on the same augmented inputs (knowledge distillation,
    Hinton et al. 2015: one network carries most of an ensemble's accuracy at a third of its size); they
    must take the same input (view, input size, mask channel, margin). distill_weight: weight of
    KL(teacher || network) added to the loss (``engine.training.grader_objective.distillation_loss``).
    train_masks (grader): where the mask channel and crop box of training and validation lesions come
    from: "annotation" (the annotated mask, randomly eroded or dilated by up to 3 px) or "pipeline" (the
    refined mask of the ROI-CNN ``roi_model`` where it finds the annotated lesion, see
    ``engine.training.pipeline_masks``).
    """

    kind: str
    data: list[str] = field(default_factory=list)
    out: str = "runs/train"
    epochs: int = 20
    width: float = 0.25
    batch_size: int = 16
    lr: float | None = None
    optimizer: str = "sgd"
    weight_decay: float = 1e-4
    seed: int = 0
    max_steps: int | None = None
    phantom: int = 0
    cache_dir: str | None = None
    threads: int = 2
    device: str = "cpu"
    loss: str = "dice+bce"
    architecture: str = "vgg16"
    roi_size: int = 288
    input_size: int = 128
    margin: float = 0.25
    mask_channel: bool = False
    view: str = "crop"
    test_fold: int = 1
    val_fraction: float = 0.1
    test_fraction: float = 0.3
    fine_repeat: int = 4
    malignancy_weight: float = 0.0
    coarse_bias: bool = False
    distill_from: list[str] = field(default_factory=list)
    distill_weight: float = 1.0
    train_masks: str = "annotation"
    roi_model: str | None = None
    init_from: str | None = None
    split_seed: int | None = None
    cv_folds: int = 0
    progress: bool = True

    def split_config_seed(self) -> int:
        """Seed of the data split: ``split_seed`` if set, else ``seed`` (so runs that differ only in
        their initialization can share one split)."""
        return self.seed if self.split_seed is None else self.split_seed

    def split_config(self) -> SplitConfig:
        """The ``engine.splits.SplitConfig`` of this run."""
        return SplitConfig(self.test_fold, self.val_fraction, self.test_fraction, self.split_config_seed(),
                           folds=self.cv_folds)

    def learning_rate(self) -> float:
        if self.lr is not None:
            return self.lr
        if self.optimizer == "adamw":
            return 1e-3
        return 1e-4 if self.kind == "roi" else 1e-3


def training_device(name: str) -> torch.device:
    """The torch device for ``TrainConfig.device``; TrainingError when it is unknown or absent here."""
    if name == "cpu":
        return torch.device("cpu")
    if name.split(":")[0] != "cuda":
        raise TrainingError(f"unknown training device {name!r}; use cpu or cuda (cuda:N for GPU N)")
    if not torch.cuda.is_available():
        raise TrainingError(f"--device {name}: PyTorch sees no CUDA GPU here (torch {torch.__version__}, "
                            "a CPU build or no NVIDIA driver); train with --device cpu, or install a CUDA "
                            "build of torch on a machine with an NVIDIA GPU")
    device = torch.device(name)
    if device.index is not None and device.index >= torch.cuda.device_count():
        raise TrainingError(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s) here")
    return device


def is_onnx_file(path: str | Path | None) -> bool:
    """Whether ``--init-from`` names an exported ``.onnx`` model rather than a training checkpoint."""
    return path is not None and Path(path).suffix.lower() == ".onnx"


def initial_weights(config: TrainConfig, net: torch.nn.Module) -> None:
    """Load ``config.init_from``'s network weights into ``net`` (unchanged when it is None); TrainingError
    when the checkpoint is of another kind or its network configuration differs from ``net``'s."""
    if config.init_from is None:
        return
    if is_onnx_file(config.init_from):
        if config.kind != "roi":
            raise TrainingError(f"--init-from {config.init_from}: a {config.kind} network starts from a .pt "
                                "checkpoint (best.pt / last.pt); only a ROI-CNN starts from an ONNX file")
        return  # train_roi loads it once the training images are there (engine.training.from_onnx)
    payload = load_checkpoint(config.init_from)
    if payload["kind"] != config.kind:
        raise TrainingError(f"--init-from {config.init_from} is a {payload['kind']} checkpoint; this run "
                            f"trains a {config.kind} network")
    wanted = config_dict(net)
    source = payload["net_config"]
    differ = {k: (source.get(k), v) for k, v in wanted.items() if source.get(k) != v}
    if differ:
        detail = ", ".join(f"{k} {got!r} there, {want!r} here" for k, (got, want) in differ.items())
        raise TrainingError(f"--init-from {config.init_from} holds another network ({detail}); give the same "
                            "--width, --input-size and --mask-channel as the run that wrote it")
    net.load_state_dict(payload["model"])


def load_resume_checkpoint(config: TrainConfig, path: Path) -> dict:
    """The checkpoint a ``--resume`` continues from; TrainingError when it is of another kind, or when
    ``config.init_from`` names other weights than the run started from (the same command re-run with
    ``--resume`` continues; its --init-from is then already in the checkpoint's weights)."""
    payload = load_checkpoint(path)
    if payload["kind"] != config.kind:
        raise TrainingError(f"{path} is a {payload['kind']} checkpoint, not {config.kind}")
    started_from = payload.get("train_config", {}).get("init_from")
    if config.init_from is not None and (
            started_from is None or Path(started_from).resolve() != Path(config.init_from).resolve()):
        origin = started_from or "a fresh initialization"
        raise TrainingError(f"--resume continues {path}, which started from {origin}, not --init-from "
                            f"{config.init_from}: drop --init-from to continue it, or give another --out")
    return payload


def make_optimizer(config: TrainConfig, params) -> torch.optim.Optimizer:
    """SGD with momentum 0.9 (the paper) or AdamW."""
    lr = config.learning_rate()
    if config.optimizer == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=config.weight_decay)
    if config.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=config.weight_decay)
    raise TrainingError(f"unknown optimizer {config.optimizer!r}; use sgd or adamw")


def lr_at(config: TrainConfig, epoch: int) -> float:
    """Learning rate for an epoch (0-based). SGD: the paper's schedules (ROI constant, grader x0.9 per
    epoch); AdamW: cosine from lr to lr/50 over the epochs."""
    base = config.learning_rate()
    if config.optimizer == "sgd":
        return base if config.kind == "roi" else base * 0.9 ** epoch
    progress = min(1.0, epoch / max(1, config.epochs - 1))
    return base * (0.02 + 0.98 * 0.5 * (1.0 + math.cos(math.pi * progress)))


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


@dataclass
class RunState:
    """Progress of a run: completed epochs, optimizer steps, best validation score and its epoch."""

    epoch: int = 0
    step: int = 0
    best: float = -math.inf
    best_epoch: int = -1


def save_checkpoint(path: Path, *, net: torch.nn.Module, optimizer: torch.optim.Optimizer,
                    config: TrainConfig, net_config: dict, state: RunState,
                    extra: dict | None = None) -> None:
    """Write a checkpoint atomically (a crash never leaves a half-written ``last.pt``)."""
    payload = {
        "format": "sonograde-checkpoint-1",
        "kind": config.kind,
        "net_config": net_config,
        "train_config": asdict(config),
        "model": net.state_dict(),
        "optimizer": optimizer.state_dict(),
        "state": asdict(state),
        "extra": extra or {},
    }
    tmp = path.with_suffix(".tmp")
    torch.save(payload, tmp)
    tmp.replace(path)


def end_epoch(out: Path, row: dict, score: float, *, net: torch.nn.Module, optimizer: torch.optim.Optimizer,
              config: TrainConfig, state: RunState, log: MetricsLog, extra: dict | None = None) -> None:
    """Close an epoch: track the best ``score`` (higher is better), write ``last.pt`` (and ``best.pt`` when
    it improved; ``extra``: training-only tensors kept beside the model), append ``row`` to the metrics log
    and print it on one line to stderr."""
    improved = score > state.best
    if improved:
        state.best, state.best_epoch = score, state.epoch
    net_config = config_dict(net)
    save_checkpoint(out / "last.pt", net=net, optimizer=optimizer, config=config, net_config=net_config,
                    state=state, extra=extra)
    if improved:
        save_checkpoint(out / "best.pt", net=net, optimizer=optimizer, config=config, net_config=net_config,
                        state=state, extra=extra)
    log.append(row)
    print(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()),
          file=sys.stderr, flush=True)


def train_one_epoch(config: TrainConfig, state: RunState, *, name: str, net: torch.nn.Module,
                    optimizer: torch.optim.Optimizer,
                    epoch_order: Callable[[np.random.Generator], np.ndarray],
                    batch_loss: Callable[[np.ndarray, np.random.Generator], torch.Tensor | None],
                    leave: bool = True) -> list[float]:
    """Epoch ``state.epoch`` of ``config``'s schedule, in training mode; returns the batch losses.

    The learning rate of the schedule; one generator seeded ``[config.seed, epoch]`` (so a resumed run
    repeats the epoch exactly) that first orders the training items (``epoch_order``) and then feeds the
    augmentation of every batch; ``batch_loss(indices, rng)`` per batch of ``config.batch_size`` items (None
    skips the batch), each followed by one optimizer step counted in ``state.step``; it stops early at
    ``config.max_steps``. ``leave``: keep the progress bar on screen afterwards.
    """
    from tqdm import tqdm

    epoch = state.epoch
    set_lr(optimizer, lr_at(config, epoch))
    rng = np.random.default_rng([config.seed, epoch])  # per-epoch stream: resume repeats it exactly
    order = epoch_order(rng)
    steps = max(1, len(order) // config.batch_size)
    net.train()
    losses: list[float] = []
    bar = tqdm(range(steps), desc=f"{name} epoch {epoch + 1}/{config.epochs}", leave=leave,
               disable=not config.progress)
    for step in bar:
        loss = batch_loss(order[step * config.batch_size:(step + 1) * config.batch_size], rng)
        if loss is None:
            continue
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        state.step += 1
        losses.append(float(loss.detach()))
        bar.set_postfix(loss=f"{np.mean(losses[-20:]):.4f}")
        if config.max_steps is not None and state.step >= config.max_steps:
            break
    bar.close()
    return losses


def train_epochs(config: TrainConfig, state: RunState, *, name: str, net: torch.nn.Module,
                 optimizer: torch.optim.Optimizer, out: Path, log: MetricsLog,
                 epoch_order: Callable[[np.random.Generator], np.ndarray],
                 batch_loss: Callable[[np.ndarray, np.random.Generator], torch.Tensor | None],
                 validate: Callable[[], dict], score: Callable[[dict], float],
                 extra: Callable[[], dict] | None = None) -> RunState:
    """The epoch loop both trainers share, from ``state`` to ``config.epochs`` (or ``config.max_steps``).

    Each epoch: ``train_one_epoch``; then ``validate()`` adds its numbers to the epoch's row and ``end_epoch``
    keeps the best ``score(row)`` (higher is better) with the checkpoints (``extra()``: training-only
    tensors kept beside the model). Returns ``state``.
    """
    while state.epoch < config.epochs:
        if config.max_steps is not None and state.step >= config.max_steps:
            break
        epoch = state.epoch
        started = time.perf_counter()
        losses = train_one_epoch(config, state, name=name, net=net, optimizer=optimizer,
                                 epoch_order=epoch_order, batch_loss=batch_loss)
        state.epoch += 1
        row: dict = {"epoch": state.epoch, "step": state.step, "lr": lr_at(config, epoch),
                     "train_loss": float(np.mean(losses)) if losses else float("nan"),
                     "seconds": time.perf_counter() - started}
        row.update(validate())
        end_epoch(out, row, score(row), net=net, optimizer=optimizer, config=config, state=state, log=log,
                  extra=extra() if extra is not None else None)
    return state


def load_checkpoint(path: str | Path) -> dict:
    """Read a checkpoint written by ``save_checkpoint``; TrainingError if it is not one."""
    path = Path(path)
    if not path.is_file():
        raise TrainingError(f"checkpoint {path} does not exist")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as error:  # torch raises many types for corrupt files
        raise TrainingError(f"cannot read checkpoint {path}: {error}") from error
    if not isinstance(payload, dict) or payload.get("format") != "sonograde-checkpoint-1":
        raise TrainingError(f"{path} is not a sonograde training checkpoint")
    return payload


class MetricsLog:
    """Per-epoch metrics: ``metrics.csv`` (one row per epoch, appended; survives resume) and
    ``metrics.png`` (every numeric column against the epoch)."""

    def __init__(self, out: Path) -> None:
        self.csv = out / "metrics.csv"
        self.png = out / "metrics.png"

    def rows(self) -> list[dict[str, str]]:
        if not self.csv.is_file():
            return []
        with self.csv.open(newline="") as handle:
            return list(csv.DictReader(handle))

    def append(self, row: dict[str, float]) -> None:
        rows = [r for r in self.rows() if int(float(r["epoch"])) < int(row["epoch"])]
        rows.append({k: f"{v:.6g}" if isinstance(v, float) else str(v) for k, v in row.items()})
        keys = list(rows[-1])
        with self.csv.open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=keys, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(rows)
        self.plot(rows, keys)

    def plot(self, rows: list[dict[str, str]], keys: list[str]) -> None:
        import matplotlib

        matplotlib.use("Agg")
        from matplotlib import pyplot as plt

        series = [k for k in keys if k not in ("epoch", "step", "lr", "seconds")]
        fig, axes = plt.subplots(1, 2, figsize=(10, 4))
        epochs = [float(r["epoch"]) for r in rows]
        for key in series:
            values = [float(r.get(key) or "nan") for r in rows]
            axis = axes[0] if "loss" in key else axes[1]
            axis.plot(epochs, values, marker="o", label=key)
        for axis, title in zip(axes, ("loss", "validation metrics"), strict=True):
            axis.set_xlabel("epoch")
            axis.set_title(title)
            axis.legend(fontsize=8)
            axis.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(self.png, dpi=80)
        plt.close(fig)


def write_json(path: Path, payload: dict) -> None:
    path.write_text(json.dumps(payload, indent=1, sort_keys=True))
