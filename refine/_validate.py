"""Input checks shared by the refine modules: every bad input becomes a ValueError that names the problem."""

from __future__ import annotations

import numpy as np


def as_image(image: object, name: str = "image") -> np.ndarray:
    """Check a 2-D, non-empty, finite, real-valued image and return it as C-contiguous float64.

    Integer (e.g. uint8) and floating-point images are accepted; bool, complex and object arrays are not.
    """
    if not isinstance(image, np.ndarray):
        raise ValueError(f"{name} must be a numpy array, got {type(image).__name__}")
    if image.ndim != 2:
        raise ValueError(
            f"{name} must be 2-D (H, W) grayscale, got shape {image.shape}; "
            "convert colour frames to gray first"
        )
    if image.size == 0:
        raise ValueError(f"{name} is empty (shape {image.shape})")
    if image.dtype == np.bool_ or not (
        np.issubdtype(image.dtype, np.integer) or np.issubdtype(image.dtype, np.floating)
    ):
        raise ValueError(f"{name} has dtype {image.dtype}; expected an integer (e.g. uint8) or float image")
    out = np.ascontiguousarray(image, dtype=np.float64)
    if not np.isfinite(out).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    return out


def as_mask(mask: object, name: str = "mask", shape: tuple[int, ...] | None = None) -> np.ndarray:
    """Check a 2-D binary mask (bool, or integer: nonzero = inside); return it as C-contiguous bool.

    Float arrays are refused: a probability map must be thresholded first (see ``refine.area_filter``).
    An empty mask (no True pixel) is valid; an array with zero pixels is not.
    """
    if not isinstance(mask, np.ndarray):
        raise ValueError(f"{name} must be a numpy array, got {type(mask).__name__}")
    if mask.ndim != 2:
        raise ValueError(f"{name} must be 2-D (H, W), got shape {mask.shape}")
    if mask.size == 0:
        raise ValueError(f"{name} is empty (shape {mask.shape})")
    if not (mask.dtype == np.bool_ or np.issubdtype(mask.dtype, np.integer)):
        raise ValueError(
            f"{name} has dtype {mask.dtype}; expected bool or integer (nonzero = inside); "
            "threshold probability maps first"
        )
    if shape is not None and mask.shape != tuple(shape):
        raise ValueError(f"{name} has shape {mask.shape} but the image has shape {tuple(shape)}")
    return np.ascontiguousarray(mask != 0)


def as_finite_float(value: object, name: str, *, minimum: float | None = None) -> float:
    """A finite float parameter, optionally >= minimum."""
    try:
        out = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number, got {value!r}") from None
    if not np.isfinite(out):
        raise ValueError(f"{name} must be finite, got {value!r}")
    if minimum is not None and out < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value!r}")
    return out


def as_count(value: object, name: str) -> int:
    """A non-negative integer parameter (bools refused)."""
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
    if value < 0:
        raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
    return int(value)
