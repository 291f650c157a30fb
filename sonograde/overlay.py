"""Draw a published result over its frame, and show, record or snapshot it.

The picture follows the paper's Fig. 5: the ROI-CNN contour in blue, the refined contour (area
filtering + Chan–Vese) in red, and the two calipers of the measured size in green (width and height lines
with end ticks and their lengths). A third column shows the explained assessment of schema-2 messages:
the malignancy probability beside the category, each lexicon descriptor's value and probability, the
size with its unit, the drivers that pushed the category up or down, and "research use only, not for
diagnosis". Beside the image a panel shows the smoothed BI-RADS category in large
type, a bar chart of the five smoothed probabilities with the raw per-frame value as a tick, the lesion
size in mm where the pixel size is known, latency and frame rate, and the source state. A banner on top
says research use only, not for diagnosis; it is drawn on every frame, recorded ones included.

Drawing is pure (``OverlayRenderer.render`` returns a BGR image); ``OverlaySink`` owns the window, the
video recorder and snapshots.
"""

from __future__ import annotations

import os
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from sonograde import RESEARCH_USE_ONLY
from sonograde.messages import CATEGORIES, Message

# BGR colours. Blue and red as in the paper's Fig. 5; fully saturated so they stand out on grey speckle.
ROI_BLUE = (255, 80, 0)
REFINED_RED = (0, 0, 255)
CALIPER_GREEN = (60, 255, 60)
_PANEL_BG = (38, 34, 32)
_TEXT = (235, 235, 235)
_DIM = (150, 150, 150)
_BANNER_BG = (0, 190, 255)  # amber
_BANNER_FG = (0, 0, 0)
_BAR_BG = (70, 66, 62)
# Category accents, only for the large label and the chosen bar (a cue, the number is the information).
_CATEGORY_COLOURS = {"3": (120, 200, 120), "4A": (80, 220, 230), "4B": (60, 170, 255), "4C": (40, 120, 255),
                     "5": (70, 70, 255)}
_FONT = cv2.FONT_HERSHEY_DUPLEX
_FONT_PLAIN = cv2.FONT_HERSHEY_SIMPLEX


@dataclass(frozen=True)
class OverlayStyle:
    """Layout in output pixels: image area height (the frame is scaled to fit), side panel width,
    banner height, assessment column width. Defaults make a 1523 x 680 picture for a 4:3 frame."""

    image_height: int = 640
    panel_width: int = 340
    banner_height: int = 40
    contour_thickness: int = 2
    assessment_width: int = 330  # the explained-assessment column right of the panel


class RateMeter:
    """Frames per second over the last ``window_s`` seconds of arrival times (monotonic ns)."""

    def __init__(self, window_s: float = 2.0) -> None:
        self.window_ns = int(window_s * 1e9)
        self._times: deque[int] = deque()

    def tick(self, t_ns: int | None = None) -> None:
        now = time.monotonic_ns() if t_ns is None else t_ns
        self._times.append(now)
        while self._times and now - self._times[0] > self.window_ns:
            self._times.popleft()

    @property
    def fps(self) -> float | None:
        """None when fewer than two arrivals, or none within the window (the stream stopped)."""
        if len(self._times) < 2 or time.monotonic_ns() - self._times[-1] > self.window_ns:
            return None
        span = (self._times[-1] - self._times[0]) / 1e9
        return (len(self._times) - 1) / span if span > 0 else None


def _text(img: np.ndarray, text: str, org: tuple[int, int], scale: float = 0.55,
          colour: tuple[int, int, int] = _TEXT, thickness: int = 1, font: int = _FONT_PLAIN) -> None:
    cv2.putText(img, text, org, font, scale, colour, thickness, cv2.LINE_AA)


