"""Render a B-mode image the way a capture card sees a scanner's screen: UI frame, text and a depth ruler.

``render_scanner_screen(image, depth_mm, layout=..., seed=...)`` returns a gray screen (uint8) and the
``ScreenTruth``: where the image is and how many mm one screen pixel spans, so that screen-geometry
measurement (``capture.screen_measure``) can be tested against known answers.

How a screen is drawn (all layouts)
-----------------------------------
* Background: a uniform dark gray (value 12-20), with a header bar (value 40) holding text at the top.
* The B-mode image is resized (bilinear, aspect kept) to the layout's image height and pasted at the
  layout's origin; ``image_rect = (x, y, w, h)``. Nothing is drawn inside the image rectangle and nothing
  touches it: every UI element keeps at least 6 px away from it.
* ``mm_per_pixel = depth_mm / h`` (the image spans the full depth; lateral and axial pixel sizes agree to
  within rounding because the aspect ratio is kept).
* Depth ruler: tick marks every 5 mm of depth, as 1-px-thick horizontal lines of value 220 beside the
  image on the layout's ``ruler_side``. The tick at ``d`` mm is on screen row
  ``y + round(d / mm_per_pixel)`` (the 0 mm tick is on the image's top row; ticks run while the row is
  inside the image). Ticks at multiples of 10 mm are major (12 px long), the others minor (6 px long).
  Their inner end is ``RULER_GAP`` (8) pixels from the image edge. Major ticks carry their depth in cm
  as a small label, starting 5 px beyond the outer end of the tick; there is no vertical spine line.
* A focus marker (a small filled triangle, value 200) is drawn on the side *opposite* the ruler.
* Some layouts add a gray-scale bar (a vertical 0-255 ramp, 12 px wide) in a side panel, far from the
  ruler, like the ones scanners draw.

Layouts (``layout`` may be the number or the name): see ``LAYOUTS``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np

RULER_GAP = 8
#: Screen columns kept free right of the image for the info panel (ruler on the left).
RIGHT_PANEL_RESERVE = 130
#: Further columns for the grey bar, drawn 40 px right of the image.
GRAY_BAR_RESERVE = 40
TICK_MM = 5.0
MAJOR_TICK_MM = 10.0
MAJOR_LEN, MINOR_LEN = 12, 6
TICK_VALUE = 220
RESEARCH_USE_ONLY = "RESEARCH USE ONLY - NOT FOR DIAGNOSIS"  # capture/ must not import sonograde


@dataclass(frozen=True, slots=True)
class ScreenLayout:
    """Screen size (w, h), image height on screen, image origin (x, y), ruler side and extras."""

    name: str
    screen_size: tuple[int, int]
    image_height: int
    origin: tuple[int, int]
    ruler_side: str  # "left" or "right"
    gray_bar: bool = False


LAYOUTS: tuple[ScreenLayout, ...] = (
    ScreenLayout("classic", (800, 600), 440, (150, 80), "left"),
    ScreenLayout("wide", (1024, 768), 560, (200, 110), "right"),
    ScreenLayout("compact", (640, 480), 336, (120, 72), "left", gray_bar=True),
    ScreenLayout("hd", (1280, 720), 540, (430, 100), "right", gray_bar=True),
)


@dataclass(frozen=True, slots=True)
class ScreenTruth:
    """Ground truth of a rendered screen: image rectangle (x, y, w, h) and mm per screen pixel.

    ``ticks`` lists ``(row, depth_mm, major)`` for every drawn ruler tick; ``ruler_side`` is "left" or
    "right"; ``layout`` the layout's name; ``screen_size`` (w, h).
    """

    image_rect: tuple[int, int, int, int]
    mm_per_pixel: float
    ruler_side: str = "left"
    ticks: tuple[tuple[int, float, bool], ...] = field(default_factory=tuple)
    layout: str = ""
    screen_size: tuple[int, int] = (0, 0)


def get_layout(layout: int | str | ScreenLayout) -> ScreenLayout:
    """A layout by index or name; ValueError listing the choices otherwise."""
    if isinstance(layout, ScreenLayout):
        return layout
    if isinstance(layout, int | np.integer) and 0 <= int(layout) < len(LAYOUTS):
        return LAYOUTS[int(layout)]
    for candidate in LAYOUTS:
        if str(layout).lower() == candidate.name:
            return candidate
    if isinstance(layout, str) and layout.isdigit() and int(layout) < len(LAYOUTS):
        return LAYOUTS[int(layout)]
    names = ", ".join(f"{i} ({lay.name})" for i, lay in enumerate(LAYOUTS))
    raise ValueError(f"unknown screen layout {layout!r}; choose one of {names}")


def _text(
    screen: np.ndarray, text: str, origin: tuple[int, int], scale: float = 0.45, value: int = 200
) -> None:
    cv2.putText(screen, text, origin, cv2.FONT_HERSHEY_SIMPLEX, scale, int(value), 1, cv2.LINE_AA)


def render_scanner_screen(
    image: np.ndarray, depth_mm: float, *, layout: int | str | ScreenLayout = 0, seed: int = 0
) -> tuple[np.ndarray, ScreenTruth]:
    """Draw ``image`` (uint8 HxW B-mode covering ``depth_mm`` of depth) on a scanner screen.

    Returns the gray screen (uint8, the layout's size) and its ``ScreenTruth``. ``seed`` varies the
    background shade and the text (patient id, gain), not the geometry.
    """
    if image.ndim != 2 or image.dtype != np.uint8:
        raise ValueError(f"image must be 2-D uint8; got {image.dtype} {image.shape}")
    if depth_mm <= 0:
        raise ValueError(f"depth_mm must be positive; got {depth_mm}")
    lay = get_layout(layout)
    rng = np.random.default_rng([int(seed), 7])
    sw, sh = lay.screen_size
    x0, y0 = lay.origin
    h = lay.image_height
    w = round(image.shape[1] * h / image.shape[0])
    # Keep room for the ruler and its labels on the right, or (ruler on the left) for the focus marker,
    # the grey bar and the info panel, which then sit right of the image and must never cover it.
    if lay.ruler_side == "right":
        room = sw - x0 - 60
    else:
        room = sw - x0 - (RIGHT_PANEL_RESERVE + (GRAY_BAR_RESERVE if lay.gray_bar else 0))
    if w > room:
        w = room
        h = round(image.shape[0] * w / image.shape[1])
    if y0 + h > sh - 30:
        raise ValueError(f"image of {image.shape[1]}x{image.shape[0]} does not fit layout {lay.name}")
    background = int(rng.integers(12, 21))
    screen = np.full((sh, sw), background, np.uint8)
    screen[:36, :] = 40
    screen[y0 : y0 + h, x0 : x0 + w] = cv2.resize(image, (w, h), interpolation=cv2.INTER_LINEAR)
    mm_per_pixel = depth_mm / h

    ticks = []
    for k in range(int(depth_mm // TICK_MM) + 1):
        depth = k * TICK_MM
        row = y0 + round(depth / mm_per_pixel)
        if row >= y0 + h:
            break
        major = abs(depth % MAJOR_TICK_MM) < 1e-6
        length = MAJOR_LEN if major else MINOR_LEN
        if lay.ruler_side == "left":
            inner = x0 - RULER_GAP
            screen[row, inner - length + 1 : inner + 1] = TICK_VALUE
            if major:
                label = f"{depth / 10:g}"
                (tw, th), _ = cv2.getTextSize(label, cv2.FONT_HERSHEY_SIMPLEX, 0.4, 1)
                _text(screen, label, (inner - length - 5 - tw, row + th // 2), 0.4, 180)
        else:
            inner = x0 + w - 1 + RULER_GAP
            screen[row, inner : inner + length] = TICK_VALUE
            if major:
                (tw, th), _ = cv2.getTextSize(f"{depth / 10:g}", cv2.FONT_HERSHEY_SIMPLEX, 0.4, 1)
                _text(screen, f"{depth / 10:g}", (inner + length + 5, row + th // 2), 0.4, 180)
        ticks.append((int(row), float(depth), bool(major)))
    # "cm" under the ruler.
    cm_x = x0 - RULER_GAP - MAJOR_LEN - 20 if lay.ruler_side == "left" else x0 + w + RULER_GAP + 4
    _text(screen, "cm", (cm_x, y0 + h + 18), 0.4, 160)

    # Focus marker on the side opposite the ruler, at 60 % of the depth.
    focus_row = y0 + round(0.6 * h)
    if lay.ruler_side == "left":
        tip = x0 + w + RULER_GAP
        triangle = np.array([[tip, focus_row], [tip + 8, focus_row - 5], [tip + 8, focus_row + 5]], np.int32)
    else:
        tip = x0 - RULER_GAP
        triangle = np.array([[tip, focus_row], [tip - 8, focus_row - 5], [tip - 8, focus_row + 5]], np.int32)
    cv2.fillConvexPoly(screen, triangle, 200)

    if lay.gray_bar:
        bar_h = min(200, h)
        ramp = np.linspace(255, 0, bar_h).astype(np.uint8)[:, None]
        bx = min(x0 + w + 40, sw - 20) if lay.ruler_side == "left" else max(x0 - 60, 8)
        screen[y0 : y0 + bar_h, bx : bx + 12] = ramp

    gain = int(rng.integers(40, 65))
    patient = f"PHANTOM-{int(rng.integers(0, 10000)):04d}"
    _text(screen, f"SONOGRADE PHANTOM  L12-5  {patient}", (10, 24), 0.55, 230)
    _text(screen, RESEARCH_USE_ONLY, (max(sw - 330, 10), 24), 0.45, 230)
    panel_x = 10 if (lay.ruler_side == "right" or x0 > 200) else sw - 110
    panel_x = min(panel_x, sw - 110)
    info = ["B-mode", "10.0 MHz", f"Gain {gain}", "DR 60", f"D {depth_mm / 10:.1f} cm", "FR 30 Hz", "BREAST"]
    for i, line in enumerate(info):
        y = y0 + 16 + 20 * i
        x = panel_x
        if lay.ruler_side == "left" and x < x0 and x + 90 > x0 - 60:
            x = sw - 110
        _text(screen, line, (x, y), 0.42, 190)
    truth = ScreenTruth((x0, y0, w, h), mm_per_pixel, lay.ruler_side, tuple(ticks), lay.name, (sw, sh))
    return screen, truth


__all__ = ["LAYOUTS", "RULER_GAP", "ScreenLayout", "ScreenTruth", "get_layout", "render_scanner_screen"]
