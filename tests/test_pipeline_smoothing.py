"""Temporal smoothing and lesion tracking, and the newest-wins handoff."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from sonograde.pipeline import LatestSlot
from sonograde.smoothing import LesionTracker, SmoothingConfig, bbox_iou

CATS = ("3", "4A", "4B", "4C", "5")


def onehot(index: int, strength: float = 0.8) -> np.ndarray:
    p = np.full(5, (1 - strength) / 4)
    p[index] = strength
    return p


def test_bbox_iou(rng):
    x, y, w, h = (float(v) for v in rng.uniform(1, 50, 4))
    assert bbox_iou([x, y, w, h], [x, y, w, h]) == pytest.approx(1.0)
    assert bbox_iou([x, y, w, h], [x + w + 1, y, w, h]) == 0.0
    assert bbox_iou([0, 0, 10, 10], [5, 0, 10, 10]) == pytest.approx(50 / 150)


def test_ema_follows_the_track_and_keeps_category_stable(rng):
    tracker = LesionTracker(CATS, SmoothingConfig(alpha=0.3, hysteresis=0.05))
    box = [100, 80, 40, 30]
    first = tracker.update(True, box, onehot(1))
    assert first.category == "4A" and first.age == 1
    # A flickering sequence: mostly 4A with single 4B frames; the smoothed category must never flip.
    categories = []
    for i in range(40):
        jitter = rng.integers(-2, 3, 4)
        probs = onehot(2) if i % 4 == 3 else onehot(1)
        state = tracker.update(True, (np.array(box) + jitter).tolist(), probs)
        categories.append(state.category)
    assert set(categories) == {"4A"}
    assert state.track_id == first.track_id and state.age == 41
    # A sustained change takes over within a few frames.
    for _ in range(6):
        state = tracker.update(True, box, onehot(3))
    assert state.category == "4C"
    np.testing.assert_allclose(state.probabilities.sum(), 1.0)


def test_track_survives_short_loss_and_resets_after_long_loss():
    tracker = LesionTracker(CATS, SmoothingConfig(max_missed=2))
    box = [10, 10, 20, 20]
    start = tracker.update(True, box, onehot(4))
    assert tracker.update(False, None, None).missed == 1
    assert tracker.update(False, None, None).missed == 2
    assert tracker.update(True, box, onehot(4)).track_id == start.track_id  # bridged
    for _ in range(3):
        state = tracker.update(False, None, None)
    assert state is None  # lost
    assert tracker.update(True, box, onehot(0)).track_id == start.track_id + 1  # new lesion, fresh start


def test_a_different_lesion_starts_a_new_track():
    tracker = LesionTracker(CATS)
    a = tracker.update(True, [0, 0, 20, 20], onehot(4))
    b = tracker.update(True, [200, 200, 20, 20], onehot(0))
    assert b.track_id == a.track_id + 1
    assert b.category == "3"  # nothing inherited from the previous lesion
    np.testing.assert_allclose(b.probabilities, onehot(0))


def test_alpha_one_disables_smoothing(rng):
    tracker = LesionTracker(CATS, SmoothingConfig(alpha=1.0, hysteresis=0.0))
    box = [5, 5, 10, 10]
    for _ in range(5):
        p = rng.dirichlet(np.ones(5))
        state = tracker.update(True, box, p)
        np.testing.assert_allclose(state.probabilities, p)
        assert state.category == CATS[int(np.argmax(p))]


def test_latest_slot_newest_wins_and_counts_drops():
    slot: LatestSlot[int] = LatestSlot()
    assert slot.take(0.0) is None
    for value in range(5):
        slot.put(value)
    assert slot.dropped == 4
    assert slot.take(0.0) == 4
    assert slot.take(0.0) is None
    # A waiting taker wakes up on put and on close.
    got = []
    thread = threading.Thread(target=lambda: got.append(slot.take(5.0)))
    thread.start()
    slot.put(7)
    thread.join(5)
    assert got == [7]
    thread = threading.Thread(target=lambda: got.append(slot.take(5.0)))
    thread.start()
    slot.close()
    thread.join(5)
    assert got == [7, None] and not thread.is_alive()
