"""Classification metrics without scikit-learn: ROC AUC (Mann-Whitney), one-vs-rest AUCs, confusion
matrix, per-category accuracy; and the tests used to say whether a grader beats a baseline (exact
binomial, exact McNemar sign test, percentile bootstrap intervals)."""

from __future__ import annotations

import numpy as np
from scipy.stats import binomtest, rankdata


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


def binomial_p(correct: int, total: int, rate: float) -> float:
    """One-sided exact binomial p-value of ``correct`` or more hits in ``total`` cases if each is right
    with probability ``rate`` (e.g. the majority-class baseline's accuracy)."""
    if total == 0:
        return float("nan")
    return float(binomtest(correct, total, min(max(rate, 0.0), 1.0), alternative="greater").pvalue)


def paired_sign_p(a_correct: np.ndarray, b_correct: np.ndarray) -> float:
    """One-sided exact McNemar (sign) test that classifier A is right more often than B on the same
    cases: among the discordant cases, P(at least as many A-only hits) if each side were equally likely."""
    a, b = np.asarray(a_correct, bool), np.asarray(b_correct, bool)
    a_only, b_only = int((a & ~b).sum()), int((~a & b).sum())
    if a_only + b_only == 0:
        return 1.0
    return float(binomtest(a_only, a_only + b_only, 0.5, alternative="greater").pvalue)


def bootstrap_interval(statistic, arrays: tuple[np.ndarray, ...], *, resamples: int = 2000,
                       level: float = 0.95, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of ``statistic(*arrays)`` over cases (rows resampled together);
    resamples where the statistic is NaN (e.g. a class missing for an AUC) are skipped."""
    rng = np.random.default_rng(seed)
    n = len(arrays[0])
    values = []
    for _ in range(resamples):
        index = rng.integers(0, n, n)
        value = statistic(*(x[index] for x in arrays))
        if not np.isnan(value):
            values.append(value)
    if not values:
        return float("nan"), float("nan")
    tail = (1.0 - level) / 2.0
    return float(np.quantile(values, tail)), float(np.quantile(values, 1.0 - tail))
