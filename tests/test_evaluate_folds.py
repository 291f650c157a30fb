"""Cross-validated grading with each fold's own first stage (``--roi-model`` once per fold): fold i's cases
go through fold i's ROI-CNN, so a ROI-CNN fine-tuned without fold i is evaluated only on fold i."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from engine.backends.dev_models import make_grader_model, make_roi_model
from engine.data.datasets import load_records
from engine.splits import assign_folds
from sonograde.cli import main


def _blind_roi_model(path: Path) -> Path:
    """A ROI model that never finds a lesion: probability 0 everywhere."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    graph = helper.make_graph(
        [helper.make_node("Mul", ["image", "zero"], ["prob"])], "blind_roi",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 1, 288, 288])],
        [helper.make_tensor_value_info("prob", TensorProto.FLOAT, ["N", 1, 288, 288])],
        initializer=[numpy_helper.from_array(np.zeros(1, np.float32), "zero")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    for key, value in {"sonograde.model": "roi", "sonograde.input_size": "288"}.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(model, str(path))
    return path


@pytest.mark.slow
def test_each_fold_is_graded_through_its_own_roi_model(tmp_path: Path) -> None:
    from capture.phantom_dataset import write_dataset

    split_seed = int(np.random.randint(1 << 20))
    data = write_dataset(tmp_path / "data", 20, seed=split_seed, size=(160, 128))
    seeing, blind = make_roi_model(tmp_path / "roi.onnx"), _blind_roi_model(tmp_path / "blind.onnx")
    grader = make_grader_model(tmp_path / "g.onnx")
    first_stages = [seeing, blind, seeing, blind, seeing]
    out = tmp_path / "pooled.json"
    argv = ["evaluate", "grader", "--data", str(data), "--cv-folds", "5", "--seed", str(split_seed),
            "--json", str(out)]
    argv += [a for _ in range(5) for a in ("--model", str(grader))]
    argv += [a for roi in first_stages for a in ("--roi-model", str(roi))]
    assert main(argv) == 0
    result = json.loads(out.read_text())
    fold_of = assign_folds(load_records([str(data)]), 5, split_seed)
    rows = result["per_case"]
    assert len(rows) == 20
    for row in rows:
        blind_fold = first_stages[fold_of[row["id"]]] == blind
        assert row["lesion_found"] is not blind_fold, row["id"]
        assert 0.0 <= row["pipeline_dice"] <= 1.0
    assert all(r["pipeline_dice"] == 0.0 for r in rows if not r["lesion_found"])
    assert result["two_stage_masks"]["lesion_found"] == sum(1 for r in rows if r["lesion_found"])
    assert result["two_stage_masks"]["lesion_located"] == sum(1 for r in rows if r["pipeline_dice"] >= 0.3)


def test_roi_models_must_match_the_folds(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    grader = str(tmp_path / "g.onnx")
    argv = ["evaluate", "grader", "--data", str(tmp_path), "--cv-folds", "5", *["--model", grader] * 5,
            *["--roi-model", "a.onnx"] * 2]
    assert main(argv) == 2
    assert "give --roi-model once, or once per fold model (5), got 2" in capsys.readouterr().err


@pytest.mark.slow
def test_roi_cross_validation_pools_every_image_once(tmp_path: Path) -> None:
    from capture.phantom_dataset import write_dataset

    split_seed = int(np.random.randint(1 << 20))
    data = write_dataset(tmp_path / "data", 15, seed=split_seed, size=(160, 128))
    seeing, blind = make_roi_model(tmp_path / "roi.onnx"), _blind_roi_model(tmp_path / "blind.onnx")
    models = [seeing, blind, seeing, seeing, blind]
    out = tmp_path / "roi.json"
    argv = ["evaluate", "roi", "--data", str(data), "--cv-folds", "5", "--seed", str(split_seed),
            "--json", str(out),
            *[a for m in models for a in ("--model", str(m))]]
    assert main(argv) == 0
    result = json.loads(out.read_text())
    records = load_records([str(data)])
    assert sorted(r["id"] for r in result["rows"]) == sorted(f"{r.dataset}/{r.id}" for r in records)
    fold_of = assign_folds(records, 5, split_seed)
    for row in result["rows"]:
        if models[fold_of[row["id"]]] == blind:
            assert row["dice_full_refined"] == 0.0
    summary = result["summary"]
    assert summary["folds"] == 5 and summary["images"] == 15
    assert summary["located"] == sum(r["dice_full_refined"] >= 0.3 for r in result["rows"])
