"""A ZeroMQ subscriber for Sonograde messages (the overlay and the benchmark use it; any display in any
language can do the same, see ``docs/messages.md``).

It subscribes to the ``sonograde.`` topic prefix, decodes and validates each message, and skips what
it does not understand (garbage, unknown topics, a newer schema version), logging each kind of problem
once and counting it in ``invalid``, so a newer publisher or a stray sender never stops a display.

Size limits: ``ZMQ_MAXMSGSIZE`` (``max_message_bytes``, default 18 MB: a 4096 x 4096 raw frame plus room
for the header) makes libzmq drop a connection that sends a larger message part before it is stored;
a frame whose header declares more than ``max_frame_pixels`` pixels (a small JPEG can claim a huge
size) is refused before it is decoded. Both are counted in ``invalid`` as "frame too large". libzmq
does not reconnect a connection it dropped for a message over the limit, so the subscriber watches its
socket's disconnections (a ZeroMQ socket monitor) and connects again itself, at most once per
``RECONNECT_INTERVAL_S`` (``reconnects`` counts it): a display never stays deaf after one bad message.

With ``curve=DIR`` the socket speaks CURVE with the display keys in DIR (``client.key_secret``,
``server.key``; see ``sonograde.curve``): a publisher started with ``--curve`` talks to nothing else.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections import Counter

import zmq

from sonograde.messages import TOPIC_PREFIX, Message, MessageError, decode
from sonograde.publisher import DEFAULT_ENDPOINT

LOG = logging.getLogger("sonograde.subscriber")
# The largest legitimate frame: 4096 x 4096 8-bit pixels (a 4K capture card, a large DICOM).
DEFAULT_MAX_FRAME_PIXELS = 4096 * 4096
# Per message part: that frame raw (16.8 MB), plus room for a header or a CURVE envelope.
DEFAULT_MAX_MESSAGE_BYTES = 18_000_000
# Reconnect after a dropped connection no more often than this: a peer that fails every handshake (a
# wrong key) or sends only oversized messages must not be hammered.
RECONNECT_INTERVAL_S = 1.0


class Subscriber:
    """A connected SUB socket.

    endpoint : where the publisher is bound (default ``tcp://127.0.0.1:5555``).
    rcvhwm : receive high-water mark in messages. A display wants few (default 4: it shows the newest);
        a benchmark that must see every message sets more (e.g. 10000).
    with_frames : decode the frame part (False: header only, for latency measurement).
    curve : keys folder for CURVE (``client.key_secret`` and ``server.key``), or None for plain TCP.
    max_message_bytes : ZMQ_MAXMSGSIZE per message part (default ``DEFAULT_MAX_MESSAGE_BYTES``).
    max_frame_pixels : refuse frames whose header declares more pixels, before decoding them.
    """

    def __init__(self, endpoint: str = DEFAULT_ENDPOINT, *, rcvhwm: int = 4, with_frames: bool = True,
                 curve: str | os.PathLike | None = None,
                 max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
                 max_frame_pixels: int = DEFAULT_MAX_FRAME_PIXELS,
                 context: zmq.Context | None = None, logger: logging.Logger | None = None) -> None:
        if max_message_bytes < 4096 or max_frame_pixels < 1:
            raise ValueError(f"max_message_bytes must be >= 4096 and max_frame_pixels >= 1, got "
                             f"{max_message_bytes} and {max_frame_pixels}")
        self.endpoint = endpoint
        self.with_frames = with_frames
        self.max_message_bytes = int(max_message_bytes)
        self.max_frame_pixels = int(max_frame_pixels)
        self._log = logger or LOG
        self._own_context = context is None
        self._context = context or zmq.Context()
        self._socket = self._context.socket(zmq.SUB)
        try:
            if curve:
                from sonograde.curve import apply_client_curve

                apply_client_curve(self._socket, curve)
            self._socket.setsockopt(zmq.RCVHWM, rcvhwm)
            self._socket.setsockopt(zmq.LINGER, 0)
            self._socket.setsockopt(zmq.MAXMSGSIZE, self.max_message_bytes)
            self._socket.setsockopt(zmq.SUBSCRIBE, TOPIC_PREFIX)
            self._socket.connect(endpoint)
        except Exception:
            self._socket.close(0)
            if self._own_context:
                self._context.term()
            raise
        self.encrypted = bool(curve)
        self.received = 0
        self.invalid: Counter[str] = Counter()
        self.reconnects = 0
        self._reconnect_due: float | None = None  # when a dropped connection is to be made again
        self._last_reconnect = 0.0
        self._monitor = self._socket.get_monitor_socket(zmq.EVENT_DISCONNECTED)
        self._poller = zmq.Poller()
        self._poller.register(self._socket, zmq.POLLIN)
        self._poller.register(self._monitor, zmq.POLLIN)
        self._closed = False

    def _watch_connection(self) -> None:
        """Note disconnections (from the monitor) and reconnect when one is due."""
        while self._monitor.poll(0):
            self._monitor.recv_multipart()  # only EVENT_DISCONNECTED is monitored
            if self._reconnect_due is None:
                self._reconnect_due = max(time.monotonic(), self._last_reconnect + RECONNECT_INTERVAL_S)
        if self._reconnect_due is None or time.monotonic() < self._reconnect_due:
            return
        if self._socket.getsockopt(zmq.EVENTS) & zmq.POLLIN:
            return  # read what arrived before the drop first: disconnecting could discard it
        # libzmq reconnects after a network failure by itself, but not after a protocol error (a message
        # over MAXMSGSIZE): disconnect and connect again, which is harmless in the first case.
        with contextlib.suppress(zmq.ZMQError):
            self._socket.disconnect(self.endpoint)
        self._socket.connect(self.endpoint)
        self.reconnects += 1
        self._last_reconnect = time.monotonic()
        self._reconnect_due = None

    def _handle_invalid(self, error: MessageError) -> None:
        if self.invalid[error.kind] == 0:
            self._log.warning("ignoring a message this reader does not understand (%s); "
                              "further messages of this kind are counted silently", error)
        self.invalid[error.kind] += 1

    def _check_frame_size(self, parts: list[bytes]) -> None:
        """Refuse a frame part over the byte limit before anything is decoded (``decode`` refuses a
        declared shape over ``max_frame_pixels`` before decoding the frame)."""
        if len(parts) != 3:
            return
        if len(parts[2]) > self.max_message_bytes:
            raise MessageError("frame too large", f"{len(parts[2])} bytes > {self.max_message_bytes}")

    def recv(self, timeout_ms: int | None = 1000) -> Message | None:
        """Next valid message, or None when nothing valid arrived within ``timeout_ms``
        (None = wait forever). Invalid messages are skipped (logged once per kind)."""
        deadline = None if timeout_ms is None else time.monotonic() + timeout_ms / 1000.0
        while True:
            self._watch_connection()
            wait = None if deadline is None else max(0, int((deadline - time.monotonic()) * 1000))
            if self._reconnect_due is not None:  # wake up when the reconnect is due
                due = max(0, int((self._reconnect_due - time.monotonic()) * 1000) + 1)
                wait = due if wait is None else min(wait, due)
            ready = dict(self._poller.poll(wait))
            if self._socket not in ready:
                if deadline is not None and time.monotonic() >= deadline:
                    return None
                continue
            parts = self._socket.recv_multipart(copy=True)
            t_receive_ns = time.monotonic_ns()
            try:
                self._check_frame_size(parts)
                message = decode(parts, t_receive_ns=t_receive_ns, with_frame=self.with_frames,
                                 max_frame_pixels=self.max_frame_pixels)
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
        with contextlib.suppress(zmq.ZMQError):
            self._socket.disable_monitor()
        self._monitor.close(linger=0)
        self._socket.close(linger=0)
        if self._own_context:
            self._context.term()

    def __enter__(self) -> Subscriber:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