def _polygon(points: list | None, scale: float, dx: int, dy: int) -> np.ndarray | None:
    if not points or len(points) < 2:
        return None
    array = np.asarray(points, dtype=np.float64).reshape(-1, 2) * scale + 0.5 * scale - 0.5  # pixel centres
    array += (dx, dy)
    # Points far off the picture are clipped so OpenCV's fixed-point drawing cannot overflow.
    return np.rint(np.clip(array, -1e5, 1e5)).astype(np.int32).reshape(-1, 1, 2)


def _unit(value: object) -> float:
    """A probability for a bar: a number clipped to [0, 1] (0 for anything else)."""
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return 0.0
    return min(max(number, 0.0), 1.0) if np.isfinite(number) else 0.0


def mm_size(header: dict) -> tuple[float, float] | None:
    """Lesion bbox width x height in mm where the pixel size is known, else None."""
    pixel = header.get("pixel_size_mm")
    bbox = header.get("bbox")
    if not pixel or not bbox:
        return None
    return bbox[2] * pixel, bbox[3] * pixel


class OverlayRenderer:
    """Renders results into BGR pictures of a fixed size (so a recorder can take every one)."""

    def __init__(self, style: OverlayStyle | None = None, frame_aspect: float = 4.0 / 3.0) -> None:
        self.style = style or OverlayStyle()
        self.image_width = round(self.style.image_height * frame_aspect)
        self.width = self.image_width + self.style.panel_width + self.style.assessment_width
        self.height = self.style.banner_height + self.style.image_height

    # --------------------------------------------------------------------------------- image area
    def _draw_image(self, canvas: np.ndarray, result: Message | None, stale: bool) -> None:
        st = self.style
        top = st.banner_height
        area = canvas[top:top + st.image_height, :self.image_width]
        area[:] = 0
        if result is None or result.frame is None:
            message = "waiting for results..." if result is None else "frame not sent (--send-frames off)"
            _text(area, message, (24, st.image_height // 2), 0.8, _DIM)
            if result is None:
                return
            frame_h, frame_w = result.header["image_size"]
        else:
            frame_h, frame_w = result.frame.shape
        scale = min(self.image_width / frame_w, st.image_height / frame_h)
        # At least one pixel each way: a 1 x 16384 frame scales to 0 rows otherwise.
        out_w, out_h = max(1, round(frame_w * scale)), max(1, round(frame_h * scale))
        dx, dy = (self.image_width - out_w) // 2, (st.image_height - out_h) // 2
        if result.frame is not None:
            resized = cv2.resize(result.frame, (out_w, out_h),
                                 interpolation=cv2.INTER_LINEAR if scale > 1 else cv2.INTER_AREA)
            area[dy:dy + out_h, dx:dx + out_w] = resized[:, :, None]
        header = result.header
        for key, colour in (("roi_contour", ROI_BLUE), ("refined_contour", REFINED_RED)):
            polygon = _polygon(header.get(key), scale, dx, dy)
            if polygon is not None:
                cv2.polylines(area, [polygon], True, colour, st.contour_thickness, cv2.LINE_AA)
        _draw_calipers(area, result.assessment, scale, dx, dy)
        # Legend, bottom left of the image.
        y = st.image_height - 16
        for label, colour in (("ROI-CNN", ROI_BLUE), ("refined", REFINED_RED)):
            cv2.line(area, (16, y - 5), (44, y - 5), colour, 3, cv2.LINE_AA)
            _text(area, label, (52, y), 0.5, _TEXT)
            y -= 22
        _text(area, f"frame {header['frame_index']}", (self.image_width - 130, st.image_height - 14),
              0.45, _DIM)
        if stale:
            shade = area.copy()
            shade[:] = (0, 0, 0)
            cv2.addWeighted(area, 0.45, shade, 0.55, 0, dst=area)

    # --------------------------------------------------------------------------------- side panel
    def _draw_panel(self, canvas: np.ndarray, result: Message | None, status: Message | None,
                    fps: float | None, stale: bool = False, health: Message | None = None) -> None:
        """Category, probability bars, size, timing and state beside the image."""
        st = self.style
        top = st.banner_height
        panel = canvas[top:, self.image_width:]
        panel[:] = _PANEL_BG
        x = 20
        _text(panel, "BI-RADS (smoothed)", (x, 32), 0.55, _DIM)
        header = result.header if result is not None else None
        category = header.get("smoothed_category") if header else None
        if header and header["lesion_found"] and category is None:
            category = header.get("category")
        not_gradeable = header.get("not_gradeable") if header else None
        if not_gradeable:
            # The frame was not graded (too small, blank, colour overlay): say why instead of a category.
            _text(panel, "not gradeable", (x, 92), 1.05, (0, 190, 255), 2, _FONT)
            _text(panel, str(not_gradeable)[:48], (x, 124), 0.42, _DIM)
        elif category:
            # A result from before a dropout is shown grey: it is not about what the probe sees now.
            colour = _DIM if stale else _CATEGORY_COLOURS.get(category, _TEXT)
            _text(panel, category, (x, 100), 2.4, colour, 3, _FONT)
            track = header.get("track") or {}
            raw = header.get("category")
            detail = f"this frame: {raw}" if raw else "this frame: no lesion"
            if track:
                detail += f"   track {track.get('id')} ({track.get('age')} fr)"
            if stale:
                detail = "last result before the source dropped out"
            _text(panel, detail, (x, 128), 0.45, _DIM)
        else:
            _text(panel, "no lesion", (x, 92), 1.2, _DIM, 2, _FONT)
            _text(panel, "in view" if header else "", (x, 124), 0.55, _DIM)

        # Probability bars: smoothed value as the bar, raw per-frame value as a white tick.
        smoothed = (header or {}).get("smoothed_probabilities") or (header or {}).get("probabilities") or {}
        raw_probs = (header or {}).get("probabilities") or {}
        bar_x, bar_w, y = x + 44, st.panel_width - x - 44 - 64, 162
        for name in CATEGORIES:
            value = _unit(smoothed.get(name, 0.0))
            _text(panel, name, (x, y + 15), 0.55, _TEXT)
            cv2.rectangle(panel, (bar_x, y), (bar_x + bar_w, y + 20), _BAR_BG, -1)
            colour = _CATEGORY_COLOURS[name] if name == category and not stale else (185, 170, 150)
            cv2.rectangle(panel, (bar_x, y), (bar_x + round(bar_w * value), y + 20), colour, -1)
            if name in raw_probs:
                tick = bar_x + round(bar_w * _unit(raw_probs[name]))
                cv2.line(panel, (tick, y - 3), (tick, y + 23), (255, 255, 255), 2)
            if smoothed:
                _text(panel, f"{100 * value:4.0f}%", (bar_x + bar_w + 8, y + 15), 0.5, _TEXT)
            y += 30
        _text(panel, "bar: smoothed   tick: this frame", (x, y + 6), 0.4, _DIM)

        # Size.
        y += 40
        if header and header["lesion_found"]:
            size = mm_size(header)
            if size is not None:
                _text(panel, f"size  {size[0]:.1f} x {size[1]:.1f} mm", (x, y), 0.55, _TEXT)
                if header.get("area_mm2") is not None:
                    _text(panel, f"area  {header['area_mm2']:.1f} mm^2", (x, y + 24), 0.55, _TEXT)
            elif header.get("area_px") is not None:
                _text(panel, f"area  {header['area_px']:.0f} px", (x, y), 0.55, _TEXT)
                _text(panel, "(no pixel size: pass --geometry)", (x, y + 24), 0.42, _DIM)
        y += 64

        # Timing and state.
        latency = result.latency_ms if result is not None else None
        lines = [
            f"latency  {latency:5.1f} ms" if latency is not None else "latency    -",
            f"fps      {fps:5.1f}" if fps is not None else "fps        -",
        ]
        if header:
            timings = header.get("timings_ms") or {}
            stages = [f"{k} {float(v):.0f}" for k, v in timings.items()
                      if k in ("locate", "refine", "classify") and isinstance(v, int | float)]
            if stages:
                lines.append("ms: " + "  ".join(stages))
        state = (status or result).header["source_state"] if (status or result) else "no publisher yet"
        lines.append(f"source   {state}")
        for line in lines:
            _text(panel, line, (x, y), 0.5, _TEXT if not line.startswith("ms:") else _DIM)
            y += 24
        # Faults the pipeline counted (skipped frames, unreadable files) are shown while they happen,
        # not only when the source drops out: a NaN-giving model must not look like a quiet scan.
        errors = health.header.get("errors") if health is not None else None
        if isinstance(errors, dict) and (errors.get("total") or errors.get("source_skipped")):
            line = f"errors {errors.get('total', 0)}   skipped files {errors.get('source_skipped', 0)}"
            _text(panel, line, (x, y), 0.45, (0, 190, 255))
            y += 20
        error = (status or health).header.get("last_error") if (status or health) is not None else None
        if error and (status is not None or errors):
            _text(panel, str(error)[:44], (x, y), 0.4, (0, 190, 255))
        if header and header.get("model_ids"):
            lines = [f"{kind}: {model_id}"[:52] for kind, model_id in header["model_ids"].items()]
            for i, line in enumerate(reversed(lines)):
                _text(panel, line, (x, st.image_height - 14 - 16 * i), 0.36, _DIM)

    # ----------------------------------------------------------------------------- assessment column
    def _draw_assessment(self, canvas: np.ndarray, result: Message | None, stale: bool) -> None:
        """The explained assessment (schema 2) in the column right of the panel: malignancy probability
        level with the category, descriptors with probabilities, size with its unit, drivers, and the
        research-use line. Parts a result lacks are listed with the reason."""
        st = self.style
        left = self.image_width + st.panel_width
        column = canvas[st.banner_height:, left:]
        column[:] = _PANEL_BG
        cv2.line(column, (0, 0), (0, column.shape[0] - 1), _BAR_BG, 1)
        _draw_assessment_column(column, result, stale)

    def _draw_banner(self, canvas: np.ndarray) -> None:
        st = self.style
        canvas[:st.banner_height] = _BANNER_BG
        (tw, th), _ = cv2.getTextSize(RESEARCH_USE_ONLY, _FONT, 0.7, 2)
        _text(canvas, RESEARCH_USE_ONLY, ((self.width - tw) // 2, (st.banner_height + th) // 2), 0.7,
              _BANNER_FG, 2, _FONT)

    def render(self, result: Message | None, status: Message | None = None,
               fps: float | None = None, no_signal_s: float | None = None) -> np.ndarray:
        """Picture (H, W, 3) uint8 BGR for the latest result, the latest status message (for the source
        state while no results arrive) and the receive rate.

        no_signal_s : seconds since the last message of any kind (heartbeats come about once a second)
            when the display considers the publisher gone; the picture is then dimmed and says "NO
            SIGNAL". None while messages arrive.
        """
        canvas = np.zeros((self.height, self.width, 3), dtype=np.uint8)
        state = (status.header["source_state"] if status is not None
                 and (result is None or status.header["t_publish_ns"] > result.header["t_publish_ns"])
                 else result.header["source_state"] if result is not None else None)
        stale = state is not None and state != "connected"
        self._draw_banner(canvas)
        self._draw_image(canvas, result, stale)
        self._draw_panel(canvas, result, status if stale else None, fps, stale, health=status)
        self._draw_assessment(canvas, result, stale)
        if stale:
            top = self.style.banner_height
            label = f"SOURCE {state.upper()}"
            (tw, _), _ = cv2.getTextSize(label, _FONT, 1.1, 2)
            _text(canvas, label, ((self.image_width - tw) // 2, top + self.style.image_height // 2), 1.1,
                  (0, 190, 255), 2, _FONT)
        if no_signal_s is not None:
            self._draw_no_signal(canvas, no_signal_s)
        return canvas

    def _draw_no_signal(self, canvas: np.ndarray, seconds: float) -> None:
        """Dim everything below the banner and say that the publisher went quiet: what is shown is old."""
        top = self.style.banner_height
        below = canvas[top:]
        below[:] = (below.astype(np.uint16) * 3 // 10).astype(np.uint8)
        label = "NO SIGNAL"
        (tw, th), _ = cv2.getTextSize(label, _FONT, 1.6, 3)
        middle = top + self.style.image_height // 2
        _text(canvas, label, ((self.width - tw) // 2, middle), 1.6, (0, 190, 255), 3, _FONT)
        detail = f"no message from the publisher for {seconds:.0f} s"
        (tw, _), _ = cv2.getTextSize(detail, _FONT_PLAIN, 0.6, 1)
        _text(canvas, detail, ((self.width - tw) // 2, middle + th + 16), 0.6, _TEXT)


# ------------------------------------------------------------------------------ assessment drawing

_DESCRIPTOR_LABELS = {"shape": "shape", "orientation": "orientation", "margin": "margin",
                      "echo_pattern": "echo pattern", "posterior_features": "posterior",
                      "calcifications": "calcif."}
_TICK_PX = 6  # half-length of a caliper's end tick
_PIXEL_SIZE_ORIGINS = {"caller": "from the source", "geometry": "geometry profile", "manifest": "manifest",
                       "cli": "--pixel-size-mm", "dicom_pixel_spacing": "DICOM Pixel Spacing",
                       "dicom_ultrasound_regions": "DICOM US regions"}


def _to_canvas(point: list[float], scale: float, dx: int, dy: int) -> tuple[float, float]:
    """Frame pixel coordinates (centres at integers) -> image-area coordinates, like the contours."""
    return point[0] * scale + 0.5 * scale - 0.5 + dx, point[1] * scale + 0.5 * scale - 0.5 + dy


def _format_length(value: float, unit: str) -> str:
    return f"{value:.1f} {unit}" if unit == "mm" else f"{value:.0f} px"


def _draw_calipers(area: np.ndarray, assessment: dict | None, scale: float, dx: int, dy: int) -> None:
    """The width (horizontal) and height (vertical) calipers with end ticks and their lengths."""
    if not assessment or "calipers" not in assessment:
        return
    size = assessment.get("size") or {}
    unit = size.get("unit", "px")
    for key in ("width", "height"):
        (x0, y0), (x1, y1) = (_to_canvas(p, scale, dx, dy) for p in assessment["calipers"][key])
        start, end = (round(x0), round(y0)), (round(x1), round(y1))
        cv2.line(area, start, end, CALIPER_GREEN, 2, cv2.LINE_AA)
        horizontal = key == "width"
        for x, y in (start, end):  # ticks across the line at both ends
            if horizontal:
                cv2.line(area, (x, y - _TICK_PX), (x, y + _TICK_PX), CALIPER_GREEN, 2, cv2.LINE_AA)
            else:
                cv2.line(area, (x - _TICK_PX, y), (x + _TICK_PX, y), CALIPER_GREEN, 2, cv2.LINE_AA)
        length = size.get(key)
        if length is None:
            continue
        label = _format_length(float(length), unit)
        if horizontal:  # label above the right end, vertical one's label right of its lower end
            org = (min(end[0] + 4, area.shape[1] - 70), max(end[1] - 8, 14))
        else:
            org = (min(end[0] + 8, area.shape[1] - 70), min(end[1], area.shape[0] - 6))
        cv2.putText(area, label, org, _FONT_PLAIN, 0.45, (0, 0, 0), 3, cv2.LINE_AA)  # dark outline
        _text(area, label, org, 0.45, CALIPER_GREEN)


def _percent(probability: float) -> str:
    """A probability as a whole percentage, never a bare 0 % or 100 % for what is only close to them."""
    if probability < 0.005:
        return "<1%"
    if probability > 0.995:
        return ">99%"
    return f"{100 * probability:.0f}%"


def _descriptor_line(name: str, entry: dict) -> str:
    if entry.get("value") is None:  # a descriptor the model does not give (its reason is in the message)
        return "- (not given by the model)"
    value = str(entry["value"])
    probability = (entry.get("probabilities") or {}).get(value)
    text = value + (f" {_percent(float(probability))}" if probability is not None else "")
    if name == "orientation" and entry.get("angle_deg") is not None:
        text += f"  {float(entry['angle_deg']):+.0f} deg"
    return text


def _draw_assessment_column(column: np.ndarray, result: Message | None, stale: bool) -> None:
    x = 14
    text_colour = _DIM if stale else _TEXT
    _text(column, "Explained assessment", (x, 32), 0.55, _DIM)
    bottom = column.shape[0] - 14
    _text(column, "Research use only,", (x, bottom - 18), 0.5, _BANNER_BG)
    _text(column, "not for diagnosis.", (x, bottom), 0.5, _BANNER_BG)
    if result is None:
        return
    assessment = result.assessment
    if assessment is None:
        version = result.header.get("schema_version")
        _text(column, f"publisher sends schema {version}:", (x, 92), 0.45, _DIM)
        _text(column, "no assessment (upgrade it)", (x, 112), 0.45, _DIM)
        return
    absent = assessment.get("absent") or {}
    probability = assessment.get("malignancy_probability")
    if probability is not None:  # level with the category in the panel to its left
        _text(column, _percent(float(probability)), (x, 100), 1.5, text_colour, 2, _FONT)
        _text(column, "malignancy probability", (x, 128), 0.45, _DIM)
    else:
        _text(column, "malignancy: -", (x, 92), 0.6, _DIM)
        _text(column, str(absent.get("malignancy_probability", ""))[:40], (x, 114), 0.4, _DIM)
    y = 162
    descriptors = assessment.get("descriptors")
    if descriptors:
        _text(column, "descriptors (probability)", (x, y), 0.45, _DIM)
        y += 22
        for name, label in _DESCRIPTOR_LABELS.items():
            entry = descriptors.get(name)
            if not isinstance(entry, dict):
                continue
            _text(column, label, (x, y), 0.42, _DIM)
            _text(column, _descriptor_line(name, entry)[:30], (x + 96, y), 0.42, text_colour)
            y += 20
            subtypes = entry.get("subtypes") if name == "margin" else None
            if subtypes:
                top = sorted(subtypes.items(), key=lambda kv: -float(kv[1]))[:2]
                line = ", ".join(f"{k} {_percent(float(v))}" for k, v in top)
                _text(column, line[:34], (x + 96, y), 0.38, _DIM)
                y += 18
    else:
        _text(column, "descriptors: -", (x, y), 0.45, _DIM)
        _text(column, str(absent.get("descriptors", ""))[:40], (x, y + 20), 0.4, _DIM)
        y += 40
    y += 14
    size = assessment.get("size")
    if size:
        unit = size.get("unit", "px")
        _text(column, f"size ({unit})", (x, y), 0.45, _DIM)
        _text(column, f"W {_format_length(size['width'], unit)}  x  H {_format_length(size['height'], unit)}",
              (x, y + 22), 0.5, text_colour)
        _text(column, f"longest {_format_length(size['longest'], unit)}", (x, y + 44), 0.45, text_colour)
        origin = _PIXEL_SIZE_ORIGINS.get(str(size.get("pixel_size_source")), size.get("pixel_size_source"))
        source = (f"pixel {size['pixel_size_mm']} mm ({origin})"
                  if size.get("pixel_size_mm") is not None else "no pixel size: px, not mm")
        _text(column, source[:44], (x, y + 64), 0.38, _DIM)
        y += 90
    else:
        _text(column, "size: -", (x, y), 0.45, _DIM)
        _text(column, str(absent.get("size", ""))[:44], (x, y + 20), 0.4, _DIM)
        y += 44
    drivers = assessment.get("drivers")
    if drivers:
        _text(column, "drivers (up / down the suspicion)", (x, y), 0.45, _DIM)
        y += 22
        for driver in drivers[:3]:
            direction = str(driver.get("direction", ""))
            arrow = "up" if direction == "up" else "down" if direction == "down" else ""
            name = _DESCRIPTOR_LABELS.get(str(driver.get("descriptor")), str(driver.get("descriptor", "?")))
            line = f"{arrow:>4s}  {name}: {driver.get('value') or ''}"
            colour = _DIM if stale else ((80, 160, 255) if arrow == "up" else (180, 220, 140))
            _text(column, line[:38], (x, y), 0.42, colour)
            y += 20
    elif "drivers" in absent:
        _text(column, "drivers: -", (x, y), 0.45, _DIM)
        _text(column, str(absent["drivers"])[:44], (x, y + 20), 0.4, _DIM)


def display_available() -> tuple[bool, str]:
    """Whether an OpenCV highgui window can be opened here, and why not.

    Checked without opening a window: OpenCV's Qt backend aborts the whole process when there is no
    display server, so a missing ``$DISPLAY``/``$WAYLAND_DISPLAY`` means no window.
    """
    if not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        return False, "no display ($DISPLAY is not set)"
    info = cv2.getBuildInformation()
    gui = info.split("GUI:", 1)[1].split("\n", 1)[0].strip() if "GUI:" in info else ""
    if gui.upper() in ("", "NONE"):
        return False, "this OpenCV build has no GUI (opencv-python-headless?)"
    return True, ""


class OverlaySink:
    """Where rendered pictures go: a window (when ``window`` and a display exist), an MP4 recording,
    and a snapshot PNG of the last picture (written on ``close``).

    record : MP4 path (``mp4v`` codec) at ``record_fps`` (the live rate is variable; frames are written
        as they come, so playback speed matches the pipeline's rate when that is near ``record_fps``).
    """

    WINDOW = "Sonograde overlay (research use only)"

    def __init__(self, *, window: bool = True, record: Path | None = None, snapshot: Path | None = None,
                 record_fps: float = 30.0) -> None:
        self.window = False
        self.window_note = ""
        if window:
            self.window, self.window_note = display_available()
        self.record_path = record
        self.snapshot_path = snapshot
        self.record_fps = record_fps
        self._writer: cv2.VideoWriter | None = None
        self._last: np.ndarray | None = None
        self.frames_written = 0
        self.quit_requested = False

    def show(self, picture: np.ndarray) -> None:
        """Show/record one picture; a window's q or Esc key sets ``quit_requested``."""
        self._last = picture
        if self.record_path is not None:
            if self._writer is None:
                self.record_path.parent.mkdir(parents=True, exist_ok=True)
                writer = cv2.VideoWriter(str(self.record_path), cv2.VideoWriter_fourcc(*"mp4v"),
                                         self.record_fps, (picture.shape[1], picture.shape[0]))
                if not writer.isOpened():
                    raise OSError(f"cannot open {self.record_path} for recording (OpenCV VideoWriter, mp4v)")
                self._writer = writer
            self._writer.write(picture)
            self.frames_written += 1
        if self.window:
            cv2.imshow(self.WINDOW, picture)
            key = cv2.waitKey(1) & 0xFF
            if key in (ord("q"), 27):
                self.quit_requested = True

    def close(self) -> Path | None:
        """Finish the recording, write the snapshot (returns its path), close the window."""
        if self._writer is not None:
            self._writer.release()
            self._writer = None
        written = None
        if self.snapshot_path is not None and self._last is not None:
            self.snapshot_path.parent.mkdir(parents=True, exist_ok=True)
            if not cv2.imwrite(str(self.snapshot_path), self._last):
                raise OSError(f"cannot write snapshot {self.snapshot_path}")
            written = self.snapshot_path
        if self.window:
            cv2.destroyAllWindows()
        return written
