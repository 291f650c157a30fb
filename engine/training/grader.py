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

from engine.augment import GraderAugment, jitter_box, perturb_mask, translate_frame
from engine.birads import CATEGORIES as GRADER_CATEGORIES
from engine.birads import MALIGNANCY_LIKELIHOOD, malignancy_score
from engine.data.datasets import (
    GraderSample,
    load_grader_samples,
    load_records,
    phantom_grader_samples,
)
from engine.grading_metrics import macro_auc, roc_auc
from engine.networks import GCNN, GCNNConfig
from engine.preprocess import grader_input, mask_bbox
from engine.splits import make_split
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
    write_json,
)

FINE_CATEGORIES = (1, 2, 3)  # 4A, 4B, 4C: a dataset with any of these one-hot labels is "five-way"


def allowed_set_loss(logits: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
    """Mean of ``-log(sum of softmax over the allowed categories)``; equals cross-entropy for one-hot."""
    log_all = torch.logsumexp(logits, dim=1)
    log_allowed = torch.logsumexp(logits.masked_fill(allowed <= 0, float("-inf")), dim=1)
    return (log_all - log_allowed).mean()


def malignancy_loss(logits: torch.Tensor, malignant: torch.Tensor) -> torch.Tensor:
    """Mean binary cross-entropy between pathology (1 malignant, 0 benign; -1 unknown is ignored) and
    the likelihood of malignancy implied by the softmax (``MALIGNANCY_LIKELIHOOD``); 0 if none is known."""
    known = malignant >= 0
    if not bool(known.any()):
        return logits.new_zeros(())
    likelihood = torch.softmax(logits[known], dim=1) @ logits.new_tensor(MALIGNANCY_LIKELIHOOD)
    return torch.nn.functional.binary_cross_entropy(likelihood, malignant[known].to(logits.dtype))


def distillation_loss(logits: torch.Tensor, teacher_log_probs: torch.Tensor) -> torch.Tensor:
    """Mean KL(teacher || student) over the batch, in nats: sum_k p_k (log p_k - log q_k), where p are the
    teacher's probabilities and q = softmax(logits). Zero exactly when the student matches the teacher."""
    log_student = torch.log_softmax(logits, dim=1)
    teacher = teacher_log_probs.exp()
    return (teacher * (teacher_log_probs - log_student)).sum(dim=1).mean()


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


def sample_input(sample: GraderSample, config: TrainConfig, rng: np.random.Generator | None) -> np.ndarray:
    """The G-CNN input for one sample: with ``rng``, randomly translated and horizontally flipped."""
    image, mask = sample.image, sample.mask
    if config.train_masks == "pipeline" and sample.pipeline_mask is not None:
        mask = sample.pipeline_mask
    if config.view == "frame":
        if rng is not None:
            if config.mask_channel:
                mask = perturb_mask(mask, rng)
            if rng.random() < GraderAugment().flip:
                image, mask = image[:, ::-1], mask[:, ::-1]
            image, mask = translate_frame(np.ascontiguousarray(image), np.ascontiguousarray(mask), rng)
        return grader_input(image, mask, size=config.input_size, mask_channel=config.mask_channel,
                            view="frame")
    box = mask_bbox(mask)
    assert box is not None
    if rng is not None:
        if config.mask_channel:
            mask = perturb_mask(mask, rng)
        if rng.random() < GraderAugment().flip:
            image, mask = image[:, ::-1], mask[:, ::-1]
            box = (image.shape[1] - box[0] - box[2], box[1], box[2], box[3])
        box = jitter_box(box, rng)
    return grader_input(np.ascontiguousarray(image), np.ascontiguousarray(mask), size=config.input_size,
                        margin=config.margin, mask_channel=config.mask_channel, box=box)


def fine_datasets(samples: list[GraderSample]) -> set[str]:
    """Names of datasets whose labels include a one-hot 4A, 4B or 4C."""
    names = set()
    for s in samples:
        if s.allowed.sum() == 1 and int(np.argmax(s.allowed)) in FINE_CATEGORIES:
            names.add(s.id.split("/")[0])
    return names


@torch.no_grad()
def predict(net: torch.nn.Module, samples: list[GraderSample], config: TrainConfig) -> np.ndarray:
    """Softmax probabilities (N, 5) for samples, no augmentation (on the network's device)."""
    net.eval()
    device = next(net.parameters()).device
    out = []
    for start in range(0, len(samples), 64):
        x = np.stack([sample_input(s, config, None) for s in samples[start:start + 64]])
        x = torch.from_numpy(x).to(device).contiguous(memory_format=torch.channels_last)
        out.append(torch.softmax(net(x), dim=1).cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, len(GRADER_CATEGORIES)), np.float32)


