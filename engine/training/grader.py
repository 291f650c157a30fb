"""G-CNN training: cross-entropy over the five categories "3", "4A", "4B", "4C", "5", on lesion crops (or
whole frames, ``--view frame``) made by ``engine.preprocess.grader_input`` from the ground-truth masks,
with the paper's translation and horizontal-flip augmentation.

Coarse labels keep their information: a BUS-BRA "4" (sub-category unknown) is trained with the negative
log of the summed probability of 4A, 4B and 4C; a five-way label is plain cross-entropy (both are
``-log sum_{k allowed} softmax_k``). BI-RADS 2 is merged into "3" (see engine.data.datasets). Where the
pathology is known, ``--malignancy-weight`` adds a binary cross-entropy between the biopsy result and the
likelihood of malignancy the five probabilities imply (``malignancy_score``, the ACR ranges). BI-RADS 4A,
4B and 4C are defined by that likelihood, so this term is what lets a BUS-BRA "4" with a benign biopsy
pull towards 4A and a malignant one towards 4C, instead of spreading over the three at random.
``--coarse-bias`` gives the lesions of datasets without five-way labels (BUS-BRA) their own learned
logit offset during training: their base rates (many BI-RADS 2/3, one "4" for three sub-categories) and
their readers' habits then live in that offset instead of in the network's own bias, which is left to the
five-way datasets; the offset is not exported. ``--distill-from`` adds a distillation term
(``distillation_loss``) towards the mean probabilities of already trained G-CNNs. Samples of
datasets that carry the five-way labels are repeated ``FINE_REPEAT`` times per epoch: they are few (about
a hundred) against ~1,300 coarse BUS-BRA lesions, and only they teach 4A/4B/4C apart (``--fine-repeat``).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

from engine.birads import CATEGORIES as GRADER_CATEGORIES
from engine.networks import GCNN, GCNNConfig
from engine.training.common import (
    MetricsLog,
    RunState,
    TrainConfig,
    TrainingError,
    initial_weights,
    load_resume_checkpoint,
    make_optimizer,
    train_epochs,
    training_device,
)

# The data and the objective live in their own modules; their names stay importable from here.
from engine.training.grader_data import (
    FINE_CATEGORIES,
    fine_datasets,
    predict,
    prepare_grader_data,
    sample_input,
    with_offset,
    with_pipeline_masks,
)
from engine.training.grader_objective import (
    allowed_set_loss,
    distillation_loss,
    grader_metrics,
    malignancy_loss,
)

__all__ = [
    "FINE_CATEGORIES",
    "allowed_set_loss",
    "distillation_loss",
    "fine_datasets",
    "grader_metrics",
    "load_teacher",
    "malignancy_loss",
    "predict",
    "prepare_grader_data",
    "sample_input",
    "train_grader",
    "with_offset",
    "with_pipeline_masks",
]


def load_teacher(config: TrainConfig, device: torch.device) -> torch.nn.Module | None:
    """The ensemble of ``config.distill_from`` (forward gives log mean probabilities), frozen, on
    ``device``; None without ``distill_from``. TrainingError when a teacher takes another input than
    this run's network (view, input size, mask channel, crop margin)."""
    if not config.distill_from:
        return None
    from engine.training.checkpoints import GRADER_INPUT_KEYS, load_ensemble

    _, teacher, teacher_config = load_ensemble(list(config.distill_from))
    ours = {key: getattr(config, key) for key in GRADER_INPUT_KEYS}
    differ = {k: (teacher_config.get(k), v) for k, v in ours.items() if teacher_config.get(k) != v}
    if differ:
        detail = ", ".join(f"{k} {got!r} there, {want!r} here" for k, (got, want) in differ.items())
        raise TrainingError(f"--distill-from {config.distill_from[0]} takes another input than this run "
                            f"({detail}); train with the teacher's --view, --input-size, --margin and "
                            "--mask-channel")
    for parameter in teacher.parameters():
        parameter.requires_grad_(False)
    return teacher.to(device=device, memory_format=torch.channels_last).eval()


