"""research/grader_cv.py: an interrupted cross-validation resumes its folds (research use only)."""

from __future__ import annotations

import argparse
from pathlib import Path

from research import grader_cv


def test_a_fold_with_a_checkpoint_resumes_with_the_same_recipe(tmp_path: Path) -> None:
    args = argparse.Namespace(out=str(tmp_path), data=["d1", "d2"], folds=5, split_seed=5, device="cpu")
    recipe = ["--view", "frame", "--init-from", "pre.pt", "--lr", "3e-4"]
    runner = grader_cv.Runner(args, recipe)
    calls: list[list[str]] = []

    def fake_sonograde(argv: list[str], log_path: Path) -> bool:
        calls.append(argv)
        return argv[0] == "train"  # export "fails": only the training command is checked here

    runner.sonograde = fake_sonograde
    runner.fold_dir(31, 2).mkdir(parents=True)
    (runner.fold_dir(31, 2) / "last.pt").write_bytes(b"a checkpoint")

    runner.train_fold(31, 1)
    runner.train_fold(31, 2)
    fresh, resumed = calls[0], calls[2]
    assert "--resume" not in fresh and fresh[-len(recipe):] == recipe
    # `sonograde train` continues a run re-started with its own --init-from (tests/test_training.py)
    assert "--resume" in resumed and resumed[-len(recipe):] == recipe
    assert resumed[resumed.index("--test-fold") + 1] == "2"
    assert resumed[resumed.index("--out") + 1] == str(runner.fold_dir(31, 2))

