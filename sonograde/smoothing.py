"""Temporal stability: follow one lesion across frames and smooth its category.

Per-frame grading flickers (a 4A/4B lesion can alternate frame to frame). The tracker associates each
frame's lesion with the current track by bounding-box overlap (IoU) or, for a lesion that moved fast,
by its centre falling inside the track's box; on a match it updates an exponential moving average of
the five probabilities, and the displayed ("smoothed") category changes only when another category's
smoothed probability beats the current one by a margin (hysteresis). A lesion that does not match, or
``max_missed`` frames in a row without a lesion, ends the track and the smoothing starts over, so a
new lesion never inherits the previous one's grade. The raw per-frame values are untouched (both go
into the message).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class SmoothingConfig:
    """alpha : weight of the newest frame in the EMA (0 < alpha <= 1; 1 disables smoothing). Default
        0.3: at 30 fps a sustained change takes over within ~0.15 s (3 frames), one odd frame moves the
        average by 30 %.
    iou_threshold : minimum bbox IoU to call a lesion the same as the track's (default 0.2).
    max_missed : frames without a lesion that keep the track alive (default 5, ~0.17 s at 30 fps),
        bridging a frame or two where the ROI-CNN loses the lesion.
    hysteresis : a new smoothed category must beat the current one's smoothed probability by this much
        (default 0.05).
    """

    alpha: float = 0.3
    iou_threshold: float = 0.2
    max_missed: int = 5
    hysteresis: float = 0.05

    def __post_init__(self) -> None:
        if not 0.0 < self.alpha <= 1.0:
            raise ValueError(f"alpha must be in (0, 1], got {self.alpha}")
        if self.max_missed < 0 or self.hysteresis < 0:
            raise ValueError("max_missed and hysteresis must be >= 0")


@dataclass(frozen=True)
class TrackState:
    """The track after one update.

    track_id : increases by one for every new track (0, 1, ...).
    age : frames with a lesion matched to this track (1 on the first).
    missed : consecutive frames without a lesion so far (0 when this frame had one).
    probabilities : smoothed probabilities in category order.
    category : smoothed category (with hysteresis).
    """

    track_id: int
    age: int
    missed: int
    probabilities: np.ndarray
    category: str

    def to_json(self) -> dict:
        return {"id": self.track_id, "age": self.age, "missed": self.missed}


def bbox_iou(a: Sequence[float], b: Sequence[float]) -> float:
    """IoU of two ``[x, y, w, h]`` boxes (0 when either is empty)."""
    ax, ay, aw, ah = (float(v) for v in a)
    bx, by, bw, bh = (float(v) for v in b)
    iw = max(0.0, min(ax + aw, bx + bw) - max(ax, bx))
    ih = max(0.0, min(ay + ah, by + bh) - max(ay, by))
    inter = iw * ih
    union = aw * ah + bw * bh - inter
    return inter / union if union > 0 else 0.0


def _centre_inside(inner: Sequence[float], outer: Sequence[float]) -> bool:
    cx, cy = inner[0] + inner[2] / 2.0, inner[1] + inner[3] / 2.0
    return outer[0] <= cx <= outer[0] + outer[2] and outer[1] <= cy <= outer[1] + outer[3]


class LesionTracker:
    """Stateful tracker for one stream (one instance per pipeline; not thread-safe: the stage that owns
    it calls ``update`` once per graded frame, in frame order)."""

    def __init__(self, categories: Sequence[str], config: SmoothingConfig | None = None) -> None:
        self.categories = tuple(categories)
        self.config = config or SmoothingConfig()
        self._next_id = 0
        self.rejected = 0  # frames whose probabilities were not finite (treated as ungraded)
        self._state: TrackState | None = None
        self._bbox: list[float] | None = None

    def reset(self) -> None:
        """Forget the current track (e.g. when the source reconnects: a new scan)."""
        self._state = None
        self._bbox = None

    def _matches(self, bbox: Sequence[float]) -> bool:
        if self._bbox is None:
            return False
        return (bbox_iou(bbox, self._bbox) >= self.config.iou_threshold
                or _centre_inside(bbox, self._bbox) or _centre_inside(self._bbox, bbox))

    def _pick(self, probabilities: np.ndarray, current: str | None) -> str:
        best = int(np.argmax(probabilities))
        if current is None:
            return self.categories[best]
        keep = self.categories.index(current)
        if probabilities[best] > probabilities[keep] + self.config.hysteresis:
            return self.categories[best]
        return current

    def update(self, lesion_found: bool, bbox: Sequence[float] | None,
               probabilities: Sequence[float] | None) -> TrackState | None:
        """Feed one graded frame; return the track state, or None when there is no live track.

        probabilities : the frame's raw probabilities in ``categories`` order (None when not graded).
            Probabilities with NaN or infinity, or outside [0, 1], are never averaged in (one would poison
            the average for the rest of the track): the frame counts as ungraded and in ``rejected``.
        """
        if probabilities is not None:
            values = np.asarray(probabilities, dtype=np.float64)
            if not (np.isfinite(values).all() and (values >= 0).all() and (values <= 1).all()):
                self.rejected += 1
                probabilities = None
        if not lesion_found or bbox is None or probabilities is None:
            if self._state is None:
                return None
            missed = self._state.missed + 1
            if missed > self.config.max_missed:
                self.reset()
                return None
            self._state = TrackState(self._state.track_id, self._state.age, missed,
                                     self._state.probabilities, self._state.category)
            return self._state
        raw = np.asarray(probabilities, dtype=np.float64)
        if raw.shape != (len(self.categories),):
            raise ValueError(f"expected {len(self.categories)} probabilities, got shape {raw.shape}")
        if self._state is not None and self._matches(bbox):
            alpha = self.config.alpha
            smoothed = (1.0 - alpha) * self._state.probabilities + alpha * raw
            self._state = TrackState(self._state.track_id, self._state.age + 1, 0, smoothed,
                                     self._pick(smoothed, self._state.category))
        else:
            self._state = TrackState(self._next_id, 1, 0, raw.copy(), self._pick(raw, None))
            self._next_id += 1
        self._bbox = [float(v) for v in bbox]
        return self._state
