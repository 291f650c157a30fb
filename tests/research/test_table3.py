"""The Table 3 experiment: patient-disjoint folds, a tiny smoke run on phantom data, resume."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from engine.data.manifest import ManifestRecord
from research.table3 import ExperimentError, Table3Config, assign_folds, run_table3

pytest.importorskip("torch")


def test_folds_are_patient_disjoint_and_balanced(rng: np.random.Generator) -> None:
    records = []
    for index in range(60):
        patient = str(int(rng.integers(0, 25)))
        records.append(ManifestRecord(dataset="d", id=f"img{index}", image=Path("x"), mask=None,
                                      birads=str(rng.choice(["3", "4A", "5"])), patient=patient))
    folds = assign_folds(records, 5, seed=int(rng.integers(1000)))
    assert set(folds) == {f"d/{r.id}" for r in records}
    by_patient: dict[str, set[int]] = {}
    for record in records:
        by_patient.setdefault(record.patient, set()).add(folds[f"d/{record.id}"])
    assert all(len(f) == 1 for f in by_patient.values())
    assert set(folds.values()) == set(range(5))


def test_table3_smoke_run_and_resume(tmp_path: Path) -> None:
    from capture.phantom_dataset import write_dataset
    from engine.backends.dev_models import make_grader_model, make_roi_model

    models = tmp_path / "models"
    models.mkdir()
    make_roi_model(models / "roi_cnn.onnx")
    make_grader_model(models / "g_cnn.onnx", size=32)
    data = write_dataset(tmp_path / "phantom", 10, seed=1, size=(160, 128))
    config = Table3Config(data=(str(data),), out=str(tmp_path / "t3"), models=str(models), folds=2, epochs=1,
                          width=0.0625, crop_size=32, whole_size=32, archs=("grader",), batch_size=4,
                          progress=False)
    first = run_table3(Table3Config(**{**config.__dict__, "run_folds": (0,)}), log=lambda message: None)
    assert first.trained == 2 and first.summaries["roi_grader"]["folds"] == [0]
    assert first.summaries["roi_grader"]["n"] == 5
    result = run_table3(config, log=lambda message: None)
    assert result.trained == 2 and result.reused == 2  # 2 folds x (one-stage, two-stage), fold 1 cached
    assert set(result.summaries) == {"one_stage_grader", "roi_grader", "refined_grader"}
    for summary in result.summaries.values():
        assert summary["n"] == 10
        assert set(summary["per_category_accuracy"]) == {"3", "4A", "4B", "4C", "5"}
    table = (tmp_path / "t3" / "table3.md").read_text()
    assert "One-stage G-CNN" in table and "Refined ROI-CNN + G-CNN" in table and "0.998" in table
    again = run_table3(config, log=lambda message: None)
    assert again.trained == 0 and again.reused == 4
    assert again.summaries == json.loads((tmp_path / "t3" / "table3.json").read_text())["methods"]
    assert again.summaries["roi_grader"]["per_category_accuracy"] == \
        result.summaries["roi_grader"]["per_category_accuracy"]
    with pytest.raises(ExperimentError, match="epochs"):
        run_table3(Table3Config(**{**config.__dict__, "epochs": 2}), log=lambda message: None)
    with pytest.raises(ExperimentError, match="multiple of 16"):
        run_table3(Table3Config(**{**config.__dict__, "crop_size": 40}))


def test_the_product_command_points_to_the_research_module(capsys: pytest.CaptureFixture[str]) -> None:
    """`sonograde experiment table3` is no longer the experiment: it names `python -m research.table3`."""
    from sonograde.cli import main

    assert main(["experiment", "table3", "--data", "DIR", "--out", "OUT"]) == 2
    assert "python -m research.table3" in capsys.readouterr().err
