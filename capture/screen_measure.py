"""Scanner-screen geometry: where the ultrasound image is on a captured screen, and mm per pixel.

A capture card delivers the scanner's whole screen: the B-mode image plus text, a depth ruler, markers.
``measure_geometry`` finds

1. the image rectangle: the screen's background is its most common grey value; pixels that differ from
   it, closed (5 x 5) to fill speckle holes and opened (25 x 25) to remove text, tick marks and thin bars,
   leave the image as the largest *textured* region (a uniform header bar is large but not textured);
   each edge of its bounding box is then placed exactly on the outermost row/column in which most pixels
   differ from the background;
2. mm per pixel from the depth ruler: on either side of the image, 1-pixel-thin horizontal bright lines
   sharing a column are tick marks; a straight-line fit of their rows against their index gives pixels per
   tick interval. Long (major) ticks are taken as whole centimetres, so the number of short ticks between
   two long ones gives the interval (one short tick: 5 mm); with ticks of one length, ``tick_mm``
   (default 10 mm) is used. Or, from a depth the user reads off the scanner (``depth_mm`` = image height
   in mm), mm per pixel = depth / image height.

Assumptions (true of the phantom screens, ``capture.screen``, and of most scanners): a uniform
background that the image differs from at its edges, an axis-aligned image, a ruler of thin horizontal
ticks within ``RULER_SEARCH_PX`` of the image's left or right edge. A sector (curved-array) image is
measured by its bounding rectangle.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import cv2
import numpy as np

RULER_SEARCH_PX = 80
DEFAULT_TICK_MM = 10.0
MAJOR_TICK_MM = 10.0


class GeometryMeasurementError(ValueError):
    """No image rectangle or no usable ruler found; the message says what to try."""


@dataclass(frozen=True)
class RulerReading:
    """Ticks of a depth ruler: side ("left"/"right"), tick rows (screen pixels), which are major, the
    interval in mm and in pixels (fit), fit residual (px RMS) and the resulting mm per pixel."""

    side: str
    rows: tuple[int, ...]
    major: tuple[bool, ...]
    tick_mm: float
    spacing_px: float
    residual_px: float

    @property
    def mm_per_pixel(self) -> float:
        return self.tick_mm / self.spacing_px


@dataclass(frozen=True)
class GeometryMeasurement:
    """The result: image rectangle (x, y, w, h), mm per pixel (None when neither ruler nor depth), how it
    was obtained ("ruler", "depth" or "none"), the ruler reading if any, and the implied image depth."""

    image_rect: tuple[int, int, int, int]
    mm_per_pixel: float | None
    method: str
    ruler: RulerReading | None = None
    background: int = 0
    notes: tuple[str, ...] = field(default_factory=tuple)

    @property
    def depth_mm(self) -> float | None:
        return None if self.mm_per_pixel is None else self.mm_per_pixel * self.image_rect[3]

    def as_dict(self) -> dict:
        depth = None if self.depth_mm is None else round(self.depth_mm, 3)
        out = {"image_rect": list(self.image_rect), "mm_per_pixel": self.mm_per_pixel, "method": self.method,
               "depth_mm": depth, "background": self.background}
        if self.ruler is not None:
            out["ruler"] = {"side": self.ruler.side, "ticks": len(self.ruler.rows),
                            "tick_mm": self.ruler.tick_mm, "spacing_px": round(self.ruler.spacing_px, 4),
                            "residual_px": round(self.ruler.residual_px, 4),
                            "mm_per_pixel": self.ruler.mm_per_pixel}
        if self.notes:
            out["notes"] = list(self.notes)
        return out


def _gray(screen: np.ndarray) -> np.ndarray:
    if screen.ndim == 3:
        return cv2.cvtColor(screen, cv2.COLOR_BGR2GRAY if screen.shape[2] == 3 else cv2.COLOR_BGRA2GRAY)
    if screen.ndim != 2 or screen.dtype != np.uint8:
        raise GeometryMeasurementError(f"screen must be a uint8 gray or colour image, got {screen.dtype} "
                                       f"{screen.shape}")
    return screen


def background_value(screen: np.ndarray) -> int:
    """The most common grey value: the screen's background."""
    return int(np.argmax(np.bincount(screen.ravel(), minlength=256)))


