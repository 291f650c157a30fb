"""The statistics that decide whether a grader beats the majority-class baseline, and the pooling of
cross-validation folds into one held-out report."""

from __future__ import annotations

from math import comb

import numpy as np
import pytest

from engine.grading_metrics import binomial_p, bootstrap_interval, paired_sign_p
from engine.training.evaluate import average_grader_results, grader_report, pool_grader_results


def test_binomial_p_is_the_upper_tail(rng: np.random.Generator) -> None:
    total = int(rng.integers(20, 80))
    correct = int(rng.integers(0, total + 1))
    rate = float(rng.uniform(0.1, 0.6))
    tail = sum(comb(total, k) * rate**k * (1 - rate) ** (total - k) for k in range(correct, total + 1))
    assert binomial_p(correct, total, rate) == pytest.approx(tail, rel=1e-9)
    assert binomial_p(22, 45, 12 / 45) < 0.005 < binomial_p(15, 45, 12 / 45)


def test_paired_sign_p_counts_only_discordant_cases(rng: np.random.Generator) -> None:
    both = rng.random(100) < 0.5
    a_only = np.zeros(100, bool)
    a_only[:12] = True
    b_only = np.zeros(100, bool)
    b_only[50:52] = True
    a, b = (both | a_only) & ~b_only, (both | b_only) & ~a_only
    discordant_a, discordant_b = int((a & ~b).sum()), int((~a & b).sum())
    n = discordant_a + discordant_b
    expected = sum(comb(n, k) for k in range(discordant_a, n + 1)) / 2**n
    assert paired_sign_p(a, b) == pytest.approx(expected)
    assert paired_sign_p(b, a) > 0.9
    assert paired_sign_p(a, a) == 1.0


def test_bootstrap_interval_brackets_the_estimate(rng: np.random.Generator) -> None:
    hits = rng.random(400) < 0.35
    low, high = bootstrap_interval(lambda x: float(x.mean()), (hits,))
    assert low < hits.mean() < high
    assert 0.05 < high - low < 0.12  # about 4 standard errors of a proportion over 400 cases


def test_report_against_a_majority_per_case(rng: np.random.Generator) -> None:
    labels = rng.integers(0, 5, 60)
    probs = rng.dirichlet(np.ones(5), 60)
    probs[np.arange(60), labels] += 1.0  # a grader that is right on every case
    probs /= probs.sum(1, keepdims=True)
    majority = np.where(np.arange(60) < 30, 0, 2)  # two folds with different training majorities
    report = grader_report(probs, labels, rng.integers(-1, 2, 60), majority)
    assert report["accuracy"] == 1.0 and report["macro_auc"] == 1.0
    assert report["majority_accuracy"] == pytest.approx(float((labels == majority).mean()))
    assert report["accuracy_vs_majority_binomial_p"] < 1e-6
    assert report["accuracy_vs_majority_mcnemar_p"] < 1e-6
    assert report["accuracy_95ci"][0] <= 1.0 <= report["accuracy_95ci"][1] + 1e-12


def _fold(ids: list[str], labels: list[int], correct: list[bool], majority: int) -> dict:
    rows = []
    for ident, label, right in zip(ids, labels, correct, strict=True):
        probs = np.full(5, 0.1)
        probs[label if right else (label + 1) % 5] = 0.6
        rows.append({"id": ident, "label": label, "malignant": int(label >= 3), "majority": majority,
                     "ground_truth_masks": probs.tolist()})
    return {"datasets": ["usg"], "metadata": {"sonograde.model_id": f"fold-{ids[0]}"}, "per_case": rows}