def train_grader(config: TrainConfig, *, resume: bool = False) -> RunState:
    """Train (or resume) a G-CNN into ``config.out``; returns the final run state."""

    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    device = training_device(config.device)
    torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed)
    net_config = GCNNConfig(width=config.width, in_channels=2 if config.mask_channel else 1,
                              input_size=config.input_size)
    state = RunState()
    payload = None
    if resume:
        payload = load_resume_checkpoint(config, out / "last.pt")
        net_config = GCNNConfig(**payload["net_config"])
        state = RunState(**payload["state"])
    net = GCNN(net_config)
    if payload is not None:
        net.load_state_dict(payload["model"])
    else:
        initial_weights(config, net)
    # channels_last: faster oneDNN convolutions on the CPU, and the layout cuDNN prefers on a GPU.
    net = net.to(device=device, memory_format=torch.channels_last)
    optimizer = make_optimizer(config, net.parameters())
    # Logit offset for lesions of coarse-label datasets (zeros and unused without --coarse-bias).
    coarse_bias = torch.zeros(len(GRADER_CATEGORIES), device=device, requires_grad=config.coarse_bias)
    if config.coarse_bias:
        optimizer.add_param_group({"params": [coarse_bias], "weight_decay": 0.0})
    if payload is not None:
        if len(payload["optimizer"]["param_groups"]) != len(optimizer.param_groups):
            raise TrainingError(f"{out / 'last.pt'} was trained with{'out' if config.coarse_bias else ''} "
                                "--coarse-bias; resume with the same setting")
        optimizer.load_state_dict(payload["optimizer"])  # moves its state to the parameters' device
        if config.coarse_bias:
            coarse_bias.data.copy_(payload["extra"]["coarse_bias"])
    teacher = load_teacher(config, device)
    train, val, _ = prepare_grader_data(config, out)
    # the teacher is frozen and validation is not augmented: its validation probabilities are fixed
    teacher_val = predict(teacher, val, config) if teacher is not None and val else None
    fine = fine_datasets(train + val)
    coarse_train = np.array([s.id.split("/")[0] not in fine for s in train])
    coarse_val = [s.id.split("/")[0] not in fine for s in val]
    pool = np.repeat(np.arange(len(train)), np.where(coarse_train, 1, config.fine_repeat))
    distilling = (f" distilling {len(config.distill_from)} teacher(s) x{config.distill_weight}"
                  if teacher is not None else "")
    print(f"G-CNN width {config.width} view={config.view} S={config.input_size} margin={config.margin} "
          f"mask_channel={config.mask_channel} train_masks={config.train_masks} "
          f"malignancy_weight={config.malignancy_weight}"
          f"{distilling}: "
          f"{len(train)} training lesions ({len(pool)} per epoch with "
          f"five-way x{config.fine_repeat}), {len(val)} validation; five-way datasets: {sorted(fine)}",
          file=sys.stderr)

    def batch_loss(indices: np.ndarray, rng: np.random.Generator) -> torch.Tensor | None:
        batch = [train[i] for i in indices]
        if len(batch) < 2:  # batch norm needs two samples
            return None
        x = torch.from_numpy(np.stack([sample_input(s, config, rng) for s in batch])).to(device)
        x = x.contiguous(memory_format=torch.channels_last)
        allowed = torch.from_numpy(np.stack([s.allowed for s in batch])).to(device)
        logits = net(x)
        if config.coarse_bias:
            is_coarse = torch.from_numpy(coarse_train[indices]).to(device=device, dtype=logits.dtype)
            logits = logits + is_coarse[:, None] * coarse_bias
        loss = allowed_set_loss(logits, allowed)
        if config.malignancy_weight > 0:
            malignant = torch.tensor([s.malignant for s in batch], device=device)
            loss = loss + config.malignancy_weight * malignancy_loss(logits, malignant)
        if teacher is not None:
            with torch.no_grad():
                teacher_log_probs = teacher(x)
            loss = loss + config.distill_weight * distillation_loss(logits, teacher_log_probs)
        return loss

    def validate() -> dict:
        if not val:
            return {}
        probs = predict(net, val, config)
        if config.coarse_bias:  # validate coarse-label lesions as they are trained: with their offset
            probs = with_offset(probs, coarse_val, coarse_bias)
        row = grader_metrics(probs, val, fine, "val", config.malignancy_weight)
        if teacher_val is not None:
            log_probs = torch.log(torch.from_numpy(probs).clamp_min(1e-7))
            row["val_teacher_kl"] = float(distillation_loss(log_probs, torch.log(
                torch.from_numpy(teacher_val).clamp_min(1e-7))))
        return row

    return train_epochs(
        config, state, name="grader", net=net, optimizer=optimizer, out=out, log=MetricsLog(out),
        epoch_order=lambda rng: rng.permutation(pool), batch_loss=batch_loss, validate=validate,
        score=lambda row: -row.get("val_loss", row["train_loss"]),
        extra=lambda: {"coarse_bias": coarse_bias.detach().cpu()})
