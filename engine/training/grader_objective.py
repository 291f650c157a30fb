"""What the G-CNN is trained to minimize, and how validation reads it.

``allowed_set_loss``: ``-log`` of the summed probability of the categories a label allows (a coarse
BUS-BRA "4" allows 4A, 4B and 4C; a five-way label one category, where it is cross-entropy).
``malignancy_loss``: binary cross-entropy between the biopsy result and the likelihood of malignancy the
five probabilities imply (``engine.birads.malignancy_score``). ``distillation_loss``: KL divergence to a
teacher's probabilities. ``grader_metrics``: the objective and the accuracies and AUCs of a validation set.
"""

from __future__ import annotations

import numpy as np
import torch

from engine.birads import MALIGNANCY_LIKELIHOOD, malignancy_score
from engine.data.datasets import GraderSample
from engine.grading_metrics import macro_auc, roc_auc


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
