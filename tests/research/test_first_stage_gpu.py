"""The GPU first-stage trainer on the CPU: its batched augmentation keeps image and mask aligned and the
lesion inside, and a tiny run on a synthetic bundle writes an exportable checkpoint and resumes."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import cv2
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from research.first_stage_gpu import GpuSet, augment, train_all  # noqa: E402


def _lesions(rng: np.random.Generator, count: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    masks = np.zeros((count, size, size), bool)
    for i in range(count):
        y, x = rng.integers(8, size // 2, 2)
        h, w = rng.integers(8, size // 3, 2)
        masks[i, y:y + h, x:x + w] = True
    images = np.where(masks, 200, 40).astype(np.uint8)
    return images, masks


def test_augmentation_moves_image_and_mask_together(rng: np.random.Generator) -> None:
    images, masks = _lesions(rng, 12, 64)
    data = GpuSet(images, masks, "cpu")
    x, y = augment(data, torch.arange(12), torch.Generator().manual_seed(int(rng.integers(1000))))
    assert x.shape == y.shape == (12, 1, 64, 64)
    for i in range(12):
        inside = y[i, 0] > 0
        assert int(inside.sum()) == int(masks[i].sum())  # translation never pushes the lesion out
        assert float(x[i, 0][inside].min()) > float(x[i, 0][~inside].max())  # bright lesion stays on its mask
        assert abs(float(x[i, 0].mean())) < 1e-4  # standardized per image


def test_tiny_run_writes_an_exportable_checkpoint(tmp_path: Path, rng: np.random.Generator) -> None:
    from engine.export import export_onnx
    from engine.training.checkpoints import load_trained

    bundle = {"size": 256, "quality": 75}
    for part in ("step1_train", "step1_val", "step2_train", "step2_val"):
        images, masks = _lesions(rng, 4, 256)
        bundle[part] = {"ids": [f"{part}/{i}" for i in range(4)],
                        "images": [cv2.imencode(".webp", i, [cv2.IMWRITE_WEBP_QUALITY, 75])[1].tobytes()
                                   for i in images],
                        "masks": [cv2.imencode(".png", m.astype(np.uint8) * 255)[1].tobytes() for m in masks]}
    path = tmp_path / "bundle.pkl"
    path.write_bytes(pickle.dumps(bundle))
    out = tmp_path / "run"
    train_all(path, out, "cpu", ["vgg16_w0.25_s192"], epochs_scale=0.01, limit=4)
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary) == {"vgg16_w0.25_s192"}
    row = summary["vgg16_w0.25_s192"]
    assert row["selection_score"] == pytest.approx((row["step1_val"] + row["step2_val"]) / 2)
    kind, net, _ = load_trained(out / "vgg16_w0.25_s192.pt")
    assert kind == "roi" and net.config.input_size == 192
    report = export_onnx("roi", net, tmp_path / "roi.onnx", seed=0, check_batch=1)
    assert report.input_shape[-1] == 192
    stamp = (out / "vgg16_w0.25_s192.pt").stat().st_mtime_ns
    train_all(path, out, "cpu", ["vgg16_w0.25_s192"], epochs_scale=0.01, limit=4)  # resume: skipped
    assert (out / "vgg16_w0.25_s192.pt").stat().st_mtime_ns == stamp
