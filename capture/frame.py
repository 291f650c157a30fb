"""The unit of data every source yields and every later stage consumes."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True, slots=True)
class Frame:
    """One grayscale ultrasound frame.

    Attributes
    ----------
    image : (H, W) uint8 array, the B-mode image (already cropped to the ultrasound region when a
        geometry profile is applied).
    index : frame number within its source, starting at 0, strictly increasing.
    t_capture_ns : ``time.monotonic_ns()`` when the frame was read from the source.
    pixel_size_mm : edge length of one pixel in millimetres, or ``None`` where unknown.
    source : human-readable description of where the frame came from.
    meta : optional source-specific facts (ground-truth mask of a phantom frame, DICOM tags, ...).
    """

    image: np.ndarray
    index: int
    t_capture_ns: int
    pixel_size_mm: float | None = None
    source: str = ""
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.image, np.ndarray) or self.image.dtype != np.uint8 or self.image.ndim != 2:
            got = getattr(self.image, "dtype", type(self.image).__name__), getattr(self.image, "shape", None)
            raise ValueError(f"Frame.image must be a 2-D uint8 array (grayscale); got dtype/shape {got}")
        if self.image.size == 0:
            raise ValueError("Frame.image is empty (0 pixels)")
