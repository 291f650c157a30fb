"""Known-answer tests of the evaluation's ROC/AUC, confusion, accuracies and the summaries."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from engine.grading_metrics import (
    auc,
    confusion_matrix,
    macro_auc,
    one_vs_rest_accuracy,
    per_class_recall,
    roc_auc,
    roc_curve,
    trapezoid_area,
)
from sonograde.evaluation.labels import CATEGORIES, grading_label
from sonograde.evaluation.summary import (
    GradedCase,
    SegmentationScores,
    summarize_grading,
    summarize_segmentation,
)


def brute_force_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    pos = scores[labels]
    neg = scores[~labels]
    total = 0.0
    for p, n in itertools.product(pos, neg):
        total += 1.0 if p > n else 0.5 if p == n else 0.0
    return total / (len(pos) * len(neg))


def test_tiny_roc_known_auc() -> None:
    # positives 0.9, 0.4; negatives 0.6, 0.1: pairs (0.9>0.6, 0.9>0.1, 0.4<0.6, 0.4>0.1) -> 3/4
    labels = [True, False, True, False]
    scores = [0.9, 0.6, 0.4, 0.1]
    assert auc(labels, scores) == pytest.approx(0.75)
    fpr, tpr, thresholds = roc_curve(labels, scores)
    assert fpr.tolist() == [0.0, 0.0, 0.5, 0.5, 1.0]
    assert tpr.tolist() == [0.0, 0.5, 0.5, 1.0, 1.0]
    assert thresholds[0] == np.inf
    assert trapezoid_area(fpr, tpr) == pytest.approx(0.75)


def test_perfect_inverted_and_tied_scores() -> None:
    assert auc([True, True, False], [0.8, 0.7, 0.1]) == 1.0
    assert auc([True, True, False], [0.1, 0.2, 0.9]) == 0.0
    assert auc([True, False, True, False], [0.5, 0.5, 0.5, 0.5]) == 0.5
    fpr, tpr, _ = roc_curve([True, False, True, False], [0.5] * 4)
    assert fpr.tolist() == [0.0, 1.0] and tpr.tolist() == [0.0, 1.0]


def test_auc_undefined_for_one_class() -> None:
    assert auc([True, True], [0.2, 0.3]) is None
    assert roc_curve([False, False], [0.2, 0.3]) is None
    with pytest.raises(ValueError, match="differ in length"):
        auc([True, False], [0.1])
    with pytest.raises(ValueError, match="NaN"):
        auc([True, False], [np.nan, 0.1])


def test_auc_matches_pairwise_definition_on_random_data(rng: np.random.Generator) -> None:
    for _ in range(5):
        n = int(rng.integers(5, 60))
        labels = rng.random(n) < 0.4
        labels[0], labels[1] = True, False
        scores = np.round(rng.random(n), 1)  # rounding makes ties
        expected = brute_force_auc(labels, scores)
        assert auc(labels, scores) == pytest.approx(expected)
        fpr, tpr, _ = roc_curve(labels, scores)
        assert trapezoid_area(fpr, tpr) == pytest.approx(expected)
        assert np.all(np.diff(fpr) >= 0) and np.all(np.diff(tpr) >= 0)


def test_confusion_and_accuracies() -> None:
    truth = [0, 0, 1, 1, 1, 2]
    pred = [0, 1, 1, 1, 2, 2]
    m = confusion_matrix(truth, pred, 3)
    assert m.tolist() == [[1, 1, 0], [0, 2, 1], [0, 0, 1]]
    assert per_class_recall(m) == pytest.approx([0.5, 2 / 3, 1.0])
    # class 0: TP 1, FP 0, FN 1 -> (6 - 1) / 6
    assert one_vs_rest_accuracy(m)[0] == pytest.approx(5 / 6)
    assert per_class_recall(confusion_matrix([0], [0], 2))[1] is None
    with pytest.raises(ValueError, match="outside"):
        confusion_matrix([0, 3], [0, 0], 3)


def test_grading_labels() -> None:
    assert grading_label("4A") == "4A"
    assert grading_label("4") == "4"
    assert grading_label("2") == "3"
    assert grading_label("2", "exclude") is None
    for value in ("1", "0", "6", None):
        assert grading_label(value) is None


def one_hot(category: str, confidence: float = 0.9) -> tuple[float, ...]:
    rest = (1.0 - confidence) / 4
    return tuple(confidence if c == category else rest for c in CATEGORIES)


def test_grading_summary_perfect_predictions(rng: np.random.Generator) -> None:
    labels = [CATEGORIES[i] for i in rng.integers(0, 5, 40)] + list(CATEGORIES)
    cases = [GradedCase(str(i), label, one_hot(label, float(rng.uniform(0.5, 0.99))),
                        "malignant" if label in ("4C", "5") else "benign")
             for i, label in enumerate(labels)]
    summary = summarize_grading(cases)
    assert summary["n"] == len(labels)
    assert summary["accuracy"] == 1.0
    assert summary["per_category_accuracy"] == {c: 1.0 for c in CATEGORIES}
    assert summary["macro_auc"] == 1.0
    assert summary["malignancy_auc"] == 1.0
    matrix = np.array(summary["confusion"])
    assert np.trace(matrix) == matrix.sum() == len(labels)
    assert "coarse" not in summary


def test_grading_summary_known_mistakes_and_missed_lesion() -> None:
    cases = [
        GradedCase("a", "3", one_hot("3")),
        GradedCase("b", "3", one_hot("4A")),  # wrong
        GradedCase("c", "5", one_hot("5")),
        GradedCase("d", "5", None),  # no lesion found: wrong, not in the confusion matrix
        GradedCase("e", None, one_hot("5")),  # not graded
    ]
    summary = summarize_grading(cases)
    assert summary["n"] == 4
    assert summary["accuracy"] == 0.5
    assert summary["per_category_accuracy"] == {"3": 0.5, "5": 0.5}
    assert summary["n_no_lesion"] == 1
    assert np.array(summary["confusion"]).sum() == 3
    assert summary["confusion"][0][1] == 1
    assert "malignancy_auc" not in summary  # no pathology given


def test_coarse_four_uses_summed_probability() -> None:
    # P(4A)+P(4B)+P(4C) = 0.6 beats P(3) = 0.4 even though 3 is the arg-max category
    split_four = (0.4, 0.2, 0.2, 0.2, 0.0)
    cases = [
        GradedCase("a", "4", split_four),
        GradedCase("b", "4", one_hot("3")),
        GradedCase("c", "3", one_hot("3")),
        GradedCase("d", "5", one_hot("5")),
    ]
    summary = summarize_grading(cases)
    assert summary["per_category_accuracy"]["4"] == 0.5
    assert summary["accuracy"] == 0.75
    assert summary["coarse"]["confusion_labels"] == ["3", "4", "5"]
    assert summary["macro_auc_over"] == ["3", "4", "5"]
    assert summary["coarse"]["per_category_accuracy"] == {"3": 1.0, "4": 0.5, "5": 1.0}


def test_segmentation_summary_perfect_and_empty() -> None:
    perfect = [SegmentationScores(dsc=1.0, hd95=0.0, avg_dist=0.0, hd_max=0.0, hd95_mm=0.0,
                                  avg_dist_mm=0.0)] * 3
    empty = [SegmentationScores(dsc=0.0, hd95=None, avg_dist=None, empty=True)] * 2
    s = summarize_segmentation(perfect)
    assert s["dsc_mean"] == 1.0 and s["dsc_median"] == 1.0 and s["hd95_mean"] == 0.0 and s["n_mm"] == 3
    s = summarize_segmentation(empty)
    assert s["dsc_mean"] == 0.0 and s["n_empty"] == 2 and "hd95_mean" not in s and "n_mm" not in s
    s = summarize_segmentation(perfect + empty)
    assert s["n"] == 5 and s["dsc_mean"] == pytest.approx(0.6) and s["dsc_median"] == 1.0
    assert summarize_segmentation([]) == {"n": 0}


def test_auc_and_roc_auc_are_one_statistic_with_two_empty_case_conventions(rng):
    """Evaluation (``auc``: None when undefined) and training (``roc_auc``: NaN) share one Mann–Whitney."""
    labels = rng.random(40) < 0.4
    scores = np.round(rng.random(40), 1)  # rounded: ties
    assert roc_auc(scores, labels) == pytest.approx(auc(labels, scores))
    assert roc_auc(scores, labels) == pytest.approx(brute_force_auc(labels, scores))
    assert auc(np.ones(5, bool), scores[:5]) is None
    assert np.isnan(roc_auc(scores[:5], np.ones(5, bool)))
    probs = rng.dirichlet(np.ones(5), 30)
    assert np.isnan(macro_auc(probs, np.zeros(30, int)))  # one class: no AUC defined
    assert confusion_matrix([], [], 5).sum() == 0
