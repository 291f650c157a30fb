"""What a Sonograde ONNX model is: its kind (ROI-CNN or grader), input and output, and preprocessing facts.

Read from the model's metadata (``sonograde.model``, ``sonograde.input_size``, ``sonograde.input_channels``,
``sonograde.roi_margin``, ``sonograde.mask_channel``, ``sonograde.categories``, ``sonograde.model_id``),
which every exported model carries, with the output shape as a fallback for the kind: a ``(N, 1, H, W)``
map is a ROI-CNN, an ``(N, K)`` vector a grader.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from engine import contract
from engine.birads import CATEGORIES
from engine.contract import parse_categories as parse_categories  # re-exported for calibration's callers

MODEL_KINDS = contract.MODEL_KINDS
DEFAULT_ROI_SIZE = 288
DEFAULT_GRADER_SIZE = 128
DEFAULT_ROI_MARGIN = 0.1
DEFAULT_CATEGORIES = CATEGORIES


class ModelInfoError(ValueError):
    """A model whose kind or input cannot be determined; the message says which file and what is missing."""


@dataclass(frozen=True)
class ModelInfo:
    """Facts about one model needed to feed it data.

    kind: ``"roi"`` or ``"grader"``. input_size: S of the (N, C, S, S) input in pixels.
    input_channels: C. roi_margin: grader crop margin around the ROI (fraction of its size).
    mask_channel: grader takes the mask as a second channel. categories: grader output labels.
    """

    path: Path
    kind: str
    input_name: str
    output_name: str
    input_size: int
    input_channels: int
    roi_margin: float = DEFAULT_ROI_MARGIN
    mask_channel: bool = False
    categories: tuple[str, ...] = DEFAULT_CATEGORIES
    model_id: str = "?"
    metadata: dict[str, str] = field(default_factory=dict)


def _flag(text: str | None) -> bool:
    return (text or "").strip().lower() in ("1", "true", "yes", "on")


def model_kind(metadata: Mapping[str, str], output_rank: int | None = None, *, where: str = "model") -> str:
    """``"roi"`` or ``"grader"`` from metadata ``sonograde.model``, else from the output rank (4 or 2)."""
    kind = (metadata.get(contract.MODEL) or "").strip().lower()
    if kind in MODEL_KINDS:
        return kind
    if kind:
        raise ModelInfoError(f"{where}: metadata sonograde.model is {kind!r}; expected 'roi' or 'grader'")
    if output_rank == 4:
        return "roi"
    if output_rank == 2:
        return "grader"
    raise ModelInfoError(
        f"{where}: cannot tell whether this is a ROI-CNN or a grader (no 'sonograde.model' metadata and an "
        f"output of rank {output_rank}); export it with `sonograde export`, which writes the metadata"
    )


def read_model_info(path: str | os.PathLike) -> ModelInfo:
    """Read :class:`ModelInfo` from an ONNX file (weights are not loaded). Raises ModelInfoError."""
    import onnx

    path = Path(path)
    if not path.is_file():
        raise ModelInfoError(f"model file not found: {path}")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # onnx raises DecodeError and friends
        raise ModelInfoError(f"{path} is not a readable ONNX model ({exc})") from exc
    metadata = contract.read_metadata(model)
    initializers = {t.name for t in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in initializers]
    if len(inputs) != 1 or len(model.graph.output) < 1:
        raise ModelInfoError(f"{path}: expected one input and at least one output, found {len(inputs)} "
                             "input(s)")
    output = model.graph.output[0]
    out_rank = len(output.type.tensor_type.shape.dim) or None
    kind = model_kind(metadata, out_rank, where=str(path))
    dims = [d.dim_value if d.dim_value > 0 else None for d in inputs[0].type.tensor_type.shape.dim]
    default_size = DEFAULT_ROI_SIZE if kind == "roi" else DEFAULT_GRADER_SIZE
    static = len(dims) == 4
    size = int(metadata.get(contract.INPUT_SIZE) or (dims[-1] if static and dims[-1] else default_size))
    channels = int(metadata.get(contract.INPUT_CHANNELS) or (dims[1] if static and dims[1] else 1))
    categories = parse_categories(metadata.get(contract.CATEGORY_ORDER))
    return ModelInfo(
        path=path,
        kind=kind,
        input_name=inputs[0].name,
        output_name=output.name,
        input_size=size,
        input_channels=channels,
        roi_margin=float(metadata.get(contract.ROI_MARGIN) or DEFAULT_ROI_MARGIN),
        mask_channel=_flag(metadata.get(contract.MASK_CHANNEL)) or channels == 2,
        categories=categories or DEFAULT_CATEGORIES,
        model_id=metadata.get(contract.MODEL_ID, "?"),
        metadata=metadata,
    )
