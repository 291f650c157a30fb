"""A background grabber that always hands the consumer the newest frame, reconnecting live sources.

One daemon thread reads the source as fast as it delivers and keeps only the newest frame in a one-slot
buffer; a frame the consumer did not take before the next arrived is counted in ``dropped``. The
consumer calls ``latest(timeout)`` and gets the newest frame it has not seen, never an older one after a
newer one, or None on timeout; it is never blocked by the source (a slow or reconnecting device only
makes ``latest`` time out).

Frames leave the grabber re-numbered: ``index`` counts every frame the grabber received (so gaps in the
indices the consumer sees are exactly the dropped frames, across reconnections too); the source's own
index is kept in ``meta["source_index"]`` and the connection number in ``meta["connection"]``.

A live source (``is_live``: capture devices) that fails to open, raises or ends is reopened with
exponential backoff (``backoff_s`` = (first, maximum) seconds) while ``state`` says "reconnecting"; a file
source that ends (or fails) ends the grabber (``state`` "ended", ``last_error`` set if it failed).
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable

from capture.frame import Frame
from capture.frame_source import FrameSource

STATES = ("connecting", "connected", "reconnecting", "ended")


class LatestFrameGrabber:
    """Read ``open_fn()``'s frames in a background thread; ``latest()`` returns the newest one.

    ``reconnect`` (default True) reopens live sources after failures; ``backoff_s`` is the (first,
    maximum) wait between attempts, doubling each failure. Use as a context manager or call
    ``start()``/``stop()``.
    """

    def __init__(
        self,
        open_fn: Callable[[], FrameSource],
        *,
        reconnect: bool = True,
        backoff_s: tuple[float, float] = (0.1, 2.0),
        name: str = "sonograde-grabber",
    ):
        if backoff_s[0] <= 0 or backoff_s[1] < backoff_s[0]:
            raise ValueError(f"backoff_s must be (first > 0, maximum >= first); got {backoff_s}")
        self._open_fn = open_fn
        self.reconnect = reconnect
        self.backoff_s = (float(backoff_s[0]), float(backoff_s[1]))
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._slot: Frame | None = None
        self._slot_taken = True
        self._received = 0
        self._last_returned = -1
        self._state = "connecting"
        self.dropped = 0
        self.reconnects = 0
        self.last_error: str | None = None
        self.description = ""
        self._source: FrameSource | None = None

    # ------------------------------------------------------------------ consumer side

    @property
    def state(self) -> str:
        """ "connecting", "connected", "reconnecting" or "ended"."""
        with self._cond:
            return self._state

    @property
    def thread_name(self) -> str:
        """Name of the background thread (shows in profilers and thread dumps)."""
        return self._thread.name

    @property
    def skipped(self) -> int:
        """Unreadable files the current source skipped (``FrameSource.skipped``; 0 for devices)."""
        return int(getattr(self._source, "skipped", 0) or 0)

    @property
    def received(self) -> int:
        """Frames received from the source(s) so far."""
        with self._cond:
            return self._received

    def latest(self, timeout: float | None = None) -> Frame | None:
        """The newest frame not yet returned; waits up to ``timeout`` s (None: until one comes or the end).

        Returns None on timeout, or at once when the grabber has ended and holds nothing new.
        """
        with self._cond:
            ready = self._cond.wait_for(lambda: not self._slot_taken or self._state == "ended", timeout)
            if not ready or self._slot_taken or self._slot is None:
                return None
            frame = self._slot
            self._slot_taken = True
            self._last_returned = frame.index
            return frame

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> LatestFrameGrabber:
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Ask the thread to stop, close the source and wait up to ``timeout`` s for it."""
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        if self._thread.is_alive():
            self._thread.join(timeout)
        with self._cond:
            self._state = "ended"
            self._cond.notify_all()

    def __enter__(self) -> LatestFrameGrabber:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------------ producer side

    def _set_state(self, state: str) -> None:
        with self._cond:
            self._state = state
            self._cond.notify_all()

    def _publish(self, frame: Frame, connection: int) -> None:
        with self._cond:
            if not self._slot_taken:
                self.dropped += 1
            meta = {**frame.meta, "source_index": frame.index, "connection": connection}
            self._slot = dataclasses.replace(frame, index=self._received, meta=meta)
            self._received += 1
            self._slot_taken = False
            self._cond.notify_all()

    def _run(self) -> None:
        backoff = self.backoff_s[0]
        connection = 0
        was_connected = False
        while not self._stop.is_set():
            try:
                source = self._open_fn()
            except Exception as error:  # any failure to open counts; the message tells the user why
                self.last_error = f"{type(error).__name__}: {error}"
                if not self.reconnect:
                    break
                self._set_state("reconnecting" if was_connected else "connecting")
                self._stop.wait(backoff)
                backoff = min(backoff * 2, self.backoff_s[1])
                continue
            if was_connected:
                self.reconnects += 1
            was_connected = True
            self._source = source
            self.description = source.description
            backoff = self.backoff_s[0]
            self._set_state("connected")
            failed = False
            try:
                for frame in source:
                    if self._stop.is_set():
                        break
                    self._publish(frame, connection)
            except Exception as error:  # a live device may fail in many ways; all mean "reconnect"
                self.last_error = f"{type(error).__name__}: {error}"
                failed = True
            finally:
                source.close()
            connection += 1
            if self._stop.is_set():
                break
            if not (source.is_live and self.reconnect):
                if not failed:
                    self.last_error = None
                break
            # A live source that ended or failed: try again after the backoff.
            self._set_state("reconnecting")
            if not failed:
                self.last_error = "source ended"
            self._stop.wait(backoff)
            backoff = min(backoff * 2, self.backoff_s[1])
        self._set_state("ended")


__all__ = ["STATES", "LatestFrameGrabber"]