def find_image_rect(screen: np.ndarray, *, tolerance: int = 2) -> tuple[tuple[int, int, int, int], int]:
    """The image rectangle (x, y, w, h) on ``screen`` and the background value; see the module docstring.

    tolerance: grey levels within which a pixel counts as background (2; raise it for noisy captures).
    """
    gray = _gray(screen)
    background = background_value(gray)
    differs = (np.abs(gray.astype(np.int16) - background) > tolerance).astype(np.uint8)
    closed = cv2.morphologyEx(differs, cv2.MORPH_CLOSE, np.ones((5, 5), np.uint8))
    opened = cv2.morphologyEx(closed, cv2.MORPH_OPEN, np.ones((25, 25), np.uint8))
    count, labels, stats, _ = cv2.connectedComponentsWithStats(opened, connectivity=4)
    if count <= 1:
        raise GeometryMeasurementError("no image region found: the screen is uniform or only has thin "
                                       "elements (text, lines); is the scanner showing an image?")
    # Texture: pixels whose 3x3 neighbourhood is not flat. Speckle is textured everywhere; UI panels are not.
    textured = (cv2.dilate(gray, np.ones((3, 3), np.uint8)) - cv2.erode(gray, np.ones((3, 3), np.uint8))) > 4
    best, best_score = 0, -1.0
    for label in range(1, count):
        x, y, w, h, _ = stats[label]
        score = float(np.count_nonzero(textured[y:y + h, x:x + w] & (labels[y:y + h, x:x + w] == label)))
        if score > best_score:
            best, best_score = label, score
    x, y, w, h, _ = (int(v) for v in stats[best])
    x0, y0, x1, y1 = _refine_edges(differs, x, y, x + w, y + h)
    return (x0, y0, x1 - x0, y1 - y0), background


def _settle_edges(start: int, end: int, size: int, share_at: Callable[[int], float], *, share: float,
                  reach: int) -> tuple[int, int]:
    """One axis of ``_refine_edges``: the span [start, end) grown outwards (at most ``reach`` lines, within
    ``size``) over lines where ``share_at`` exceeds ``share``, then trimmed inwards over lines where it
    does not (keeping at least one line)."""
    low = start
    while low > max(0, start - reach) and share_at(low - 1) > share:
        low -= 1
    while low < end - 1 and share_at(low) <= share:
        low += 1
    high = end
    while high < min(size, end + reach) and share_at(high) > share:
        high += 1
    while high > low + 1 and share_at(high - 1) <= share:
        high -= 1
    return low, high


def _refine_edges(differs: np.ndarray, x0: int, y0: int, x1: int, y1: int, *, share: float = 0.5,
                  reach: int = 30) -> tuple[int, int, int, int]:
    """Move each edge of the half-open box [x0, x1) x [y0, y1) to the outermost row/column (within
    ``reach`` pixels) in which more than ``share`` of the pixels across the box differ from background."""
    height, width = differs.shape

    def row_share(r: int) -> float:
        return float(differs[r, x0:x1].mean()) if 0 <= r < height else 0.0

    def col_share(c: int) -> float:
        return float(differs[y0:y1, c].mean()) if 0 <= c < width else 0.0

    for _ in range(2):  # rows then columns, twice: each uses the other's span
        y0, y1 = _settle_edges(y0, y1, height, row_share, share=share, reach=reach)
        x0, x1 = _settle_edges(x0, x1, width, col_share, share=share, reach=reach)
    return x0, y0, x1, y1


def _thin_bright(strip: np.ndarray, background: int) -> np.ndarray:
    """Pixels on 1-pixel-thin horizontal bright lines (at least 3 pixels long) of a screen strip."""
    top = int(strip.max())
    if top - background < 40:
        return np.zeros(strip.shape, bool)
    bright = strip >= background + (top - background) * 0.5
    padded = np.pad(bright, 1)
    horizontal = padded[1:-1, :-2] & padded[1:-1, 2:]
    thin = ~padded[:-2, 1:-1] & ~padded[2:, 1:-1]
    return bright & horizontal & thin


