"""Tiny hand-built ONNX models with the shipped models' names, shapes and metadata, for tests and development.

They are NOT trained and grade nothing: ``make_roi_model`` marks dark, smooth regions (a hypoechoic
blob on a brighter speckled background, as ``synthetic_frame`` draws) as lesion, so the whole two-stage
pipeline can be exercised before real models exist; ``make_grader_model`` is a small random conv net
with a softmax over the five categories. Built with the ``onnx`` helper API only (no torch).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from engine import contract
from engine.birads import CATEGORIES

OPSET = 17


def _save(graph, path: str | os.PathLike, metadata: dict[str, str]) -> Path:
    import onnx
    from onnx import helper

    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="sonograde-dev")
    model.ir_version = min(model.ir_version, 9)  # readable by older onnxruntime releases too
    contract.write_metadata(model, metadata)
    onnx.checker.check_model(model)
    path = Path(path)
    onnx.save(model, str(path))
    return path


def make_roi_model(path: str | os.PathLike, *, size: int = 288, model_id: str = "dev-roi") -> Path:
    """Write a dev ROI model: input "image" (N,1,size,size) -> output "prob" (N,1,size,size), sigmoid.

    prob = sigmoid(-6 * mean5x5(x) - 3) on the standardized image x: about 0.95 where the local mean is
    one standard deviation below the image mean, about 0.05 on average background.
    """
    from onnx import TensorProto, helper, numpy_helper

    kernel = np.full((1, 1, 5, 5), -6.0 / 25.0, dtype=np.float32)
    bias = np.array([-3.0], dtype=np.float32)
    nodes = [
        helper.make_node("Conv", ["image", "w", "b"], ["logit"], pads=[2, 2, 2, 2]),
        helper.make_node("Sigmoid", ["logit"], ["prob"]),
    ]
    graph = helper.make_graph(
        nodes, "dev_roi",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 1, size, size])],
        [helper.make_tensor_value_info("prob", TensorProto.FLOAT, ["N", 1, size, size])],
        initializer=[numpy_helper.from_array(kernel, "w"), numpy_helper.from_array(bias, "b")],
    )
    metadata = {
        "sonograde.model": "roi", "sonograde.input_size": str(size), "sonograde.input_channels": "1",
        "sonograde.width": "0", "sonograde.model_id": model_id,
    }
    return _save(graph, path, metadata)


def make_grader_model(path: str | os.PathLike, *, size: int = 64, channels: int = 2, margin: float = 0.1,
                      seed: int = 0, model_id: str = "dev-grader", view: str = "crop") -> Path:
    """Write a dev grader: "image" (N,channels,size,size) -> "probs" (N,5), softmax; random weights.

    ``margin`` is stored as ``sonograde.roi_margin``, ``channels == 2`` as ``sonograde.mask_channel = 1``
    and ``view`` as ``sonograde.grader_view``.
    """
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    hidden = 8
    conv_w = rng.normal(0, 0.5, (hidden, channels, 3, 3)).astype(np.float32)
    conv_b = rng.normal(0, 0.1, hidden).astype(np.float32)
    fc_w = rng.normal(0, 1.0, (hidden, len(CATEGORIES))).astype(np.float32)
    fc_b = rng.normal(0, 0.1, len(CATEGORIES)).astype(np.float32)
    nodes = [
        helper.make_node("Conv", ["image", "cw", "cb"], ["c"], pads=[1, 1, 1, 1], strides=[2, 2]),
        helper.make_node("Relu", ["c"], ["r"]),
        helper.make_node("GlobalAveragePool", ["r"], ["g"]),
        helper.make_node("Flatten", ["g"], ["f"]),
        helper.make_node("Gemm", ["f", "fw", "fb"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["probs"], axis=1),
    ]
    graph = helper.make_graph(
        nodes, "dev_grader",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", channels, size, size])],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["N", len(CATEGORIES)])],
        initializer=[numpy_helper.from_array(a, n) for a, n in
                     ((conv_w, "cw"), (conv_b, "cb"), (fc_w, "fw"), (fc_b, "fb"))],
    )
    metadata = {
        "sonograde.model": "grader", "sonograde.input_size": str(size),
        "sonograde.input_channels": str(channels), "sonograde.width": "0",
        "sonograde.categories": ",".join(CATEGORIES), "sonograde.roi_margin": str(margin),
        "sonograde.mask_channel": "1" if channels == 2 else "0", "sonograde.model_id": model_id,
        "sonograde.grader_view": view,
    }
    return _save(graph, path, metadata)


def synthetic_frame(rng: np.random.Generator, height: int = 360, width: int = 480, *,
                    lesion: bool = True, colour: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """A speckled bright background with (optionally) one dark elliptical "lesion".

    Returns (image uint8 HxW, or HxWx3 BGR when ``colour``; lesion mask bool HxW). The ellipse's centre
    lies in the middle half of the frame, its semi-axes are 8-20% of the frame's height.
    """
    import cv2

    background = rng.normal(150.0, 25.0, (height, width))
    background = cv2.GaussianBlur(background, (0, 0), 1.5)
    mask = np.zeros((height, width), np.uint8)
    if lesion:
        centre = (int(rng.uniform(0.3, 0.7) * width), int(rng.uniform(0.3, 0.7) * height))
        axes = (int(rng.uniform(0.08, 0.2) * height), int(rng.uniform(0.08, 0.2) * height))
        cv2.ellipse(mask, centre, axes, float(rng.uniform(0, 180)), 0, 360, 1, -1)
    image = np.where(mask > 0, background - 110.0, background)
    image = np.clip(image, 0, 255).astype(np.uint8)
    if colour:
        image = cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    return image, mask.astype(bool)
