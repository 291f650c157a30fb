"""Agreement and calibration metrics: Cohen's kappa (unweighted or quadratic-weighted) with a seeded
bootstrap confidence interval, and the expected calibration error with its reliability-diagram bins.

Pure numpy, the one home of these metrics for evaluation and training (AUC, confusion matrices and
bootstrap intervals are in ``engine.grading_metrics``). As there, ``None`` stands for "not defined on
these data" (a kappa where both raters always say the same one class, an interval from fewer than two
cases), never a made-up value.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from engine.grading_metrics import confusion_matrix

BOOTSTRAP_REPLICATES = 2000
BOOTSTRAP_SEED = 0


def _weights(n_classes: int, weighting: str | None) -> np.ndarray:
    """Disagreement weights: 0 on the diagonal; 1 off it (unweighted) or ((i - j) / (k - 1))^2."""
    i, j = np.meshgrid(np.arange(n_classes), np.arange(n_classes), indexing="ij")
    if weighting is None:
        return (i != j).astype(np.float64)
    if weighting == "quadratic":
        return ((i - j) / max(n_classes - 1, 1)) ** 2
    raise ValueError(f"unknown kappa weighting {weighting!r}; use None or 'quadratic'")


def kappa_from_matrix(matrix: np.ndarray, weighting: str | None = None) -> float | None:
    """Cohen's kappa of a k x k confusion matrix (rows one rater, columns the other).

    kappa = 1 - sum(w * observed) / sum(w * expected), expected from the marginals. ``None`` when the
    expected disagreement is 0 (both raters used one and the same class throughout) or the matrix is empty.
    """
    m = np.asarray(matrix, dtype=np.float64)
    n = m.sum()
    if n == 0:
        return None
    w = _weights(m.shape[0], weighting)
    expected = np.outer(m.sum(axis=1), m.sum(axis=0)) / n
    disagreement_expected = float((w * expected).sum())
    if disagreement_expected <= 1e-12:
        return None
    return 1.0 - float((w * m).sum()) / disagreement_expected


def cohen_kappa(truth: Sequence[int] | np.ndarray, predicted: Sequence[int] | np.ndarray, n_classes: int,
                weighting: str | None = None) -> float | None:
    """Cohen's kappa between two label sequences of class indices 0..n_classes-1."""
    return kappa_from_matrix(confusion_matrix(truth, predicted, n_classes), weighting)


@dataclass(frozen=True, slots=True)
class KappaResult:
    """kappa and its 95 % bootstrap percentile interval (``None`` where undefined), observed agreement."""

    n: int
    kappa: float | None
    ci95: tuple[float, float] | None
    agreement: float | None
    confusion: np.ndarray


def kappa_with_ci(truth: Sequence[int] | np.ndarray, predicted: Sequence[int] | np.ndarray, n_classes: int,
                  weighting: str | None = None, *, replicates: int = BOOTSTRAP_REPLICATES,
                  seed: int = BOOTSTRAP_SEED) -> KappaResult:
    """Kappa with a 95 % percentile bootstrap interval over cases (resampled with replacement,
    ``numpy.random.default_rng(seed)``, so the interval is reproducible), and the observed agreement."""
    t = np.asarray(truth, dtype=np.int64).ravel()
    p = np.asarray(predicted, dtype=np.int64).ravel()
    matrix = confusion_matrix(t, p, n_classes)
    n = int(t.size)
    kappa = kappa_from_matrix(matrix, weighting)
    agreement = float(np.trace(matrix) / n) if n else None
    ci = None
    if n >= 2 and kappa is not None:
        rng = np.random.default_rng(seed)
        w = _weights(n_classes, weighting)
        values = []
        for _ in range(replicates):
            index = rng.integers(0, n, n)
            m = np.zeros((n_classes, n_classes))
            np.add.at(m, (t[index], p[index]), 1)
            expected = np.outer(m.sum(axis=1), m.sum(axis=0)) / n
            de = float((w * expected).sum())
            if de > 1e-12:
                values.append(1.0 - float((w * m).sum()) / de)
        if len(values) >= replicates // 2:  # mostly defined resamples, else no honest interval
            lo, hi = np.percentile(values, [2.5, 97.5])
            ci = (float(lo), float(hi))
    return KappaResult(n=n, kappa=kappa, ci95=ci, agreement=agreement, confusion=matrix)


@dataclass(frozen=True, slots=True)
class CalibrationBin:
    """One bin of a reliability diagram: predicted probabilities in [lo, hi), their count, mean and the
    observed fraction of positives."""

    lo: float
    hi: float
    n: int
    mean_predicted: float | None
    fraction_positive: float | None


def calibration_bins(labels: Sequence[bool] | np.ndarray, probabilities: Sequence[float] | np.ndarray,
                     n_bins: int = 10) -> list[CalibrationBin]:
    """Equal-width bins over [0, 1] (the last one closed) of predicted probability vs observed frequency."""
    y = np.asarray(labels, dtype=bool).ravel()
    p = np.asarray(probabilities, dtype=np.float64).ravel()
    if y.shape != p.shape:
        raise ValueError(f"labels and probabilities differ in length: {y.size} vs {p.size}")
    if p.size and (not np.all(np.isfinite(p)) or p.min() < 0 or p.max() > 1):
        raise ValueError("probabilities must be finite and within [0, 1]")
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    index = np.clip(np.digitize(p, edges[1:-1], right=False), 0, n_bins - 1)
    bins = []
    for b in range(n_bins):
        inside = index == b
        count = int(inside.sum())
        bins.append(CalibrationBin(lo=float(edges[b]), hi=float(edges[b + 1]), n=count,
                                   mean_predicted=float(p[inside].mean()) if count else None,
                                   fraction_positive=float(y[inside].mean()) if count else None))
    return bins


def expected_calibration_error(labels: Sequence[bool] | np.ndarray,
                               probabilities: Sequence[float] | np.ndarray, n_bins: int = 10) -> float | None:
    """ECE: sum over bins of (cases in bin / all cases) * |mean predicted - fraction positive|.

    ``None`` without cases."""
    bins = calibration_bins(labels, probabilities, n_bins)
    total = sum(b.n for b in bins)
    if total == 0:
        return None
    return float(sum(b.n / total * abs(b.mean_predicted - b.fraction_positive)  # type: ignore[operator]
                     for b in bins if b.n))
