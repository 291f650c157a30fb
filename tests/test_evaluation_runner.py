"""The evaluation runner on phantom and synthetic images with known answers."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from refine.stage import SIDE_BY_SIDE
from sonograde.evaluation.labels import CATEGORIES
from sonograde.evaluation.runner import (
    EvaluationOptions,
    evaluate_records,
    no_roi_cnn_mask,
    segmentation_scores,
)
from sonograde.evaluation.selection import Selection, SelectionError, select
from sonograde.evaluation.summary import summarize_cases


def ellipse_mask(rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    h, w = shape
    yy, xx = np.mgrid[:h, :w]
    cy, cx = rng.uniform(0.35, 0.65) * h, rng.uniform(0.35, 0.65) * w
    ry, rx = rng.uniform(0.1, 0.2) * h, rng.uniform(0.1, 0.2) * w
    return ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0


def test_perfect_and_empty_predictions(rng: np.random.Generator) -> None:
    truth = ellipse_mask(rng, (int(rng.integers(80, 200)), int(rng.integers(80, 200))))
    perfect = segmentation_scores(truth, truth, pixel_size_mm=0.1)
    assert perfect.dsc == 1.0 and perfect.hd95 == 0.0 and perfect.avg_dist == 0.0 and perfect.hd95_mm == 0.0
    assert not perfect.empty
    empty = segmentation_scores(np.zeros_like(truth), truth, pixel_size_mm=None)
    assert empty.dsc == 0.0 and empty.empty and empty.hd95 is None and empty.avg_dist is None
    shifted = segmentation_scores(np.roll(truth, 3, axis=1), truth, None)
    assert 0.0 < shifted.dsc < 1.0 and shifted.hd_max == pytest.approx(3.0) and 0 < shifted.hd95 <= 3.0


def test_no_roi_cnn_finds_a_dark_lesion(rng: np.random.Generator) -> None:
    from engine.backends.dev_models import synthetic_frame

    image, truth = synthetic_frame(rng, 240, 320)
    mask, iterations = no_roi_cnn_mask(image, size=128, max_iterations=200)
    assert mask.shape == truth.shape and 1 <= iterations <= 200
    # Over 150 seeds the DSC ranged 0.61-0.93 (median 0.78; 7 % below 0.7, which made this test flaky);
    # picking the wrong phase or the whole frame scores below 0.2.
    assert segmentation_scores(mask, truth, None).dsc > 0.5


@pytest.fixture(scope="module")
def phantom_setup(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    from capture.phantom_dataset import write_dataset
    from engine.backends.dev_models import make_grader_model, make_roi_model

    root = tmp_path_factory.mktemp("phantom_eval")
    models = root / "models"
    models.mkdir()
    make_roi_model(models / "roi_cnn.onnx")
    make_grader_model(models / "g_cnn.onnx", size=32)
    data = write_dataset(root / "phantom", 5, seed=int(np.random.randint(1 << 30)),
                         size=(192, 160))
    return data, models


def test_refinements_side_by_side_are_summarized(phantom_setup: tuple[Path, Path]) -> None:
    from engine.data.manifest import read_manifest
    from engine.grader import GraderConfig, TwoStageGrader
    from sonograde.evaluation.summary import summarize_cases

    data, models = phantom_setup
    records = read_manifest(data)[:2]
    grader = TwoStageGrader.from_models_dir(models, config=GraderConfig(refinement="paper"))
    options = EvaluationOptions(no_roi_cnn=False, refinements=("paper", "none"))
    cases = evaluate_records(grader, records, options, progress=False)
    summary = summarize_cases(cases)
    both = summary["segmentation_refinements"]
    assert set(both) == {"paper", "none"}
    # the pipeline refines with "paper" and "none" is the unrefined ROI: same numbers as those variants
    assert both["paper"]["dsc_mean"] == summary["segmentation"]["refined"]["dsc_mean"]
    assert both["none"]["dsc_mean"] == summary["segmentation"]["roi_cnn"]["dsc_mean"]


def test_phantom_dataset_evaluation(phantom_setup: tuple[Path, Path]) -> None:
    from engine.data.manifest import read_manifest
    from engine.grader import TwoStageGrader

    data, models = phantom_setup
    records = read_manifest(data)
    grader = TwoStageGrader.from_models_dir(models)
    cases = evaluate_records(grader, records, EvaluationOptions(no_roi_size=96, no_roi_iterations=100),
                             progress=False)
    assert [c.label for c in cases] == list(CATEGORIES)  # the phantom cycles 3, 4A, 4B, 4C, 5
    for case in cases:
        assert case.has_lesion_mask and set(case.segmentation) == {"no_roi_cnn", "roi_cnn", "refined"}
        assert set(case.refinements) == set(SIDE_BY_SIDE)  # the paper's and the native ones, side by side
        for variant, probs in case.probabilities.items():
            assert probs is None or (len(probs) == 5 and sum(probs) == pytest.approx(1.0, abs=1e-4)), variant
    summary = summarize_cases(cases)
    assert summary["n"] == 5 and summary["grading"]["n"] == 5
    assert summary["segmentation"]["refined"]["n"] == 5
    assert "n_mm" in summary["segmentation"]["refined"]  # the phantom knows its pixel size


def test_selection_filters(phantom_setup: tuple[Path, Path], tmp_path: Path) -> None:
    from engine.data.manifest import read_manifest

    records = read_manifest(phantom_setup[0])
    ids = tmp_path / "ids"
    ids.write_text(f"{records[1].id}\n# comment\n{records[3].dataset}:{records[3].id}\n")
    assert [r.id for r in select(records, Selection(ids_file=ids))] == [records[1].id, records[3].id]
    with pytest.raises(SelectionError, match="fold"):
        select(records, Selection(folds=(1,)))  # the phantom has no fold column
    split_json = tmp_path / "split.json"
    split_json.write_text(json.dumps({"test_ids": [f"{records[0].dataset}/{records[0].id}"], "val_ids": []}))
    assert [r.id for r in select(records, Selection(ids_file=split_json))] == [records[0].id]
    empty = tmp_path / "empty"
    empty.write_text("# nothing\n")
    with pytest.raises(SelectionError, match="no ids"):
        select(records, Selection(ids_file=empty))
    from engine.splits import SplitConfig, make_split

    config = SplitConfig(test_fraction=0.5, val_fraction=0.0)
    expected = {r.id for r in make_split(records, config).train}
    assert {r.id for r in select(records, Selection(split="train", split_config=config))} == expected
