"""Message schema v1: encode/decode round trips, validation, and a subscriber that survives garbage."""

from __future__ import annotations

import json
import logging
import time

import numpy as np
import pytest
import zmq

from sonograde import RESEARCH_USE_ONLY
from sonograde.messages import (
    RESULT_TOPIC,
    SCHEMA_VERSION,
    STATUS_TOPIC,
    MessageError,
    decode,
    encode,
    encode_frame,
    polygon_to_json,
)
from sonograde.publisher import EndpointError, Publisher, PublisherConfig, check_endpoint
from sonograde.subscriber import Subscriber


def result_header(rng: np.random.Generator, shape: tuple[int, int] = (60, 80)) -> dict:
    """A plausible result header with fresh random values."""
    probs = rng.dirichlet(np.ones(5))
    names = ("3", "4A", "4B", "4C", "5")
    x, y = int(rng.integers(0, 40)), int(rng.integers(0, 30))
    return {
        "seq": int(rng.integers(0, 1000)), "frame_index": int(rng.integers(0, 10**6)),
        "t_capture_ns": time.monotonic_ns(), "t_publish_ns": time.monotonic_ns(), "source": "test",
        "source_state": "connected", "image_size": list(shape),
        "pixel_size_mm": float(rng.uniform(0.05, 0.2)),
        "lesion_found": True, "roi_contour": [[x, y], [x + 20, y], [x + 20, y + 15], [x, y + 15]],
        "refined_contour": [[x + 2, y + 2], [x + 18, y + 2], [x + 18, y + 13]],
        "bbox": [x, y, 20, 15], "area_px": 300.0, "area_mm2": 3.0,
        "category": names[int(np.argmax(probs))],
        "probabilities": dict(zip(names, map(float, probs), strict=True)),
        "smoothed_category": "4A", "smoothed_probabilities": dict(zip(names, map(float, probs), strict=True)),
        "track": {"id": 0, "age": 1, "missed": 0}, "timings_ms": {"locate": 1.0}, "model_ids": {"roi": "r"},
        "dropped": {"total": 0}, "stale_graded": 0, "frame": None, "research_use": RESEARCH_USE_ONLY,
    }


def test_round_trip_raw_and_jpeg_frames(rng):
    image = rng.integers(0, 256, (60, 80), dtype=np.uint8)
    header = result_header(rng)
    descriptor, payload = encode_frame(image, "raw")
    header["frame"] = descriptor
    message = decode(encode("result", header, payload))
    assert message.kind == "result"
    assert message.header["schema_version"] == SCHEMA_VERSION
    assert message.header["probabilities"] == header["probabilities"]
    np.testing.assert_array_equal(message.frame, image)

    smooth = np.tile(np.linspace(0, 255, 80, dtype=np.uint8), (60, 1))
    descriptor, payload = encode_frame(smooth, "jpeg", 95)
    header["frame"] = descriptor
    decoded = decode(encode("result", header, payload)).frame
    assert decoded.shape == smooth.shape
    assert np.abs(decoded.astype(int) - smooth).mean() < 3  # lossy but close


def test_polygon_to_json_rounds_to_pixels(rng):
    points = rng.uniform(0, 100, (7, 2))
    out = polygon_to_json(points)
    assert out == np.rint(points).astype(int).tolist()
    assert polygon_to_json(np.zeros((0, 2))) is None
    assert polygon_to_json(None) is None


@pytest.mark.parametrize(
    ("parts", "kind"),
    [
        ([b"sonograde.result"], "not multipart"),
        ([b"other.topic", b"{}"], "unknown topic"),
        ([RESULT_TOPIC, b"\xff\xfe not utf8"], "bad json"),
        ([RESULT_TOPIC, b"[1, 2]"], "bad json"),
        ([RESULT_TOPIC, b'{"schema_version": "1"}'], "bad schema version"),
        ([RESULT_TOPIC, b'{"schema_version": 3}'], "future schema 3"),
        ([STATUS_TOPIC, b'{"schema_version": 1}'], "missing field"),
    ],
)
def test_decode_rejects_with_kind(parts, kind):
    with pytest.raises(MessageError) as info:
        decode(parts)
    assert info.value.kind == kind


