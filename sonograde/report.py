"""The Markdown evaluation report of ``sonograde evaluate --out DIR``, with its figures.

Writes into DIR:

- ``report.md``: what was evaluated (data, selection, models, options), the Table 2 analogue
  (segmentation of the three identification variants), grading (accuracy per category beside the
  paper's, confusion matrix, AUCs per variant, malignancy AUC) and the research-use statement;
- ``roc.png``: one-vs-rest ROC curves per category, one curve per identification variant (Fig. 4);
- ``cases_grid.png``: the worst and best cases by refined DSC (Fig. 5): image, ground truth in green,
  ROI-CNN in blue, refined in red, true and predicted category. It shows patient images: it is user
  output and must never be committed to a repository;
- ``cases.csv``: per-image numbers (no pixels).

matplotlib runs with the Agg backend (no display needed).
"""

from __future__ import annotations

import csv
import datetime as _dt
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from engine.grading_metrics import trapezoid_area
from sonograde import RESEARCH_USE_ONLY
from sonograde.evaluation.labels import CATEGORIES
from sonograde.evaluation.summary import VARIANT_NAMES, VARIANTS, roc_points

if TYPE_CHECKING:
    from sonograde.evaluation.runner import EvaluationOptions
    from sonograde.evaluation.summary import CaseResult

PAPER_TABLE3_REFINED_GCNN: dict[str, float] = {"3": 0.998, "4A": 0.940, "4B": 0.734, "4C": 0.922, "5": 0.876}
"""Per-category grading accuracy of "Refined ROI-CNN + G-CNN" (Huang et al. 2019, abstract and Table 3),
five-fold cross-validation on 2238 images of one hospital (West China Hospital, Philips iU22)."""

PAPER_TABLE2_NOTE = (
    "The paper's Table 2 values are not in the reference text we have; its text states the ordering: "
    "Refined ROI-CNN has the highest mean DSC and the lowest mean AvgDist and HDist, No Refined ROI-CNN "
    "is second, No ROI-CNN (Chan–Vese alone) is worst."
)

GRID_WORST = 6
GRID_BEST = 6


@dataclass
class ReportContext:
    """What the report says about how it was made."""

    data: list[str]
    selection: str
    models: str
    precision: str
    model_ids: dict[str, str] = field(default_factory=dict)
    options: EvaluationOptions | None = None
    elapsed_s: float | None = None
    command: str | None = None


