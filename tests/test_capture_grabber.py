"""The latest-frame grabber: newest frame wins, drops counted, live sources reconnected, files end cleanly."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from capture.grabber import LatestFrameGrabber
from capture.sources import FrameSource, SourceDisconnectedError, open_source


class FlakyCamera(FrameSource):
    """A live source that delivers ``fail_after`` frames, then loses its device (raises).

    Frames carry their global sequence number in the pixel values' first row so the test can check order.
    """

    def __init__(self, counter: list[int], fail_after: int | None, period_s: float = 0.002):
        super().__init__("flaky test camera", is_live=True)
        self.counter = counter
        self.fail_after = fail_after
        self.period_s = period_s
        self.delivered = 0

    def _next_raw(self):
        if self.fail_after is not None and self.delivered >= self.fail_after:
            raise SourceDisconnectedError("test camera unplugged")
        time.sleep(self.period_s)
        number = self.counter[0]
        self.counter[0] += 1
        self.delivered += 1
        image = np.zeros((8, 8), np.uint8)
        image[0, :4] = np.frombuffer(np.uint32(number).tobytes(), np.uint8)
        return image, None, {}


def _number(frame) -> int:
    return int(np.frombuffer(frame.image[0, :4].tobytes(), np.uint32)[0])


def test_live_source_failing_midstream_is_reconnected_with_drops_counted_and_order_kept() -> None:
    counter = [0]
    opens: list[float] = []
    outage_s = 0.4

    def open_fn() -> FrameSource:
        opens.append(time.monotonic())
        if len(opens) == 1:
            return FlakyCamera(counter, fail_after=40)
        if len(opens) == 2:  # the device is gone for a while: opening fails
            raise OSError("no such device")
        if opens[-1] - opens[1] < outage_s:
            raise OSError("no such device")
        return FlakyCamera(counter, fail_after=None)

    seen: list[int] = []
    indices: list[int] = []
    states: set[str] = set()
    empty_polls_while_reconnecting = 0
    with LatestFrameGrabber(open_fn, backoff_s=(0.02, 0.1)) as grabber:
        deadline = time.monotonic() + 10
        while len(seen) < 25 or grabber.reconnects < 1 or seen[-1] < 80:
            assert time.monotonic() < deadline, f"grabber stuck: state {grabber.state}, {grabber.last_error}"
            frame = grabber.latest(timeout=0.05)
            state = grabber.state
            states.add(state)
            if frame is None and state == "reconnecting":
                empty_polls_while_reconnecting += 1
            if frame is not None:
                seen.append(_number(frame))
                indices.append(frame.index)
                time.sleep(0.01)  # a consumer slower than the camera: frames get dropped
        assert grabber.thread_name.startswith("sonograde")
    assert grabber.state == "ended"
    assert seen == sorted(seen) and len(set(seen)) == len(seen)  # never an older frame after a newer one
    assert indices == sorted(indices)
    assert grabber.reconnects >= 1 and "reconnecting" in states and "connected" in states
    assert grabber.last_error is not None
    assert "no such device" in grabber.last_error or "unplugged" in grabber.last_error
    assert grabber.dropped > 0
    # Every frame the grabber received was either returned or counted as dropped.
    assert grabber.received == len(seen) + grabber.dropped + (0 if grabber.latest(0) is None else 1)
    # Index gaps are exactly the dropped frames.
    assert indices[-1] + 1 - len(indices) <= grabber.dropped
    # The consumer is not blocked by the outage: its polls time out and return while the grabber reconnects.
    assert empty_polls_while_reconnecting >= 2


def test_file_source_ends_cleanly_and_frames_arrive_in_order(
    tmp_path: Path, rng: np.random.Generator
) -> None:
    for i in range(6):
        cv2.imwrite(str(tmp_path / f"{i}.png"), rng.integers(0, 256, (10, 12), dtype=np.uint8))
    opened = []

    def open_fn() -> FrameSource:
        opened.append(1)
        return open_source(str(tmp_path), fps=50.0, realtime=True)

    got = []
    with LatestFrameGrabber(open_fn) as grabber:
        while True:
            frame = grabber.latest(timeout=2.0)
            if frame is None:
                break
            got.append(frame)
        assert grabber.state == "ended"
    assert len(opened) == 1  # files are not reopened
    indices = [f.meta["source_index"] for f in got]
    assert indices == sorted(set(indices)) and indices[-1] == 5  # in order, up to the last frame
    # A consumer this fast normally sees all six; on a loaded machine it may miss some, but then
    # they are counted.
    assert len(got) + grabber.dropped == 6
    assert grabber.reconnects == 0 and grabber.last_error is None


def test_latest_times_out_without_frames_and_never_returns_a_frame_twice() -> None:
    gate, done = threading.Event(), threading.Event()

    class Gated(FrameSource):
        """Delivers one frame each time the test opens the gate."""

        def __init__(self) -> None:
            super().__init__("gated", is_live=True)

        def _next_raw(self):
            while not gate.wait(0.01):
                if done.is_set():
                    return None
            gate.clear()
            return np.full((4, 4), 7, np.uint8), 0.1, {}

    with LatestFrameGrabber(Gated) as grabber:
        assert grabber.latest(timeout=0.05) is None
        gate.set()
        frame = grabber.latest(timeout=2.0)
        assert frame is not None and frame.pixel_size_mm == 0.1
        assert grabber.latest(timeout=0.05) is None  # no new frame: nothing, not the old one again
        done.set()


def test_open_failure_without_reconnect_ends_with_the_error() -> None:
    def open_fn() -> FrameSource:
        raise OSError("capture card missing")

    with LatestFrameGrabber(open_fn, reconnect=False) as grabber:
        assert grabber.latest(timeout=2.0) is None
        deadline = time.monotonic() + 2
        while grabber.state != "ended" and time.monotonic() < deadline:
            time.sleep(0.01)
        assert grabber.state == "ended"
        assert "capture card missing" in (grabber.last_error or "")


def test_bad_backoff_is_refused() -> None:
    with pytest.raises(ValueError, match="backoff"):
        LatestFrameGrabber(lambda: None, backoff_s=(0.0, 1.0))  # type: ignore[arg-type, return-value]
