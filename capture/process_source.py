"""A frame source that runs in a child process and hands its frames over through shared memory.

Rendering the phantom costs a few milliseconds of CPU per frame, most of it Python and NumPy work that
holds the interpreter lock; in the grading process that time is taken from the grading threads. Here
the source (any ``capture.sources.open_source`` string; the live pipeline uses it for the phantom) runs
in its own process, paced there, and each frame it makes goes into a one-slot shared-memory buffer:

- the child writes the newest frame into the slot and never waits for the reader: a frame the reader
  has not taken before the next one is ready is overwritten and counted in ``dropped_in_child``;
- ``read()`` waits for a frame newer than the last one it returned, copies it out and returns it with
  the child's own capture time stamp (``time.monotonic_ns()``; CLOCK_MONOTONIC is one clock for every
  process of the machine, so latency still counts from when the frame was made).

Frames keep the child's scalar ``meta`` (category, depth, colour fraction, ...); arrays in ``meta`` (the
phantom's ground-truth mask) stay in the child: evaluation that needs them opens the source in-process.
The child exits when the source ends, when ``close()`` is called, or when its parent process is gone.
"""

from __future__ import annotations

import contextlib
import math
import multiprocessing as mp
import os
import pickle
from collections.abc import Iterator
from typing import Any

import numpy as np

from capture.frame import Frame
from capture.frame_source import FrameSource

# Largest frame the slot holds (bytes of 8-bit gray): 4096 x 2160. Pages never written take no memory.
MAX_FRAME_BYTES = 4096 * 2160
MAX_META_BYTES = 1 << 16
START_TIMEOUT_S = 120.0

# Header fields (int64) of the slot: frames written, the newest one's time stamp, index and shape, frames
# overwritten unread, the meta length, the child's state, and the last frame number the reader took.
_SEQ, _T_NS, _INDEX, _HEIGHT, _WIDTH, _DROPPED, _META_LEN, _STATE, _TAKEN = range(9)
_HEADER_FIELDS = 9
_RUNNING, _ENDED, _FAILED = 0, 1, 2


def _small_meta(meta: dict) -> bytes:
    """The picklable non-array part of ``meta``, at most ``MAX_META_BYTES`` (else nothing)."""
    kept = {}
    for key, value in meta.items():
        if isinstance(value, np.ndarray):
            continue
        try:
            pickle.dumps(value)
        except Exception:  # an object that cannot cross processes stays behind
            continue
        kept[key] = value
    data = pickle.dumps(kept, protocol=pickle.HIGHEST_PROTOCOL)
    return data if len(data) <= MAX_META_BYTES else pickle.dumps({})


def _signal(ready) -> None:
    """Wake the reader: ``ready`` is a bounded semaphore of one, so a frame not yet noticed stays one
    wake-up (no count builds up while the reader is busy)."""
    with contextlib.suppress(ValueError):  # already signalled
        ready.release()


@contextlib.contextmanager
def _holding(lock, other_alive) -> Iterator[None]:
    """Hold ``lock`` (shared with the other process); raise ``_PeerGoneError`` instead of waiting for good
    when the other process died, perhaps holding it."""
    while not lock.acquire(timeout=0.5):
        if not other_alive():
            raise _PeerGoneError
    try:
        yield
    finally:
        lock.release()


class _PeerGoneError(Exception):
    """The process on the other side of the slot is gone."""


def _child(spec: str, options: dict, parent_pid: int, lock, ready, header, pixel_size, frame_buffer,
           meta_buffer, stop, status) -> None:  # pragma: no cover - the child (tested through ProcessSource)
    """Open ``spec``, then render frames into the slot until the source ends, ``stop`` or the parent dies."""
    import signal

    # Ctrl-C in a terminal reaches the whole process group: the parent decides when this child stops (its
    # close() sets ``stop``), so the child ignores it instead of dying with a traceback mid-frame.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        import cv2

        cv2.setNumThreads(1)  # one core's worth: the child must not compete with itself either
        from capture.sources import open_source

        source = open_source(spec, **options)
    except Exception as error:
        status.put(("error", f"{type(error).__name__}: {error}"))
        return
    status.put(("ready", source.description, source.stream_name, bool(source.is_live), source.fps))
    frames = np.frombuffer(frame_buffer, dtype=np.uint8)
    metas = np.frombuffer(meta_buffer, dtype=np.uint8)
    state, message = _ENDED, ""

    def parent_alive() -> bool:
        return os.getppid() == parent_pid

    try:
        while not stop.is_set() and parent_alive():
            frame = source.read()
            if frame is None:
                break
            image = frame.image
            if image.size > MAX_FRAME_BYTES:
                state, message = _FAILED, (f"frame {image.shape[1]}x{image.shape[0]} is larger than the "
                                           f"{MAX_FRAME_BYTES} bytes the process source holds")
                break
            meta = _small_meta(frame.meta)
            with _holding(lock, parent_alive):
                if header[_SEQ] > header[_TAKEN]:  # the previous frame was never read: newest wins
                    header[_DROPPED] += 1
                frames[: image.size] = image.reshape(-1)
                metas[: len(meta)] = np.frombuffer(meta, dtype=np.uint8)
                header[_T_NS] = frame.t_capture_ns
                header[_INDEX] = frame.index
                header[_HEIGHT], header[_WIDTH] = image.shape
                header[_META_LEN] = len(meta)
                pixel_size.value = math.nan if frame.pixel_size_mm is None else float(frame.pixel_size_mm)
                header[_SEQ] += 1
            _signal(ready)
    except _PeerGoneError:
        return  # nobody left to tell
    except Exception as error:  # the reader sees the source fail, as it would in-process
        state, message = _FAILED, f"{type(error).__name__}: {error}"
    finally:
        source.close()
    with contextlib.suppress(_PeerGoneError), _holding(lock, parent_alive):
        header[_STATE] = state
    _signal(ready)
    status.put(("end", message))


