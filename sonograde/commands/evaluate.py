"""Evaluate the two-stage grader on labelled manifest datasets (the paper's Table 2 and Fig. 4).

Runs the shipped pipeline (ROI-CNN -> area filter + Chan–Vese -> G-CNN) on every image of one or more
manifest folders (`id,image,mask[,birads,pathology,pixel_size_mm,fold,patient]`, any image size) and
reports:
  segmentation, for the paper's three identification variants, over images with a lesion mask:
    no_roi_cnn  Chan–Vese alone from a checkerboard, 1000 iterations (run on the image resized to
                288x288, the paper's input size, then upsampled; --no-roi-size 0 for full size)
    roi_cnn     the ROI-CNN mask after the area filter, not refined
    refined     the pipeline's refined mask
    DSC mean and median, HD95 and average boundary distance in pixels of the original image, and in mm
    where pixel_size_mm is known; beside them, the same for each refinement on the pipeline's ROI
    (--refinements: the paper's Chan–Vese on the 288 grid and the ones at the frame's own pixels);
  grading, over images with a BI-RADS label of 3, 4A, 4B, 4C or 5 (BUS-BRA's coarse "4" is scored
    against P(4A)+P(4B)+P(4C); 2 counts as 3 unless --birads2 exclude; 1/normal, 0, 6 are not graded):
    accuracy, per-category accuracy (recall), confusion matrix, one-vs-rest AUC and macro AUC, and
    malignancy AUC against `pathology` (score: expected BI-RADS likelihood of malignancy). An image
    where the pipeline finds no lesion counts as wrong;
  the explained assessment ("assessment" in --json):
    per lexicon descriptor (shape, margin, echo_pattern, posterior_features, calcifications, from the
    manifest's shape/margin/echogenicity/posterior_features/calcifications columns) the confusion matrix,
    Cohen's kappa with a seeded 95% bootstrap interval and agreement, beside published inter-radiologist
    kappas; margin subtypes; orientation against the one measured on the annotated mask; size against
    the annotated masks (median relative error of width and height, and in mm where pixel_size_mm is
    known); malignancy AUC, expected calibration error and reliability bins against `pathology`;
    five-way accuracy, quadratic-weighted kappa and macro AUC. Labels a dataset lacks are skipped,
    never taken as negatives.

Honest numbers need held-out images: evaluate the shipped models only on the parts they were not
trained on (models/roi_cnn.md and models/g_cnn.md say which; $DATA: the folder with the public
datasets, docs/data.md), e.g.
  sonograde evaluate --data $DATA/busbra --fold 1                 # BUS-BRA held-out fold
  sonograde evaluate --data $DATA/breast_lesions_usg --split test # held-out cases
  sonograde evaluate --data $DATA/breast_lesions_usg --split test --split-cv-folds 5 \
      --split-test-fold 1                     # fold 1 of 5, for a model trained with --cv-folds 5
  sonograde evaluate --data DIR --ids held_out_ids.txt --json              # ids file: ID or DATASET:ID
  sonograde evaluate --data DIR --out report/                               # Markdown + ROC + case grid
  sonograde evaluate --data DIR --limit 20 --skip-no-roi                    # quick look
  sonograde evaluate --data DIR --refinement paper --refinements native-threshold,paper
                                           # the pipeline with the paper's refinement, the others beside
  sonograde evaluate roi --model models/roi_cnn.onnx --data DIR             # one model: its model card's
  sonograde evaluate grader --model models/g_cnn.onnx --roi-model models/roi_cnn.onnx --data DIR   # numbers

--json prints one object:
  {"n": .., "segmentation": {"no_roi_cnn": {"dsc_mean": .., "dsc_median": .., "hd95_mean": ..,
   "avgdist_mean": .., ...}, "roi_cnn": {..}, "refined": {..}}, "grading": {"n": .., "accuracy": ..,
   "per_category_accuracy": {"3": .., "4A": .., "4B": .., "4C": .., "5": ..}, "macro_auc": ..,
   "malignancy_auc": .., "confusion": [[..]], ...}, ...}
keys that do not apply (no masks, no labels) are left out. docs/evaluation.md defines every number.

--out writes report.md, roc.png, cases.csv and cases_grid.png (worst and best cases, drawn on the
images: it shows patient images, so keep it out of any repository), assessment.md (descriptor
confusion matrices and kappas) and reliability.png (malignancy calibration). Nothing else is written.
Exit status: 0 done; 2 bad data, models or options.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from refine.stage import REFINEMENTS, SIDE_BY_SIDE
from sonograde import RESEARCH_USE_ONLY
from sonograde.commands import evaluate_models


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", type=Path, action="append", default=None, metavar="DIR",
                        help="manifest folder (repeatable): a folder with manifest.csv (required)")
    parser.add_argument("--models", type=Path, default=None, metavar="DIR",
                        help="folder with roi_cnn[.PRECISION].onnx and g_cnn[.PRECISION].onnx "
                             "(default: the shipped models/)")
    parser.add_argument("--roi-model", type=Path, default=None, metavar="ONNX",
                        help="ROI-CNN file used instead of the models folder's roi_cnn[.P].onnx, e.g. "
                             "models/roi_cnn_vgg16.int8.onnx (the paper's network)")
    parser.add_argument("--precision", choices=("fp32", "int8", "fp16"), default="fp32",
                        help="which model files to use (default fp32)")
    parser.add_argument("--backend", choices=("auto", "onnxruntime", "tensorrt"), default="auto",
                        help="inference backend (default auto)")
    parser.add_argument("--threads", type=int, default=2, metavar="N",
                        help="ONNX Runtime threads (default 2)")
    parser.add_argument("--out", type=Path, default=None, metavar="REPORT_DIR",
                        help="write report.md, roc.png, cases.csv and cases_grid.png here")
    parser.add_argument("--json", action="store_true", help="print the results as one JSON object")
    parser.add_argument("--limit", type=int, default=None, metavar="N",
                        help="evaluate only the first N selected images (quick checks)")
    parser.add_argument("--skip-no-roi", action="store_true",
                        help='skip the slow "No ROI-CNN" variant (Chan–Vese alone)')
    parser.add_argument("--no-roi-size", type=int, default=288, metavar="PX",
                        help='grid of the "No ROI-CNN" Chan–Vese, PX x PX (default 288, as the paper); '
                             "0 = each image's own size")
    parser.add_argument("--no-roi-iterations", type=int, default=1000, metavar="N",
                        help='Chan–Vese iterations of "No ROI-CNN" (default 1000, as the paper)')
    parser.add_argument("--refinement", choices=REFINEMENTS, default=None, metavar="NAME",
                        help="the pipeline's refinement (default: the product's; "
                             f"{', '.join(REFINEMENTS)})")
    parser.add_argument("--refinements", default=",".join(SIDE_BY_SIDE), metavar="LIST",
                        help="refinements scored side by side on the pipeline's ROI, comma-separated "
                             "('' for none; default %(default)s)")
    parser.add_argument("--birads2", choices=("as3", "exclude"), default="as3",
                        help="BI-RADS 2 in grading: graded as 3 (default, as the shipped G-CNN was "
                             "trained) or left out")
    select = parser.add_argument_group("held-out selection (combined with AND)")
    select.add_argument("--fold", type=int, action="append", default=None, metavar="K",
                        help="keep records of manifest fold K (repeatable; BUS-BRA's official folds)")
    select.add_argument("--ids", type=Path, default=None, metavar="FILE",
                        help="keep records listed in FILE (one ID, DATASET:ID or DATASET/ID per line, or "
                             "a training run's split.json: its test_ids)")
    select.add_argument("--split", choices=("train", "val", "test"), default=None,
                        help="keep one side of the training split (engine.splits.make_split) "
                             "recomputed with the options below")
    select.add_argument("--split-test-fold", type=int, default=1, metavar="K",
                        help="make_split test_fold (default 1)")
    select.add_argument("--split-test-fraction", type=float, default=0.3, metavar="F",
                        help="make_split test_fraction (default 0.3)")
    select.add_argument("--split-val-fraction", type=float, default=0.1, metavar="F",
                        help="make_split val_fraction (default 0.1)")
    select.add_argument("--split-seed", type=int, default=0, metavar="S", help="make_split seed (default 0)")
    select.add_argument("--split-cv-folds", type=int, default=0, metavar="K",
                        help="make_split cross-validation folds (default 0: none): with K, --split test is "
                             "fold --split-test-fold of K, as sonograde train --cv-folds K --test-fold i")
    # One exported model's held-out numbers for its model card: `sonograde evaluate roi|grader ...`.
    models = parser.add_subparsers(dest="model_kind", metavar="{roi,grader}", required=False,
                                   title="one model's held-out numbers (see `sonograde evaluate roi --help`)")
    for kind, help_text in (("roi", "one ROI-CNN through stages 1-2: DSC, HD95, lesions located"),
                            ("grader", "one G-CNN: five-way metrics against the majority class")):
        child = models.add_parser(kind, help=help_text, description=evaluate_models.__doc__,
                                  epilog=RESEARCH_USE_ONLY,
                                  formatter_class=argparse.RawDescriptionHelpFormatter)
        evaluate_models.add_arguments(child)
        child.set_defaults(_run=evaluate_models.run)


def _fail(message: str) -> int:
    print(f"sonograde evaluate: {message}", file=sys.stderr)
    return 2


def run(args: argparse.Namespace) -> int:
    from engine.backends import ModelLoadError
    from engine.data.manifest import ManifestError, read_manifest
    from engine.grader import GraderConfig, TwoStageGrader
    from sonograde.evaluation.assessment import summarize_assessment
    from sonograde.evaluation.runner import EvaluationOptions, evaluate_records
    from sonograde.evaluation.selection import Selection, SelectionError, select
    from sonograde.evaluation.summary import summarize_cases

    if not args.data:
        return _fail("give --data DIR (a folder with manifest.csv), or roi / grader to evaluate one model")
    if args.limit is not None and args.limit < 1:
        return _fail("--limit must be at least 1")
    if args.no_roi_size < 0 or args.no_roi_iterations < 1:
        return _fail("--no-roi-size must be >= 0 and --no-roi-iterations >= 1")
    side_by_side = tuple(name.strip() for name in args.refinements.split(",") if name.strip())
    unknown = [name for name in side_by_side if name not in REFINEMENTS]
    if unknown:
        return _fail(f"unknown refinement(s) in --refinements: {', '.join(unknown)}; "
                     f"choose from {', '.join(REFINEMENTS)}")
    records = []
    try:
        for folder in args.data:
            records.extend(read_manifest(folder))
    except ManifestError as error:
        return _fail(str(error))
    split_config = None
    if args.split:
        from engine.splits import SplitConfig

        try:
            split_config = SplitConfig(test_fold=args.split_test_fold, val_fraction=args.split_val_fraction,
                                       test_fraction=args.split_test_fraction, seed=args.split_seed,
                                       folds=args.split_cv_folds)
        except ValueError as error:
            return _fail(f"{error} (--split-cv-folds / --split-test-fold)")
    selection = Selection(folds=tuple(args.fold) if args.fold else None, ids_file=args.ids,
                          split=args.split, split_config=split_config)
    try:
        records = select(records, selection)
    except (SelectionError, ValueError) as error:
        return _fail(str(error))
    if args.limit is not None:
        records = records[: args.limit]
    try:
        config = GraderConfig(refinement=args.refinement) if args.refinement else None
        grader = TwoStageGrader.from_models_dir(args.models, precision=args.precision, backend=args.backend,
                                                threads=args.threads, config=config, roi_model=args.roi_model)
        grader.warm_up()
    except (ModelLoadError, ValueError, OSError) as error:
        return _fail(str(error))
    options = EvaluationOptions(no_roi_cnn=not args.skip_no_roi, no_roi_size=args.no_roi_size,
                                no_roi_iterations=args.no_roi_iterations, birads2=args.birads2,
                                keep_contours=args.out is not None, refinements=side_by_side)
    t0 = time.perf_counter()
    try:
        cases = evaluate_records(grader, records, options, progress=True)
    except (ManifestError, ValueError) as error:
        return _fail(str(error))
    elapsed = time.perf_counter() - t0
    summary = summarize_cases(cases)
    summary["refinement"] = grader.config.refinement
    assessment = summarize_assessment(cases)
    if assessment:
        summary["assessment"] = assessment
    if args.out is not None:
        from sonograde.report import ReportContext, write_report

        context = ReportContext(
            data=[str(d) for d in args.data], selection=selection.describe(),
            models=str(args.models or "models/ (shipped)"), precision=args.precision,
            model_ids=dict(getattr(grader, "model_ids", {})), options=options, elapsed_s=elapsed,
            command="sonograde " + " ".join(sys.argv[1:]) if sys.argv[0].endswith("sonograde") else None,
        )
        try:
            written = write_report(args.out, summary, cases, context)
        except OSError as error:
            return _fail(f"cannot write the report to {args.out}: {error}")
        print(f"report written to {written}", file=sys.stderr)
        if assessment:
            from sonograde.evaluation.assessment import write_assessment_report

            try:
                files = write_assessment_report(args.out, assessment)
            except OSError as error:
                return _fail(f"cannot write the assessment report to {args.out}: {error}")
            print("assessment report written to " + ", ".join(str(f) for f in files), file=sys.stderr)
    if args.json:
        print(json.dumps(summary))
    else:
        print(format_summary(summary, elapsed))
    return 0


def format_summary(summary: dict, elapsed_s: float) -> str:
    """A readable table of the evaluation JSON (the explained assessment after it)."""
    from sonograde.evaluation.assessment import format_assessment

    lines = [_format_paper_summary(summary, elapsed_s)]
    if summary.get("assessment"):
        lines += format_assessment(summary["assessment"])
    return "\n".join(lines)


def _format_paper_summary(summary: dict, elapsed_s: float) -> str:
    """The segmentation and grading tables of the evaluation JSON."""
    from sonograde.evaluation.summary import VARIANT_NAMES

    lines = [RESEARCH_USE_ONLY, f"images: {summary['n']} ({elapsed_s:.0f} s)"]
    segmentation = summary.get("segmentation", {})
    if segmentation:
        lines.append("")
        lines.append(f"{'segmentation':32s} {'n':>5s} {'DSC mean':>9s} {'median':>7s} {'HD95 px':>8s} "
                     f"{'AvgD px':>8s} {'HD95 mm':>8s} {'AvgD mm':>8s}")
        for variant, s in segmentation.items():
            def cell(key: str, width: int, digits: int = 3, s: dict = s) -> str:
                value = s.get(key)
                return f"{value:{width}.{digits}f}" if value is not None else " " * (width - 1) + "-"
            lines.append(f"{VARIANT_NAMES[variant]:32s} {s['n']:5d} {cell('dsc_mean', 9)} "
                         f"{cell('dsc_median', 7)} {cell('hd95_mean', 8, 1)} {cell('avgdist_mean', 8, 1)} "
                         f"{cell('hd95_mm_mean', 8, 2)} {cell('avgdist_mm_mean', 8, 2)}")
        if summary.get("refinement"):
            lines.append(f"(the pipeline refines with: {summary['refinement']})")
        for name, s in summary.get("segmentation_refinements", {}).items():
            def cell(key: str, width: int, digits: int = 3, s: dict = s) -> str:
                value = s.get(key)
                return f"{value:{width}.{digits}f}" if value is not None else " " * (width - 1) + "-"
            lines.append(f"{'refinement ' + name:32s} {s['n']:5d} {cell('dsc_mean', 9)} "
                         f"{cell('dsc_median', 7)} {cell('hd95_mean', 8, 1)} {cell('avgdist_mean', 8, 1)} "
                         f"{cell('hd95_mm_mean', 8, 2)} {cell('avgdist_mm_mean', 8, 2)}")
    grading = summary.get("grading")
    if grading:
        lines.append("")
        lines.append(f"grading: {grading['n']} images graded"
                     + (f", accuracy {grading['accuracy']:.3f}" if "accuracy" in grading else "")
                     + (f", macro AUC {grading['macro_auc']:.3f}" if "macro_auc" in grading else "")
                     + (f", malignancy AUC {grading['malignancy_auc']:.3f} (n={grading['malignancy_n']})"
                        if "malignancy_auc" in grading else ""))
        per = grading.get("per_category_accuracy", {})
        if per:
            lines.append("per-category accuracy: " + ", ".join(f"{k} {v:.3f}" for k, v in per.items()))
        if "auc" in grading:
            aucs = grading["auc"].items()
            lines.append("one-vs-rest AUC:       " + ", ".join(f"{k} {v:.3f}" for k, v in aucs))
        if "confusion" in grading:
            labels = grading["confusion_labels"]
            lines.append("confusion (rows true, columns predicted): " + " ".join(labels))
            for label, row in zip(grading["confusion_labels"], grading["confusion"], strict=True):
                lines.append(f"  {label:>3s} " + " ".join(f"{v:4d}" for v in row))
        if grading.get("n_no_lesion"):
            lines.append(f"no lesion found (counted wrong): {grading['n_no_lesion']}")
    if "normal" in summary:
        normal = summary["normal"]
        lines.append("")
        lines.append(f"images without a lesion mask: {normal['n']}; "
                     f"pipeline found a lesion on {normal['lesion_found']}")
    return "\n".join(lines)