def _fmt(value: object, digits: int = 3) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _segmentation_table(segmentation: dict) -> list[str]:
    lines = [
        "| variant | n | DSC mean | DSC median | HD95 px | AvgDist px | HD max px | HD95 mm | AvgDist mm | "
        "empty |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for variant in VARIANTS:
        s = segmentation.get(variant)
        if not s:
            continue
        cells = [VARIANT_NAMES[variant], str(s["n"]), _fmt(s.get("dsc_mean")), _fmt(s.get("dsc_median")),
                 _fmt(s.get("hd95_mean"), 1), _fmt(s.get("avgdist_mean"), 1), _fmt(s.get("hdmax_mean"), 1),
                 _fmt(s.get("hd95_mm_mean"), 2), _fmt(s.get("avgdist_mm_mean"), 2), str(s.get("n_empty", 0))]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _grading_lines(summary: dict) -> list[str]:
    grading = summary.get("grading")
    if not grading:
        return ["No image carries a gradable BI-RADS label or a pathology: no grading numbers."]
    lines = [f"Graded images: {grading['n']} (no lesion found on {grading.get('n_no_lesion', 0)}, "
             "counted wrong). "
             f"Accuracy {_fmt(grading.get('accuracy'))}, macro AUC {_fmt(grading.get('macro_auc'))} "
             f"(over {', '.join(grading.get('macro_auc_over', [])) or '–'}), malignancy AUC "
             f"{_fmt(grading.get('malignancy_auc'))} (n = {grading.get('malignancy_n', 0)}).", ""]
    per = grading.get("per_category_accuracy", {})
    if per:
        keys = list(per)
        lines.append("| per-category accuracy (recall) | " + " | ".join(keys) + " |")
        lines.append("|---|" + "---|" * len(keys))
        lines.append("| ours, Refined ROI-CNN + G-CNN | " + " | ".join(_fmt(per[k]) for k in keys) + " |")
        lines.append("| paper, Refined ROI-CNN + G-CNN | "
                     + " | ".join(_fmt(PAPER_TABLE3_REFINED_GCNN.get(k)) for k in keys) + " |")
        ovr = grading.get("one_vs_rest_accuracy", {})
        if ovr:
            lines.append("| ours, one-vs-rest accuracy (TP+TN)/N | "
                         + " | ".join(_fmt(ovr.get(k)) for k in keys) + " |")
        lines.append("")
    if "confusion" in grading:
        labels = grading["confusion_labels"]
        lines.append("Confusion matrix (rows: true category, columns: predicted):")
        lines.append("")
        lines.append("| true \\ predicted | " + " | ".join(labels) + " |")
        lines.append("|---|" + "---|" * len(labels))
        for label, row in zip(labels, grading["confusion"], strict=True):
            lines.append(f"| {label} | " + " | ".join(str(v) for v in row) + " |")
        lines.append("")
    if "coarse" in grading:
        c = grading["coarse"]
        lines.append(f"Coarse 3/4/5 (4 = 4A+4B+4C summed): accuracy {_fmt(c['accuracy'])}; per category "
                     + ", ".join(f"{k} {_fmt(v)}" for k, v in c["per_category_accuracy"].items()) + ".")
        lines.append("")
    variants = summary.get("grading_variants", {})
    if variants:
        cats = [k for k in (*CATEGORIES, "4") if any(k in v.get("auc", {}) for v in variants.values())]
        lines.append("One-vs-rest AUC of the G-CNN given each variant's ROI (Fig. 4 analogue):")
        lines.append("")
        lines.append("| ROI given to the G-CNN | n | accuracy | " + " | ".join(f"AUC {k}" for k in cats)
                     + " | macro AUC | malignancy AUC |")
        lines.append("|---|---|---|" + "---|" * len(cats) + "---|---|")
        for variant in VARIANTS:
            v = variants.get(variant)
            if not v:
                continue
            lines.append(f"| {VARIANT_NAMES[variant]} | {v['n']} | {_fmt(v.get('accuracy'))} | "
                         + " | ".join(_fmt(v.get("auc", {}).get(k)) for k in cats)
                         + f" | {_fmt(v.get('macro_auc'))} | {_fmt(v.get('malignancy_auc'))} |")
        lines.append("")
    return lines


def plot_roc(cases: Sequence[CaseResult], path: Path) -> bool:
    """Fig. 4 analogue: a panel per category, a curve per variant. Returns False when no curve exists."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels: list[tuple[str, dict[str, tuple[np.ndarray, np.ndarray]]]] = []
    for category in (*CATEGORIES, "4"):
        curves = {}
        for variant in VARIANTS:
            if not any(variant in c.probabilities for c in cases):
                continue
            points = roc_points([c.graded(variant) for c in cases], category)
            if points is not None:
                curves[variant] = points
        if curves:
            panels.append((category, curves))
    if not panels:
        return False
    fig, axes = plt.subplots(1, len(panels), figsize=(3.3 * len(panels), 3.6), squeeze=False)
    colours = {"no_roi_cnn": "tab:gray", "roi_cnn": "tab:blue", "refined": "tab:red"}
    for ax, (category, curves) in zip(axes[0], panels, strict=True):
        for variant, (fpr, tpr) in curves.items():
            ax.plot(fpr, tpr, color=colours[variant], lw=1.5,
                    label=f"{VARIANT_NAMES[variant].split(' (')[0]} {trapezoid_area(fpr, tpr):.3f}")
        ax.plot([0, 1], [0, 1], color="0.8", lw=0.8, ls="--")
        ax.set_title(f'Category "{category}"' + (" (4A+4B+4C)" if category == "4" else ""))
        ax.set_xlabel("1 - specificity")
        ax.set_ylabel("sensitivity")
        ax.set_aspect("equal")
        ax.legend(fontsize=7, loc="lower right", title="AUC", title_fontsize=7)
    fig.suptitle(f"One-vs-rest ROC per category  ({RESEARCH_USE_ONLY})", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def pick_grid_cases(cases: Sequence[CaseResult], worst: int = GRID_WORST, best: int = GRID_BEST
                    ) -> tuple[list[CaseResult], list[CaseResult]]:
    """The ``worst`` lowest and ``best`` highest refined-DSC cases (disjoint), among images with a mask."""
    scored = sorted((c for c in cases if "refined" in c.segmentation),
                    key=lambda c: c.segmentation["refined"].dsc)
    low = scored[:worst]
    high = [c for c in scored[::-1][:best] if c not in low]
    return low, high


def plot_case_grid(cases: Sequence[CaseResult], path: Path, worst: int = GRID_WORST,
                   best: int = GRID_BEST) -> bool:
    """Fig. 5 analogue: worst and best cases with contours. Returns False when no case has a mask."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from engine.data.manifest import load_gray

    low, high = pick_grid_cases(cases, worst, best)
    rows = [("worst", low), ("best", high)]
    rows = [(name, items) for name, items in rows if items]
    if not rows:
        return False
    cols = max(len(items) for _, items in rows)
    fig, axes = plt.subplots(len(rows), cols, figsize=(2.6 * cols, 2.9 * len(rows)), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    # (key, colour, line width): the ROI-CNN line is drawn wider so the refined one does not hide it
    styles = (("truth", "lime", 1.2), ("roi_cnn", "deepskyblue", 1.8), ("refined", "red", 0.9))
    for r, (name, items) in enumerate(rows):
        for col, case in enumerate(items):
            ax = axes[r][col]
            ax.imshow(load_gray(case.image_path), cmap="gray", vmin=0, vmax=255)
            for key, colour, width in styles:
                for polygon in case.contours.get(key, []):
                    closed = np.vstack([polygon, polygon[:1]])
                    ax.plot(closed[:, 0], closed[:, 1], color=colour, lw=width)
            probs = case.probabilities.get("refined")
            predicted = CATEGORIES[int(np.argmax(probs))] if probs is not None else "none"
            ax.set_title(f"{name}: {case.id}\nDSC {case.segmentation['refined'].dsc:.2f}  "
                         f"true {case.birads or '–'}  pred {predicted}", fontsize=7)
    fig.suptitle("green: ground truth, blue: ROI-CNN, red: refined  —  " + RESEARCH_USE_ONLY, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def write_cases_csv(cases: Sequence[CaseResult], path: Path) -> None:
    """Per-image numbers: ids, labels, prediction, probabilities and per-variant metrics (no pixels)."""
    header = ["dataset", "id", "height", "width", "pixel_size_mm", "birads", "graded_as", "pathology",
              "predicted", *(f"p_{c}" for c in CATEGORIES)]
    for variant in VARIANTS:
        header += [f"{variant}_dsc", f"{variant}_hd95_px", f"{variant}_avgdist_px", f"{variant}_hd95_mm"]
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        for c in cases:
            probs = c.probabilities.get("refined")
            row: list[object] = [c.dataset, c.id, c.shape[0], c.shape[1], c.pixel_size_mm or "",
                                 c.birads or "", c.label or "", c.pathology or ""]
            if probs is None:
                row += [""] * (1 + len(CATEGORIES))
            else:
                row += [CATEGORIES[int(np.argmax(probs))], *(f"{p:.4f}" for p in probs)]
            for variant in VARIANTS:
                s = c.segmentation.get(variant)
                row += ["", "", "", ""] if s is None else [
                    f"{s.dsc:.4f}", _fmt(s.hd95, 2) if s.hd95 is not None else "",
                    _fmt(s.avg_dist, 2) if s.avg_dist is not None else "",
                    _fmt(s.hd95_mm, 3) if s.hd95_mm is not None else ""]
            writer.writerow(row)


def write_report(out_dir: str | Path, summary: dict, cases: Sequence[CaseResult],
                 context: ReportContext) -> Path:
    """Write report.md, roc.png, cases_grid.png and cases.csv into ``out_dir``; returns report.md's path."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    has_roc = plot_roc(cases, out / "roc.png")
    has_grid = plot_case_grid(cases, out / "cases_grid.png") if any(c.contours for c in cases) else False
    write_cases_csv(cases, out / "cases.csv")
    options = context.options
    lines = [
        "# Sonograde evaluation report",
        "",
        f"> **{RESEARCH_USE_ONLY}.** These numbers describe research models on public datasets; they are not "
        "evidence of clinical performance and must never guide care.",
        "",
        f"- Date: {_dt.datetime.now(_dt.UTC).strftime('%Y-%m-%d %H:%M UTC')}",
        f"- Data: {', '.join(context.data)}; selection: {context.selection}; {summary['n']} images",
        f"- Models: {context.models} ({context.precision}); ids: "
        + (", ".join(f"{k} = {v}" for k, v in context.model_ids.items()) or "–"),
    ]
    if options is not None:
        grid = (f"{options.no_roi_size}x{options.no_roi_size}, upsampled" if options.no_roi_size
                else "full size")
        no_roi = (f"Chan–Vese from a checkerboard, {options.no_roi_iterations} iterations at {grid}, darker "
                  "phase, area filter") if options.no_roi_cnn else "not run"
        lines.append(f"- No ROI-CNN: {no_roi}; BI-RADS 2: {options.birads2}")
    if context.elapsed_s is not None:
        timings = summary.get("timings_ms", {})
        lines.append(f"- Run time: {context.elapsed_s:.0f} s; mean per image: pipeline "
                     f"{_fmt(timings.get('pipeline'), 1)} ms, "
                     f"No ROI-CNN {_fmt(timings.get('no_roi_cnn'), 1)} ms")
    if context.command:
        lines.append(f"- Command: `{context.command}`")
    lines += ["", "## Identification (Table 2 analogue)", ""]
    segmentation = summary.get("segmentation")
    if segmentation:
        lines += _segmentation_table(segmentation)
        lines += ["", "Distances are over images where the variant found a region (\"empty\" ones score "
                  "DSC 0 and are left out of the distance means); px are pixels of the original image, mm "
                  "where the manifest gives pixel_size_mm.", "", PAPER_TABLE2_NOTE, ""]
    else:
        lines += ["No image has a lesion mask: no segmentation numbers.", ""]
    lines += ["## Grading (Table 3 and Fig. 4 analogues)", ""]
    lines += _grading_lines(summary)
    lines += ["Paper numbers: five-fold cross-validation on 2238 images from one hospital with fine "
              "3/4A/4B/4C/5 labels by three physicians; ours come from other scanners, other labels and "
              "other patients, so the comparison is of order of magnitude, not of method.", ""]
    if "normal" in summary:
        normal = summary["normal"]
        lines += [f"Images without a lesion mask (normal): {normal['n']}; the pipeline found a lesion on "
                  f"{normal['lesion_found']} of them.", ""]
    if has_roc:
        lines += ["![ROC per category](roc.png)", ""]
    if has_grid:
        lines += ["![worst and best cases](cases_grid.png)", "",
                  "The case grid shows patient images: keep this folder out of any repository.", ""]
    lines += ["Per-image numbers: `cases.csv`. Definitions: `docs/evaluation.md`.", "",
              f"*{RESEARCH_USE_ONLY}*", ""]
    path = out / "report.md"
    path.write_text("\n".join(lines), encoding="utf-8")
    return path
