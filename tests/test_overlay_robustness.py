"""An overlay that never dies: the decoder refuses what a display cannot draw (with a kind, counted),
the renderer draws whatever the decoder accepts, and `sonograde overlay` survives every malformed
message over a real socket (exit 0, snapshot written), a picture that fails to render, and a publisher
that goes quiet (dimmed, NO SIGNAL).

Property-based tests run derandomized (fixed examples, no example database) so CI is deterministic.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import threading
import time

import cv2
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sonograde import RESEARCH_USE_ONLY
from sonograde.commands import overlay as overlay_command
from sonograde.messages import MessageError, decode, encode_frame
from sonograde.overlay import REFINED_RED, OverlayRenderer
from sonograde.publisher import Publisher, PublisherConfig

DETERMINISTIC = settings(derandomize=True, deadline=None, database=None, max_examples=80,
                         suppress_health_check=[HealthCheck.too_slow])
CATEGORIES = ("3", "4A", "4B", "4C", "5")


def valid_header(shape: tuple[int, int] = (48, 64)) -> dict:
    h, w = shape
    return {
        "schema_version": 1, "seq": 3, "frame_index": 9, "t_capture_ns": time.monotonic_ns() - 10_000_000,
        "t_publish_ns": time.monotonic_ns(), "source": "test", "source_state": "connected",
        "image_size": [h, w], "pixel_size_mm": 0.1, "lesion_found": True,
        "roi_contour": [[4, 4], [w - 4, 4], [w - 4, h - 4], [4, h - 4]],
        "refined_contour": [[8, 8], [w - 8, 8], [w - 8, h - 8], [8, h - 8]],
        "bbox": [8, 8, max(0, w - 16), max(0, h - 16)], "area_px": float(max(0, w - 16) * max(0, h - 16)),
        "area_mm2": 1.0,
        "category": "4A", "probabilities": {"3": 0.1, "4A": 0.5, "4B": 0.2, "4C": 0.1, "5": 0.1},
        "smoothed_category": "4A",
        "smoothed_probabilities": {"3": 0.1, "4A": 0.5, "4B": 0.2, "4C": 0.1, "5": 0.1},
        "track": {"id": 0, "age": 3, "missed": 0}, "timings_ms": {"locate": 5.0, "classify": 9.0},
        "model_ids": {"roi": "r", "grader": "g"}, "dropped": {"total": 0}, "stale_graded": 0,
        "frame": None, "research_use": RESEARCH_USE_ONLY,
    }


def valid_status() -> dict:
    return {"schema_version": 1, "seq": 1, "t_publish_ns": time.monotonic_ns(), "source": "test",
            "source_state": "connected", "research_use": RESEARCH_USE_ONLY, "frames_published": 1,
            "fps": 30.0, "dropped": {"total": 0}, "stale_graded": 0, "last_error": None}


def raw(header: dict, *extra: bytes, topic: bytes = b"sonograde.result") -> list[bytes]:
    """Parts as a hostile or broken publisher would send them (NaN allowed, no validation)."""
    return [topic, json.dumps(header, allow_nan=True).encode(), *extra]


def with_frame(header: dict, frame: np.ndarray) -> list[bytes]:
    descriptor, payload = encode_frame(frame)
    return raw(dict(header, frame=descriptor), payload)


def deep_json(depth: int) -> bytes:
    return ('{"a":' * depth + "1" + "}" * depth).encode()


def malformed_messages() -> dict[str, list[bytes]]:
    """Every malformed message the hardening issue lists, and a few more, by name."""
    good = valid_header()
    frame = np.full((48, 64), 120, np.uint8)
    probabilities = dict(good["probabilities"])
    wide = np.zeros((1, 16384), np.uint8)
    pixel_size = json.dumps(good).encode().replace(b'"pixel_size_mm": 0.1', b'"pixel_size_mm": 1e400')
    return {
        "nan probability": raw(dict(good, probabilities={**probabilities, "4A": math.nan})),
        "inf probability": raw(dict(good, probabilities={**probabilities, "4B": math.inf})),
        "-inf smoothed probability": raw(dict(good,
                                              smoothed_probabilities={**probabilities, "5": -math.inf})),
        "string probability": raw(dict(good, probabilities={**probabilities, "4A": "0.5"})),
        "probability above one": raw(dict(good, probabilities={**probabilities, "4A": 7.0})),
        "image_size 0x0": raw(dict(good, image_size=[0, 0])),
        "image_size of strings": raw(dict(good, image_size=["48", "64"])),
        "1 x 16384 frame, short buffer": [*with_frame(dict(good, image_size=[1, 16384]), wide)[:2],
                                          b"\x00" * 100],
        "1 x 20000 frame": with_frame(dict(good, image_size=[1, 20000]), np.zeros((1, 20000), np.uint8)),
        "deeply nested json": [b"sonograde.result", deep_json(100_000)],
        "nested json in a field": [b"sonograde.result",
                                   json.dumps(dict(good, track=None)).encode()[:-1] + b',"x":'
                                   + deep_json(5000) + b"}"],
        "wrong raw buffer length": [*with_frame(good, frame)[:2], b"\x00" * 17],
        "frame shape differs from image_size": with_frame(dict(good, image_size=[48, 65]), frame),
        "jpeg declaring a huge picture": raw(dict(good, frame={"encoding": "jpeg", "quality": 80,
                                                                "shape": [48, 64]}),
                                             b"\xff\xd8\xff\xc0\x00\x11\x08\xff\xff\xff\xff\x01"),
        "unknown frame encoding": raw(dict(good, frame={"encoding": "png", "shape": [48, 64]}), b"x"),
        "future schema version": raw(dict(good, schema_version=2)),
        "huge schema version": raw(dict(good, schema_version=10**30)),
        "schema version as string": raw(dict(good, schema_version="1")),
        "nan in contour": raw(dict(good, refined_contour=[[1, 2], [math.nan, 4], [5, 6]])),
        "contour far off the frame": raw(dict(good, roi_contour=[[0, 0], [10**12, 5], [5, 5]])),
        "contour of strings": raw(dict(good, roi_contour=[["a", "b"], ["c", "d"]])),
        "bbox with nan": raw(dict(good, bbox=[1, 2, math.nan, 4])),
        "timing as string": raw(dict(good, timings_ms={"locate": "fast"})),
        "area inf": raw(dict(good, area_mm2=math.inf)),
        "1e400 pixel size": [b"sonograde.result", pixel_size],
        "header is a list": [b"sonograde.result", b"[1, 2, 3]"],
        "not utf-8": [b"sonograde.result", b"\xff\xfe{}"],
        "missing field": raw({k: v for k, v in good.items() if k != "image_size"}),
        "one part": [b"sonograde.result"],
        "four parts": [b"sonograde.result", b"{}", b"", b""],
        "unknown topic": [b"sonograde.other", b"{}"],
        "status with nan fps": raw(dict(valid_status(), fps=math.nan), topic=b"sonograde.status"),
        "status with 3 parts": raw(valid_status(), b"x", topic=b"sonograde.status"),
        "huge integer": [b"sonograde.result",
                         json.dumps(good).encode().replace(b'"seq": 3', b'"seq": ' + b"9" * 5000)],
    }


def extreme_but_valid_messages() -> dict[str, list[bytes]]:
    """Messages a display must draw although they are odd (the 1 x 16384 frame ended the overlay)."""
    good = valid_header()
    wide = dict(good, image_size=[1, 16384], roi_contour=[[0, 0], [16383, 0]], refined_contour=None,
                bbox=[0, 0, 16384, 1])
    return {
        "1 x 16384 frame": with_frame(wide, np.arange(16384, dtype=np.uint16).astype(np.uint8)[None]),
        "16384 x 1 frame": raw(dict(good, image_size=[16384, 1], roi_contour=None, refined_contour=None)),
        "no probabilities": raw(dict(good, probabilities={}, smoothed_probabilities=None)),
        "unknown category": raw(dict(good, category="6", smoothed_category="6")),
        "unknown state": raw(dict(good, source_state="warming")),
    }


@pytest.mark.parametrize("name", list(extreme_but_valid_messages()))
def test_extreme_but_valid_messages_decode_and_render(name):
    message = decode(extreme_but_valid_messages()[name])
    assert OverlayRenderer().render(message, None, 1.0).dtype == np.uint8


@pytest.mark.parametrize("name", list(malformed_messages()))
def test_decode_refuses_each_malformed_message_with_a_kind(name):
    parts = malformed_messages()[name]
    with pytest.raises(MessageError) as caught:
        decode(parts)
    assert caught.value.kind and len(str(caught.value)) < 300


def test_valid_messages_still_decode_and_render():
    frame = np.full((48, 64), 120, np.uint8)
    message = decode(with_frame(valid_header(), frame))
    assert message.frame.shape == (48, 64)
    picture = OverlayRenderer().render(message, decode(raw(valid_status(), topic=b"sonograde.status")), 30.0)
    assert picture.dtype == np.uint8


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=4), inner, max_size=4),
    max_leaves=12,
)


@DETERMINISTIC
@given(key=st.sampled_from(sorted(valid_header())), value=json_values,
       frame_part=st.none() | st.binary(max_size=64))
def test_decode_raises_only_message_error_and_what_it_accepts_renders(key, value, frame_part):
    """Any field replaced by any JSON value (NaN and infinities included), with or without a frame part:
    decode either refuses it with MessageError or returns a message the renderer draws."""
    header = dict(valid_header(), **{key: value})
    parts = raw(header) + ([frame_part] if frame_part is not None else [])
    try:
        message = decode(parts)
    except MessageError as error:
        assert error.kind
        return
    picture = OverlayRenderer().render(message, None, 10.0)
    assert picture.shape[2] == 3


@DETERMINISTIC
@given(data=st.binary(max_size=300), topic=st.sampled_from([b"sonograde.result", b"sonograde.status"]))
def test_decode_of_arbitrary_bytes_raises_only_message_error(data, topic):
    with contextlib.suppress(MessageError):
        decode([topic, data])


points = st.lists(st.lists(st.integers(-65536, 65536), min_size=2, max_size=2), max_size=40)


@DETERMINISTIC
@given(height=st.integers(1, 16384), width=st.integers(1, 16384), send_frame=st.booleans(),
       roi=points, refined=points, probabilities=st.lists(st.floats(0, 1), min_size=5, max_size=5),
       category=st.none() | st.text(max_size=12), pixel=st.none() | st.floats(0, 1e6),
       bbox=st.none() | st.tuples(st.floats(-6e4, 6e4), st.floats(-6e4, 6e4), st.floats(0, 6e4),
                                      st.floats(0, 6e4)),
       state=st.text(max_size=20), not_gradeable=st.none() | st.text(max_size=80),
       no_signal=st.none() | st.floats(0, 1e6))
def test_renderer_draws_every_message_the_decoder_accepts(height, width, send_frame, roi, refined,
                                                          probabilities, category, pixel, bbox, state,
                                                          not_gradeable, no_signal):
    header = dict(valid_header((height, width)), roi_contour=roi or None, refined_contour=refined or None,
                  probabilities=dict(zip(CATEGORIES, probabilities, strict=True)), category=category,
                  smoothed_category=category, pixel_size_mm=pixel, source_state=state,
                  bbox=list(bbox) if bbox else None, not_gradeable=not_gradeable)
    if send_frame and height * width <= 1 << 20:  # keep the examples fast; big frames go without pixels
        parts = with_frame(header, np.full((height, width), 90, np.uint8))
    else:
        parts = raw(header)
    message = decode(parts)
    renderer = OverlayRenderer()
    picture = renderer.render(message, None, None, no_signal)
    assert picture.shape == (renderer.height, renderer.width, 3)


def test_no_signal_dims_the_picture_and_says_so():
    renderer = OverlayRenderer()
    message = decode(with_frame(valid_header(), np.full((48, 64), 200, np.uint8)))
    live = renderer.render(message, None, 30.0)
    quiet = renderer.render(message, None, None, no_signal_s=4.0)
    top = renderer.style.banner_height
    assert quiet[top:].mean() < 0.6 * live[top:].mean()
    amber = np.abs(quiet[top:].astype(int) - (0, 190, 255)).max(axis=2) <= 40
    assert amber.sum() > 300  # the large NO SIGNAL label
    assert (np.abs(quiet[5, 5].astype(int) - (0, 190, 255)) <= 10).all()  # research-use banner stays


def test_not_gradeable_shows_the_reason_instead_of_a_category():
    renderer = OverlayRenderer()
    header = dict(valid_header(), lesion_found=False, category=None, probabilities=None,
                  smoothed_category=None, smoothed_probabilities=None, roi_contour=None, refined_contour=None,
                  bbox=None, not_gradeable="colour overlay (Doppler or elastography)")
    graded = renderer.render(decode(raw(valid_header())))
    refused = renderer.render(decode(raw(header)))
    panel = (slice(renderer.style.banner_height + 40, renderer.style.banner_height + 135),
             slice(renderer.image_width, renderer.image_width + renderer.style.panel_width))
    amber = np.abs(refused[panel].astype(int) - (0, 190, 255)).max(axis=2) <= 40
    assert amber.sum() > 100
    assert (np.abs(graded[panel].astype(int) - (0, 190, 255)).max(axis=2) <= 40).sum() == 0


# ------------------------------------------------------------------------------- the command, for real


class Sender(threading.Thread):
    """Publishes ``sequence`` over and over on a real socket until stopped (a slow joiner misses some)."""

    def __init__(self, publisher: Publisher, sequence: list[list[bytes]], period_s: float = 0.01,
                 repeat: bool = True) -> None:
        super().__init__(daemon=True)
        self.publisher, self.sequence, self.period_s, self.repeat = publisher, sequence, period_s, repeat
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            for parts in self.sequence:
                self.publisher.send(parts)
                time.sleep(self.period_s)
            if not self.repeat:
                return


def overlay_args(endpoint: str, snapshot, **overrides) -> argparse.Namespace:
    values = dict(connect=endpoint, record=None, snapshot=snapshot, frames=None, seconds=20.0, window=False)
    values.update(overrides)
    return argparse.Namespace(**values)


def test_overlay_command_survives_every_malformed_message(tmp_path, capsys):
    """Valid results with every malformed message between them, over tcp: exit 0, the snapshot shows the
    last valid result's red contour, and the skipped messages are counted by kind."""
    frame = np.full((48, 64), 110, np.uint8)
    good = with_frame(valid_header(), frame)
    sequence = [good]
    for parts in [*malformed_messages().values(), *extreme_but_valid_messages().values()]:
        sequence += [parts, good]
    snapshot = tmp_path / "overlay.png"
    with Publisher(PublisherConfig(endpoint="tcp://127.0.0.1:*", sndhwm=1000)) as publisher:
        sender = Sender(publisher, sequence, period_s=0.002)
        sender.start()
        try:
            frames = 3 * len(sequence) // 2  # well past one pass through the sequence
            rc = overlay_command.run(overlay_args(publisher.endpoint, snapshot, frames=frames))
        finally:
            sender.stop.set()
            sender.join(5)
    err = capsys.readouterr().err
    assert rc == 0, err
    picture = cv2.imread(str(snapshot))
    assert picture is not None
    renderer = OverlayRenderer()
    area = picture[renderer.style.banner_height:, :renderer.image_width].astype(int)
    assert (np.abs(area - np.array(REFINED_RED)).max(axis=2) <= 60).sum() > 50
    assert "could not be drawn" in err
    for kind in ("non-finite number", "bad json", "bad frame", "bad image size"):
        assert kind in err, err


