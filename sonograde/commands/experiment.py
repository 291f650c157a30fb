"""Run the paper's experiments on manifest datasets. Available: table3 (needs the train extra: torch).

table3: one-stage classifiers (G-CNN, VGG16, ResNet50 on the whole image) against two-stage ones (the
lesion crop around the shipped ROI-CNN's ROI, without and with Chan–Vese refinement, then G-CNN, VGG16
or ResNet50), trained and tested by patient-disjoint k-fold cross-validation, at the edge width. Writes
OUT/table3.md and OUT/table3.json (per-category accuracy per method, the Table 3 analogue). Every
(fold, network) result is cached in OUT: run the same command again to resume. OUT also caches decoded
images: keep it outside any repository. Measured on two idle CPU cores with breast_lesions_usg (151
lesions): 5 folds at --whole-size 288 --crop-size 128 --epochs 20 --width 0.125 took 19 minutes; adding
BUS-BRA or widening the networks multiplies that: run long ones with nohup.

Examples ($DATA: the folder with the public datasets; any manifest folder DIR works, docs/data.md):
  sonograde experiment table3 --data $DATA/breast_lesions_usg --out /tmp/t3      # 5 folds
  sonograde experiment table3 --data $DATA/breast_lesions_usg --out /tmp/t3_a --epochs 20 \
      --width 0.125 --whole-size 288 --crop-size 128 --optimizer adamw    # docs/research.md
  sonograde experiment table3 --data DIR --folds 3 --epochs 4 --width 0.125 --out /tmp/t3_small
  sonograde experiment table3 --smoke --out /tmp/t3_smoke     # phantom data, tiny networks, seconds

Exit status: 0 done; 2 bad data or options.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

SMOKE_PHANTOM_COUNT = 20


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", choices=("table3",), help="which experiment (table3)")
    parser.add_argument("--data", type=Path, action="append", default=None, metavar="DIR",
                        help="manifest folder with masks and BI-RADS labels (repeatable); "
                             "with --smoke and no --data: a phantom dataset written into OUT")
    parser.add_argument("--out", type=Path, required=True, metavar="DIR",
                        help="results folder (resumable; caches decoded images: keep it out of "
                             "repositories)")
    parser.add_argument("--models", type=Path, default=None, metavar="DIR",
                        help="folder with roi_cnn.onnx and g_cnn.onnx for the ROIs "
                             "(default: shipped models/)")
    parser.add_argument("--folds", type=int, default=5,
                        help="cross-validation folds (default 5, as the paper)")
    parser.add_argument("--epochs", type=int, default=10, help="training epochs per network (default 10)")
    parser.add_argument("--width", type=float, default=0.25, help="width multiplier of every network (0.25)")
    parser.add_argument("--crop-size", type=int, default=128, help="two-stage crop side in px (default 128)")
    parser.add_argument("--whole-size", type=int, default=288,
                        help="one-stage image side in px (default 288, as the paper)")
    parser.add_argument("--archs", default="grader,vgg16,resnet50",
                        help="comma-separated architectures: grader (G-CNN), vgg16, resnet50 (default all)")
    parser.add_argument("--stages", default="one_stage,two_stage",
                        help="one_stage and/or two_stage (default both); run one part now and the other "
                             "later into the same --out")
    parser.add_argument("--run-folds", default=None, metavar="LIST",
                        help="train and test only these folds now (1-based, comma-separated, e.g. 1,2,3); "
                             "the table pools the folds every method has finished")
    parser.add_argument("--summarize", action="store_true",
                        help="train nothing: rewrite table3.md/json from the results already in --out")
    parser.add_argument("--optimizer", choices=("sgd", "adamw"), default="sgd",
                        help="sgd (the paper's, default) or adamw")
    parser.add_argument("--lr", type=float, default=None, help="learning rate (default: the optimizer's)")
    parser.add_argument("--batch-size", type=int, default=16, help="images per step (default 16)")
    parser.add_argument("--seed", type=int, default=0, help="folds, initialisation, augmentation (default 0)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    parser.add_argument("--smoke", action="store_true",
                        help="tiny settings for a quick check: 2 folds, 1 epoch, width 0.0625, 32 px inputs; "
                             f"phantom data ({SMOKE_PHANTOM_COUNT} images) when no --data")


def run(args: argparse.Namespace) -> int:
    from sonograde import RESEARCH_USE_ONLY
    from sonograde.experiments import ExperimentError, Table3Config, run_table3

    try:  # before any work: every part of table3 trains or loads torch networks
        import torch  # noqa: F401
    except ImportError as error:
        print(f"sonograde experiment: {args.name} needs the train extra (pip install 'sonograde[train]'): "
              f"{error}", file=sys.stderr)
        return 2
    data = [str(d) for d in args.data or []]
    folds, epochs, width = args.folds, args.epochs, args.width
    crop, whole, archs = args.crop_size, args.whole_size, args.archs
    if args.smoke:
        folds, epochs, width, crop, whole = 2, 1, 0.0625, 32, 32
        if not data:
            from capture.phantom import write_dataset

            data = [str(write_dataset(args.out / "phantom", SMOKE_PHANTOM_COUNT, seed=0, size=(160, 128)))]
    if not data:
        print("sonograde experiment: give --data DIR (or --smoke for phantom data)", file=sys.stderr)
        return 2
    models = str(args.models) if args.models else None
    try:
        run_folds = (tuple(int(f) - 1 for f in args.run_folds.split(",") if f.strip())
                     if args.run_folds else None)
    except ValueError:
        print(f"sonograde experiment: --run-folds takes fold numbers like 1,2,3, got {args.run_folds!r}",
              file=sys.stderr)
        return 2
    config = Table3Config(data=tuple(data), out=str(args.out), models=models,
                          folds=folds, epochs=epochs, width=width, crop_size=crop, whole_size=whole,
                          optimizer=args.optimizer, lr=args.lr, batch_size=args.batch_size,
                          archs=tuple(a.strip() for a in archs.split(",") if a.strip()), seed=args.seed,
                          stages=tuple(x.strip() for x in args.stages.split(",") if x.strip()),
                          run_folds=() if args.summarize else run_folds,
                          threads=args.threads)
    try:
        result = run_table3(config)
    except ExperimentError as error:
        print(f"sonograde experiment: {error}", file=sys.stderr)
        return 2
    print(RESEARCH_USE_ONLY)
    print((Path(config.out) / "table3.md").read_text())
    print(f"run time {result.seconds:.0f} s ({result.trained} networks trained now, {result.reused} reused); "
          f"results in {config.out}/table3.json", file=sys.stderr)
    return 0
