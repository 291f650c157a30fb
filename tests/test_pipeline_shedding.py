"""Graceful degradation: a slow stage makes the pipeline shed frames, never queue them, and it never grades
a stale frame. Real grader (small dev ONNX models), real grabber; one stage is slowed by a sleep, as when
another process takes its core.

No timing assertions: the tests check counts and ordering; deadlines only bound how long a test waits.
"""

from __future__ import annotations

import itertools
import threading
import time

import numpy as np
import pytest

from capture.sources import FrameSource
from engine.backends.dev_models import make_grader_model, make_roi_model, synthetic_frame
from engine.grader import TwoStageGrader
from sonograde.pipeline import LatestSlot, Pipeline, PipelineConfig

DEADLINE_S = 60.0


@pytest.fixture(scope="module")
def grader(tmp_path_factory):
    directory = tmp_path_factory.mktemp("dev_models")
    make_roi_model(directory / "roi_cnn.onnx")
    make_grader_model(directory / "g_cnn.onnx")
    grader = TwoStageGrader.from_models_dir(directory)
    grader.warm_up()
    return grader


class FastLive(FrameSource):
    """A capture-card-like source delivering pre-drawn lesion frames at ``fps`` (faster than any slowed
    stage), endlessly."""

    def __init__(self, images: list[np.ndarray], fps: float = 120.0) -> None:
        super().__init__("fast live", is_live=True)
        self.images, self.period, self.count = images, 1.0 / fps, 0

    def _next_raw(self):
        time.sleep(self.period)
        image = self.images[self.count % len(self.images)]
        self.count += 1
        return image, 0.2, {}


class SlowStage:
    """The real grader with one stage slowed down by ``delay_s`` (a sleep: the stage's thread waits as
    it would for a core another process holds). Counts the frames inside each stage at once."""

    def __init__(self, grader: TwoStageGrader, slow: str, delay_s: float) -> None:
        self._grader, self.slow, self.delay_s = grader, slow, delay_s
        self.categories, self.model_ids = grader.categories, grader.model_ids
        self._lock = threading.Lock()
        self.inside = dict.fromkeys(("locate", "refine", "classify"), 0)
        self.most_inside = dict.fromkeys(("locate", "refine", "classify"), 0)

    def _run(self, stage: str, *args, **kwargs):
        with self._lock:
            self.inside[stage] += 1
            self.most_inside[stage] = max(self.most_inside[stage], self.inside[stage])
        try:
            if stage == self.slow:
                time.sleep(self.delay_s)
            return getattr(self._grader, stage)(*args, **kwargs)
        finally:
            with self._lock:
                self.inside[stage] -= 1

    def locate(self, image):
        return self._run("locate", image)

    def refine(self, image, roi):
        return self._run("refine", image, roi)

    def classify(self, image, refined, **kwargs):
        return self._run("classify", image, refined, **kwargs)


def _wait_until(predicate, what: str) -> None:
    end = time.monotonic() + DEADLINE_S
    while not predicate():
        if time.monotonic() > end:
            raise AssertionError(f"timed out after {DEADLINE_S} s waiting for {what}")
        time.sleep(0.01)


@pytest.mark.parametrize("slow", ["locate", "refine", "classify"])
def test_a_slow_stage_sheds_frames_and_never_queues_them(grader, rng, slow):
    images = [synthetic_frame(rng, 240, 320)[0] for _ in range(4)]
    slowed = SlowStage(grader, slow, delay_s=0.06)
    headers: list[dict] = []
    config = PipelineConfig(publish=None, send_frames=False)
    pipeline = Pipeline(slowed, lambda: FastLive(images), config,
                        on_result=lambda header, frame: headers.append(header))
    backlog = []  # frames taken but neither finished nor shed, sampled while running
    with pipeline:
        pipeline.start(warm_up=False)

        def sample() -> bool:
            stats = pipeline.stats()
            backlog.append(stats.frames_taken - stats.graded - stats.not_gradeable
                           - stats.dropped["refine"] - stats.dropped["classify"] - stats.errors)
            return stats.published >= 12

        _wait_until(sample, "12 results")
    stats = pipeline.stats()
    assert stats.errors == 0 and stats.stale_graded == 0
    # Shed, at the place before the slow stage (the grabber for a slow locate).
    place = {"locate": "source", "refine": "refine", "classify": "classify"}[slow]
    assert stats.dropped[place] > 0, stats.dropped
    # Never queued: at most one frame in each stage and one in each slot between them (3 + 2), however
    # long it ran; one more for counters read a moment apart. A queue would hold dozens by now.
    assert max(backlog) <= 6, max(backlog)
    assert all(count <= 1 for count in slowed.most_inside.values()), slowed.most_inside
    # Never stale: what was graded and published is in capture order, each newer than the one before.
    captures = [h["t_capture_ns"] for h in headers]
    assert all(b > a for a, b in itertools.pairwise(captures))
    assert [h["seq"] for h in headers] == list(range(len(headers)))


def test_the_slot_holds_one_item_and_the_newest_wins():
    slot: LatestSlot[int] = LatestSlot()
    for item in range(1, 101):
        slot.put(item)
    assert slot.dropped == 99
    assert slot.take(0.0) == 100
    assert slot.take(0.0) is None  # nothing queued behind it
