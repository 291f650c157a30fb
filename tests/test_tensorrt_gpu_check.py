"""scripts/gpu-check.sh: its table (calibration.gpu_check) on JSON followed by log lines and on a failed
step, and the whole script run with the stand-in TensorRT and cuda driver, one build failing."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from calibration.gpu_check import last_json_object, main, read_result, read_steps, render

REPO = Path(__file__).resolve().parents[1]
ROI_RESULT = {"model": "roi", "n": 4, "dsc_agreement_mean": 0.9931, "dsc_agreement_min": 0.9412,
              "reference_ms": 30.5, "candidate_ms": 1.25, "speedup": 24.4, "passed": True}
GRADER_RESULT = {"model": "grader", "n": 4, "top1_agreement": 0.75, "max_prob_diff": 0.31,
                 "reference_ms": 8.0, "candidate_ms": 0.5, "speedup": 16.0, "passed": False}


def _work(tmp_path: Path, steps: list[tuple[str, int]], outputs: dict[str, str],
          errors: dict[str, str] | None = None) -> Path:
    work = tmp_path / "work"
    work.mkdir()
    (work / "steps.tsv").write_text("".join(f"{name}\t{status}\n" for name, status in steps))
    for name, text in outputs.items():
        (work / f"{name}.out").write_text(text)
    for name, text in (errors or {}).items():
        (work / f"{name}.err").write_text(text)
    return work


def test_json_found_among_log_lines():
    text = ("[TensorRT WARNING] something\n" + json.dumps(ROI_RESULT) + "\n[TensorRT INFO] done\n"
            "{ not json\n")
    assert last_json_object(text) == ROI_RESULT
    summary = {"engine": "m.plan", "inputs": {"image": 1}}
    assert last_json_object("log before\n" + json.dumps(summary, indent=2) + "\nafter\n") == summary
    assert last_json_object("only logs\n[1, 2]\n") is None
    assert last_json_object(json.dumps(ROI_RESULT) + "\n" + json.dumps(GRADER_RESULT)) == GRADER_RESULT


def test_table_with_a_failed_step(tmp_path, capsys):
    work = _work(tmp_path,
                 steps=[("build.roi_cnn.fp16", 0), ("build.g_cnn.fp16", 2), ("verify.roi_cnn.fp16", 0),
                        ("verify.g_cnn.int8", 1)],
                 outputs={"verify.roi_cnn.fp16": json.dumps(ROI_RESULT) + "\n[TensorRT WARNING] late log\n",
                          "verify.g_cnn.int8": "[TensorRT INFO] x\n" + json.dumps(GRADER_RESULT) + "\n"},
                 errors={"build.g_cnn.fp16": "[TensorRT ERROR] a\nerror: TensorRT cannot parse g_cnn\n\n"})
    steps = read_steps(work)
    assert [s.passed for s in steps] == [True, False, True, False]
    assert steps[1].last_error == "error: TensorRT cannot parse g_cnn"
    assert read_result(work, "verify.roi_cnn.fp16") == ROI_RESULT
    table = render(work)
    assert "build.g_cnn.fp16         FAILED 2 error: TensorRT cannot parse g_cnn" in table
    assert "roi      fp16  PASS     DSC mean 0.9931 min 0.941" in table
    assert "grader   int8  REFUSED  top1 0.7500 dp 0.3100" in table
    assert "grader   fp16  n/a      (no result" in table
    assert "tensorrt int8  n/a" in table and "research use only, not for diagnosis" in table
    assert main([str(work)]) == 1
    assert "FAILED 2" in capsys.readouterr().out


def test_table_all_passed_and_empty(tmp_path):
    work = _work(tmp_path, steps=[("bench.fp16", 0)],
                 outputs={"bench.fp16": json.dumps({"fps": 30.0, "e2e_ms": {"p50": 3.5, "p99": 7.25},
                                                    "dropped": 0}) + "\nlog\n"})
    assert "tensorrt fp16    30.0     3.50     7.25        0" in render(work)
    assert main([str(work)]) == 0
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "no steps recorded" in render(empty) and main([str(empty)]) == 1
    assert main([]) == 2


SITE = '''
import sys
sys.path.insert(0, {tests!r})
import fakes
from fakes import fake_cuda
sys.modules["tensorrt"] = fakes.load_tensorrt(fakes.TENSORRT_10)
import types
driver = fakes.load_cuda_driver()
package, bindings = types.ModuleType("cuda"), types.ModuleType("cuda.bindings")
package.__path__, bindings.__path__ = [], []
package.bindings, bindings.driver = bindings, driver
sys.modules.update({{"cuda": package, "cuda.bindings": bindings, "cuda.bindings.driver": driver}})
'''


def _stand_in_site(tmp_path: Path) -> Path:
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(SITE.format(tests=str(REPO / "tests")))
    return site


def test_script_cuda_mode_prints_table(tmp_path):
    """gpu-check.sh --cuda on the stand-in driver: the table and exit status 0 (on a GPU: the real one)."""
    if shutil.which("bash") is None:
        pytest.skip("needs bash")
    env = {**os.environ, "PYTHONPATH": f"{_stand_in_site(tmp_path)}{os.pathsep}{REPO}"}
    result = subprocess.run(["bash", str(REPO / "scripts" / "gpu-check.sh"), "--cuda"], env=env,
                            capture_output=True, text=True, timeout=600, cwd=tmp_path, check=False)
    assert result.returncode == 0, result.stdout + result.stderr[-3000:]
    for row in ("driver, device, context", "pinned/device copies", "backend roi_cnn", "backend g_cnn"):
        assert f"{row:<26} ok" in result.stdout


@pytest.mark.slow
def test_script_runs_every_step_and_reports_a_failed_build(tmp_path):
    """gpu-check.sh end to end on the stand-ins: the ROI-CNN's INT8 source is broken, its build fails, the
    other steps still run and the table says which step failed; exit status 1."""
    if shutil.which("bash") is None:
        pytest.skip("needs bash")
    site = _stand_in_site(tmp_path)
    models = tmp_path / "models"
    models.mkdir()
    for name in ("roi_cnn.onnx", "g_cnn.onnx", "g_cnn.int8.trt.onnx"):
        shutil.copy(REPO / "models" / name, models / name)
    shutil.copy(REPO / "models" / "roi_cnn.int8.onnx", models / "roi_cnn.int8.trt.onnx")  # u8, not for TRT
    work = tmp_path / "work"
    env = {**os.environ, "PYTHONPATH": f"{site}{os.pathsep}{REPO}", "MODELS": str(models),
           "DATA": str(tmp_path / "no-data"), "COUNT": "3", "SECONDS_BENCH": "1"}
    result = subprocess.run(["bash", str(REPO / "scripts" / "gpu-check.sh"), str(work)], env=env,
                            capture_output=True, text=True, timeout=600, cwd=tmp_path, check=False)
    assert result.returncode == 1, result.stderr[-3000:]
    out = result.stdout
    assert f"{'build.roi_cnn.int8':<24} FAILED 2 error: TensorRT cannot parse" in out, out
    assert "symmetric quantization" in (work / "build.roi_cnn.int8.err").read_text()
    for step in ("fp16.roi_cnn", "fp16.g_cnn", "build.roi_cnn.fp16", "build.g_cnn.fp16", "build.g_cnn.int8",
                 "bench.fp16"):
        assert f"{step:<24} ok" in out, (step, out, result.stderr[-3000:])
    # The gates ran (their verdict on 3 phantom frames is not the point here); no INT8 ROI engine to verify.
    assert "roi      int8  n/a" in out
    for row in ("roi      fp16", "grader   fp16", "grader   int8"):
        assert any(line.startswith(row) and ("PASS" in line or "REFUSED" in line)
                   for line in out.splitlines()), (row, out)
