"""The model contract: what a Sonograde ONNX model says about itself, with one reader and one writer.

Every exported model carries string ``metadata_props`` under the ``sonograde.`` prefix; the inference
backends, the two-stage grader, calibration, training from ONNX and evaluation read them, the exporter,
the head refit, quantization and the development models write them. Torch-free (``onnx`` is imported
only when a file is read or a model written).

Inputs and outputs:
- ROI-CNN: input "image" float32 (N, 1, S, S) from ``engine.preprocess.roi_input`` at S =
  ``sonograde.input_size`` (288 for the paper's configuration), output "prob" float32 (N, 1, S, S), the
  sigmoid lesion probability; ``sonograde.architecture`` names the network ("vgg16": the paper's ROI-CNN,
  "lite0": EfficientNet-Lite0 encoder with the paper's head; absent means "vgg16").
- G-CNN: input "image" float32 (N, C, S, S) from ``engine.preprocess.grader_input``, output "probs"
  float32 (N, 5), softmax over ``engine.birads.CATEGORIES``.
- Dynamic batch axis N.

Metadata keys (the constants below): ``sonograde.model`` ("roi" | "grader"), ``sonograde.input_size``,
``sonograde.input_channels``, ``sonograde.width``, ``sonograde.architecture`` (ROI-CNN),
``sonograde.categories`` (grader, comma-separated or JSON), ``sonograde.roi_margin``,
``sonograde.mask_channel`` ("1" | "0") and ``sonograde.grader_view`` ("crop" | "frame", grader),
``sonograde.ensemble_members`` (grader exported from several checkpoints, whose output is the mean of the
members' probabilities), ``sonograde.ordinal_head`` (grader read through an ordinal head: JSON slope and
cuts) and ``sonograde.ordinal_head_fitted_on``, ``sonograde.model_id``, ``sonograde.research_use``,
``sonograde.exporter``; quantized variants add ``sonograde.precision``, ``sonograde.quantization`` and
``sonograde.source_sha256``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from engine.birads import CATEGORIES

PREFIX = "sonograde."
MODEL = "sonograde.model"
MODEL_ID = "sonograde.model_id"
WIDTH = "sonograde.width"
INPUT_SIZE = "sonograde.input_size"
INPUT_CHANNELS = "sonograde.input_channels"
ARCHITECTURE = "sonograde.architecture"
CATEGORY_ORDER = "sonograde.categories"
ROI_MARGIN = "sonograde.roi_margin"
MASK_CHANNEL = "sonograde.mask_channel"
GRADER_VIEW = "sonograde.grader_view"
ENSEMBLE_MEMBERS = "sonograde.ensemble_members"
ORDINAL_HEAD = "sonograde.ordinal_head"
ORDINAL_HEAD_FITTED_ON = "sonograde.ordinal_head_fitted_on"
RESEARCH_USE = "sonograde.research_use"
EXPORTER = "sonograde.exporter"
PRECISION = "sonograde.precision"
QUANTIZATION = "sonograde.quantization"
SOURCE_SHA256 = "sonograde.source_sha256"

MODEL_KINDS = ("roi", "grader")
GRADER_VIEWS = ("crop", "frame")
RESEARCH_USE_TEXT = "research use only, not for diagnosis"
DEFAULT_GRADER_SIZE = 128
DEFAULT_ROI_SIZE = 288  # the paper's ROI-CNN input; models exported before the key existed
DEFAULT_ROI_ARCHITECTURE = "vgg16"
DEFAULT_GRADER_MARGIN = 0.25  # what the exporter writes when training gave no margin


def read_metadata(source: str | os.PathLike | Any) -> dict[str, str]:
    """The metadata of a model: an ONNX file (weights not loaded), an ``onnx.ModelProto`` or an ONNX
    Runtime ``InferenceSession``."""
    if hasattr(source, "get_modelmeta"):
        return dict(source.get_modelmeta().custom_metadata_map)
    if hasattr(source, "metadata_props"):
        return {p.key: p.value for p in source.metadata_props}
    import onnx

    model = onnx.load(os.fspath(source), load_external_data=False)
    return {p.key: p.value for p in model.metadata_props}


def write_metadata(model: Any, metadata: Mapping[str, str]) -> None:
    """Replace all of an ``onnx.ModelProto``'s metadata with ``metadata`` (values as strings)."""
    del model.metadata_props[:]
    for key, value in metadata.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, str(value)


def parse_categories(text: str | None) -> tuple[str, ...]:
    """Category labels from metadata written as JSON (``["3", "4A", ...]``) or comma-separated text;
    ``engine.birads.CATEGORIES`` when absent."""
    text = (text or "").strip()
    if text.startswith("["):
        try:
            return tuple(str(c) for c in json.loads(text))
        except ValueError:
            pass
    parsed = tuple(c.strip(" '\"[]") for c in text.split(",") if c.strip(" '\"[]"))
    return parsed or CATEGORIES


@dataclass(frozen=True)
class GraderInput:
    """How a G-CNN's input is made (``engine.preprocess.grader_input``), from its metadata.

    input_size : S of the (N, C, S, S) input, pixels.
    roi_margin : margin of the crop around the lesion box, as a fraction of the box.
    mask_channel : the lesion mask is a second input channel.
    view : "crop" around the lesion or the whole "frame".
    """

    input_size: int = DEFAULT_GRADER_SIZE
    roi_margin: float = DEFAULT_GRADER_MARGIN
    mask_channel: bool = False
    view: str = "crop"

    @classmethod
    def from_metadata(cls, metadata: Mapping[str, str]) -> GraderInput:
        """Read from ``metadata``; a missing key takes the exporter's default."""
        return cls(input_size=int(metadata.get(INPUT_SIZE, DEFAULT_GRADER_SIZE)),
                   roi_margin=float(metadata.get(ROI_MARGIN, DEFAULT_GRADER_MARGIN)),
                   mask_channel=metadata.get(MASK_CHANNEL, "0") == "1",
                   view=metadata.get(GRADER_VIEW, "crop"))

    def to_metadata(self) -> dict[str, str]:
        """The metadata entries of this input (``from_metadata``'s inverse)."""
        return {INPUT_SIZE: str(self.input_size), ROI_MARGIN: f"{self.roi_margin:g}",
                MASK_CHANNEL: "1" if self.mask_channel else "0", GRADER_VIEW: self.view}


def roi_input_size(metadata: Mapping[str, str]) -> int:
    """S of a ROI-CNN's (N, 1, S, S) input, pixels, from its metadata (288 when absent)."""
    return int(metadata.get(INPUT_SIZE) or DEFAULT_ROI_SIZE)
