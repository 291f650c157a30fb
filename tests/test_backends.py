"""The engine interface: loading models, input checks, clear errors for bad files."""

from __future__ import annotations

import numpy as np
import pytest

from engine.backends import InputSpecError, ModelLoadError, load_backend
from engine.backends.dev_models import make_grader_model, make_roi_model
from engine.preprocess import roi_input


@pytest.fixture
def roi_path(tmp_path):
    return make_roi_model(tmp_path / "roi_cnn.onnx")


@pytest.fixture
def grader_path(tmp_path):
    return make_grader_model(tmp_path / "g_cnn.onnx", size=64, channels=2)


def test_loads_and_reports_spec(roi_path, grader_path):
    roi = load_backend(roi_path)
    assert roi.name == "onnxruntime"
    assert roi.path == roi_path
    assert roi.input_name == "image"
    assert roi.input_shape == (None, 1, 288, 288)
    assert roi.input_dtype == np.float32
    assert roi.output_names == ("prob",)
    assert roi.metadata["sonograde.model"] == "roi"
    assert roi.providers_used[-1] == "CPUExecutionProvider"
    grader = load_backend(grader_path, backend="onnxruntime", threads=2)
    assert grader.input_shape == (None, 2, 64, 64)
    assert grader.metadata["sonograde.mask_channel"] == "1"
    assert grader.threads == 2


def test_run_dynamic_batch(roi_path, grader_path, rng):
    roi = load_backend(roi_path)
    images = rng.integers(0, 256, (3, 300, 400), dtype=np.uint8)
    batch = np.stack([roi_input(im) for im in images])
    prob = roi.run(batch)
    assert prob.shape == (3, 1, 288, 288) and prob.dtype == np.float32
    assert np.all((prob >= 0) & (prob <= 1))
    # each item of a batch gives what it gives alone
    np.testing.assert_allclose(roi.run(batch[1:2])[0], prob[1], rtol=1e-5, atol=1e-6)
    grader = load_backend(grader_path)
    out = grader.run_all(rng.normal(size=(5, 2, 64, 64)).astype(np.float32))
    assert set(out) == {"probs"}
    assert out["probs"].shape == (5, 5)
    np.testing.assert_allclose(out["probs"].sum(axis=1), 1.0, atol=1e-5)


@pytest.mark.parametrize(
    ("shape", "dtype"),
    [((1, 1, 200, 288), np.float32), ((1, 288, 288), np.float32), ((1, 3, 288, 288), np.float32),
     ((1, 1, 288, 288), np.float64), ((1, 1, 288, 288), np.uint8), ((0, 1, 288, 288), np.float32)],
)
def test_wrong_input_is_input_spec_error(roi_path, shape, dtype):
    roi = load_backend(roi_path)
    with pytest.raises(InputSpecError) as info:
        roi.run(np.zeros(shape, dtype))
    message = str(info.value)
    assert "(N, 1, 288, 288)" in message  # expected
    assert str(tuple(shape)) in message  # got
    assert "roi_cnn.onnx" in message
    if dtype != np.float32:
        assert "float32" in message and np.dtype(dtype).name in message
    assert isinstance(info.value, ValueError)


def test_missing_model(tmp_path):
    missing = tmp_path / "nowhere" / "roi_cnn.onnx"
    with pytest.raises(ModelLoadError, match="not found") as info:
        load_backend(missing)
    assert str(missing) in str(info.value)
    assert "sonograde export" in str(info.value)


def test_empty_truncated_and_garbage_models(roi_path, tmp_path, rng):
    data = roi_path.read_bytes()
    empty = tmp_path / "empty.onnx"
    empty.write_bytes(b"")
    with pytest.raises(ModelLoadError, match="empty"):
        load_backend(empty)
    # cut inside the graph (it spans most of the file), so the file is never accidentally a valid model
    cut = int(rng.integers(len(data) // 5, len(data) // 2))
    truncated = tmp_path / "truncated.onnx"
    truncated.write_bytes(data[:cut])
    with pytest.raises(ModelLoadError) as info:
        load_backend(truncated)
    assert "truncated.onnx" in str(info.value) and "corrupt" in str(info.value)
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(rng.integers(0, 256, 4096, dtype=np.uint8).tobytes())
    with pytest.raises(ModelLoadError, match=r"garbage\.onnx"):
        load_backend(garbage)
    pointer = tmp_path / "pointer.onnx"
    pointer.write_text("version https://git-lfs.github.com/spec/v1\noid sha256:abc\nsize 123\n")
    with pytest.raises(ModelLoadError, match="git lfs pull"):
        load_backend(pointer)


def test_backend_choice(roi_path, tmp_path):
    with pytest.raises(ValueError, match="unknown backend"):
        load_backend(roi_path, backend="magic")
    with pytest.raises(ModelLoadError, match="build-engine"):
        load_backend(roi_path, backend="tensorrt")
    plan = tmp_path / "roi_cnn.plan"
    plan.write_bytes(b"\x00" * 64)
    with pytest.raises(ModelLoadError, match="ONNX Runtime cannot run it"):
        load_backend(plan, backend="onnxruntime")


def test_tensorrt_engine_without_tensorrt(tmp_path):
    pytest.importorskip("onnxruntime")
    try:
        import tensorrt  # noqa: F401
        pytest.skip("TensorRT is installed here; its backend has its own tests")
    except ImportError:
        pass
    plan = tmp_path / "roi_cnn.plan"
    plan.write_bytes(b"\x00" * 64)
    with pytest.raises(ModelLoadError, match="TensorRT") as info:
        load_backend(plan)
    assert "roi_cnn.plan" in str(info.value)


def test_bad_thread_count(roi_path):
    with pytest.raises(ValueError, match="threads"):
        load_backend(roi_path, threads=0)


def test_onnxruntime_telemetry_is_off_for_every_session(tmp_path, monkeypatch):
    """Sessions are made through engine.backends.ort, which turns ONNX Runtime's telemetry off first."""
    import onnxruntime

    from engine.backends import ort as ort_backend

    calls = []
    monkeypatch.setattr(onnxruntime, "disable_telemetry_events", lambda: calls.append(1))
    monkeypatch.setattr(ort_backend, "_TELEMETRY_OFF", False)
    path = make_roi_model(tmp_path / "roi_cnn.onnx")
    ort_backend.OnnxRuntimeBackend(path)
    ort_backend.cpu_session(path)
    assert calls == [1]  # once per process, before the first session


def test_onnxruntime_sessions_are_set_up_for_a_small_shared_cpu(tmp_path):
    """One inter-op thread, sequential execution, no spinning threads (intra- and inter-op), arena and
    memory pattern on: what the live pipeline's stages need on a two-core machine."""
    import onnxruntime as ort

    from engine.backends.dev_models import make_roi_model
    from engine.backends.ort import OnnxRuntimeBackend

    make_roi_model(tmp_path / "roi_cnn.onnx")
    for threads in (1, 2):
        backend = OnnxRuntimeBackend(tmp_path / "roi_cnn.onnx", threads=threads,
                                     providers=["CPUExecutionProvider"])
        options = backend.session.get_session_options()
        assert options.intra_op_num_threads == threads and options.inter_op_num_threads == 1
        assert options.execution_mode == ort.ExecutionMode.ORT_SEQUENTIAL
        assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"
        assert options.get_session_config_entry("session.inter_op.allow_spinning") == "0"
        assert options.enable_cpu_mem_arena and options.enable_mem_pattern
