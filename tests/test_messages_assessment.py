"""Message schema 2: the explained assessment in every result, readers of version 1 told to upgrade,
version-1 messages still read."""

from __future__ import annotations

import json
import logging
import time

import numpy as np
import pytest
from assessment_samples import sample_assessment
from test_messages import result_header

import sonograde.messages as messages
from sonograde.messages import (
    ASSESSMENT_PARTS,
    NOT_PROVIDED,
    MessageError,
    absent_assessment,
    decode,
    encode,
)
from sonograde.publisher import Publisher, PublisherConfig
from sonograde.subscriber import Subscriber


def test_assessment_round_trips(rng):
    header = result_header(rng)
    header["assessment"] = sample_assessment(rng)
    message = decode(encode("result", header))
    assert message.header["schema_version"] == 2
    assert message.assessment == header["assessment"]
    assert message.assessment["size"]["unit"] == "mm"
    assert set(message.assessment["descriptors"]["margin"]["subtypes"]) == {
        "indistinct", "angular", "microlobulated", "spiculated"}


def test_result_without_assessment_says_why(rng):
    message = decode(encode("result", result_header(rng)))
    assert message.assessment == {"absent": dict.fromkeys(ASSESSMENT_PARTS, NOT_PROVIDED)}
    no_lesion = absent_assessment("no lesion found")
    assert set(no_lesion["absent"]) == set(ASSESSMENT_PARTS)
    partial = absent_assessment("the grader model has no descriptor heads", {"size": {"unit": "px"}})
    assert "size" in partial and "size" not in partial["absent"] and "descriptors" in partial["absent"]


def test_version_1_messages_are_still_read(rng):
    header = dict(result_header(rng), schema_version=1)
    parts = [messages.RESULT_TOPIC, json.dumps(header).encode()]
    message = decode(parts)
    assert message.header["schema_version"] == 1 and message.assessment is None


@pytest.mark.parametrize("change", [
    lambda a: a.pop("size"),                                              # neither present nor absent
    lambda a: a["absent"].update(size="no lesion found"),                 # both
    lambda a: a.update(malignancy_probability=1.5),
    lambda a: a["size"].update(pixel_size_mm=None),                       # mm without a pixel size
    lambda a: a["size"].update(unit="cm"),
    lambda a: a["calipers"].update(width=[[1, 2]]),
    lambda a: a["descriptors"]["shape"].update(probabilities={"oval": "high"}),
    lambda a: a["descriptors"]["orientation"].update(angle_deg="steep"),
    lambda a: a.update(drivers=[{"value": "irregular"}]),
    lambda a: a.update(absent=["size"]),
])
def test_malformed_assessment_is_refused(rng, change):
    header = result_header(rng)
    header["assessment"] = sample_assessment(rng)
    change(header["assessment"])
    with pytest.raises(MessageError) as info:
        decode(encode("result", header))
    assert info.value.kind == "bad assessment"
    parts = encode("result", header)
    missing = json.loads(parts[1])
    del missing["assessment"]
    with pytest.raises(MessageError, match="no 'assessment'"):
        decode([parts[0], json.dumps(missing).encode()])


def test_a_version_1_reader_is_told_to_upgrade_over_a_real_socket(rng, caplog, monkeypatch):
    """A reader built for version 1 (SCHEMA_VERSION 1) skips version-2 results with one clear warning
    naming both versions, and keeps reading version-1 messages."""
    with Publisher(PublisherConfig(endpoint="tcp://127.0.0.1:*", sndhwm=100)) as publisher, \
            Subscriber(publisher.endpoint, rcvhwm=100) as subscriber:
        assert publisher.wait_for_subscriber(5.0)
        v2 = dict(result_header(rng), assessment=sample_assessment(rng), seq=1)
        sends = [encode("result", v2), encode("result", v2)]
        v1 = dict(result_header(rng), seq=2, schema_version=1)
        sends.append([messages.RESULT_TOPIC, json.dumps(v1).encode()])
        monkeypatch.setattr(messages, "SCHEMA_VERSION", 1)
        caplog.set_level(logging.WARNING, logger="sonograde.subscriber")
        for parts in sends:
            assert publisher.send(parts)
        received = None
        deadline = time.monotonic() + 5
        while received is None and time.monotonic() < deadline:
            received = subscriber.recv(500)
        assert received is not None and received.header["seq"] == 2
        assert subscriber.invalid["future schema 2"] == 2
        warnings = [r.getMessage() for r in caplog.records if r.name == "sonograde.subscriber"]
        assert len(warnings) == 1
        assert "schema_version 2 is newer than this reader (1); upgrade" in warnings[0]


def test_jpeg_frame_and_assessment_together(rng):
    image = rng.integers(0, 256, (60, 80), dtype=np.uint8)
    header = result_header(rng)
    header["assessment"] = sample_assessment(rng, pixel_size_mm=None)
    header["frame"], part = messages.encode_frame(image, "jpeg")
    message = decode(encode("result", header, part))
    assert message.assessment["size"]["unit"] == "px" and message.frame.shape == (60, 80)
