"""Classification metrics without scikit-learn: ROC AUC (Mann-Whitney), one-vs-rest AUCs, confusion
matrix, per-category accuracy."""

from __future__ import annotations

import numpy as np
from scipy.stats import rankdata


def roc_auc(scores: np.ndarray, positive: np.ndarray) -> float:
    """Area under the ROC curve of ``scores`` for bool labels ``positive`` (ties count half);
    NaN when one class is absent."""
    scores = np.asarray(scores, dtype=np.float64)
    positive = np.asarray(positive, dtype=bool)
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = rankdata(scores)
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def one_vs_rest_auc(probs: np.ndarray, labels: np.ndarray) -> list[float]:
    """AUC of each class's probability for "this class vs the rest" (NaN where a class is absent)."""
    return [roc_auc(probs[:, k], labels == k) for k in range(probs.shape[1])]


def macro_auc(probs: np.ndarray, labels: np.ndarray) -> float:
    """Mean of the one-vs-rest AUCs over classes present in ``labels``."""
    values = [v for v in one_vs_rest_auc(probs, labels) if not np.isnan(v)]
    return float(np.mean(values)) if values else float("nan")


def confusion(labels: np.ndarray, predicted: np.ndarray, classes: int) -> np.ndarray:
    """Confusion matrix, rows = truth, columns = prediction."""
    matrix = np.zeros((classes, classes), np.int64)
    for t, p in zip(labels, predicted, strict=True):
        matrix[int(t), int(p)] += 1
    return matrix
