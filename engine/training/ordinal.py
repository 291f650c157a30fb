"""An ordinal head for a frozen G-CNN: five-way BI-RADS from one suspicion score and four cut points.

BI-RADS 3, 4A, 4B, 4C and 5 are ordered by the likelihood of malignancy (ACR ranges). A grader trained on
coarse-label data (BUS-BRA: 3, 4, 5 and pathology) ranks lesions by suspicion but has never been told where
4A ends and 4B begins; a five-way dataset of a hundred-odd lesions is too small to retrain it without
overfitting and forgetting. The head keeps the network and re-reads its output through a cumulative-logit
(proportional-odds) model, McCullagh (1980), "Regression models for ordinal data", J. R. Stat. Soc. B 42:

    s = logit(m),  m = sum_k p_k * MALIGNANCY_LIKELIHOOD_k     (the network's expected likelihood)
    P(Y > k | s) = sigmoid(slope * s - cut_k),  k = 1..4,  cut_1 < cut_2 < cut_3 < cut_4,  slope > 0

Five parameters, fitted by maximum likelihood on the five-way cases. Because the head is monotone in s, the
malignancy ranking (and AUC) of the network is unchanged; only the five-way reading moves.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from scipy.optimize import minimize

from engine.birads import CATEGORIES as GRADER_CATEGORIES
from engine.ordinal_head import OrdinalHead, ordinal_probabilities, suspicion_score
from engine.splits import SplitConfig

if TYPE_CHECKING:
    from engine.data.datasets import GraderSample


def _unpack(theta: np.ndarray) -> OrdinalHead:
    # slope and the gaps between cuts are optimized in log space so the ordering constraints always hold
    cuts = theta[1] + np.concatenate([[0.0], np.cumsum(np.exp(theta[2:]))])
    return OrdinalHead(slope=float(np.exp(theta[0])), cuts=tuple(float(c) for c in cuts))  # type: ignore[arg-type]


def fit_ordinal_head(scores: np.ndarray, labels: np.ndarray) -> OrdinalHead:
    """Maximum-likelihood cumulative-logit head on suspicion scores (N,).

    labels: five-way labels (N,) in 0..4, or allowed sets (N, 5) bool: a lesion with a coarse label
    (BUS-BRA "4": 4A, 4B or 4C) contributes the log of the summed probability of its set, as in the
    grader's training loss (``engine.training.grader_objective.allowed_set_loss``). ValueError when fewer
    than 10 lesions carry a single 4A, 4B or 4C label or fewer than two categories are present: the middle cut
    points are not identifiable then."""
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels)
    if labels.ndim == 1:
        if len(labels) and (labels.min() < 0 or labels.max() >= len(GRADER_CATEGORIES)):
            raise ValueError(f"labels must be 0..{len(GRADER_CATEGORIES) - 1} (3, 4A, 4B, 4C, 5)")
        allowed = np.eye(len(GRADER_CATEGORIES), dtype=bool)[labels.astype(np.int64)]
    else:
        allowed = labels.astype(bool)
    if scores.ndim != 1 or allowed.shape != (len(scores), len(GRADER_CATEGORIES)) or not allowed.any(1).all():
        raise ValueError(f"scores {scores.shape} and labels {labels.shape} must describe the same lesions, "
                         "each with at least one allowed category")
    single = allowed.sum(1) == 1
    fine = single & allowed[:, 1:4].any(1)
    if fine.sum() < 10 or len(np.unique(allowed[single].argmax(1))) < 2:
        raise ValueError(f"an ordinal head needs at least 10 lesions labelled 4A, 4B or 4C and at least two "
                         f"categories; got {int(fine.sum())} such lesions of {len(scores)}")

    def negative_log_likelihood(theta: np.ndarray) -> float:
        probs = ordinal_probabilities(_unpack(theta), scores)
        return float(-np.log(np.clip((probs * allowed).sum(1), 1e-12, None)).sum())

    # start: unit slope, cuts at the score quantiles between the categories of the single-label lesions
    counts = np.bincount(allowed[single].argmax(1), minlength=len(GRADER_CATEGORIES))
    quantiles = np.quantile(scores[single], np.clip(np.cumsum(counts)[:-1] / single.sum(), 0.02, 0.98))
    gaps = np.maximum(np.diff(quantiles), 0.05)
    start = np.concatenate([[0.0, quantiles[0]], np.log(gaps)])
    result = minimize(negative_log_likelihood, start, method="Nelder-Mead",
                      options={"maxiter": 20000, "xatol": 1e-6, "fatol": 1e-9})
    result = minimize(negative_log_likelihood, result.x, method="BFGS")
    return _unpack(result.x)


def fit_head_on_lesions(samples: Sequence[GraderSample], scores: np.ndarray,
                        data: Sequence[str]) -> tuple[OrdinalHead, np.ndarray]:
    """``fit_ordinal_head`` on the lesions' allowed label sets; returns the head and those sets (N, 5).
    TrainingError, naming the data folders, where the middle cut points are not identifiable."""
    from engine.training.common import TrainingError

    allowed = (np.stack([s.allowed for s in samples]) if len(samples)
               else np.zeros((0, len(GRADER_CATEGORIES)), bool))
    try:
        return fit_ordinal_head(scores, allowed), allowed
    except ValueError as error:
        raise TrainingError(f"{error} (in the fitted part of {', '.join(data)})") from error


@dataclass(frozen=True)
class HeadFit:
    """What ``fit_head_run`` did: the head, the lesions it was fitted on (ids; label counts per dataset)
    and how often its reading falls in their label set, in sample (optimistic: report held-out numbers
    from ``engine.training.evaluate``)."""

    head: OrdinalHead
    ids: list[str]
    counts: dict[str, dict[str, int]]
    in_sample_accuracy: float
    written: str  # what was written and how to export it


def fit_head_run(bases: list[str | Path], data: list[str], out: str | Path, split: SplitConfig, *,
                 cache_dir: str | None = None, threads: int = 2, progress: bool = True) -> HeadFit:
    """Fit an ordinal head for the G-CNN checkpoint in ``bases`` (several: their ensemble, mean
    probabilities) and write OUT/head.json, OUT/head.png and, for one base, OUT/last.pt (the base
    checkpoint with the head, which ``sonograde export`` turns into one ONNX model; an ensemble is exported
    from its checkpoints with ``--ordinal-head OUT/head.json``).

    The lesions it is fitted on, each read through its annotated mask: for a ``data`` folder the base was
    not trained on, the non-test part (training + validation patients) of ``split``; for a folder the
    base was trained on (BUS-BRA for a BUS-BRA grader), only the base run's own validation patients,
    whose outputs are not fitted to them. Five-way labels (3, 4A, 4B, 4C, 5; BI-RADS 2 counts as 3) set
    all four cut points; coarse labels (BUS-BRA "4") add the likelihood of their set, so the head can
    carry more than one population's base rates. TrainingError for a base that is not a G-CNN checkpoint
    or already has a head, ensemble members with other inputs or other splits of a shared dataset, or
    fewer than 10 lesions labelled 4A, 4B or 4C."""
    import torch

    from engine.data.datasets import load_grader_samples, load_records
    from engine.splits import make_split
    from engine.training.checkpoints import load_ensemble
    from engine.training.common import TrainConfig, TrainingError, load_checkpoint, write_json
    from engine.training.grader_data import predict

    if not bases:
        raise TrainingError("an ordinal head needs the G-CNN checkpoint(s) it reads")
    payloads = [load_checkpoint(base) for base in bases]
    for base, payload in zip(bases, payloads, strict=True):
        if payload["kind"] != "grader":
            raise TrainingError(f"{base} is a {payload['kind']} checkpoint; an ordinal head reads a G-CNN")
        if payload.get("extra", {}).get("ordinal_head"):
            raise TrainingError(f"{base} already carries an ordinal head; fit the new one on its base "
                                "network")
    if not data:
        raise TrainingError("an ordinal head needs --data: a folder with five-way labels (3, 4a, 4b, 4c, 5), "
                            "such as BrEaST-Lesions_USG")
    torch.set_num_threads(threads)
    net = load_ensemble(list(bases))[1]  # one base: an ensemble of one, the same probabilities
    configs = [TrainConfig(**{**p["train_config"], "train_masks": "annotation"}) for p in payloads]
    config = configs[0]
    records = load_records(data)
    trained_on = {Path(folder).name for c in configs for folder in c.data}  # by any member
    new = [r for r in records if r.dataset not in trained_on]
    seen = [r for r in records if r.dataset in trained_on]
    fit_records = []
    if new:
        parts = make_split(new, split)
        fit_records += parts.train + parts.val
    if seen:  # the datasets' split is per dataset, so this reproduces the base run's validation patients
        if any(c.split_config() != config.split_config() or {Path(d).name for d in c.data} != trained_on
               for c in configs):
            raise TrainingError("the ensemble's members were trained on other data or splits, so no "
                                f"validation patients of {', '.join(sorted(trained_on))} are unseen by all; "
                                "train them with one --split-seed, or leave those folders out of --data")
        fit_records += make_split(seen, config.split_config()).val
    samples = load_grader_samples(fit_records, cache_dir=cache_dir, progress=progress)
    scores = suspicion_score(predict(net, samples, config))
    head, allowed = fit_head_on_lesions(samples, scores, data)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    counts, accuracy = describe_fit(head, scores, allowed, [s.id for s in samples])
    summary = {"bases": [str(b) for b in bases], "data": list(data), "split": asdict(split),
               "base_validation_patients_of": sorted(trained_on & {r.dataset for r in records}),
               "head": head.to_dict(), "cases": len(samples), "counts": counts,
               "in_sample_accuracy": accuracy, "ids": [s.id for s in samples]}
    write_json(out / "head.json", summary)
    plot_head(head, scores, allowed, out / "head.png")
    if len(bases) == 1:
        payload = payloads[0]
        payload = {**payload, "extra": {**payload.get("extra", {}), "ordinal_head": head.to_dict(),
                                        "ordinal_fit": {k: v for k, v in summary.items() if k != "ids"}}}
        torch.save(payload, out / "last.pt")
        written = (f"{out / 'head.json'}, {out / 'head.png'} and {out / 'last.pt'} (the network with its "
                   f"head: sonograde export --checkpoint {out / 'last.pt'} --out g_cnn.onnx)")
    else:
        checkpoints = " ".join(f"--checkpoint {b}" for b in bases)
        written = (f"{out / 'head.json'} and {out / 'head.png'} (export the ensemble with its head: "
                   f"sonograde export {checkpoints} --ordinal-head {out / 'head.json'} --out g_cnn.onnx)")
    return HeadFit(head, summary["ids"], counts, summary["in_sample_accuracy"], written)


def describe_fit(head: OrdinalHead, scores: np.ndarray, allowed: np.ndarray,
                 ids: list[str]) -> tuple[dict[str, dict[str, int]], float]:
    """Label counts per dataset (the part of each id before "/") of the lesions a head was fitted on, and
    how often its reading falls in their label set (in sample, optimistic)."""
    counts: dict[str, dict[str, int]] = {}
    for lesion, labels in zip(ids, allowed, strict=True):
        per_dataset = counts.setdefault(lesion.split("/")[0], {})
        per_dataset[_label_name(labels)] = per_dataset.get(_label_name(labels), 0) + 1
    hits = allowed[np.arange(len(ids)), ordinal_probabilities(head, scores).argmax(1)]
    return counts, float(hits.mean())


def _label_name(allowed: np.ndarray) -> str:
    return "/".join(c for c, ok in zip(GRADER_CATEGORIES, allowed, strict=True) if ok)


def plot_head(head: OrdinalHead, scores: np.ndarray, allowed: np.ndarray, path: Path) -> None:
    """The suspicion scores of the fitted lesions per label (coarse sets on their own rows), and the
    head's five curves against them."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [_label_name(a) for a in allowed]
    rows = [c for c in GRADER_CATEGORIES if c in names] + sorted(set(names) - set(GRADER_CATEGORIES))
    grid = np.linspace(min(scores.min(), -6.0), max(scores.max(), 4.0), 300)
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(7, 6.5), sharex=True)
    for row, name in enumerate(rows):
        picked = scores[[n == name for n in names]]
        top.plot(picked, row + np.linspace(-0.25, 0.25, len(picked)), "o", alpha=0.5, markersize=4)
    for k, category in enumerate(GRADER_CATEGORIES):
        bottom.plot(grid, ordinal_probabilities(head, grid)[:, k], label=category)
    top.set_yticks(range(len(rows)), rows)
    top.set_ylabel("label of the fitted lesions")
    top.set_title("Ordinal head: suspicion score of the fitted lesions "
                  "(research use only, not for diagnosis)", fontsize=9)
    bottom.set_xlabel("suspicion score s = logit(expected likelihood of malignancy)")
    bottom.set_ylabel("P(category | s)")
    bottom.legend(ncol=5, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def cross_validate_head(per_case: list[dict], test_fold_of: dict[str, int], *,
                        fit_masks: str = "ground_truth_masks",
                        apply_masks: str = "two_stage_masks") -> tuple[list[dict], list[OrdinalHead]]:
    """Cross-validate the ordinal head of a network that never saw these cases.

    per_case: the ``per_case`` rows of ``sonograde evaluate grader --cv-folds K --json FILE``
    (each with ``id``, ``label`` 0..4 and five probabilities under ``fit_masks`` and ``apply_masks``).
    test_fold_of: case id -> its test fold. For every fold, a head is fitted on the other folds' cases
    (read through ``fit_masks``, the annotated ones by default) and applied to the fold's own cases
    (``apply_masks``, the pipeline's by default). Returns the rows with ``apply_masks`` and ``fit_masks``
    replaced by the head's probabilities (pool them with ``engine.training.evaluate.grader_report``) and
    the heads by fold."""
    folds = sorted(set(test_fold_of.values()))
    missing = [c["id"] for c in per_case if c["id"] not in test_fold_of]
    if missing:
        raise ValueError(f"{len(missing)} cases have no fold (first: {missing[0]}); use the evaluation's own "
                         "--cv-folds, --seed and --data")
    rows, heads = [], []
    for fold in folds:
        fit = [c for c in per_case if test_fold_of[c["id"]] != fold]
        head = fit_ordinal_head(suspicion_score(np.array([c[fit_masks] for c in fit])),
                                np.array([c["label"] for c in fit]))
        heads.append(head)
        test = [c for c in per_case if test_fold_of[c["id"]] == fold]
        if not test:
            continue
        read = {key: ordinal_probabilities(head, suspicion_score(np.array([c[key] for c in test]))).tolist()
                for key in (apply_masks, fit_masks)}
        rows += [dict(case, fold=fold, **{key: read[key][i] for key in read}) for i, case in enumerate(test)]
    return rows, heads
