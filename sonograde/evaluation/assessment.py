"""Evaluation of the explained assessment: descriptors, size, malignancy probability, five-way category.

From the per-case results of :mod:`.runner` (each holds the pipeline's ``assessment`` of the image and
the reader's labels from the manifest, mapped to lexicon names by :mod:`engine.lexicon`):

- per descriptor: confusion matrix, Cohen's kappa with a seeded 95 % bootstrap interval, and agreement,
  over the cases that carry that label and where the pipeline gave a value (missed lesions are counted in
  ``n_no_prediction``); beside the published inter-radiologist kappas. Margin subtypes: AUC of each
  subtype's probability and kappa at 0.5. Orientation has no reader label in our datasets; it is compared
  with the orientation measured on the annotated mask (``orientation_vs_annotated_mask``).
- size: median relative error of width and height against the same measurement on the annotated mask,
  and median absolute error in mm where the manifest gives ``pixel_size_mm``.
- malignancy: AUC, expected calibration error and reliability bins against pathology (benign/malignant);
  of the model's ``malignancy_probability`` where the grader has one, else of the category's expected
  likelihood of malignancy (``summary.MALIGNANCY_LIKELIHOOD``), named in ``source``.
- five-way: accuracy (missed lesions wrong), quadratic-weighted kappa with its interval, macro AUC.

A label a dataset lacks is skipped, never taken as a negative.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from engine.agreement import (
    BOOTSTRAP_REPLICATES,
    BOOTSTRAP_SEED,
    calibration_bins,
    expected_calibration_error,
    kappa_with_ci,
)
from engine.grading_metrics import auc, median_or_none
from engine.lexicon import DESCRIPTORS, MARGIN_SUBTYPES, READER_DESCRIPTORS
from sonograde.evaluation.labels import CATEGORIES
from sonograde.evaluation.summary import summarize_grading

if TYPE_CHECKING:
    from sonograde.evaluation.summary import CaseResult

PUBLISHED_READER_KAPPA: dict[str, tuple[float, float]] = {
    "shape": (0.42, 0.66),
    "margin": (0.20, 0.40),
    "echo_pattern": (0.29, 0.58),
    "posterior_features": (0.29, 0.53),
}
"""Inter-radiologist kappa ranges (Abdullah 2009, Lazarus 2006, Park 2007, Lee 2008)."""


def _r(value: float | None, digits: int = 4) -> float | None:
    return None if value is None else round(float(value), digits)


def _kappa_block(truth: list[int], predicted: list[int], values: Sequence[str], weighting: str | None,
                 replicates: int, seed: int) -> dict[str, object]:
    result = kappa_with_ci(truth, predicted, len(values), weighting, replicates=replicates, seed=seed)
    out: dict[str, object] = {"n": result.n, "labels": list(values), "confusion": result.confusion.tolist(),
                              "kappa": _r(result.kappa), "agreement": _r(result.agreement)}
    out["kappa_ci95"] = [_r(v) for v in result.ci95] if result.ci95 is not None else None
    return out


def _predicted_descriptor(case: CaseResult, name: str) -> str | None:
    descriptors = (case.assessment or {}).get("descriptors") or {}
    entry = descriptors.get(name)
    return entry.get("value") if isinstance(entry, dict) else None


def _not_predicted_reason(case: CaseResult, name: str) -> str | None:
    descriptors = (case.assessment or {}).get("descriptors") or {}
    entry = descriptors.get(name)
    if isinstance(entry, dict) and entry.get("value") is None and isinstance(entry.get("reason"), str):
        return entry["reason"]
    return None


def summarize_descriptors(cases: Sequence[CaseResult], replicates: int = BOOTSTRAP_REPLICATES,
                          seed: int = BOOTSTRAP_SEED) -> dict[str, object]:
    """Per-descriptor agreement with the readers (see the module docstring)."""
    out: dict[str, object] = {}
    for name in READER_DESCRIPTORS:
        values = DESCRIPTORS[name]
        labelled = [c for c in cases if c.descriptor_truth is not None
                    and c.descriptor_truth.value(name) is not None]
        if not labelled:
            continue  # no case carries this label: nothing to say, certainly not "all negative"
        pairs = [(values.index(c.descriptor_truth.value(name)),  # type: ignore[union-attr,arg-type]
                  _predicted_descriptor(c, name)) for c in labelled]
        scored = [(t, values.index(p)) for t, p in pairs if p in values]
        block = _kappa_block([t for t, _ in scored], [p for _, p in scored], values, None, replicates, seed)
        block["n_labelled"] = len(labelled)
        block["n_no_prediction"] = len(labelled) - len(scored)
        reasons = {_not_predicted_reason(c, name) for c in labelled} - {None}
        if reasons:  # the model does not give this descriptor: say why
            block["not_predicted"] = sorted(reasons)  # type: ignore[type-var]
        if name in PUBLISHED_READER_KAPPA:
            block["published_reader_kappa"] = list(PUBLISHED_READER_KAPPA[name])
        out[name] = block
    subtypes: dict[str, object] = {}
    for subtype in MARGIN_SUBTYPES:
        truth, scores = [], []
        for c in cases:
            known = c.descriptor_truth.margin_subtypes if c.descriptor_truth is not None else None
            margin = ((c.assessment or {}).get("descriptors") or {}).get("margin") or {}
            probability = (margin.get("subtypes") or {}).get(subtype) if isinstance(margin, dict) else None
            if known is not None and probability is not None:
                truth.append(bool(known[subtype]))
                scores.append(float(probability))
        if truth:
            block = _kappa_block([int(t) for t in truth], [int(s >= 0.5) for s in scores], ("no", "yes"),
                                 None, replicates, seed)
            block["auc"] = _r(auc(truth, scores))
            block["n_positive"] = int(sum(truth))
            subtypes[subtype] = block
    if subtypes:
        out["margin_subtypes"] = subtypes
    measured = [(c.truth_orientation, _predicted_descriptor(c, "orientation")) for c in cases
                if c.truth_orientation is not None]
    scored = [(DESCRIPTORS["orientation"].index(t), DESCRIPTORS["orientation"].index(p))
              for t, p in measured if p in DESCRIPTORS["orientation"]]
    if scored:
        block = _kappa_block([t for t, _ in scored], [p for _, p in scored], DESCRIPTORS["orientation"], None,
                             replicates, seed)
        block["note"] = "reference: orientation measured on the annotated mask (no reader label)"
        out["orientation_vs_annotated_mask"] = block
    return out


def summarize_size(cases: Sequence[CaseResult]) -> dict[str, object]:
    """Size against the annotated masks: median relative error of width and height (px-free), median
    absolute error in mm where the pixel size is known; missed lesions counted in ``n_no_prediction``."""
    with_truth = [c for c in cases if c.truth_size is not None]
    if not with_truth:
        return {}
    measured = [c for c in with_truth if (c.assessment or {}).get("size")]
    relative: dict[str, list[float]] = {"width": [], "height": [], "longest": []}
    absolute_mm: dict[str, list[float]] = {"width": [], "height": [], "longest": []}
    for c in measured:
        size, truth = c.assessment["size"], c.truth_size  # type: ignore[index]
        for key in relative:
            if truth[key] > 0:  # type: ignore[index]
                relative[key].append(abs(size[key] - truth[key]) / truth[key])  # type: ignore[index]
            if size["unit"] == "mm" and truth["unit"] == "mm":  # type: ignore[index]
                absolute_mm[key].append(abs(size[key] - truth[key]))  # type: ignore[index]
    out: dict[str, object] = {"n": len(measured), "n_no_prediction": len(with_truth) - len(measured)}
    for key in relative:
        out[f"{key}_median_relative_error"] = _r(median_or_none(relative[key]))
    n_mm = len(absolute_mm["width"])
    if n_mm:
        out["n_mm"] = n_mm
        for key in absolute_mm:
            out[f"{key}_median_abs_error_mm"] = _r(median_or_none(absolute_mm[key]), 3)
        truths = [c.truth_size["width"] for c in measured if c.truth_size["unit"] == "mm"]  # type: ignore[index]
        out["truth_width_median_mm"] = _r(median_or_none(truths), 2)
    return {k: v for k, v in out.items() if v is not None}


def summarize_malignancy(cases: Sequence[CaseResult], n_bins: int = 10) -> dict[str, object]:
    """AUC, ECE and reliability bins of the malignancy probability against pathology."""
    with_path = [c for c in cases if c.pathology in ("benign", "malignant")]
    if not with_path:
        return {}
    model = [c for c in with_path if (c.assessment or {}).get("malignancy_probability") is not None]
    if model:
        source = "model malignancy_probability"
        labels = [c.pathology == "malignant" for c in model]
        probabilities = [float(c.assessment["malignancy_probability"]) for c in model]  # type: ignore[index]
        n_missing = len(with_path) - len(model)
    else:  # today's graders: the category's expected likelihood, missed lesions at the 1/5 prior
        source = "category likelihood: sum of P(category) x BI-RADS likelihood of malignancy"
        labels = [c.pathology == "malignant" for c in with_path]
        probabilities = [c.graded("refined").malignancy_score for c in with_path]
        n_missing = 0
    bins = calibration_bins(labels, probabilities, n_bins)
    return {
        "source": source, "n": len(labels), "n_malignant": int(sum(labels)), "n_no_prediction": n_missing,
        "auc": _r(auc(labels, probabilities)),
        "ece": _r(expected_calibration_error(labels, probabilities, n_bins)),
        "bins": [{"lo": b.lo, "hi": b.hi, "n": b.n, "mean_predicted": _r(b.mean_predicted),
                  "fraction_malignant": _r(b.fraction_positive)} for b in bins],
    }


def summarize_five_way(cases: Sequence[CaseResult], replicates: int = BOOTSTRAP_REPLICATES,
                       seed: int = BOOTSTRAP_SEED) -> dict[str, object]:
    """Five-way (3/4A/4B/4C/5) accuracy, quadratic-weighted kappa with its interval, and macro AUC over the
    fine-labelled cases (a coarse "4" label is not a five-way label). Empty when no case is labelled
    4A, 4B or 4C: a dataset with only 3, coarse 4 and 5 has no five-way labels."""
    graded = [c.graded("refined") for c in cases]
    fine = [g for g in graded if g.label in CATEGORIES]
    if not any(g.label in ("4A", "4B", "4C") for g in fine):
        return {}  # only 3 and 5 (and coarse 4): not a five-way label set (BUS-BRA)
    grading = summarize_grading(fine)
    found = [g for g in fine if g.predicted is not None]
    block = _kappa_block([CATEGORIES.index(g.label) for g in found],  # type: ignore[arg-type]
                         [CATEGORIES.index(g.predicted) for g in found],  # type: ignore[arg-type]
                         CATEGORIES, "quadratic", replicates, seed)
    return {"n": len(fine), "n_no_lesion": len(fine) - len(found), "accuracy": grading.get("accuracy"),
            "quadratic_weighted_kappa": block["kappa"], "kappa_ci95": block["kappa_ci95"],
            "macro_auc": grading.get("macro_auc"), "macro_auc_over": grading.get("macro_auc_over")}


def summarize_assessment(cases: Sequence[CaseResult], replicates: int = BOOTSTRAP_REPLICATES,
                         seed: int = BOOTSTRAP_SEED) -> dict[str, object]:
    """The ``assessment`` block of the evaluation JSON: ``descriptors``, ``size``, ``malignancy``,
    ``five_way``; blocks without data are omitted. ``descriptors_absent`` gives the pipeline's reason
    where cases carry descriptor labels but the grader gave no descriptors."""
    out: dict[str, object] = {}
    labelled = [c for c in cases if c.descriptor_truth is not None and c.descriptor_truth.any_known]
    if any((c.assessment or {}).get("descriptors") for c in cases):
        descriptors = summarize_descriptors(cases, replicates, seed)
        if descriptors:
            out["descriptors"] = descriptors
    elif labelled:  # labels but no predictions: say why instead of a table of empty rows
        found = [c for c in labelled if c.lesion_found.get("refined")] or labelled
        reasons = {((c.assessment or {}).get("absent") or {}).get("descriptors") for c in found} - {None}
        out["descriptors_absent"] = sorted(reasons)
    for key, block in (("size", summarize_size(cases)), ("malignancy", summarize_malignancy(cases)),
                       ("five_way", summarize_five_way(cases, replicates, seed))):
        if block:
            out[key] = block
    out["bootstrap"] = {"replicates": replicates, "seed": seed, "interval": "95% percentile"}
    return out


# ----------------------------------------------------------------------------------------- presenting


def _cell(value: object, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def _ci(block: dict) -> str:
    ci = block.get("kappa_ci95")
    return f"[{ci[0]:.2f}, {ci[1]:.2f}]" if ci else "-"


def format_assessment(assessment: dict) -> list[str]:
    """Readable lines of the ``assessment`` block for the terminal."""
    lines: list[str] = []
    descriptors = assessment.get("descriptors") or {}
    if descriptors:
        lines += ["", f"{'descriptor':22s} {'n':>4s} {'kappa':>6s} {'95% CI':>14s} {'agree':>6s} "
                      f"{'readers':>10s} {'no pred':>7s}"]
        for name, block in descriptors.items():
            if name == "margin_subtypes":
                continue
            published = block.get("published_reader_kappa")
            readers = f"{published[0]:.2f}-{published[1]:.2f}" if published else "-"
            lines.append(f"{name:22s} {block['n']:4d} {_cell(block['kappa'], 2):>6s} {_ci(block):>14s} "
                         f"{_cell(block['agreement'], 2):>6s} {readers:>10s} "
                         f"{block.get('n_no_prediction', 0):7d}")
        for subtype, block in (descriptors.get("margin_subtypes") or {}).items():
            lines.append(f"  margin {subtype:14s} {block['n']:4d} {_cell(block['kappa'], 2):>6s} "
                         f"{_ci(block):>14s} {_cell(block['agreement'], 2):>6s}   "
                         f"AUC {_cell(block.get('auc'), 2)}")
    for name, block in descriptors.items():
        if isinstance(block, dict) and block.get("not_predicted"):
            lines.append(f"{name} not predicted: " + "; ".join(block["not_predicted"]))
    if assessment.get("descriptors_absent"):
        lines += ["", "descriptors not evaluated: " + "; ".join(assessment["descriptors_absent"])]
    size = assessment.get("size")
    if size:
        line = (f"size (n={size['n']}): median relative error width "
                f"{_cell(size.get('width_median_relative_error'))}, height "
                f"{_cell(size.get('height_median_relative_error'))}")
        if size.get("n_mm"):
            line += (f"; median abs error width {_cell(size['width_median_abs_error_mm'], 2)} mm, height "
                     f"{_cell(size['height_median_abs_error_mm'], 2)} mm (n={size['n_mm']})")
        lines += ["", line]
    malignancy = assessment.get("malignancy")
    if malignancy:
        lines += ["", f"malignancy (n={malignancy['n']}, {malignancy['n_malignant']} malignant): AUC "
                      f"{_cell(malignancy['auc'])}, ECE {_cell(malignancy['ece'])} ({malignancy['source']})"]
    five = assessment.get("five_way")
    if five:
        lines += [f"five-way (n={five['n']}): accuracy {_cell(five.get('accuracy'))}, quadratic-weighted "
                  f"kappa {_cell(five.get('quadratic_weighted_kappa'))} {_ci(five)}, macro AUC "
                  f"{_cell(five.get('macro_auc'))}"]
    return lines


def plot_reliability(malignancy: dict, path: Path) -> bool:
    """Reliability diagram (PNG): observed fraction malignant against mean predicted probability per bin,
    bin counts below. Returns False when there is nothing to plot."""
    bins = [b for b in malignancy.get("bins", []) if b["n"]]
    if not bins:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (top, bottom) = plt.subplots(2, 1, figsize=(5, 6), height_ratios=(3, 1), sharex=True)
    top.plot([0, 1], [0, 1], color="0.6", linestyle="--", label="perfectly calibrated")
    top.plot([b["mean_predicted"] for b in bins], [b["fraction_malignant"] for b in bins], marker="o",
             label=f"ECE {_cell(malignancy.get('ece'))}, AUC {_cell(malignancy.get('auc'))}")
    top.set_ylabel("fraction malignant (pathology)")
    top.set_xlim(0, 1)
    top.set_ylim(0, 1)
    top.legend(loc="upper left", fontsize=8)
    top.set_title(f"Malignancy calibration (n={malignancy['n']})\nresearch use only, not for diagnosis",
                  fontsize=9)
    all_bins = malignancy["bins"]
    bottom.bar([(b["lo"] + b["hi"]) / 2 for b in all_bins], [b["n"] for b in all_bins],
               width=(all_bins[0]["hi"] - all_bins[0]["lo"]) * 0.9, color="0.5")
    bottom.set_xlabel(f"predicted probability ({malignancy['source'][:60]})", fontsize=8)
    bottom.set_ylabel("cases")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return True


def write_assessment_report(out_dir: Path, assessment: dict) -> list[Path]:
    """``assessment.md`` (descriptor confusion matrices and kappas beside the readers', size error,
    calibration, five-way) and ``reliability.png`` in ``out_dir``; returns the files written."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    lines = ["# Explained assessment", "", "Research use only, not for diagnosis.", ""]
    descriptors = assessment.get("descriptors") or {}
    for name, block in descriptors.items():
        if name == "margin_subtypes":
            continue
        published = block.get("published_reader_kappa")
        lines += [f"## {name}", "",
                  f"n {block['n']} (labelled {block.get('n_labelled', block['n'])}, no prediction "
                  f"{block.get('n_no_prediction', 0)}), kappa {_cell(block['kappa'], 3)} {_ci(block)}, "
                  f"agreement {_cell(block['agreement'], 3)}"
                  + (f"; inter-radiologist kappa {published[0]:.2f}-{published[1]:.2f}" if published else ""),
                  "", "| truth \\ predicted | " + " | ".join(block["labels"]) + " |",
                  "|---|" + "---|" * len(block["labels"])]
        for label, row in zip(block["labels"], block["confusion"], strict=True):
            lines.append(f"| {label} | " + " | ".join(str(v) for v in row) + " |")
        lines.append("")
    if descriptors.get("margin_subtypes"):
        lines += ["## margin subtypes", "", "| subtype | n | positive | AUC | kappa at 0.5 | 95% CI |",
                  "|---|---|---|---|---|---|"]
        for subtype, block in descriptors["margin_subtypes"].items():
            lines.append(f"| {subtype} | {block['n']} | {block['n_positive']} | {_cell(block.get('auc'))} | "
                         f"{_cell(block['kappa'])} | {_ci(block)} |")
        lines.append("")
    if assessment.get("descriptors_absent"):
        lines += ["Descriptors not evaluated: " + "; ".join(assessment["descriptors_absent"]) + ".", ""]
    others = {k: v for k, v in assessment.items() if k not in ("descriptors", "descriptors_absent")}
    rest = format_assessment(others)
    lines += [f"- {line}" for line in rest if line] + [""]
    malignancy = assessment.get("malignancy")
    if malignancy and plot_reliability(malignancy, out_dir / "reliability.png"):
        written.append(out_dir / "reliability.png")
        lines += ["![reliability diagram](reliability.png)", ""]
    path = out_dir / "assessment.md"
    path.write_text("\n".join(lines), encoding="utf-8")
    written.insert(0, path)
    return written
