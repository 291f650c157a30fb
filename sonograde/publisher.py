"""The ZeroMQ publisher: sends encoded messages without ever waiting for a subscriber.

The socket is an XPUB (a PUB that also reports subscriptions, which lets a benchmark wait until its
subscriber is connected instead of sleeping). Its options are set explicitly because the defaults suit
throughput, not a live display:

- ``SNDHWM`` = 2 messages per subscriber: a display only wants the newest result; a deeper queue would
  only deliver stale frames late. At the high-water mark a PUB socket drops, it never blocks.
- ``LINGER`` = 0: closing never waits to flush messages to a subscriber that is gone.
- ``IMMEDIATE`` = 1: queue only to completed connections.
- ``send_multipart(flags=NOBLOCK)``: should the socket ever report EAGAIN, the message is dropped and
  counted (``dropped``); grading never waits on the network.

- ``MAXMSGSIZE`` = ``max_incoming_bytes`` (default 1 KiB): a publisher only ever receives subscriptions
  (a topic prefix such as ``sonograde.``, a few bytes); a peer that sends more is disconnected by libzmq
  before the message is stored, so a huge subscription cannot grow the publisher's memory or stall it.

Binds ``tcp://127.0.0.1:5555`` by default. Results are patient data: a non-loopback address needs
``allow_remote=True``, and ``allow_remote`` needs CURVE (``curve=DIR``, keys from ``sonograde keys``):
the stream leaves this machine only encrypted, and only to displays whose keys are authorized.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

import zmq

DEFAULT_ENDPOINT = "tcp://127.0.0.1:5555"
# A subscription is a topic prefix ("sonograde." is 10 bytes); 1 KiB leaves room for any sane topic.
DEFAULT_MAX_INCOMING_BYTES = 1024
_LOOPBACK = {"127.0.0.1", "localhost", "::1", "[::1]"}


class EndpointError(RuntimeError):
    """The endpoint cannot be bound (malformed, in use, or not loopback without allow_remote)."""


@dataclass(frozen=True)
class PublisherConfig:
    """Publisher settings.

    endpoint : ZeroMQ endpoint to bind (``tcp://HOST:PORT``, ``tcp://127.0.0.1:*`` for a free port,
        ``ipc:///path``). Default ``tcp://127.0.0.1:5555``.
    sndhwm : send high-water mark in messages per subscriber (default 2).
    linger_ms : linger on close in ms (default 0).
    immediate : ZMQ_IMMEDIATE (default True).
    allow_remote : allow binding a non-loopback TCP address (default False); needs ``curve``.
    curve : keys folder (``sonograde keys --out DIR``): encrypt with the server key and let in only the
        authorized display keys (ZAP). None = plain TCP (loopback only).
    max_incoming_bytes : ZMQ_MAXMSGSIZE, the largest message a subscriber may send (its subscriptions);
        a peer that sends more is disconnected (default 1 KiB).
    """

    endpoint: str = DEFAULT_ENDPOINT
    sndhwm: int = 2
    linger_ms: int = 0
    immediate: bool = True
    allow_remote: bool = False
    curve: str | os.PathLike | None = None
    max_incoming_bytes: int = DEFAULT_MAX_INCOMING_BYTES


REMOTE_NEEDS_CURVE = (
    "--allow-remote needs --curve DIR: results are patient data and leave this machine only encrypted, "
    "to authorized displays; make keys with `sonograde keys --out DIR` (see docs/security.md)"
)


def check_endpoint(endpoint: str, allow_remote: bool = False, curve: str | os.PathLike | None = None) -> None:
    """Raise EndpointError when ``endpoint`` is malformed, binds beyond this machine without leave, or
    leave is asked (``allow_remote``) without CURVE keys."""
    if allow_remote and not curve:
        raise EndpointError(REMOTE_NEEDS_CURVE)
    scheme = endpoint.split("://", 1)[0] if "://" in endpoint else ""
    if scheme not in ("tcp", "ipc", "inproc"):
        raise EndpointError(f"endpoint {endpoint!r} must look like tcp://127.0.0.1:5555 or ipc:///tmp/sono.ipc")
    if scheme != "tcp":
        return
    parts = urlsplit(endpoint)
    host = parts.hostname or ""
    try:
        port = parts.port
    except ValueError:
        port = None
    if not host or (port is None and not endpoint.endswith(":*")):
        raise EndpointError(f"endpoint {endpoint!r} needs a host and a port, e.g. tcp://127.0.0.1:5555")
    if host not in _LOOPBACK and not allow_remote:
        raise EndpointError(
            f"endpoint {endpoint!r} is reachable from other machines; results are patient data, so "
            "Sonograde binds to 127.0.0.1 unless you pass --allow-remote --curve DIR"
        )


def is_loopback_endpoint(endpoint: str) -> bool:
    """True for ``ipc://``/``inproc://`` endpoints and TCP on a loopback host (127.0.0.1, localhost, ::1)."""
    if not endpoint.startswith("tcp://"):
        return True
    return (urlsplit(endpoint).hostname or "") in _LOOPBACK


class Publisher:
    """A bound XPUB socket. Use from one thread at a time (ZeroMQ sockets are not thread-safe); it may be
    created in one thread and handed to another before use."""

    def __init__(self, config: PublisherConfig | None = None, context: zmq.Context | None = None) -> None:
        self.config = config or PublisherConfig()
        check_endpoint(self.config.endpoint, self.config.allow_remote, self.config.curve)
        if self.config.max_incoming_bytes < 64:
            raise ValueError(f"max_incoming_bytes must be >= 64, got {self.config.max_incoming_bytes}")
        self._own_context = context is None
        self._context = context or zmq.Context()
        self._curve = None
        if self.config.curve:
            from sonograde.curve import ServerCurve

            try:  # before the socket exists: ZAP must be listening when the first peer connects
                self._curve = ServerCurve(self.config.curve, self._context)
            except Exception:
                if self._own_context:
                    self._context.term()
                raise
        self._socket = self._context.socket(zmq.XPUB)
        self._socket.setsockopt(zmq.SNDHWM, self.config.sndhwm)
        self._socket.setsockopt(zmq.LINGER, self.config.linger_ms)
        self._socket.setsockopt(zmq.IMMEDIATE, 1 if self.config.immediate else 0)
        self._socket.setsockopt(zmq.XPUB_VERBOSE, 1)  # report every subscription, not only the first
        self._socket.setsockopt(zmq.MAXMSGSIZE, int(self.config.max_incoming_bytes))
        if self._curve is not None:
            self._curve.apply(self._socket)
        try:
            self._socket.bind(self.config.endpoint)
        except zmq.ZMQError as error:
            self._socket.close(0)
            self._stop_curve()
            if self._own_context:
                self._context.term()
            hint = (" (another `sonograde run` is probably publishing there; stop it or pass "
                    "--publish tcp://127.0.0.1:OTHER_PORT)") if error.errno == zmq.EADDRINUSE else ""
            raise EndpointError(f"cannot bind {self.config.endpoint}: {error}{hint}") from None
        self.endpoint: str = self._socket.getsockopt_string(zmq.LAST_ENDPOINT)
        self.encrypted = self._curve is not None  # CURVE with ZAP authentication
        self.sent = 0
        self.dropped = 0
        self.subscriptions = 0
        self._closed = False

    def send(self, parts: list[bytes]) -> bool:
        """Send one multipart message without blocking; return False (and count it) if it was dropped."""
        try:
            self._socket.send_multipart(parts, flags=zmq.NOBLOCK, copy=len(parts[-1]) < 65536)
        except zmq.Again:
            self.dropped += 1
            return False
        self.sent += 1
        return True

    def poll_subscriptions(self) -> int:
        """Drain pending (un)subscription notices; return the number of subscribe notices seen so far."""
        while self._socket.getsockopt(zmq.EVENTS) & zmq.POLLIN:
            try:
                notice = self._socket.recv(zmq.NOBLOCK)
            except zmq.Again:
                break
            if notice[:1] == b"\x01":
                self.subscriptions += 1
        return self.subscriptions

    def wait_for_subscriber(self, timeout_s: float = 5.0) -> bool:
        """Block up to ``timeout_s`` until at least one subscription arrived (for benchmarks and tests)."""
        deadline = time.monotonic() + timeout_s
        while self.poll_subscriptions() == 0:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            self._socket.poll(min(100, max(1, int(remaining * 1000))), zmq.POLLIN)
        return True

    def close(self) -> None:
        """Close the socket (linger 0) and the context if this publisher created it. Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._socket.close(linger=0)
        self._stop_curve()
        if self._own_context:
            self._context.term()

    def _stop_curve(self) -> None:
        if self._curve is not None:
            self._curve.stop()
            self._curve = None

    def __enter__(self) -> Publisher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
