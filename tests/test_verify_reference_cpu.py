"""`calibrate verify`'s FP32 reference runs on ONNX Runtime's CPU provider only, also where onnxruntime
offers CUDA / TensorRT providers (onnxruntime-gpu): the table's "ORT FP32 CPU" column must be that."""

from __future__ import annotations

import json
from pathlib import Path

import onnxruntime as ort
import pytest

from calibration.verify import check_reference_on_cpu, load_reference

MODELS = Path(__file__).resolve().parents[1] / "models"


@pytest.fixture
def gpu_onnxruntime(monkeypatch, tmp_path):
    """onnxruntime as an onnxruntime-gpu build looks: GPU providers listed. Sessions are still created on
    the CPU (there is no GPU here); the providers each session asked for are recorded by model file."""
    requested: dict[str, list] = {}
    real_session = ort.InferenceSession

    def session(path, sess_options=None, providers=None, **kwargs):
        requested[Path(str(path)).name] = [p if isinstance(p, str) else p[0] for p in providers or []]
        return real_session(path, sess_options=sess_options, providers=["CPUExecutionProvider"], **kwargs)

    listed = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    monkeypatch.setattr(ort, "get_available_providers", lambda: listed)
    monkeypatch.setattr(ort, "InferenceSession", session)
    monkeypatch.setenv("SONOGRADE_CACHE", str(tmp_path / "cache"))  # the TensorRT provider's engine cache
    return requested


def test_load_reference_asks_for_the_cpu_only(gpu_onnxruntime):
    reference = load_reference(MODELS / "roi_cnn.onnx", threads=1)
    assert gpu_onnxruntime["roi_cnn.onnx"] == ["CPUExecutionProvider"]
    assert reference.providers_used == ("CPUExecutionProvider",)
    check_reference_on_cpu(reference)


def test_verify_refuses_a_reference_on_a_gpu_provider():
    reference = load_reference(MODELS / "roi_cnn.onnx", threads=1)
    reference.providers_used = ("CUDAExecutionProvider", "CPUExecutionProvider")
    with pytest.raises(ValueError, match="CPU provider only, it runs on CUDAExecutionProvider"):
        check_reference_on_cpu(reference)
    from calibration.verify import verify

    with pytest.raises(ValueError, match="CPU provider only"):
        verify("roi", reference, reference, inputs=None)  # refused before any input is read


def test_calibrate_verify_reference_on_cpu_candidate_on_default(gpu_onnxruntime, capsys):
    from sonograde.cli import main

    code = main(["calibrate", "verify", "--reference", str(MODELS / "roi_cnn.onnx"),
                 "--candidate", str(MODELS / "roi_cnn.int8.onnx"), "--source", "phantom:seed=3",
                 "--count", "2", "--repeats", "1", "--json"])
    assert code in (0, 1), capsys.readouterr().err
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["model"] == "roi"
    assert gpu_onnxruntime["roi_cnn.onnx"] == ["CPUExecutionProvider"]
    assert gpu_onnxruntime["roi_cnn.int8.onnx"][0] == "TensorrtExecutionProvider"  # the candidate: as asked
