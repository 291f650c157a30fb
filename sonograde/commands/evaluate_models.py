"""Held-out numbers of one exported model, as the model cards report them (`sonograde evaluate roi|grader`).

roi: the ROI-CNN through the pipeline's stages 1-2 (its area filter and refinement, with the parameters
  `sonograde grade` uses) on the test side of the training split (BUS-BRA: the held-out official fold):
  DSC at 288x288 and at the image's own size, HD95 and average symmetric surface distance (ASD) in px and,
  where the manifest gives pixel_size_mm, in mm, how many lesions are located (DSC >= 0.3); the raw mask,
  the paper's refinement (Chan-Vese on the 288 grid) and the pipeline's side by side (--refinement adds
  others). --side train+val scores the cases the split does not hold out (for choosing, never reporting).
grader: the G-CNN's five-way metrics on the five-way test cases (accuracy, per-category accuracy, confusion
  matrix, one-vs-rest and macro AUC, malignancy AUC) against the majority class, with bootstrap intervals
  and exact tests, once with the annotated masks and (with --roi-model) once with the pipeline's masks.
With --cv-folds K and K models (trained by `sonograde train ... --cv-folds K --test-fold i`), model i is
evaluated on fold i and the folds are pooled, so every case is predicted once by a model that never saw it.

Examples:
  sonograde evaluate roi --model models/roi_cnn.onnx --data DIR
  sonograde evaluate roi --model models/roi_cnn.onnx --data DIR --refinement native-chan-vese \
      --refinement native-band
  sonograde evaluate grader --model models/g_cnn.onnx --roi-model models/roi_cnn.onnx \
      --data DIR --data DIR2 --json result.json
  sonograde evaluate grader --cv-folds 5 --model f1.onnx --model f2.onnx --model f3.onnx --model f4.onnx \
      --model f5.onnx --roi-model models/roi_cnn.onnx --data DIR --seed 3

Prints the summary as JSON; --json FILE also writes the full result (per image or case). The whole
pipeline on labelled data (Table 2 and Fig. 4 analogues) is `sonograde evaluate --data DIR`.
Exit status: 0 done; 2 bad data, models or options.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from refine.stage import REFINEMENTS

KINDS = ("roi", "grader")
SIDES = ("test", "val", "train", "train+val")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", action="append", required=True, metavar="ONNX",
                        help="exported model; with --cv-folds K give it K times, the i-th is evaluated on "
                             "fold i and the K test folds are pooled (or once: fold --test-fold only)")
    parser.add_argument("--roi-model", action="append", default=None, metavar="ONNX",
                        help="grader: also evaluate on two-stage masks, with this ROI-CNN as the first "
                             "stage; with --cv-folds K once (one first stage for all folds) or K times "
                             "(the i-th is fold i's own first stage, e.g. fine-tuned without fold i)")
    parser.add_argument("--data", action="append", required=True, metavar="DIR",
                        help="manifest folder (repeatable)")
    parser.add_argument("--test-fold", type=int, default=1, metavar="K",
                        help="the split's test fold (default 1; BUS-BRA: its official fold)")
    parser.add_argument("--val-fraction", type=float, default=0.1, metavar="F",
                        help="the split's validation fraction (default 0.1)")
    parser.add_argument("--test-fraction", type=float, default=0.3, metavar="F",
                        help="the split's test fraction where a dataset has no folds (default 0.3)")
    parser.add_argument("--cv-folds", type=int, default=0, metavar="K",
                        help="the models were trained with sonograde train --cv-folds K (default 0: one "
                             "model, test side of --test-fraction / --test-fold)")
    parser.add_argument("--seed", type=int, default=0, help="the split's seed (default 0)")
    parser.add_argument("--no-refine", action="store_true", help="roi: raw masks only (no refinement)")
    parser.add_argument("--refinement", action="append", default=None, choices=REFINEMENTS, metavar="NAME",
                        help="roi: also score this refinement side by side (repeatable; "
                             f"{', '.join(REFINEMENTS)}); the paper's and the pipeline's are always scored")
    parser.add_argument("--native-level", type=float, default=None, metavar="P",
                        help="roi: probability level of the native refinements' outline (default: the "
                             "pipeline's)")
    parser.add_argument("--side", choices=SIDES, default="test",
                        help="which side of the split to score (default test: the held-out cases; "
                             "train+val: the cases models may have been trained on, for choosing "
                             "parameters only)")
    parser.add_argument("--json", type=Path, default=None, metavar="FILE", help="write the full result here")


def _fail(message: str) -> int:
    print(f"sonograde evaluate: {message}", file=sys.stderr)
    return 2


def run(args: argparse.Namespace) -> int:
    from engine.data.datasets import load_records
    from engine.data.manifest import ManifestError
    from engine.splits import SplitConfig, make_split
    from engine.training import evaluate

    kind = args.model_kind
    pooled = args.cv_folds > 0 and len(args.model) > 1
    if pooled and len(args.model) != args.cv_folds:
        return _fail(f"with --cv-folds {args.cv_folds} give --model once (evaluated on --test-fold) or "
                     f"{args.cv_folds} times (one per fold, pooled), got {len(args.model)}")
    if not args.cv_folds and len(args.model) > 1:
        return _fail("several --model files need --cv-folds K (one model per fold)")
    roi_models = args.roi_model or [None]
    if len(roi_models) == 1:
        roi_models = roi_models * len(args.model)
    elif not pooled or len(roi_models) != len(args.model):
        return _fail(f"give --roi-model once, or once per fold model ({len(args.model)}), "
                     f"got {len(roi_models)}")
    missing = [m for m in [*args.model, *(r for r in roi_models if r)] if not Path(m).is_file()]
    if missing:
        return _fail(f"model file not found: {', '.join(sorted(set(missing)))}")
    try:
        records = load_records(args.data)
    except ManifestError as error:
        return _fail(str(error))
    folds = range(1, args.cv_folds + 1) if pooled else [args.test_fold]
    results = []
    for model, roi_model, fold in zip(args.model, roi_models, folds, strict=True):
        split = make_split(records, SplitConfig(fold, args.val_fraction, args.test_fraction, args.seed,
                                                folds=args.cv_folds))
        print(f"{model}: {split.summary()}", file=sys.stderr)
        side = {"test": split.test, "val": split.val, "train": split.train,
                "train+val": split.train + split.val}[args.side]
        if kind == "roi":
            refinements = tuple(dict.fromkeys(["paper", *(args.refinement or [])]))
            results.append(evaluate.evaluate_roi(model, side, refine=not args.no_refine,
                                                 refinements=refinements, native_level=args.native_level))
        else:
            if args.side != "test":
                return _fail("evaluate grader scores the held-out test side only (drop --side)")
            results.append(evaluate.evaluate_grader(model, roi_model, split.test, split.train))
    if kind == "roi":
        result = evaluate.pool_roi_results(results) if pooled else results[0]
        print(json.dumps(result["summary"], indent=1))
    else:
        result = evaluate.pool_grader_results(results) if pooled else results[0]
        print(json.dumps({k: v for k, v in result.items() if k not in ("ids", "metadata", "per_case")},
                         indent=1))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    return 0
