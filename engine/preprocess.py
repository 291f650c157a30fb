"""The one preprocessing shared by training, calibration and inference.

ROI-CNN input: the frame as grayscale, resized to ``ROI_INPUT_SIZE`` squared, standardized per image
(zero mean, unit standard deviation), as the paper's "standardization" step. Keeping this in one function
is what makes a model trained here behave the same in the live pipeline.
"""

from __future__ import annotations

import cv2
import numpy as np

ROI_INPUT_SIZE = 288
_STD_FLOOR = 1e-3  # a flat image (all one grey) would otherwise divide by zero


def to_gray_u8(image: np.ndarray) -> np.ndarray:
    """Return a 2-D uint8 grayscale view of ``image`` (H x W, H x W x 1, x 3 BGR or x 4 BGRA).

    Raises ValueError naming the problem for any other shape or dtype, or for an empty image.
    """
    if not isinstance(image, np.ndarray):
        raise ValueError(f"image must be a numpy array, got {type(image).__name__}")
    if image.size == 0:
        raise ValueError(f"image is empty (shape {image.shape})")
    if image.dtype != np.uint8:
        raise ValueError(f"image must be uint8 (8-bit), got {image.dtype}; convert it before grading")
    if image.ndim == 2:
        return image
    if image.ndim == 3 and image.shape[2] == 1:
        return image[:, :, 0]
    if image.ndim == 3 and image.shape[2] == 3:
        return cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
    if image.ndim == 3 and image.shape[2] == 4:
        return cv2.cvtColor(image, cv2.COLOR_BGRA2GRAY)
    raise ValueError(f"image must be H x W grayscale or H x W x 3/4 colour, got shape {image.shape}")


def standardize(image: np.ndarray) -> np.ndarray:
    """Zero-mean, unit-variance float32 copy of ``image`` (per image, as the paper's standardization)."""
    pixels = image.astype(np.float32)
    mean = float(pixels.mean())
    std = max(float(pixels.std()), _STD_FLOOR)
    return (pixels - mean) / std


def roi_input(image: np.ndarray, size: int = ROI_INPUT_SIZE) -> np.ndarray:
    """ROI-CNN input for one frame: float32 array of shape (1, size, size)."""
    gray = to_gray_u8(image)
    resized = cv2.resize(gray, (size, size), interpolation=cv2.INTER_AREA if min(gray.shape) > size
                         else cv2.INTER_LINEAR)
    return standardize(resized)[None]
