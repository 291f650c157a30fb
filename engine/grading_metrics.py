"""Classification metrics for grading, the one home for evaluation and training: ROC curves, AUC
(Mann–Whitney), confusion matrices, accuracies, and the tests that say whether a grader beats a baseline
(exact binomial, exact McNemar sign test, percentile bootstrap intervals).

Pure numpy and scipy, so evaluation needs no scikit-learn and no torch. An undefined value (an AUC where
all cases are of one class) is ``None`` from :func:`auc` (the evaluation report's convention: left out of
the JSON) and NaN from :func:`roc_auc` (the array convention of training and cross-validation, where NaN
propagates through means); both are the same Mann–Whitney statistic.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy.stats import binomtest, rankdata


def _binary_inputs(labels: Sequence[bool] | np.ndarray, scores: Sequence[float] | np.ndarray
                   ) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(labels, dtype=bool).ravel()
    s = np.asarray(scores, dtype=np.float64).ravel()
    if y.shape != s.shape:
        raise ValueError(f"labels and scores differ in length: {y.size} vs {s.size}")
    if not np.all(np.isfinite(s)):
        raise ValueError("scores contain NaN or infinity")
    return y, s


def auc(labels: Sequence[bool] | np.ndarray, scores: Sequence[float] | np.ndarray) -> float | None:
    """Area under the ROC curve: P(score of a random positive > score of a random negative), ties 1/2.

    Computed exactly with the Mann–Whitney U statistic on average ranks. Returns ``None`` when there
    are no positives or no negatives (the AUC is undefined there).
    """
    y, s = _binary_inputs(labels, scores)
    return _mann_whitney_auc(y, s)


def _mann_whitney_auc(y: np.ndarray, s: np.ndarray) -> float | None:
    n_pos = int(y.sum())
    n_neg = int(y.size - n_pos)
    if n_pos == 0 or n_neg == 0:
        return None
    ranks = rankdata(s)  # average ranks for ties = the 1/2 credit of Mann–Whitney
    u = float(ranks[y].sum()) - n_pos * (n_pos + 1) / 2.0
    return u / (n_pos * n_neg)


def roc_auc(scores: np.ndarray, positive: np.ndarray) -> float:
    """:func:`auc` with the arguments of training code (scores first) and NaN where it is undefined."""
    value = _mann_whitney_auc(np.asarray(positive, dtype=bool).ravel(),
                              np.asarray(scores, dtype=np.float64).ravel())
    return float("nan") if value is None else float(value)


def one_vs_rest_auc(probs: np.ndarray, labels: np.ndarray) -> list[float]:
    """AUC of each class's probability for "this class vs the rest" (NaN where a class is absent)."""
    return [roc_auc(probs[:, k], labels == k) for k in range(probs.shape[1])]


def macro_auc(probs: np.ndarray, labels: np.ndarray) -> float:
    """Mean of the one-vs-rest AUCs over classes present in ``labels`` (NaN when none is defined)."""
    values = [v for v in one_vs_rest_auc(probs, labels) if not np.isnan(v)]
    return float(np.mean(values)) if values else float("nan")


def roc_curve(labels: Sequence[bool] | np.ndarray, scores: Sequence[float] | np.ndarray
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """ROC curve points ``(fpr, tpr, thresholds)``, starting at (0, 0) and ending at (1, 1).

    A case is called positive when its score is >= the threshold; tied scores move together (a
    diagonal step), so the trapezoidal area under the returned curve equals :func:`auc`. The first
    threshold is ``+inf``. Returns ``None`` when one of the two classes is absent.
    """
    y, s = _binary_inputs(labels, scores)
    n_pos = int(y.sum())
    n_neg = int(y.size - n_pos)
    if n_pos == 0 or n_neg == 0:
        return None
    order = np.argsort(-s, kind="mergesort")
    s_sorted = s[order]
    y_sorted = y[order]
    # Last index of each run of equal scores: where the curve has a point.
    distinct = np.flatnonzero(np.diff(s_sorted)) if s_sorted.size > 1 else np.array([], dtype=int)
    ends = np.concatenate([distinct, [s_sorted.size - 1]])
    tps = np.cumsum(y_sorted)[ends]
    fps = (ends + 1) - tps
    tpr = np.concatenate([[0.0], tps / n_pos])
    fpr = np.concatenate([[0.0], fps / n_neg])
    thresholds = np.concatenate([[np.inf], s_sorted[ends]])
    return fpr, tpr, thresholds


def trapezoid_area(x: np.ndarray, y: np.ndarray) -> float:
    """Trapezoidal area under a curve given by points (x, y) in order of increasing x."""
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    return float(np.sum((x[1:] - x[:-1]) * (y[1:] + y[:-1]) / 2.0))


def confusion_matrix(truth: Sequence[int] | np.ndarray, predicted: Sequence[int] | np.ndarray,
                     n_classes: int) -> np.ndarray:
    """``n_classes`` x ``n_classes`` int64 counts; rows are the true class, columns the predicted one."""
    t = np.asarray(truth, dtype=np.int64).ravel()
    p = np.asarray(predicted, dtype=np.int64).ravel()
    if t.shape != p.shape:
        raise ValueError(f"truth and predicted differ in length: {t.size} vs {p.size}")
    for name, values in (("truth", t), ("predicted", p)):
        if values.size and (values.min() < 0 or values.max() >= n_classes):
            raise ValueError(f"{name} has a class index outside 0..{n_classes - 1}")
    matrix = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(matrix, (t, p), 1)
    return matrix


def per_class_recall(matrix: np.ndarray) -> list[float | None]:
    """Per-class accuracy as the paper's Table 3 reads it: correct / cases of that true class (recall).

    ``None`` for a class with no cases.
    """
    m = np.asarray(matrix)
    totals = m.sum(axis=1)
    return [float(m[i, i] / totals[i]) if totals[i] else None for i in range(m.shape[0])]


def one_vs_rest_accuracy(matrix: np.ndarray) -> list[float | None]:
    """Per-class binary accuracy (TP + TN) / N of "this class vs the rest" (an alternative reading of
    "per-category accuracy"; it is inflated by the true negatives). ``None`` for an empty matrix."""
    m = np.asarray(matrix)
    n = int(m.sum())
    if n == 0:
        return [None] * m.shape[0]
    out: list[float | None] = []
    for i in range(m.shape[0]):
        tp = m[i, i]
        fp = m[:, i].sum() - tp
        fn = m[i, :].sum() - tp
        out.append(float((n - fp - fn) / n))
    return out


def mean_or_none(values: Sequence[float | None]) -> float | None:
    """Mean of the values that are not ``None`` and finite; ``None`` where there are none."""
    finite = [float(v) for v in values if v is not None and np.isfinite(v)]
    return float(np.mean(finite)) if finite else None


def median_or_none(values: Sequence[float | None]) -> float | None:
    """Median of the values that are not ``None`` and finite; ``None`` where there are none."""
    finite = [float(v) for v in values if v is not None and np.isfinite(v)]
    return float(np.median(finite)) if finite else None


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
