"""capture.process_source: the phantom renders in a child process and hands frames over, newest wins.

No timing assertions: deadlines only bound how long a test waits.
"""

from __future__ import annotations

import itertools
import os
import signal
import time
from pathlib import Path

import numpy as np
import pytest

from capture.process_source import ProcessSource
from capture.sources import SourceError, open_source


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


def test_frames_match_the_in_process_phantom_and_the_child_goes_on_close() -> None:
    """Frame for frame the same images as the phantom opened in this process, with the child's time
    stamps (increasing, and before the frame is returned), its pixel size and scalar meta."""
    source = ProcessSource("phantom:seed=3,frames=6", realtime=False)
    reference = open_source("phantom:seed=3,frames=6", realtime=False)
    pid = source.pid
    try:
        assert source.stream_name == "phantom" and "phantom sequence seed=3" in source.description
        frames = []
        while (frame := source.read()) is not None:
            frames.append(frame)
            assert frame.t_capture_ns <= time.monotonic_ns()
        expected = list(reference)
        # Unpaced, the child may outrun the reader: every frame read is one of the sequence's, in order.
        assert frames and len(frames) <= 6
        by_z = {round(f.meta["z_mm"], 3): f for f in expected}
        for frame in frames:
            twin = by_z[round(frame.meta["z_mm"], 3)]
            np.testing.assert_array_equal(frame.image, twin.image)
            assert frame.pixel_size_mm == twin.pixel_size_mm
            assert frame.meta["category"] == twin.meta["category"]
        assert [f.index for f in frames] == list(range(len(frames)))
        assert all(b.t_capture_ns > a.t_capture_ns for a, b in itertools.pairwise(frames))
        assert source.dropped_in_child == 6 - len(frames)
        assert source.read() is None  # ended, and stays ended
    finally:
        source.close()
        reference.close()
    assert not _alive(pid)


def test_a_slow_reader_gets_the_newest_frame_never_a_backlog() -> None:
    source = ProcessSource("phantom", fps=60.0, realtime=True)
    try:
        first = source.read()
        assert first is not None
        stall_started = time.monotonic_ns()
        deadline = time.monotonic() + 30
        while source.dropped_in_child < 3:  # the child goes on while nobody reads
            assert time.monotonic() < deadline, "the child made no frames while the reader stalled"
            time.sleep(0.05)
        after = source.read()
        # Not the frame that followed ``first`` (a queue would give that): one made during the stall.
        assert after is not None and after.t_capture_ns > stall_started
        assert after.index == first.index + 1  # numbered as read; the overwritten ones never come
    finally:
        source.close()


def test_bad_options_fail_with_the_sources_message() -> None:
    with pytest.raises(SourceError, match="unknown phantom option"):
        ProcessSource("phantom:colour=blue")


def test_a_killed_child_reads_as_a_failed_source() -> None:
    source = ProcessSource("phantom", fps=30.0, realtime=True)
    try:
        assert source.read() is not None
        os.kill(source.pid, signal.SIGKILL)
        deadline = time.monotonic() + 30
        with pytest.raises(RuntimeError, match="source process"):
            while time.monotonic() < deadline:
                source.read()  # frames already made may still come; then the failure
    finally:
        source.close()


def test_the_child_does_not_outlive_a_killed_parent() -> None:
    """The reading process dies without closing the source (os._exit, as after SIGKILL) while a thread of
    it is waiting for a frame: the child notices and exits by itself."""
    import subprocess
    import sys
    import textwrap

    root = Path(__file__).resolve().parents[1]
    script = textwrap.dedent("""
        import os, threading, time
        from capture.process_source import ProcessSource
        source = ProcessSource("phantom", fps=30.0, realtime=True)
        source.read()
        threading.Thread(target=lambda: [source.read() for _ in iter(int, 1)], daemon=True).start()
        time.sleep(0.3)
        print(source.pid, flush=True)
        os._exit(0)
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=180,
                          env={**os.environ, "PYTHONPATH": str(root)}, cwd=root)
    assert done.returncode == 0, done.stderr
    child = int(done.stdout.strip().splitlines()[-1])
    deadline = time.monotonic() + 30
    while _alive(child):
        assert time.monotonic() < deadline, "the source process outlived its parent"
        time.sleep(0.05)
