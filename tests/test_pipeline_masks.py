"""`--train-masks pipeline`: the grader's training masks come from the shipped ROI-CNN + refinement where it
finds the annotated lesion, the annotation elsewhere; computed once and cached; clear errors."""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from engine.data.datasets import phantom_grader_samples
from engine.preprocess import grader_input
from engine.training import evaluate
from engine.training.common import TrainConfig, TrainingError
from engine.training.grader_data import sample_input
from engine.training.pipeline_masks import attach_pipeline_masks
from sonograde.commands import train as train_command

ROI_MODEL = Path(__file__).resolve().parents[1] / "models" / "roi_cnn.onnx"


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * float(np.logical_and(a, b).sum()) / float(a.sum() + b.sum())


def test_pipeline_masks_replace_annotations_where_the_lesion_is_found(tmp_path: Path) -> None:
    samples = phantom_grader_samples(8, seed=11)
    # One annotation moved to the opposite corner: the pipeline's mask does not overlap it, so it is not used.
    moved = np.zeros_like(samples[0].mask)
    moved[:20, :20] = True
    samples[0] = replace(samples[0], mask=moved)
    out, stats = attach_pipeline_masks(samples, ROI_MODEL, cache_dir=tmp_path, threads=1, progress=False)
    assert stats.total == len(samples) and stats.found >= len(samples) - 1
    assert out[0].pipeline_mask is None
    used = [s for s in out if s.pipeline_mask is not None]
    assert len(used) == stats.used >= len(samples) - 2
    for s in used:
        assert s.pipeline_mask.shape == s.mask.shape and s.pipeline_mask.dtype == bool
        assert _dice(s.pipeline_mask, s.mask) >= 0.3
        assert not np.array_equal(s.pipeline_mask, s.mask)  # the pipeline's own outline, not a copy


def test_pipeline_masks_are_computed_once_per_image(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    samples = phantom_grader_samples(4, seed=12)
    first, _ = attach_pipeline_masks(samples, ROI_MODEL, cache_dir=tmp_path, threads=1, progress=False)

    def no_inference(*_args: object) -> np.ndarray:
        raise AssertionError("cached masks were computed again")

    monkeypatch.setattr(evaluate, "pipeline_mask", no_inference)
    again, _ = attach_pipeline_masks(samples[1:], ROI_MODEL, cache_dir=tmp_path, threads=1, progress=False)
    for a, b in zip(first[1:], again, strict=True):
        assert (a.pipeline_mask is None) == (b.pipeline_mask is None)
        if a.pipeline_mask is not None:
            assert np.array_equal(a.pipeline_mask, b.pipeline_mask)


def test_grader_input_takes_the_pipeline_mask_only_when_asked(rng: np.random.Generator) -> None:
    sample = phantom_grader_samples(2, seed=13)[0]
    other = np.zeros_like(sample.mask)
    other[10:40, 10:60] = True
    sample = replace(sample, pipeline_mask=other)
    base = dict(kind="grader", view="frame", input_size=64, mask_channel=True)
    piped = sample_input(sample, TrainConfig(**base, train_masks="pipeline"), None)
    annotated = sample_input(sample, TrainConfig(**base), None)
    assert np.array_equal(piped, grader_input(sample.image, other, size=64, mask_channel=True, view="frame"))
    assert np.array_equal(annotated, grader_input(sample.image, sample.mask, size=64, mask_channel=True,
                                                  view="frame"))
    assert not np.array_equal(piped[1], annotated[1])


def test_bad_roi_models_are_explained(tmp_path: Path) -> None:
    samples = phantom_grader_samples(2, seed=14)
    with pytest.raises(TrainingError, match="--roi-model: model file not found"):
        attach_pipeline_masks(samples, tmp_path / "missing.onnx", progress=False)
    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(b"not an onnx model")
    with pytest.raises(TrainingError, match=r"--roi-model: cannot load model .* corrupt"):
        attach_pipeline_masks(samples, corrupt, progress=False)


def _cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    train_command.add_arguments(parser)
    return train_command.run(parser.parse_args(argv))


def test_train_grader_on_pipeline_masks_records_them(tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    common = ["grader", "--phantom", "10", "--epochs", "1", "--width", "0.125", "--input-size", "48",
              "--batch-size", "4", "--optimizer", "adamw", "--no-progress", "--view", "frame",
              "--mask-channel", "--train-masks", "pipeline", "--max-steps", "1"]
    assert _cli([*common, "--out", str(tmp_path / "no_model")]) == 2
    assert "--train-masks pipeline needs --roi-model" in capsys.readouterr().err
    annotated = [a for a in common if a not in ("--train-masks", "pipeline")]
    assert _cli([*annotated, "--out", str(tmp_path / "stray"), "--roi-model", str(ROI_MODEL)]) == 2
    assert "only used with --train-masks pipeline" in capsys.readouterr().err
    out = tmp_path / "grader"
    assert _cli([*common, "--out", str(out), "--roi-model", str(ROI_MODEL),
                 "--cache-dir", str(tmp_path / "cache")]) == 0
    assert "pipeline masks: lesion found in" in capsys.readouterr().err
    from engine.training.common import load_checkpoint

    config = load_checkpoint(out / "last.pt")["train_config"]
    assert config["train_masks"] == "pipeline" and config["roi_model"] == str(ROI_MODEL)
    counts = json.loads((out / "split.json").read_text())["pipeline_masks"]
    # most of the 10 phantom lesions (the shipped ROI-CNN finds 7 of these, 54 of the first 60 phantom frames)
    assert counts["total"] == 10 and counts["roi_model"] == str(ROI_MODEL) and counts["used"] >= 7
