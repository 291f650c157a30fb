"""The one preprocessing shared by training, calibration and inference.

ROI-CNN input: the frame as grayscale, resized to S x S, standardized per image (zero mean, unit standard
deviation), as the paper's "standardization" step. S is the model's own input size (its
``sonograde.input_size``, ``engine.contract.roi_input_size``: 224 for the shipped Lite0-encoder network);
``ROI_INPUT_SIZE`` = 288 is the paper's network's, the default where no model is involved. Keeping this in
one function is what makes a model trained here behave the same in the live pipeline.
"""

from __future__ import annotations

import cv2
import numpy as np

from engine.contract import GRADER_VIEWS as GRADER_VIEWS  # re-exported: the views grader_input makes

ROI_INPUT_SIZE = 288  # the paper's ROI-CNN input; a model's own size comes from its metadata
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


# ------------------------------------------------------------------------------------------- G-CNN input

GRADER_INPUT_SIZE = 128
GRADER_MARGIN = 0.25
GRADER_MASK_CHANNEL = False


def mask_bbox(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    """Bounding box (x, y, w, h) in pixels of the True pixels of a 2-D mask, or ``None`` if it is empty."""
    ys, xs = np.nonzero(mask)
    if len(xs) == 0:
        return None
    x0, y0 = int(xs.min()), int(ys.min())
    return x0, y0, int(xs.max()) - x0 + 1, int(ys.max()) - y0 + 1


def square_crop_box(box: tuple[int, int, int, int], margin: float) -> tuple[int, int, int]:
    """The square crop (x0, y0, side) around ``box`` = (x, y, w, h): the longer side enlarged by
    ``margin`` of it on each side, centred on the box. May extend past the image (padded later)."""
    x, y, w, h = box
    side = max(2, round(max(w, h) * (1.0 + 2.0 * margin)))
    cx, cy = x + w / 2.0, y + h / 2.0
    return round(cx - side / 2.0), round(cy - side / 2.0), side


def _crop_square(image: np.ndarray, x0: int, y0: int, side: int) -> np.ndarray:
    """``image[y0:y0+side, x0:x0+side]`` with zero padding where the square leaves the image."""
    h, w = image.shape
    out = np.zeros((side, side), dtype=image.dtype)
    sx0, sy0, sx1, sy1 = max(x0, 0), max(y0, 0), min(x0 + side, w), min(y0 + side, h)
    if sx1 > sx0 and sy1 > sy0:
        out[sy0 - y0:sy1 - y0, sx0 - x0:sx1 - x0] = image[sy0:sy1, sx0:sx1]
    return out


def grader_input(image_gray_u8: np.ndarray, mask: np.ndarray, *, size: int = GRADER_INPUT_SIZE,
                 margin: float = GRADER_MARGIN, mask_channel: bool = GRADER_MASK_CHANNEL,
                 box: tuple[int, int, int, int] | None = None, view: str = "crop") -> np.ndarray:
    """G-CNN input for one lesion: float32 array (C, size, size), C = 2 with ``mask_channel`` else 1.

    ``view="frame"``: the whole frame resized to size x size (as ``roi_input``) and, as channel 2, the
    mask resized the same way: the lesion keeps its size relative to the field of view and its
    surroundings (skin, fat, posterior shadowing); ``margin`` and ``box`` are not used.

    ``view="crop"`` (default): the lesion's bounding box (from ``mask``, or ``box`` = (x, y, w, h) if
    given, e.g. a jittered box in training) is squared on its longer side and enlarged by ``margin``
    (fraction of that side, default 0.25) on each side, so the lesion's aspect ratio and some surrounding
    tissue are kept; pixels outside the image are black; the crop is resized to size x size and
    standardized (zero mean, unit std).
    Channel 2 (optional) is the mask cropped the same way, 0.0/1.0. Raises ValueError for an empty mask
    or a mask whose shape differs from the image's.
    """
    gray = to_gray_u8(image_gray_u8)
    if mask.shape != gray.shape:
        raise ValueError(f"mask shape {mask.shape} differs from image shape {gray.shape}")
    if view == "frame":
        if not mask.any():
            raise ValueError("mask is empty: no lesion to grade")
        return _frame_input(gray, mask, size, mask_channel)
    if view != "crop":
        raise ValueError(f"unknown G-CNN view {view!r}; expected one of {GRADER_VIEWS}")
    if box is None:
        box = mask_bbox(mask)
        if box is None:
            raise ValueError("mask is empty: no lesion to grade")
    x0, y0, side = square_crop_box(box, margin)
    crop = _crop_square(gray, x0, y0, side)
    interpolation = cv2.INTER_AREA if side > size else cv2.INTER_LINEAR
    channels = [standardize(cv2.resize(crop, (size, size), interpolation=interpolation))]
    if mask_channel:
        mask_crop = _crop_square(mask.astype(np.uint8) * 255, x0, y0, side)
        channels.append((cv2.resize(mask_crop, (size, size), interpolation=interpolation) > 127)
                        .astype(np.float32))
    return np.stack(channels).astype(np.float32, copy=False)


def _frame_input(gray: np.ndarray, mask: np.ndarray, size: int, mask_channel: bool) -> np.ndarray:
    channels = [roi_input(gray, size)[0]]
    if mask_channel:
        interpolation = cv2.INTER_AREA if min(gray.shape) > size else cv2.INTER_LINEAR
        small = cv2.resize(mask.astype(np.uint8) * 255, (size, size), interpolation=interpolation)
        channels.append((small > 127).astype(np.float32))
    return np.stack(channels).astype(np.float32, copy=False)