def with_offset(probs: np.ndarray, rows: list[bool], offset: torch.Tensor) -> np.ndarray:
    """``probs`` with the logit ``offset`` added where ``rows`` is true: softmax(z + b) is
    softmax(z) * exp(b), renormalized."""
    out = probs.astype(np.float64, copy=True)
    selected = np.asarray(rows, bool)
    out[selected] *= np.exp(offset.detach().cpu().numpy().astype(np.float64))
    out[selected] /= out[selected].sum(axis=1, keepdims=True)
    return out.astype(probs.dtype)


def grader_metrics(probs: np.ndarray, samples: list[GraderSample], fine: set[str], prefix: str,
                   malignancy_weight: float = 0.0) -> dict:
    """Loss on all samples (the training objective: category loss + ``malignancy_weight`` x pathology
    loss); five-way accuracy and macro AUC on five-way datasets; 3/4/5 accuracy on coarse samples;
    malignancy AUC (``malignancy_score``)."""
    if not samples:
        return {}
    allowed = torch.from_numpy(np.stack([s.allowed for s in samples]))
    logp = torch.log(torch.from_numpy(probs).clamp_min(1e-7))
    category = float(allowed_set_loss(logp, allowed))
    pathology = float(malignancy_loss(logp, torch.tensor([s.malignant for s in samples])))
    row = {f"{prefix}_loss": category + malignancy_weight * pathology,
           f"{prefix}_category_loss": category, f"{prefix}_malignancy_loss": pathology}
    is_fine = np.array([s.id.split("/")[0] in fine for s in samples])
    if is_fine.any():
        labels = np.array([int(np.argmax(s.allowed)) for s in samples])[is_fine]
        row[f"{prefix}_fine_acc"] = float((probs[is_fine].argmax(1) == labels).mean())
        row[f"{prefix}_fine_macro_auc"] = macro_auc(probs[is_fine], labels)
    if (~is_fine).any():
        coarse = np.array([[p[0], p[1:4].sum(), p[4]] for p in probs[~is_fine]])
        truth = np.array([0 if s.allowed[0] else (2 if s.allowed[4] else 1) for s, f
                          in zip(samples, is_fine, strict=True) if not f])
        row[f"{prefix}_coarse_acc"] = float((coarse.argmax(1) == truth).mean())
    malignant = np.array([s.malignant for s in samples])
    known = malignant >= 0
    if known.any():
        row[f"{prefix}_malignancy_auc"] = roc_auc(malignancy_score(probs[known]), malignant[known] == 1)
    return row


def with_pipeline_masks(train: list[GraderSample], val: list[GraderSample],
                        config: TrainConfig) -> tuple[list[GraderSample], list[GraderSample], dict]:
    """``train`` and ``val`` with the pipeline's masks of ``config.roi_model`` attached, and the counts."""
    from dataclasses import asdict

    from engine.training.pipeline_masks import attach_pipeline_masks

    if config.roi_model is None:
        raise TrainingError("--train-masks pipeline needs --roi-model: the ROI-CNN ONNX model whose masks "
                            "the grader will get in use (e.g. models/roi_cnn.onnx)")
    both, stats = attach_pipeline_masks(train + val, config.roi_model, cache_dir=config.cache_dir,
                                        threads=config.threads, progress=config.progress)
    print(stats.describe(), file=sys.stderr)
    return both[:len(train)], both[len(train):], {"roi_model": config.roi_model, **asdict(stats)}


def prepare_grader_data(config: TrainConfig,
                        out: Path) -> tuple[list[GraderSample], list[GraderSample], dict]:
    """Train and validation lesions from the data folders (split by patient) plus phantom samples."""
    train: list[GraderSample] = []
    val: list[GraderSample] = []
    info: dict = {}
    if config.data:
        records = load_records(config.data)
        split = make_split(records, config.split_config())
        info = {"summary": split.summary(), "test_fold": config.test_fold, "cv_folds": config.cv_folds,
                "val_ids": [f"{r.dataset}/{r.id}" for r in split.val],
                "test_ids": [f"{r.dataset}/{r.id}" for r in split.test]}
        train = load_grader_samples(split.train, cache_dir=config.cache_dir, progress=config.progress)
        val = load_grader_samples(split.val, cache_dir=config.cache_dir, progress=config.progress)
    if config.phantom:
        phantom = phantom_grader_samples(config.phantom, seed=config.seed)
        cut = max(1, len(phantom) // 5) if not val else 0
        val += phantom[:cut]
        train += phantom[cut:]
    if not train:
        raise TrainingError("nothing to train the grader on: give --data DIR with lesion masks and BI-RADS "
                            "categories 2-5, or --phantom N")
    if config.train_masks == "pipeline":
        train, val, info["pipeline_masks"] = with_pipeline_masks(train, val, config)
    write_json(out / "split.json", info)
    return train, val, info


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