class ProcessSource(FrameSource):
    """``open_source(spec, **options)`` run in a child process; frames arrive through a one-slot buffer.

    Raises ``capture.sources.SourceError`` (the child's one-line reason) when the child cannot open the
    source, and RuntimeError when it does not start within ``start_timeout_s`` seconds. ``description``,
    ``stream_name``, ``is_live`` and ``fps`` are the child source's. ``dropped_in_child`` counts frames
    the child overwrote before they were read (the reader was busy); a reader that keeps up sees none.
    """

    def __init__(self, spec: str, *, start_timeout_s: float = START_TIMEOUT_S, **options: Any) -> None:
        context = mp.get_context("spawn")  # a fresh interpreter: fork would copy this process's threads
        # A lock for the slot and a semaphore to wake the reader. Not a multiprocessing Condition: its
        # notify waits for every sleeper to wake, so a child would hang for good on a reader that died.
        self._lock = context.Lock()
        self._ready = context.BoundedSemaphore(1)
        self._ready.acquire()  # nothing to read yet
        self._header = context.RawArray("q", _HEADER_FIELDS)
        self._pixel_size = context.RawValue("d", math.nan)
        self._frame_buffer = context.RawArray("B", MAX_FRAME_BYTES)
        self._meta_buffer = context.RawArray("B", MAX_META_BYTES)
        self._stop = context.Event()
        self._status = context.Queue()
        self._process = context.Process(
            target=_child, name="sonograde-source",
            args=(spec, options, os.getpid(), self._lock, self._ready, self._header, self._pixel_size,
                  self._frame_buffer, self._meta_buffer, self._stop, self._status), daemon=True)
        self._process.start()
        self._frames = np.frombuffer(self._frame_buffer, dtype=np.uint8)
        self._metas = np.frombuffer(self._meta_buffer, dtype=np.uint8)
        self._last_seq = 0
        self._end_message: str | None = None
        try:
            reply = self._status.get(timeout=start_timeout_s)
        except Exception as error:
            self._shut_down()
            raise RuntimeError(f"the source process did not start within {start_timeout_s:g} s") from error
        if reply[0] != "ready":
            self._shut_down()
            from capture.sources import SourceError

            raise SourceError(str(reply[1]))
        _, description, stream_name, is_live, fps = reply
        super().__init__(description, is_live=is_live, fps=fps, realtime=False, stream_name=stream_name)

    @property
    def pid(self) -> int | None:
        """The child process's id (None before it started)."""
        return self._process.pid

    @property
    def dropped_in_child(self) -> int:
        with _holding(self._lock, self._process.is_alive):
            return int(self._header[_DROPPED])

    def _next_raw(self) -> tuple[np.ndarray, float | None, dict] | None:  # pragma: no cover - read() is used
        frame = self.read()
        return None if frame is None else (frame.image, frame.pixel_size_mm, frame.meta)

    def read(self) -> Frame | None:
        """The next frame newer than the last one returned (waiting for the child as long as it runs), or
        None when the source ended. Raises RuntimeError with the child's reason when the source failed."""
        if self._closed:
            return None
        header = self._header
        while True:
            with self._slot():
                state = int(header[_STATE])
                if header[_SEQ] > self._last_seq:
                    self._last_seq = int(header[_SEQ])
                    header[_TAKEN] = self._last_seq
                    height, width = int(header[_HEIGHT]), int(header[_WIDTH])
                    image = self._frames[: height * width].reshape(height, width).copy()
                    meta_bytes = self._metas[: int(header[_META_LEN])].tobytes()
                    t_ns, pixel = int(header[_T_NS]), float(self._pixel_size.value)
                    break
            # Nothing new: the source ended or failed, the child died, or the next frame is on its way.
            if state == _FAILED:
                raise RuntimeError(self._child_message() or "the source process failed")
            if state == _ENDED:
                return None
            if not self._ready.acquire(timeout=0.25) and not self._process.is_alive():
                with self._slot():
                    if header[_SEQ] > self._last_seq:
                        continue  # its last frame, written before it died
                raise RuntimeError(f"the source process stopped (exit status {self._process.exitcode})")
        meta = pickle.loads(meta_bytes) if meta_bytes else {}
        pixel_size = None if math.isnan(pixel) else pixel
        frame = Frame(image, self._emitted, t_ns, pixel_size, self.description, meta)
        self._emitted += 1
        return frame

    @contextlib.contextmanager
    def _slot(self) -> Iterator[None]:
        """Hold the slot's lock; RuntimeError if the child died holding it."""
        try:
            with _holding(self._lock, self._process.is_alive):
                yield
        except _PeerGoneError:
            raise RuntimeError(f"the source process stopped (exit status {self._process.exitcode})") from None

    def _child_message(self) -> str:
        """The child's last word (why it failed), waiting briefly for it to arrive."""
        if self._end_message is None:
            try:
                while True:
                    reply = self._status.get(timeout=2.0)
                    if reply[0] == "end":
                        self._end_message = str(reply[1])
                        break
            except Exception:
                self._end_message = ""
        return self._end_message

    def _shut_down(self) -> None:
        self._stop.set()
        self._process.join(5.0)
        if self._process.is_alive():
            self._process.terminate()
            self._process.join(5.0)
        if self._process.is_alive():
            self._process.kill()
            self._process.join(5.0)
        self._status.close()
        self._status.join_thread()

    def _release(self) -> None:
        self._shut_down()


__all__ = ["MAX_FRAME_BYTES", "ProcessSource"]
