"""Cross-validate a G-CNN recipe: K folds x several initializations trained side by side (one process per
network, on a GPU with ``--device cuda`` or on the CPU), each exported to ONNX, each initialization's K fold
models pooled by ``sonograde evaluate grader`` (every case graded once by a network that never saw it), and
the mean of the initializations' probabilities evaluated as an ensemble. Prints one line per evaluation and
writes ``OUT/summary.json``. Research use only, not for diagnosis.

For example, three initializations of a frame-view recipe on one GPU with 14 workers (docs/research.md,
commit 55b945e):

  python -m research.grader_cv --out /dev/shm/cv --device cuda --workers 14 --seeds 30,31,32 --split-seed 3 \\
      --data $DATA/breast_lesions_usg -- --view frame --input-size 288 --width 0.25 --epochs 25

Arguments after ``--`` go to ``sonograde train grader`` as they are (the recipe). Always added: ``--cv-folds K
--test-fold i --seed S --split-seed SPLIT --device --threads 1 --no-progress --cache-dir OUT/cache`` and
``--mask-channel --malignancy-weight 1 --optimizer adamw --lr 1e-3`` unless ``--no-defaults``. "Clearly" in
the output: two-stage accuracy binomial p < 0.01 and McNemar p < 0.05 against the majority, and macro AUC
95 % lower bound > 0.5.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from engine.model_files import DEFAULT_MODELS_DIR
from engine.training.evaluate import average_grader_results

REPO = Path(__file__).resolve().parents[1]  # the checkout: the folder the subprocesses run in

DEFAULT_RECIPE = ["--mask-channel", "--malignancy-weight", "1", "--optimizer", "adamw", "--lr", "1e-3"]
MASK_KINDS = ("ground_truth_masks", "two_stage_masks")


def clearly(report: dict) -> bool:
    return (
        report["accuracy_vs_majority_binomial_p"] < 0.01
        and report["accuracy_vs_majority_mcnemar_p"] < 0.05
        and report["macro_auc_95ci"][0] > 0.5
    )


def data_args(folders: list[str]) -> list[str]:
    return [arg for folder in folders for arg in ("--data", folder)]


def describe(tag: str, report: dict) -> str:
    lo, hi = report["accuracy_95ci"]
    alo, ahi = report["macro_auc_95ci"]
    return (
        f"{tag:28s} n={report['cases']} acc={report['accuracy']:.3f} ({lo:.2f}-{hi:.2f}) "
        f"majority={report['majority_accuracy']:.3f} p={report['accuracy_vs_majority_binomial_p']:.4f}/"
        f"{report['accuracy_vs_majority_mcnemar_p']:.3f} "
        f"macroAUC={report['macro_auc']:.3f} ({alo:.2f}-{ahi:.2f}) "
        f"malignancyAUC={report['malignancy_auc']:.3f}"
    )


class Runner:
    def __init__(self, args: argparse.Namespace, recipe: list[str]) -> None:
        self.args, self.recipe = args, recipe
        self.out = Path(args.out)
        self.started = time.time()

    def log(self, message: str) -> None:
        print(f"[{time.time() - self.started:6.0f} s] {message}", flush=True)

    def sonograde(self, argv: list[str], log_path: Path) -> bool:
        with log_path.open("a") as handle:
            proc = subprocess.run(
                [sys.executable, "-m", "sonograde.cli", *argv],
                cwd=REPO,
                stdout=handle,
                stderr=subprocess.STDOUT,
            )
        return proc.returncode == 0

    def fold_dir(self, seed: int, fold: int) -> Path:
        return self.out / f"seed{seed}" / f"fold{fold}"

    def train_fold(self, seed: int, fold: int) -> bool:
        run = self.fold_dir(seed, fold)
        run.mkdir(parents=True, exist_ok=True)
        onnx = run / "last.onnx"
        if onnx.is_file():
            return True
        resume = ["--resume"] if (run / "last.pt").is_file() else []
        ok = self.sonograde(
            [
                "train",
                "grader",
                *data_args(self.args.data),
                "--out",
                str(run),
                "--cv-folds",
                str(self.args.folds),
                "--test-fold",
                str(fold),
                "--seed",
                str(seed),
                "--split-seed",
                str(self.args.split_seed),
                "--device",
                self.args.device,
                "--threads",
                "1",
                "--no-progress",
                "--cache-dir",
                str(self.out / "cache"),
                *resume,
                *self.recipe,
            ],
            run / "train.log",
        )
        ok = ok and self.sonograde(
            ["export", "--checkpoint", str(run / "last.pt"), "--out", str(onnx), "--no-dynamo"],
            run / "train.log",
        )
        self.log(f"{'trained' if ok else 'FAILED (see train.log)'}: {run}")
        return ok

    def evaluate_seed(self, seed: int) -> dict | None:
        models = [self.fold_dir(seed, f) / "last.onnx" for f in range(1, self.args.folds + 1)]
        if not all(m.is_file() for m in models):
            return None
        target = self.out / f"seed{seed}" / "pooled.json"
        if not target.is_file():
            argv = [
                sys.executable,
                "-m",
                "sonograde.cli",
                "evaluate",
                "grader",
                *[a for m in models for a in ("--model", str(m))],
                "--cv-folds",
                str(self.args.folds),
                "--seed",
                str(self.args.split_seed),
                *[a for f in range(1, self.args.folds + 1)
                  for a in ("--roi-model", self.args.roi_model.format(fold=f))],
                "--json",
                str(target),
                *data_args(self.args.eval_data or self.args.data),
            ]
            with (self.out / f"seed{seed}" / "evaluate.log").open("w") as handle:
                subprocess.run(argv, cwd=REPO, stdout=handle, stderr=subprocess.STDOUT, check=False)
        return json.loads(target.read_text()) if target.is_file() else None

    def run(self) -> int:
        self.out.mkdir(parents=True, exist_ok=True)
        # One short run fills the decoded-image cache before the parallel runs read it.
        if not self.sonograde(
            [
                "train",
                "grader",
                *data_args(self.args.data),
                "--out",
                str(self.out / "warm-up"),
                "--max-steps",
                "1",
                "--epochs",
                "1",
                "--width",
                "0.125",
                "--input-size",
                "64",
                "--device",
                self.args.device,
                "--no-progress",
                "--cache-dir",
                str(self.out / "cache"),
                "--cv-folds",
                str(self.args.folds),
                "--split-seed",
                str(self.args.split_seed),
            ],
            self.out / "warm-up.log",
        ):
            self.log(f"the warm-up training failed: see {self.out / 'warm-up.log'}")
            return 1
        jobs = [(s, f) for s in self.args.seeds for f in range(1, self.args.folds + 1)]
        self.log(f"{len(jobs)} trainings, {self.args.workers} at a time, on {self.args.device}")
        with ThreadPoolExecutor(self.args.workers) as pool:
            done = list(pool.map(lambda job: self.train_fold(*job), jobs))
        self.log(f"{sum(done)} of {len(done)} trainings done")
        with ThreadPoolExecutor(min(self.args.workers, len(self.args.seeds))) as pool:
            pooled = dict(zip(self.args.seeds, pool.map(self.evaluate_seed, self.args.seeds), strict=True))
        pooled = {s: r for s, r in pooled.items() if r is not None}
        summary: dict = {
            "recipe": self.recipe,
            "split_seed": self.args.split_seed,
            "folds": self.args.folds,
            "seeds": {},
            "research_use": "research use only, not for diagnosis",
        }
        for seed, result in pooled.items():
            summary["seeds"][seed] = {k: result[k] for k in MASK_KINDS if k in result}
            for kind in MASK_KINDS:
                if kind in result:
                    self.log(
                        describe(f"seed {seed} {kind[:12]}", result[kind])
                        + (" CLEARLY" if kind == MASK_KINDS[1] and clearly(result[kind]) else "")
                    )
        if len(pooled) >= 2:
            summary["ensemble"] = average_grader_results(list(pooled.values()))
            for kind in MASK_KINDS:
                if kind in summary["ensemble"]:
                    report = summary["ensemble"][kind]
                    self.log(
                        describe(f"ensemble of {len(pooled)} {kind[:12]}", report)
                        + (" CLEARLY" if kind == MASK_KINDS[1] and clearly(report) else "")
                    )
        (self.out / "summary.json").write_text(json.dumps(summary, indent=1, default=str))
        self.log(f"wrote {self.out / 'summary.json'} (research use only, not for diagnosis)")
        return 0 if len(pooled) == len(self.args.seeds) else 1


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    recipe: list[str] = []
    if "--" in argv:
        cut = argv.index("--")
        argv, recipe = argv[:cut], argv[cut + 1 :]
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", action="append", required=True, metavar="DIR", help="manifest folder(s)")
    parser.add_argument(
        "--eval-data", action="append", default=None, metavar="DIR",
        help="pool the out-of-fold grades on these folders only (default: every --data; give the five-way "
        "dataset alone when another dataset, e.g. BUS-BRA, only joins the training sets)",
    )
    parser.add_argument("--out", required=True, help="run folder (keep it outside the repository)")
    parser.add_argument("--seeds", default="0", help="initialization seeds, comma-separated (default 0)")
    parser.add_argument("--split-seed", type=int, default=0, help="fold assignment seed (default 0)")
    parser.add_argument("--folds", type=int, default=5, help="K (default 5)")
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda[:N]")
    parser.add_argument("--workers", type=int, default=2, help="trainings side by side (default 2)")
    parser.add_argument(
        "--roi-model",
        default=str(DEFAULT_MODELS_DIR / "roi_cnn.onnx"),
        help="ROI-CNN for the two-stage evaluation (default: the shipped one); a path with {fold} in it "
        "names each fold's own first stage, e.g. runs/roi-ft/fold{fold}/roi_cnn.onnx",
    )
    parser.add_argument(
        "--no-defaults", action="store_true", help="do not add " + " ".join(DEFAULT_RECIPE) + " to the recipe"
    )
    args = parser.parse_args(argv)
    try:
        args.seeds = [int(s) for s in args.seeds.split(",") if s]
    except ValueError:
        parser.error(f"--seeds must be integers separated by commas, not {args.seeds!r}")
    if not args.seeds or args.folds < 2 or args.workers < 1:
        parser.error("need at least one seed, --folds >= 2 and --workers >= 1")
    return Runner(args, ([] if args.no_defaults else DEFAULT_RECIPE) + recipe).run()


if __name__ == "__main__":
    sys.exit(main())
