"""``sonograde evaluate`` end to end on small manifest folders, with tiny dev ONNX models built in tmp.

The dev ROI model marks dark smooth regions, so on ``synthetic_frame`` images (a dark ellipse on speckle)
the pipeline finds the drawn lesion: segmentation numbers have known bounds. The dev grader has random
weights: grading is only checked for shape and bookkeeping (which cases are graded, how).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from sonograde import RESEARCH_USE_ONLY
from sonograde.cli import main

# id, (height, width), lesion drawn, birads, pathology, pixel_size_mm, fold
CASES = [
    ("a", (300, 400), True, "3", "benign", "0.1", "1"),
    ("b", (256, 256), True, "4a", "benign", "", "1"),
    ("c", (220, 380), True, "4B", "malignant", "0.08", "2"),
    ("d", (330, 250), True, "4c", "malignant", "", "2"),
    ("e", (240, 240), True, "5", "malignant", "0.1", "1"),
    ("f", (300, 400), False, "1", "normal", "", "2"),  # normal: no mask
    ("g", (260, 200), True, "2", "benign", "", "1"),  # category 2
    ("h", (180, 420), True, "4", "malignant", "", "2"),  # coarse BUS-BRA "4"
    ("i", (300, 400), True, "", "", "", "1"),  # no label at all
    ("j", (200, 300), True, "3", "benign", "", "2"),  # lesion drawn but the mask file is missing
]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from engine.backends.dev_models import make_grader_model, make_roi_model, synthetic_frame

    root = tmp_path_factory.mktemp("evaluate")
    models = root / "models"
    models.mkdir()
    make_roi_model(models / "roi_cnn.onnx")
    make_grader_model(models / "g_cnn.onnx", size=32)
    data = root / "odd"
    (data / "images").mkdir(parents=True)
    (data / "masks").mkdir()
    rng = np.random.default_rng(int(np.random.randint(1 << 30)))
    rows = []
    for case_id, (h, w), lesion, birads, pathology, pixel, fold in CASES:
        image, mask = synthetic_frame(rng, h, w, lesion=lesion)
        cv2.imwrite(str(data / "images" / f"{case_id}.png"), image)
        mask_rel = ""
        if lesion and case_id != "j":
            mask_rel = f"masks/{case_id}.png"
            cv2.imwrite(str(data / mask_rel), mask.astype(np.uint8) * 255)
        rows.append({"id": case_id, "image": f"images/{case_id}.png", "mask": mask_rel, "birads": birads,
                     "pathology": pathology, "pixel_size_mm": pixel, "fold": fold})
    with (data / "manifest.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return {"root": root, "models": models, "data": data}


def run_json(capsys: pytest.CaptureFixture[str], *args: str) -> dict:
    assert main(["evaluate", *args, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_evaluate_json_on_odd_folder(workspace: dict[str, Path], capsys: pytest.CaptureFixture[str],
                                     tmp_path: Path) -> None:
    out = tmp_path / "report"
    result = run_json(capsys, "--data", str(workspace["data"]), "--models", str(workspace["models"]),
                      "--no-roi-size", "128", "--out", str(out))
    assert result["n"] == len(CASES)
    lesion_masks = sum(1 for c in CASES if c[2] and c[0] != "j")
    segmentation = result["segmentation"]
    assert set(segmentation) == {"no_roi_cnn", "roi_cnn", "refined"}
    for variant, summary in segmentation.items():
        assert summary["n"] == lesion_masks
        for key in ("dsc_mean", "dsc_median", "hd95_mean", "avgdist_mean"):
            assert key in summary, (variant, key)
        assert 0.0 <= summary["dsc_mean"] <= 1.0
        assert summary["n_mm"] == 3  # a, c, e carry a pixel size
    # The dev ROI model finds these high-contrast ellipses; refinement snaps to their edges.
    assert segmentation["roi_cnn"]["dsc_mean"] > 0.8
    assert segmentation["refined"]["dsc_mean"] > 0.8
    grading = result["grading"]
    # graded: a 3, b 4A, c 4B, d 4C, e 5, g 2->3, h coarse 4, j 3 (no mask, still graded); not f, i
    assert grading["n"] == 8
    assert set(grading["per_category_accuracy"]) == {"3", "4A", "4B", "4C", "4", "5"}
    assert np.array(grading["confusion"]).shape == (5, 5)
    assert 0.0 <= grading["macro_auc"] <= 1.0
    assert grading["malignancy_n"] == 8  # every case with benign/malignant pathology
    assert result["normal"]["n"] == 2  # f (normal) and j (mask missing)
    report = (out / "report.md").read_text()
    assert RESEARCH_USE_ONLY in report and "Table 2" in report and "0.940" in report  # paper's 4A
    for name in ("roc.png", "cases_grid.png", "cases.csv"):
        assert (out / name).stat().st_size > 0
    with (out / "cases.csv").open() as handle:
        assert len(list(csv.DictReader(handle))) == len(CASES)


def test_evaluate_selection_and_category2(workspace: dict[str, Path], capsys: pytest.CaptureFixture[str],
                                          tmp_path: Path) -> None:
    common = ["--data", str(workspace["data"]), "--models", str(workspace["models"]), "--skip-no-roi"]
    result = run_json(capsys, *common, "--fold", "1", "--birads2", "exclude")
    assert result["n"] == sum(1 for c in CASES if c[6] == "1")
    assert "no_roi_cnn" not in result["segmentation"]
    assert result["grading"]["n"] == 3  # a, b, e (g is category 2, excluded; i has no label)
    ids = tmp_path / "ids.txt"
    ids.write_text("# held out\nodd:c\nd\n\n")
    result = run_json(capsys, *common, "--ids", str(ids))
    assert result["n"] == 2
    result = run_json(capsys, *common, "--limit", "1")
    assert result["n"] == 1


def test_evaluate_clear_errors(workspace: dict[str, Path], capsys: pytest.CaptureFixture[str],
                               tmp_path: Path) -> None:
    models = ["--models", str(workspace["models"])]
    assert main(["evaluate", "--data", str(tmp_path), *models]) == 2
    assert "manifest.csv" in capsys.readouterr().err
    assert main(["evaluate", "--data", str(workspace["data"]), *models, "--fold", "7"]) == 2
    assert "fold" in capsys.readouterr().err
    assert main(["evaluate", "--data", str(workspace["data"]), "--models", str(tmp_path)]) == 2
    assert "not found" in capsys.readouterr().err
    argv = ["evaluate", "--data", str(workspace["data"]), *models, "--split", "test", "--split-cv-folds", "5",
            "--split-test-fold", "6"]
    assert main(argv) == 2
    assert "--split-cv-folds" in capsys.readouterr().err
