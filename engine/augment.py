"""Training augmentation, as the paper: the ROI-CNN sees random brightness, contrast, translation and
horizontal flip; the G-CNN only translation and horizontal flip (texture and shape must stay intact).

All functions take a ``np.random.Generator`` (no global random state) and work on uint8 images before
standardization. Brightness and contrast are applied with clipping to 0..255 and a random gamma,
because the per-image standardization that follows would undo a purely linear change. Translation
never moves the lesion out of the image (the paper's premise: "the ROI must be incorporated into all
augmented data"). Flips are horizontal only: a vertical flip would put the skin line at the bottom,
which no scanner produces.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np


@dataclass(frozen=True)
class RoiAugment:
    """ROI-CNN augmentation ranges: brightness offset (grey levels), contrast factor, gamma, translation
    (fraction of the image side), flip probability."""

    brightness: float = 25.0
    contrast: tuple[float, float] = (0.75, 1.3)
    gamma: tuple[float, float] = (0.75, 1.35)
    translate: float = 0.12
    flip: float = 0.5


def _shift_limits(mask: np.ndarray, limit: int, limit_y: int | None = None) -> tuple[int, int, int, int]:
    """Allowed (dx_min, dx_max, dy_min, dy_max), at most ``limit`` (``limit_y`` vertically, default the
    same) pixels, so that the mask's bounding box stays in the image."""
    h, w = mask.shape
    limit_y = limit if limit_y is None else limit_y
    ys, xs = np.nonzero(mask)
    if len(xs) == 0:
        return -limit, limit, -limit_y, limit_y
    return (max(-limit, -int(xs.min())), min(limit, w - 1 - int(xs.max())),
            max(-limit_y, -int(ys.min())), min(limit_y, h - 1 - int(ys.max())))


def translate(image: np.ndarray, mask: np.ndarray, dx: int, dy: int) -> tuple[np.ndarray, np.ndarray]:
    """Shift image and mask by (dx, dy) pixels, filling with black (the ultrasound background)."""
    matrix = np.float32([[1, 0, dx], [0, 1, dy]])
    h, w = image.shape
    out = cv2.warpAffine(image, matrix, (w, h), flags=cv2.INTER_NEAREST, borderValue=0)
    out_mask = cv2.warpAffine(mask.astype(np.uint8), matrix, (w, h), flags=cv2.INTER_NEAREST,
                              borderValue=0)
    return out, out_mask.astype(mask.dtype)


def augment_roi(image: np.ndarray, mask: np.ndarray, rng: np.random.Generator,
                config: RoiAugment = RoiAugment()) -> tuple[np.ndarray, np.ndarray]:
    """Randomly augment one uint8 image (H x W) and its mask (H x W, bool or uint8) for the ROI-CNN."""
    img = image.astype(np.float32)
    mean = float(img.mean())
    img = (img - mean) * rng.uniform(*config.contrast) + mean
    img = img + rng.uniform(-config.brightness, config.brightness)
    img = 255.0 * (np.clip(img, 0, 255) / 255.0) ** rng.uniform(*config.gamma)
    out = img.astype(np.uint8)
    limit = int(config.translate * image.shape[1])
    x0, x1, y0, y1 = _shift_limits(mask > 0, limit)
    out, mask = translate(out, mask, int(rng.integers(x0, x1 + 1)), int(rng.integers(y0, y1 + 1)))
    if rng.random() < config.flip:
        out, mask = out[:, ::-1], mask[:, ::-1]
    return np.ascontiguousarray(out), np.ascontiguousarray(mask)


@dataclass(frozen=True)
class GraderAugment:
    """G-CNN augmentation: translation of the crop box (fraction of the box side) and flip probability."""

    translate: float = 0.1
    flip: float = 0.5


def jitter_box(box: tuple[int, int, int, int], rng: np.random.Generator,
               config: GraderAugment = GraderAugment()) -> tuple[int, int, int, int]:
    """Translate a lesion box (x, y, w, h) by up to ``config.translate`` of its size in each axis: the
    lesion moves inside the G-CNN's crop, as the paper's "random movement"."""
    x, y, w, h = box
    dx = round(rng.uniform(-config.translate, config.translate) * w)
    dy = round(rng.uniform(-config.translate, config.translate) * h)
    return x + dx, y + dy, w, h


def translate_frame(image: np.ndarray, mask: np.ndarray, rng: np.random.Generator,
                    config: GraderAugment = GraderAugment()) -> tuple[np.ndarray, np.ndarray]:
    """Shift a whole frame and its lesion mask by up to ``config.translate`` of the frame's side, never
    moving the lesion out (the G-CNN's "random movement" when it sees the whole frame)."""
    h, w = image.shape
    x0, x1, y0, y1 = _shift_limits(mask > 0, int(config.translate * w), int(config.translate * h))
    return translate(image, mask, int(rng.integers(x0, x1 + 1)), int(rng.integers(y0, y1 + 1)))


def perturb_mask(mask: np.ndarray, rng: np.random.Generator, max_pixels: int = 3) -> np.ndarray:
    """Erode or dilate a bool mask by 0..``max_pixels`` pixels (3x3 steps): the G-CNN's mask channel
    comes from the ROI-CNN and Chan–Vese in use, whose outline is a few pixels off the annotation."""
    steps = int(rng.integers(-max_pixels, max_pixels + 1))
    if steps == 0:
        return mask
    kernel = np.ones((3, 3), np.uint8)
    op = cv2.dilate if steps > 0 else cv2.erode
    out = op(mask.astype(np.uint8), kernel, iterations=abs(steps)) > 0
    return out if out.any() else mask