def _read_side(gray: np.ndarray, rect: tuple[int, int, int, int], side: str, background: int,
               tick_mm: float | None) -> RulerReading | None:
    x, y, w, h = rect
    height, width = gray.shape
    r0, r1 = max(0, y - 3), min(height, y + h + 3)
    if side == "left":
        c0, c1 = max(0, x - RULER_SEARCH_PX), x - 1
    else:
        c0, c1 = x + w + 1, min(width, x + w + RULER_SEARCH_PX)
    if c1 - c0 < 4:
        return None
    strip = gray[r0:r1, c0:c1]
    lines = _thin_bright(strip, background)
    per_column = lines.sum(axis=0)
    column = int(np.argmax(per_column))
    if per_column[column] < 3:
        return None
    rows = np.flatnonzero(lines[:, column])
    # Run length of each tick through that column (major ticks are longer).
    bright_rows = strip[rows] >= background + (int(strip.max()) - background) * 0.5
    lengths = []
    for row_mask in bright_rows:
        left = column
        while left > 0 and row_mask[left - 1]:
            left -= 1
        right = column
        while right < len(row_mask) - 1 and row_mask[right + 1]:
            right += 1
        lengths.append(right - left + 1)
    lengths_arr = np.asarray(lengths)
    diffs = np.diff(rows)
    if len(diffs) < 2:
        return None
    base = float(np.median(diffs))
    if base < 3:
        return None
    index = np.round((rows - rows[0]) / base).astype(int)
    if len(set(index.tolist())) != len(index):
        return None
    slope, intercept = np.polyfit(index, rows, 1)
    residual = float(np.sqrt(np.mean((rows - (intercept + slope * index)) ** 2)))
    if residual > 1.0:  # not a regular ruler (text, markers)
        return None
    major = lengths_arr >= 1.5 * lengths_arr.min()
    interval = tick_mm
    if interval is None:
        interval = DEFAULT_TICK_MM
        if major.any() and not major.all():
            steps = np.diff(index[major])
            if len(steps):
                interval = MAJOR_TICK_MM / float(np.median(steps))
    return RulerReading(side=side, rows=tuple(int(r + r0) for r in rows), major=tuple(bool(m) for m in major),
                        tick_mm=float(interval), spacing_px=float(slope), residual_px=residual)


def read_ruler(screen: np.ndarray, rect: tuple[int, int, int, int], *, background: int | None = None,
               tick_mm: float | None = None) -> RulerReading | None:
    """The depth ruler beside ``rect`` (the side with more regular ticks), or None if there is none."""
    gray = _gray(screen)
    background = background_value(gray) if background is None else background
    readings = [r for side in ("left", "right") if (r := _read_side(gray, rect, side, background, tick_mm))]
    if not readings:
        return None
    return max(readings, key=lambda r: (len(r.rows), -r.residual_px))


def measure_geometry(screen: np.ndarray, *, depth_mm: float | None = None, tick_mm: float | None = None,
                     tolerance: int = 2) -> GeometryMeasurement:
    """Image rectangle and mm per pixel of a captured scanner screen (see the module docstring).

    depth_mm: imaging depth shown by the scanner (the image's height in mm); when given it sets mm per
    pixel and the ruler (if found) is only a cross-check. tick_mm: ruler tick interval, when the ruler's
    major/minor pattern does not tell it.
    """
    gray = _gray(screen)
    rect, background = find_image_rect(gray, tolerance=tolerance)
    ruler = read_ruler(gray, rect, background=background, tick_mm=tick_mm)
    notes = []
    if depth_mm is not None:
        if depth_mm <= 0:
            raise GeometryMeasurementError(f"depth must be positive, got {depth_mm} mm")
        mm = depth_mm / rect[3]
        if ruler is not None:
            off = abs(ruler.mm_per_pixel / mm - 1.0)
            if off > 0.02:
                notes.append(f"the ruler gives {ruler.mm_per_pixel:.5f} mm/px, {off:.1%} off the given "
                             f"depth's {mm:.5f}: check the depth setting")
        return GeometryMeasurement(rect, mm, "depth", ruler, background, tuple(notes))
    if ruler is None:
        notes.append("no depth ruler found beside the image: give the imaging depth with --depth-mm")
        return GeometryMeasurement(rect, None, "none", None, background, tuple(notes))
    return GeometryMeasurement(rect, ruler.mm_per_pixel, "ruler", ruler, background, tuple(notes))