def test_pooling_grades_every_case_once_against_its_folds_majority(rng: np.random.Generator) -> None:
    n = int(rng.integers(10, 30))
    labels = rng.integers(0, 5, 2 * n).tolist()
    correct = (rng.random(2 * n) < 0.6).tolist()
    first = _fold([f"a{i}" for i in range(n)], labels[:n], correct[:n], majority=0)
    second = _fold([f"b{i}" for i in range(n)], labels[n:], correct[n:], majority=4)
    pooled = pool_grader_results([first, second])
    report = pooled["ground_truth_masks"]
    assert report["cases"] == 2 * n and pooled["folds"] == 2
    assert report["accuracy"] == pytest.approx(np.mean(correct))
    expected_majority = (sum(x == 0 for x in labels[:n]) + sum(x == 4 for x in labels[n:])) / (2 * n)
    assert report["majority_accuracy"] == pytest.approx(expected_majority)
    assert "two_stage_masks" not in pooled
    with pytest.raises(ValueError, match="two of the pooled results"):
        pool_grader_results([first, first])


def test_averaging_reports_the_mean_of_the_members_probabilities(rng: np.random.Generator) -> None:
    n = int(rng.integers(10, 30))
    ids = [f"c{i}" for i in range(n)]
    labels = rng.integers(0, 5, n).tolist()
    members = [_fold(ids, labels, (rng.random(n) < 0.5).tolist(), majority=2) for _ in range(3)]
    for member in members:  # fresh probabilities, so the mean is not any member's
        for row in member["per_case"]:
            row["ground_truth_masks"] = rng.dirichlet(np.ones(5)).tolist()
    averaged = average_grader_results(list(reversed(members)))
    mean = np.mean([[row["ground_truth_masks"] for row in m["per_case"]] for m in members], axis=0)
    expected = grader_report(mean, np.array(labels), np.array([int(x >= 3) for x in labels]), 2)
    assert averaged["members"] == 3
    assert averaged["ground_truth_masks"]["accuracy"] == pytest.approx(expected["accuracy"])
    assert averaged["ground_truth_masks"]["macro_auc"] == pytest.approx(expected["macro_auc"])
    with pytest.raises(ValueError, match="different cases"):
        average_grader_results([members[0], _fold(ids[1:], labels[1:], [True] * (n - 1), majority=2)])
    with pytest.raises(ValueError, match="different majority"):
        average_grader_results([members[0], _fold(ids, labels, [True] * n, majority=3)])


def test_a_case_the_pipeline_did_not_grade_counts_wrong(rng: np.random.Generator) -> None:
    # The evaluation gives a missed lesion uniform probabilities; their arg-max is category 0 ("3"),
    # the usual majority class, which must not turn a miss into a correct "3".
    n = int(rng.integers(20, 40))
    labels = np.zeros(n, int)
    labels[n // 2:] = rng.integers(1, 5, n - n // 2)
    probs = np.eye(5)[labels] * 0.9 + 0.02  # right on every case it grades
    missed = np.zeros(n, bool)
    missed[: n // 4] = True  # some "3" cases the ROI-CNN missed
    probs[missed] = 0.2
    malignant = (labels >= 3).astype(int)
    report = grader_report(probs, labels, malignant, 0, graded=~missed)
    assert report["accuracy"] == pytest.approx(1 - missed.mean())
    assert report["not_graded"] == int(missed.sum())
    assert report["per_category_accuracy"]["3"] == pytest.approx(1 - missed.sum() / (labels == 0).sum())
    assert int(np.sum(report["confusion_rows_truth_cols_pred"])) == n - int(missed.sum())
    assert grader_report(probs, labels, malignant, 0)["accuracy"] == 1.0  # what counting it as "3" gave
    # pooling and averaging read the per-case "lesion_found" of two-stage results
    rows = [{"id": f"m{i}", "label": int(labels[i]), "malignant": int(malignant[i]), "majority": 0,
             "ground_truth_masks": probs[i].tolist(), "two_stage_masks": probs[i].tolist(),
             "lesion_found": bool(not missed[i])} for i in range(n)]
    fold = {"datasets": ["usg"], "metadata": {}, "per_case": rows}
    pooled = pool_grader_results([fold])
    assert pooled["two_stage_masks"]["accuracy"] == pytest.approx(report["accuracy"])
    assert pooled["ground_truth_masks"]["accuracy"] == 1.0
    assert average_grader_results([fold, fold])["two_stage_masks"]["accuracy"] == pytest.approx(
        report["accuracy"])
