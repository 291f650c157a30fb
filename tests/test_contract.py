"""The model contract (engine.contract): one writer and one reader round-trip the ``sonograde.*`` metadata,
from a file, a ModelProto and an ONNX Runtime session alike, and the shipped models keep it."""

from __future__ import annotations

from pathlib import Path

import onnx
import onnxruntime as ort
import pytest

from engine import contract
from engine.backends.dev_models import make_grader_model
from engine.birads import CATEGORIES
from engine.grader import DEFAULT_MODELS_DIR


def test_metadata_written_once_reads_back_from_file_proto_and_session(tmp_path: Path) -> None:
    path = make_grader_model(tmp_path / "g.onnx", size=32, channels=2, margin=0.2, view="frame")
    model = onnx.load(str(path))
    contract.write_metadata(model, {**contract.read_metadata(model), contract.MODEL_ID: "round-trip"})
    onnx.save(model, str(path))
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    readings = [contract.read_metadata(path), contract.read_metadata(onnx.load(str(path))),
                contract.read_metadata(session)]
    assert readings[0] == readings[1] == readings[2]
    assert readings[0][contract.MODEL_ID] == "round-trip"
    grader_input = contract.GraderInput.from_metadata(readings[0])
    expected = contract.GraderInput(input_size=32, roi_margin=0.2, mask_channel=True, view="frame")
    assert grader_input == expected
    assert contract.GraderInput.from_metadata(grader_input.to_metadata()) == grader_input


@pytest.mark.parametrize("text", ["3,4A,4B,4C,5", '["3", "4A", "4B", "4C", "5"]', "", None])
def test_category_order_parses_both_spellings_and_defaults_to_the_vocabulary(text: str | None) -> None:
    assert contract.parse_categories(text) == CATEGORIES


def test_shipped_models_carry_the_contract() -> None:
    for name, kind in (("roi_cnn.onnx", "roi"), ("g_cnn.onnx", "grader")):
        meta = contract.read_metadata(DEFAULT_MODELS_DIR / name)
        assert meta[contract.MODEL] == kind and meta[contract.MODEL_ID]
        assert contract.RESEARCH_USE_TEXT in meta[contract.RESEARCH_USE]
    grader = contract.read_metadata(DEFAULT_MODELS_DIR / "g_cnn.onnx")
    assert contract.parse_categories(grader[contract.CATEGORY_ORDER]) == CATEGORIES
    assert contract.GraderInput.from_metadata(grader).view in contract.GRADER_VIEWS
