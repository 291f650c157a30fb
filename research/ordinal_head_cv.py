"""Cross-validate an ordinal head (``engine.training.ordinal``) for a G-CNN that never saw the five-way
data.

Input: the JSON of ``sonograde evaluate grader --cv-folds K --seed S --json FILE`` run with
the head-less network (or ensemble) once per fold (each fold through its own first stage, if you have
one). For every fold a head is fitted on the other folds' cases (annotated masks) and applied to the fold (the
pipeline's masks); the pooled result is printed and written to ``--out``. This is how the shipped grader's
recipe was cross-validated (docs/training.md, "Cross-validation"):

  python -m research.ordinal_head_cv --pooled runs/ensA_cv_s3.json --data $DATA/breast_lesions_usg \\
      --cv-folds 5 --seed 3 --out runs/ensA_oh_s3.json

Research use only, not for diagnosis.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from engine.data.datasets import load_records
from engine.splits import SplitConfig, make_split
from engine.training.evaluate import grader_report
from engine.training.ordinal import cross_validate_head


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pooled", required=True,
                        help="JSON of evaluate grader --cv-folds K (per-case rows)")
    parser.add_argument("--data", action="append", required=True, help="the --data of that evaluation")
    parser.add_argument("--cv-folds", type=int, required=True, help="its --cv-folds")
    parser.add_argument("--seed", type=int, required=True, help="its --seed (the fold assignment)")
    parser.add_argument("--val-fraction", type=float, default=0.1)
    parser.add_argument("--test-fraction", type=float, default=0.3)
    parser.add_argument("--out", default=None, help="write the pooled report, heads and rows here")
    args = parser.parse_args(argv)
    pooled = json.loads(Path(args.pooled).read_text())
    records = load_records(args.data)
    fold_of = {}
    for fold in range(1, args.cv_folds + 1):
        split = make_split(records, SplitConfig(fold, args.val_fraction, args.test_fraction, args.seed,
                                                folds=args.cv_folds))
        fold_of.update({f"{r.dataset}/{r.id}": fold for r in split.test})
    try:
        rows, heads = cross_validate_head(pooled["per_case"], fold_of)
    except ValueError as error:
        print(f"ordinal_head_cv: {error}", file=sys.stderr)
        return 2
    labels = np.array([r["label"] for r in rows])
    malignant = np.array([r["malignant"] for r in rows])
    majority = np.array([r["majority"] for r in rows])
    found = np.array([r["lesion_found"] for r in rows])
    result = {"two_stage_masks": grader_report(np.array([r["two_stage_masks"] for r in rows]), labels,
                                               malignant, majority, found),
              "ground_truth_masks": grader_report(np.array([r["ground_truth_masks"] for r in rows]), labels,
                                                  malignant, majority),
              "heads": [h.to_dict() for h in heads], "per_case": rows}
    for key, report in (("two-stage", result["two_stage_masks"]),
                        ("annotated", result["ground_truth_masks"])):
        low, high = report["accuracy_95ci"]
        auc_low, auc_high = report["macro_auc_95ci"]
        print(f"{key}: accuracy {report['accuracy']:.3f} ({low:.2f}-{high:.2f}) of {report['cases']}, "
              f"majority {report['majority_accuracy']:.3f}; binomial p "
              f"{report['accuracy_vs_majority_binomial_p']:.4f}, McNemar p "
              f"{report['accuracy_vs_majority_mcnemar_p']:.4f}; macro AUC {report['macro_auc']:.3f} "
              f"({auc_low:.2f}-{auc_high:.2f})")
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
