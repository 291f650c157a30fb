"""A ZeroMQ subscriber for Sonograde messages (the overlay and the benchmark use it; any display in any
language can do the same, see ``docs/messages.md``).

It subscribes to the ``sonograde.`` topic prefix, decodes and validates each message, and skips what
it does not understand (garbage, unknown topics, a newer schema version), logging each kind of problem
once and counting it in ``invalid``, so a newer publisher or a stray sender never stops a display.
"""

from __future__ import annotations

import logging
import time
from collections import Counter

import zmq

from sonograde.messages import TOPIC_PREFIX, Message, MessageError, decode
from sonograde.publisher import DEFAULT_ENDPOINT

LOG = logging.getLogger("sonograde.subscriber")


class Subscriber:
    """A connected SUB socket.

    endpoint : where the publisher is bound (default ``tcp://127.0.0.1:5555``).
    rcvhwm : receive high-water mark in messages. A display wants few (default 4: it shows the newest);
        a benchmark that must see every message sets more (e.g. 10000).
    with_frames : decode the frame part (False: header only, for latency measurement).
    """

    def __init__(self, endpoint: str = DEFAULT_ENDPOINT, *, rcvhwm: int = 4, with_frames: bool = True,
                 context: zmq.Context | None = None, logger: logging.Logger | None = None) -> None:
        self.endpoint = endpoint
        self.with_frames = with_frames
        self._log = logger or LOG
        self._own_context = context is None
        self._context = context or zmq.Context()
        self._socket = self._context.socket(zmq.SUB)
        self._socket.setsockopt(zmq.RCVHWM, rcvhwm)
        self._socket.setsockopt(zmq.LINGER, 0)
        self._socket.setsockopt(zmq.SUBSCRIBE, TOPIC_PREFIX)
        self._socket.connect(endpoint)
        self.received = 0
        self.invalid: Counter[str] = Counter()
        self._closed = False

    def _handle_invalid(self, error: MessageError) -> None:
        if self.invalid[error.kind] == 0:
            self._log.warning("ignoring a message this reader does not understand (%s); "
                              "further messages of this kind are counted silently", error)
        self.invalid[error.kind] += 1

    def recv(self, timeout_ms: int | None = 1000) -> Message | None:
        """Next valid message, or None when nothing valid arrived within ``timeout_ms``
        (None = wait forever). Invalid messages are skipped (logged once per kind)."""
        deadline = None if timeout_ms is None else time.monotonic() + timeout_ms / 1000.0
        while True:
            wait = -1 if deadline is None else max(0, int((deadline - time.monotonic()) * 1000))
            if not self._socket.poll(wait, zmq.POLLIN):
                return None
            parts = self._socket.recv_multipart(copy=True)
            t_receive_ns = time.monotonic_ns()
            try:
                message = decode(parts, t_receive_ns=t_receive_ns, with_frame=self.with_frames)
            except MessageError as error:
                self._handle_invalid(error)
                if deadline is not None and time.monotonic() >= deadline:
                    return None
                continue
            self.received += 1
            return message

    def recv_latest(self, timeout_ms: int | None = 1000) -> list[Message]:
        """Wait up to ``timeout_ms`` for a message, then drain whatever else is queued; return all valid
        ones in arrival order (a display draws the last result and reads the status messages)."""
        first = self.recv(timeout_ms)
        if first is None:
            return []
        messages = [first]
        while True:
            more = self.recv(0)
            if more is None:
                return messages
            messages.append(more)

    def close(self) -> None:
        """Close the socket (and the context if this subscriber created it). Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._socket.close(linger=0)
        if self._own_context:
            self._context.term()

    def __enter__(self) -> Subscriber:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
