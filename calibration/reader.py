"""Step 1 of INT8 calibration: an ONNX Runtime ``CalibrationDataReader`` over model inputs.

The inputs are made by ``calibration.inputs`` from real frames through the inference preprocessing
(and, for the grader, the real first stage), so the ranges the calibrator observes are those the model
sees in the pipeline. One sample per ``get_next`` (batch 1, as the pipeline runs). ``set_range`` lets the
quantizer collect in strides (``CalibStridedMinMax``), which keeps the calibrator's memory to a few
frames' activations instead of all of them.
"""

from __future__ import annotations

import numpy as np
from onnxruntime.quantization import CalibrationDataReader


class ArrayCalibrationReader(CalibrationDataReader):
    """Feeds rows of ``batch`` (N, C, S, S float32) one at a time as ``{input_name: row[None]}``."""

    def __init__(self, input_name: str, batch: np.ndarray) -> None:
        if batch.ndim != 4 or batch.dtype != np.float32 or len(batch) == 0:
            raise ValueError(f"calibration batch must be non-empty float32 (N, C, S, S), got {batch.dtype} "
                             f"{batch.shape}")
        self.input_name = input_name
        self.batch = batch
        self.start, self.end = 0, len(batch)
        self.position = 0

    def __len__(self) -> int:
        return len(self.batch)

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self.position >= self.end:
            return None
        row = self.batch[self.position:self.position + 1]
        self.position += 1
        return {self.input_name: row}

    def rewind(self) -> None:
        self.position = self.start

    def set_range(self, start_index: int, end_index: int) -> None:
        """Serve rows ``start_index`` up to ``end_index`` (exclusive) next."""
        self.start, self.end = max(0, start_index), min(len(self.batch), end_index)
        self.position = self.start