def test_overlay_command_skips_a_picture_that_fails_to_render(tmp_path, capsys, monkeypatch):
    calls = {"n": 0}
    original = OverlayRenderer.render

    def flaky(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] % 3 == 1:
            raise cv2.error("test: drawing failed")
        return original(self, *args, **kwargs)

    monkeypatch.setattr(OverlayRenderer, "render", flaky)
    good = with_frame(valid_header(), np.full((48, 64), 110, np.uint8))
    snapshot = tmp_path / "overlay.png"
    with Publisher(PublisherConfig(endpoint="tcp://127.0.0.1:*")) as publisher:
        sender = Sender(publisher, [good])
        sender.start()
        try:
            rc = overlay_command.run(overlay_args(publisher.endpoint, snapshot, frames=12))
        finally:
            sender.stop.set()
            sender.join(5)
    err = capsys.readouterr().err
    assert rc == 0 and snapshot.is_file(), err
    assert "failed to render" in err and "drawing failed" in err


def test_overlay_command_says_no_signal_when_the_publisher_goes_quiet(tmp_path, capsys):
    good = with_frame(valid_header(), np.full((48, 64), 200, np.uint8))
    snapshot = tmp_path / "overlay.png"
    with Publisher(PublisherConfig(endpoint="tcp://127.0.0.1:*")) as publisher:
        sender = Sender(publisher, [good] * 40, period_s=0.02, repeat=False)  # ~0.8 s, then silence
        threading.Timer(0.5, sender.start).start()
        rc = overlay_command.run(overlay_args(publisher.endpoint, snapshot,
                                              seconds=overlay_command.NO_SIGNAL_AFTER_S + 2.5))
        sender.join(5)
    assert rc == 0, capsys.readouterr().err
    picture = cv2.imread(str(snapshot))
    renderer = OverlayRenderer()
    top = renderer.style.banner_height
    live = renderer.render(decode(good), None, 30.0)
    assert picture[top:].mean() < 0.6 * live[top:].mean()
    assert (np.abs(picture[top:].astype(int) - (0, 190, 255)).max(axis=2) <= 40).sum() > 300


def test_counted_errors_show_in_the_panel_while_connected():
    renderer = OverlayRenderer()
    result = decode(with_frame(valid_header(), np.full((48, 64), 120, np.uint8)))
    quiet = dict(valid_status(), t_publish_ns=0, errors={"total": 0, "source_skipped": 0})
    faulty = dict(quiet, errors={"total": 7, "classify": 7, "source_skipped": 2},
                  last_error="classify: ModelOutputError: <file>: G-CNN output has NaN or infinite values")
    # the side panel only (the assessment column to its right ends with an amber research-use line)
    panel = (slice(renderer.style.banner_height, None),
             slice(renderer.image_width, renderer.image_width + renderer.style.panel_width))
    amber = [(np.abs(renderer.render(result, decode(raw(header, topic=b"sonograde.status")))[panel]
                     .astype(int) - (0, 190, 255)).max(axis=2) <= 40).sum() for header in (quiet, faulty)]
    assert amber[0] == 0 and amber[1] > 100