def test_decode_rejects_mismatched_frame_and_bad_fields(rng):
    header = result_header(rng)
    descriptor, payload = encode_frame(rng.integers(0, 256, (60, 80), dtype=np.uint8))
    header["frame"] = descriptor
    with pytest.raises(MessageError, match="needs 4800 bytes"):
        decode(encode("result", header, payload[:-1]))
    with pytest.raises(MessageError, match="disagree"):
        decode(encode("result", header))  # header says a frame follows, none does
    bad = result_header(rng)
    bad["seq"] = True
    with pytest.raises(MessageError, match="'seq'"):
        decode(encode("result", bad))
    bad = result_header(rng)
    bad["refined_contour"] = [[1, 2, 3]]
    with pytest.raises(MessageError, match="refined_contour"):
        decode(encode("result", bad))


def test_unknown_keys_are_ignored_within_version_1(rng):
    header = result_header(rng)
    header["added_in_a_later_minor"] = {"anything": [1, 2]}
    assert decode(encode("result", header)).header["added_in_a_later_minor"] == {"anything": [1, 2]}


def test_encode_refuses_nan(rng):
    header = result_header(rng)
    header["area_px"] = float("nan")
    with pytest.raises(ValueError):
        encode("result", header)


def test_endpoint_checks():
    check_endpoint("tcp://127.0.0.1:5555")
    check_endpoint("ipc:///tmp/x.ipc")
    with pytest.raises(EndpointError, match="allow-remote"):
        check_endpoint("tcp://0.0.0.0:5555")
    check_endpoint("tcp://0.0.0.0:5555", allow_remote=True, curve="DIR")
    with pytest.raises(EndpointError, match="needs --curve"):
        check_endpoint("tcp://0.0.0.0:5555", allow_remote=True)
    with pytest.raises(EndpointError, match="must look like"):
        check_endpoint("localhost:5555")


def test_endpoint_in_use_is_a_clear_error():
    with Publisher(PublisherConfig(endpoint="tcp://127.0.0.1:*")) as first, \
            pytest.raises(EndpointError, match=r"in use|another"):
        Publisher(PublisherConfig(endpoint=first.endpoint))


def test_subscriber_survives_garbage_and_future_versions(rng, caplog):
    """Garbage, unknown topics and a newer schema are skipped (each kind logged once); valid messages
    before and after still arrive."""
    with Publisher(PublisherConfig(endpoint="tcp://127.0.0.1:*", sndhwm=100)) as publisher, \
            Subscriber(publisher.endpoint, rcvhwm=100) as subscriber:
        assert publisher.wait_for_subscriber(5.0)
        good = result_header(rng)
        future = dict(good, schema_version=SCHEMA_VERSION + 1)
        sends = [
            encode("result", dict(good, seq=1)),
            [b"sonograde.result", b"\x00\x01garbage"],
            [b"sonograde.result", b"\x00\x01garbage again"],
            [b"sonograde.result", json.dumps(future).encode()],
            [b"sonograde.result", json.dumps(future).encode(), b"frame?"],
            [b"sonograde.result"],
            encode("result", dict(good, seq=2)),
        ]
        for parts in sends:
            assert publisher.send(parts)
        caplog.set_level(logging.WARNING, logger="sonograde.subscriber")
        received = []
        deadline = time.monotonic() + 5
        while len(received) < 2 and time.monotonic() < deadline:
            message = subscriber.recv(500)
            if message is not None:
                received.append(message)
        assert [m.header["seq"] for m in received] == [1, 2]
        assert subscriber.invalid["bad json"] == 2
        assert subscriber.invalid[f"future schema {SCHEMA_VERSION + 1}"] == 2
        assert subscriber.invalid["not multipart"] == 1
        warnings = [r for r in caplog.records if r.name == "sonograde.subscriber"]
        assert len(warnings) == 3  # once per kind, not once per message


def test_publisher_never_blocks_on_a_stalled_subscriber(rng):
    """A SUB that connects and never reads: sending goes on without blocking (messages beyond the
    high-water marks are dropped by ZeroMQ, not queued in our process)."""
    context = zmq.Context()
    try:
        with Publisher(PublisherConfig(endpoint="tcp://127.0.0.1:*"), context=context) as publisher:
            stalled = context.socket(zmq.SUB)
            stalled.setsockopt(zmq.RCVHWM, 1)
            stalled.setsockopt(zmq.LINGER, 0)
            stalled.setsockopt(zmq.SUBSCRIBE, b"")
            stalled.connect(publisher.endpoint)
            assert publisher.wait_for_subscriber(5.0)
            payload = rng.integers(0, 256, 640 * 480, dtype=np.uint8).tobytes()  # big frames fill buffers
            parts = [*encode("result", result_header(rng)), payload]
            for _ in range(2000):
                publisher.send(parts)  # would hang here if the socket blocked
            assert publisher.sent + publisher.dropped == 2000
            stalled.close(0)
    finally:
        context.term()
