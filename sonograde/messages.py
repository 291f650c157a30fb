"""The wire format of published results: schema version 2 (documented for other languages in
``docs/messages.md``). Version 2 adds the explained assessment (``assessment``: lexicon descriptors, size,
calipers, malignancy probability, category drivers) to every result; this reader still reads version 1.

Every message is one ZeroMQ multipart message:

``[topic, header, frame?]``

- ``topic``: ASCII bytes, ``b"sonograde.result"`` (one per graded frame) or ``b"sonograde.status"``
  (heartbeat, about once a second and whenever the source state changes, so a display knows the
  pipeline is alive while the scanner is disconnected). Subscribers filter on the ``b"sonograde."``
  prefix.
- ``header``: one UTF-8 JSON object (see ``RESULT_FIELDS`` / ``STATUS_FIELDS``); always carries
  ``schema_version``. Readers ignore keys they do not know: new keys may be added within a version,
  anything else bumps the version. A reader refuses a newer version with "schema_version N is newer
  than this reader (M); upgrade" (kind ``future schema N``).
- ``frame`` (results only, optional): the graded frame, described by ``header["frame"]``:
  ``{"encoding": "raw", "dtype": "uint8", "shape": [H, W]}`` (row-major bytes, H*W of them) or
  ``{"encoding": "jpeg", "quality": Q, "shape": [H, W]}`` (a baseline grayscale JPEG).

Times are ``time.monotonic_ns()`` values (Linux ``CLOCK_MONOTONIC``), which all processes on one machine
share, so a subscriber on the same machine gets its latency as ``time.monotonic_ns() - t_capture_ns``.

This module is pure: encoding/decoding only, no sockets.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

from engine.birads import CATEGORIES as CATEGORIES  # re-exported: the categories a result may carry

SCHEMA_VERSION = 2
OLDEST_READABLE_VERSION = 1
TOPIC_PREFIX = b"sonograde."
RESULT_TOPIC = b"sonograde.result"
STATUS_TOPIC = b"sonograde.status"
TOPICS = {RESULT_TOPIC: "result", STATUS_TOPIC: "status"}
CLOCK = "CLOCK_MONOTONIC"
FRAME_ENCODINGS = ("raw", "jpeg")
_MAX_SIDE = 16384  # a frame side beyond this is garbage, not an ultrasound image
MAX_HEADER_BYTES = 1 << 20  # a result header is ~2-20 kB; anything near this is not one
_MAX_JSON_DEPTH = 32  # our headers nest 3 deep; deeper JSON is refused before parsing
_MAX_POLYGON_POINTS = 65536
_MAX_TEXT = 1024  # longest string field a reader accepts (a display truncates further)

# Required header keys and the JSON types they must have (None allowed where listed).
_COMMON_FIELDS: dict[str, tuple[type, ...]] = {
    "schema_version": (int,),
    "seq": (int,),
    "t_publish_ns": (int,),
    "source": (str,),
    "source_state": (str,),
    "research_use": (str,),
}
RESULT_FIELDS: dict[str, tuple[type, ...]] = {
    **_COMMON_FIELDS,
    "frame_index": (int,),
    "t_capture_ns": (int,),
    "image_size": (list,),
    "pixel_size_mm": (float, int, type(None)),
    "lesion_found": (bool,),
    "roi_contour": (list, type(None)),
    "refined_contour": (list, type(None)),
    "bbox": (list, type(None)),
    "area_px": (float, int, type(None)),
    "area_mm2": (float, int, type(None)),
    "category": (str, type(None)),
    "probabilities": (dict, type(None)),
    "smoothed_category": (str, type(None)),
    "smoothed_probabilities": (dict, type(None)),
    "track": (dict, type(None)),
    "timings_ms": (dict,),
    "model_ids": (dict,),
    "dropped": (dict,),
    "stale_graded": (int,),
    "frame": (dict, type(None)),
}
STATUS_FIELDS: dict[str, tuple[type, ...]] = {
    **_COMMON_FIELDS,
    "frames_published": (int,),
    "fps": (float, int),
    "dropped": (dict,),
    "stale_graded": (int,),
    "last_error": (str, type(None)),
}
SOURCE_STATES = ("connecting", "connected", "reconnecting", "ended")

ASSESSMENT_PARTS = ("descriptors", "size", "calipers", "malignancy_probability", "drivers")
"""The parts of a version-2 result's ``assessment``: each is present or named in ``assessment.absent``
with the reason (never both, never neither)."""
NOT_PROVIDED = "not provided by the publisher"
SIZE_UNITS = ("mm", "px")


class MessageError(ValueError):
    """A message that is not a valid Sonograde message of a version this reader understands.

    ``kind`` is a short stable label ("not multipart", "bad json", "future schema 2", ...) so a
    subscriber can log each kind of problem once.
    """

    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(f"{kind}: {detail}")
        self.kind = kind


@dataclass(frozen=True)
class Message:
    """One decoded message.

    kind : "result" or "status".
    header : the validated JSON header (all keys, including ones this reader does not know).
    frame : the frame as (H, W) uint8 array, or None when not sent.
    t_receive_ns : ``time.monotonic_ns()`` at receipt (set by the subscriber; 0 when decoded offline).
    """

    kind: str
    header: dict[str, Any]
    frame: np.ndarray | None = None
    t_receive_ns: int = 0

    @property
    def assessment(self) -> dict[str, Any] | None:
        """The explained assessment of a result (schema 2), None for status messages and version 1."""
        if self.kind != "result" or self.header.get("schema_version", 1) < 2:
            return None
        value = self.header.get("assessment")
        return value if isinstance(value, dict) else None

    @property
    def latency_ms(self) -> float | None:
        """Capture-to-receipt latency in ms (results received by a subscriber), else None."""
        if self.kind != "result" or not self.t_receive_ns:
            return None
        return (self.t_receive_ns - int(self.header["t_capture_ns"])) / 1e6


# ------------------------------------------------------------------------------------------- encoding


def polygon_to_json(polygon: np.ndarray | list | None) -> list[list[int]] | None:
    """(K, 2) x, y polygon in frame pixels -> ``[[x, y], ...]`` of ints (None stays None).

    Integer pixels: sub-pixel contour precision means nothing on a display and doubles the size.
    """
    if polygon is None:
        return None
    points = np.asarray(polygon, dtype=np.float64).reshape(-1, 2)
    if points.shape[0] == 0:
        return None
    return np.rint(points).astype(np.int64).tolist()


_QUOTED = re.compile(r"""(['"])(?:(?!\1).)*?\1""")
_PATH_TOKEN = re.compile(r"""(?:[A-Za-z]:)?(?:~|\.{1,2})?[\\/][^\s'",;:()\[\]]+""")
_FILE_TOKEN = re.compile(r"[\w.+-]+\.[A-Za-z][A-Za-z0-9]{0,5}\b")
# Unquoted, only names with an extension of what Sonograde reads are taken for file names (so that
# "numpy.ndarray" stays readable); quoted, any name.ext is.
_DATA_FILE = re.compile(r"[^\s'\"()/\\]+\.(?:dcm|dicom|png|jpe?g|bmp|tiff?|pgm|ppm|webp|mp4|avi|mov|mkv|"
                        r"webm|m4v|mpe?g|wmv|ogv|onnx|plan|json|nii|raw|txt|csv)\b", re.IGNORECASE)


def redact_paths(text: str | None, private: Iterable[str] = ()) -> str | None:
    """``text`` (an error message bound for the stream) without file names or paths.

    File names of patient data often name the patient, and paths name folders that do: the published
    stream carries neither. Replaced: every string of ``private`` (e.g. the source string the operator
    typed) with ``<source>``; then quoted strings that look like a path or a file name (``name.ext``),
    tokens that contain ``/`` or ``\\``, and unquoted names with the extension of an image, video,
    DICOM, model or data file with ``<file>``. Numbers and plain words stay, so the
    message still says what went wrong ("cannot read image <file> (not an image or corrupt)").
    """
    if text is None:
        return None
    for secret in sorted({p for p in private if p and len(p) >= 3}, key=len, reverse=True):
        text = text.replace(secret, "<source>")

    def quoted(match: re.Match) -> str:
        inner = match.group(0)[1:-1]
        if "/" in inner or "\\" in inner or _FILE_TOKEN.search(inner) or inner == "<source>":
            return "<file>"
        return match.group(0)

    text = _QUOTED.sub(quoted, text)
    text = _PATH_TOKEN.sub("<file>", text)
    return _DATA_FILE.sub("<file>", text)


def encode_frame(image: np.ndarray, encoding: str = "raw", jpeg_quality: int = 85) -> tuple[dict, bytes]:
    """Return ``(descriptor, payload)`` for the optional frame part.

    ``raw``: the bytes as they are (costs ~0.01 ms for 640x480; the right choice on one machine).
    ``jpeg``: ~0.4 ms to encode and ~0.3 ms to decode 640x480 at quality 85-90 here, ~15-30 kB instead of
    300 kB; for a display on another machine.
    """
    if image.dtype != np.uint8 or image.ndim != 2:
        raise ValueError(f"frame must be 2-D uint8, got {image.dtype} {image.shape}")
    shape = [int(image.shape[0]), int(image.shape[1])]
    if encoding == "raw":
        return {"encoding": "raw", "dtype": "uint8", "shape": shape}, np.ascontiguousarray(image).tobytes()
    if encoding == "jpeg":
        import cv2

        ok, buffer = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, int(jpeg_quality)])
        if not ok:
            raise ValueError("JPEG encoding failed")
        return {"encoding": "jpeg", "quality": int(jpeg_quality), "shape": shape}, buffer.tobytes()
    raise ValueError(f"unknown frame encoding {encoding!r}; expected one of {FRAME_ENCODINGS}")


def encode(kind: str, header: dict[str, Any], frame_part: bytes | None = None) -> list[bytes]:
    """Multipart message for ``kind`` ("result" or "status"): [topic, JSON header, frame?].

    ``header`` must already hold every required field (see ``RESULT_FIELDS`` / ``STATUS_FIELDS``);
    ``schema_version`` is set here. Non-finite floats are refused (JSON has no NaN).
    """
    topic = RESULT_TOPIC if kind == "result" else STATUS_TOPIC if kind == "status" else None
    if topic is None:
        raise ValueError(f"unknown message kind {kind!r}")
    body = dict(header)
    body["schema_version"] = SCHEMA_VERSION
    if kind == "result" and "assessment" not in body:
        body["assessment"] = absent_assessment(NOT_PROVIDED)
    parts = [topic, json.dumps(body, separators=(",", ":"), allow_nan=False).encode("utf-8")]
    if frame_part is not None:
        parts.append(frame_part)
    return parts


def absent_assessment(reason: str, present: dict[str, Any] | None = None) -> dict[str, Any]:
    """An ``assessment`` object with the parts in ``present`` and every other part absent for ``reason``.

    >>> absent_assessment("no lesion found")["absent"]["size"]
    'no lesion found'
    """
    given = present or {}
    out: dict[str, Any] = {k: v for k, v in given.items() if k in ASSESSMENT_PARTS and v is not None}
    missing = {part: reason for part in ASSESSMENT_PARTS if part not in out}
    out["absent"] = missing
    return out


# ------------------------------------------------------------------------------------------- decoding


def _is_number(value: Any) -> bool:
    """A finite JSON number (bool is not a number here)."""
    return (isinstance(value, int | float) and not isinstance(value, bool)
            and math.isfinite(value))


def _check_fields(header: dict, fields: dict[str, tuple[type, ...]]) -> None:
    for key, types in fields.items():
        if key not in header:
            raise MessageError("missing field", f"header has no {key!r}")
        _check_type(key, header[key], types)


def _check_type(key: str, value: Any, types: tuple[type, ...]) -> None:
    # bool is an int in Python; keep them apart so `"seq": true` is refused.
    if isinstance(value, bool) and bool not in types:
        names = "/".join(t.__name__ for t in types)
        raise MessageError("bad field", f"{key!r} must be {names}, got bool")
    if not isinstance(value, types):
        names = "/".join("null" if t is type(None) else t.__name__ for t in types)
        raise MessageError("bad field", f"{key!r} must be {names}, got {type(value).__name__}")
    if isinstance(value, float) and not math.isfinite(value):
        raise MessageError("non-finite number", f"{key!r} is {value}")
    if isinstance(value, str) and len(value) > _MAX_TEXT:
        raise MessageError("bad field", f"{key!r} is {len(value)} characters long (at most {_MAX_TEXT})")


def _check_polygon(name: str, value: Any) -> None:
    if value is None:
        return
    if len(value) > _MAX_POLYGON_POINTS:
        raise MessageError("bad field", f"{name!r} has {len(value)} points (at most {_MAX_POLYGON_POINTS})")
    limit = 4 * _MAX_SIDE  # contours lie on the frame; far outside it they would overflow a display
    if not all(isinstance(p, list) and len(p) == 2 and all(_is_number(c) and abs(c) <= limit for c in p)
               for p in value):
        raise MessageError("bad field", f"{name!r} must be a list of [x, y] finite number pairs within "
                           f"+-{limit}")


def _check_number_map(name: str, value: Any, *, low: float | None = None, high: float | None = None,
                      integers: bool = False) -> None:
    """``value`` (a dict or None) maps short strings to finite numbers within [low, high]."""
    if value is None:
        return
    for key, item in value.items():
        if not isinstance(key, str) or len(key) > 64:
            raise MessageError("bad field", f"{name!r} keys must be short strings")
        if not _is_number(item) or (integers and not isinstance(item, int)):
            kind = "non-finite number" if isinstance(item, float) else "bad field"
            raise MessageError(kind, f"{name}[{key!r}] must be a finite {'int' if integers else 'number'}, "
                               f"got {str(item)[:20]!r}")
        if (low is not None and item < low) or (high is not None and item > high):
            raise MessageError("bad field", f"{name}[{key!r}] = {item} is outside [{low}, {high}]")


def _check_result(header: dict, parts: list[bytes]) -> None:
    """Values a display relies on: sizes, finite numbers, probabilities in [0, 1]."""
    size = header["image_size"]
    if (len(size) != 2 or not all(isinstance(s, int) and not isinstance(s, bool) and 0 < s <= _MAX_SIDE
                                  for s in size)):
        raise MessageError("bad image size", f"image_size must be [H, W] of ints in 1..{_MAX_SIDE}, "
                           f"got {str(size)[:40]}")
    _check_polygon("roi_contour", header["roi_contour"])
    _check_polygon("refined_contour", header["refined_contour"])
    bbox = header["bbox"]
    if bbox is not None and (len(bbox) != 4 or not all(_is_number(v) and abs(v) <= 4 * _MAX_SIDE
                                                       for v in bbox) or bbox[2] < 0 or bbox[3] < 0):
        raise MessageError("bad field", f"'bbox' must be [x, y, w, h] of finite numbers, w, h >= 0, got "
                           f"{str(bbox)[:60]}")
    for key in ("pixel_size_mm", "area_px", "area_mm2"):
        if header[key] is not None and header[key] < 0:
            raise MessageError("bad field", f"{key!r} must not be negative, got {header[key]}")
    for key in ("probabilities", "smoothed_probabilities"):
        # A softmax; 1e-3 of slack for rounding in other publishers.
        _check_number_map(key, header[key], low=0.0, high=1.001)
    _check_number_map("timings_ms", header["timings_ms"])
    _check_number_map("dropped", header["dropped"], low=0, integers=True)
    if header["track"] is not None:
        _check_number_map("track", header["track"], low=0, integers=True)
    if not all(isinstance(k, str) and isinstance(v, str) and len(v) <= _MAX_TEXT
               for k, v in header["model_ids"].items()):
        raise MessageError("bad field", "'model_ids' must map strings to strings")
    if "not_gradeable" in header:
        _check_type("not_gradeable", header["not_gradeable"], (str, type(None)))
    descriptor = header["frame"]
    if (descriptor is None) != (len(parts) == 2):
        raise MessageError("bad frame", "header 'frame' and the presence of a frame part disagree")


def _check_status(header: dict) -> None:
    _check_number_map("dropped", header["dropped"], low=0, integers=True)
    if header["fps"] < 0:
        raise MessageError("bad field", f"'fps' must not be negative, got {header['fps']}")
    if isinstance(header.get("errors"), dict):
        _check_number_map("errors", header["errors"], low=0, integers=True)
    elif "errors" in header:
        raise MessageError("bad field", "'errors' must be an object of counts")


def _decode_frame(descriptor: dict, payload: bytes, image_size: list[int]) -> np.ndarray:
    shape = descriptor.get("shape")
    if (not isinstance(shape, list) or len(shape) != 2
            or not all(isinstance(s, int) and not isinstance(s, bool) and 0 < s <= _MAX_SIDE for s in shape)):
        raise MessageError("bad frame", f"frame shape must be [H, W] of ints in 1..{_MAX_SIDE}, "
                           f"got {str(shape)[:40]}")
    if shape != image_size:
        raise MessageError("bad frame", f"frame shape {shape} differs from image_size {image_size}")
    encoding = descriptor.get("encoding")
    if encoding == "raw":
        if descriptor.get("dtype", "uint8") != "uint8":
            raise MessageError("bad frame",
                               f"raw frame dtype must be uint8, got {str(descriptor.get('dtype'))[:20]!r}")
        if len(payload) != shape[0] * shape[1]:
            raise MessageError("bad frame", f"raw frame of shape {shape} needs {shape[0] * shape[1]} bytes, "
                               f"got {len(payload)}")
        return np.frombuffer(payload, dtype=np.uint8).reshape(shape)
    if encoding == "jpeg":
        import cv2

        declared = jpeg_size(payload)
        if declared != (shape[1], shape[0]):
            # Checked before decoding: a tiny JPEG may declare a huge picture.
            raise MessageError("bad frame", f"JPEG header says {declared}, descriptor says {shape}")
        try:
            image = cv2.imdecode(np.frombuffer(payload, dtype=np.uint8), cv2.IMREAD_GRAYSCALE)
        except cv2.error:
            image = None
        if image is None or list(image.shape) != shape:
            raise MessageError("bad frame", f"JPEG frame does not decode to shape {shape}")
        return image
    raise MessageError("bad frame",
                       f"unknown frame encoding {str(encoding)[:20]!r} (this reader knows {FRAME_ENCODINGS})")


def jpeg_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from a JPEG's start-of-frame marker without decoding it; None if not found."""
    if data[:2] != b"\xff\xd8":
        return None
    position = 2
    while position + 4 <= len(data):
        if data[position] != 0xFF:
            return None
        marker = data[position + 1]
        if marker == 0xFF:  # fill byte
            position += 1
            continue
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:  # markers without a length
            position += 2
            continue
        length = int.from_bytes(data[position + 2:position + 4], "big")
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):  # SOFn
            if position + 9 > len(data):
                return None
            height = int.from_bytes(data[position + 5:position + 7], "big")
            width = int.from_bytes(data[position + 7:position + 9], "big")
            return width, height
        if length < 2:
            return None
        position += 2 + length
    return None


def _json_depth_exceeds(text: bytes, limit: int) -> bool:
    """Whether brackets outside strings nest deeper than ``limit`` (checked before ``json.loads``, whose
    recursion would otherwise end in RecursionError or take the interpreter's stack)."""
    depth = 0
    in_string = escaped = False
    for byte in text:
        if in_string:
            if escaped:
                escaped = False
            elif byte == 0x5C:  # backslash
                escaped = True
            elif byte == 0x22:  # quote
                in_string = False
        elif byte == 0x22:
            in_string = True
        elif byte in (0x7B, 0x5B):  # { [
            depth += 1
            if depth > limit:
                return True
        elif byte in (0x7D, 0x5D):
            depth -= 1
    return False


def _reject_constant(name: str) -> Any:
    raise MessageError("non-finite number", f"JSON constant {name} (JSON has no NaN or infinity)")


def check_frame_pixels(descriptor: dict, max_frame_pixels: int | None) -> None:
    """Refuse a frame whose descriptor declares more than ``max_frame_pixels`` pixels, before it is
    decoded (a small JPEG can declare, and decode to, a huge image)."""
    shape = descriptor.get("shape")
    if (max_frame_pixels is not None and isinstance(shape, list) and len(shape) == 2
            and all(isinstance(s, int) for s in shape) and shape[0] * shape[1] > max_frame_pixels):
        raise MessageError("frame too large",
                           f"declared shape {shape[0]}x{shape[1]} is more than {max_frame_pixels} pixels")


def decode(parts: list[bytes], *, t_receive_ns: int = 0, with_frame: bool = True,
           max_frame_pixels: int | None = None) -> Message:
    """Validate and decode one multipart message. Raises MessageError (with a ``kind``) on anything
    this reader does not understand or could not draw, and nothing else: wrong part count, unknown topic,
    bad UTF-8/JSON, JSON nested too deeply or too large, NaN/infinity anywhere, a schema version newer
    than ``SCHEMA_VERSION``, missing or mistyped fields, sizes out of range, probabilities outside
    [0, 1], a frame that does not match its descriptor. ``with_frame=False`` skips decoding the frame
    part (a latency-only reader); ``max_frame_pixels`` refuses larger frames before decoding them
    ("frame too large")."""
    try:
        return _decode(parts, t_receive_ns, with_frame, max_frame_pixels)
    except MessageError:
        raise
    except (RecursionError, MemoryError, ValueError, TypeError, KeyError, AttributeError,
            OverflowError) as error:  # a gap in the checks above must still not stop a display
        raise MessageError("invalid", f"{type(error).__name__}: {str(error)[:80]}") from None


def _decode(parts: list[bytes], t_receive_ns: int, with_frame: bool,
            max_frame_pixels: int | None = None) -> Message:
    if not isinstance(parts, list | tuple) or not 2 <= len(parts) <= 3:
        count = len(parts) if isinstance(parts, list | tuple) else type(parts).__name__
        raise MessageError("not multipart", f"expected [topic, header, frame?], got {count} part(s)")
    topic = bytes(parts[0])
    kind = TOPICS.get(topic)
    if kind is None:
        raise MessageError("unknown topic", repr(topic[:40]))
    raw_header = bytes(parts[1])
    if len(raw_header) > MAX_HEADER_BYTES:
        raise MessageError("too large", f"header of {len(raw_header)} bytes (at most {MAX_HEADER_BYTES})")
    if _json_depth_exceeds(raw_header, _MAX_JSON_DEPTH):
        raise MessageError("bad json", f"nested deeper than {_MAX_JSON_DEPTH} levels")
    try:
        header = json.loads(raw_header.decode("utf-8"), parse_constant=_reject_constant)
    except MessageError:
        raise
    except (UnicodeDecodeError, ValueError, RecursionError) as error:
        raise MessageError("bad json", str(error)[:80]) from None
    if not isinstance(header, dict):
        raise MessageError("bad json", f"header must be a JSON object, got {type(header).__name__}")
    version = header.get("schema_version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise MessageError("bad schema version", str(version)[:20])
    if version > SCHEMA_VERSION:
        raise MessageError(f"future schema {version}" if version < 1000 else "future schema",
                           f"schema_version {version} is newer than this reader ({SCHEMA_VERSION}); upgrade")
    _check_fields(header, RESULT_FIELDS if kind == "result" else STATUS_FIELDS)
    if kind == "result" and version >= 2:
        check_assessment(header.get("assessment", _MISSING))
    frame = None
    if kind == "result":
        _check_result(header, parts)
        descriptor = header["frame"]
        if descriptor is not None and with_frame:
            check_frame_pixels(descriptor, max_frame_pixels)
            frame = _decode_frame(descriptor, bytes(parts[2]), header["image_size"])
    else:
        if len(parts) != 2:
            raise MessageError("not multipart", "a status message has exactly 2 parts")
        _check_status(header)
    return Message(kind=kind, header=header, frame=frame, t_receive_ns=t_receive_ns)


# ------------------------------------------------------------------------- the assessment (version 2)

_MISSING = object()


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _bad(detail: str) -> MessageError:
    return MessageError("bad assessment", detail)


def _check_probability_map(where: str, value: Any) -> None:
    if not isinstance(value, dict) or not all(isinstance(k, str) and _is_number(p) and 0.0 <= p <= 1.0
                                              for k, p in value.items()):
        raise _bad(f"{where} must be an object of names to probabilities in [0, 1]")


def _check_descriptors(descriptors: Any) -> None:
    if not isinstance(descriptors, dict):
        raise _bad("'descriptors' must be an object of descriptor -> {value, probabilities}")
    for name, entry in descriptors.items():
        if not isinstance(entry, dict) or not (
                isinstance(entry.get("value"), str)
                or (entry.get("value") is None and isinstance(entry.get("reason"), str))):
            raise _bad(f"descriptor {name!r} must be an object with a string 'value' (or a null value "
                       "and its 'reason')")
        if "probabilities" in entry:
            _check_probability_map(f"descriptor {name!r} probabilities", entry["probabilities"])
        if "subtypes" in entry:
            _check_probability_map(f"descriptor {name!r} subtypes", entry["subtypes"])
        if "angle_deg" in entry and not _is_number(entry["angle_deg"]):
            raise _bad(f"descriptor {name!r} angle_deg must be a number of degrees")


def _check_size(size: Any) -> None:
    if not isinstance(size, dict) or size.get("unit") not in SIZE_UNITS:
        raise _bad(f"'size' must be an object whose 'unit' is one of {SIZE_UNITS}")
    for key in ("width", "height", "longest"):
        if not _is_number(size.get(key)) or size[key] < 0:
            raise _bad(f"size {key!r} must be a non-negative number")
    pixel = size.get("pixel_size_mm")
    if size["unit"] == "mm" and pixel is None:
        raise _bad("a size in mm must give its pixel_size_mm")
    if pixel is not None and not (_is_number(pixel) or (isinstance(pixel, list) and len(pixel) == 2
                                                         and all(_is_number(p) for p in pixel))):
        raise _bad("size pixel_size_mm must be a number, a [row_mm, col_mm] pair or null")
    if not isinstance(size.get("pixel_size_source"), str | type(None)):
        raise _bad("size pixel_size_source must be a string or null")


def _check_calipers(calipers: Any) -> None:
    ok = isinstance(calipers, dict) and all(
        isinstance(calipers.get(key), list) and len(calipers[key]) == 2
        and all(isinstance(p, list) and len(p) == 2 and all(_is_number(c) for c in p) for p in calipers[key])
        for key in ("width", "height"))
    if not ok:
        raise _bad("'calipers' must be {\"width\": [[x, y], [x, y]], \"height\": [[x, y], [x, y]]}")


def check_assessment(assessment: Any) -> None:
    """Validate a version-2 result's ``assessment`` object; raises MessageError("bad assessment").

    Every part of ``ASSESSMENT_PARTS`` is either present (and well formed) or named in ``absent`` with a
    reason string. Unknown keys are allowed (new parts may be added within version 2).
    """
    if assessment is _MISSING:
        raise MessageError("missing field", "a schema 2 result has no 'assessment'")
    if not isinstance(assessment, dict):
        raise _bad(f"'assessment' must be an object, got {type(assessment).__name__}")
    absent = assessment.get("absent", {})
    if not isinstance(absent, dict) or not all(isinstance(v, str) for v in absent.values()):
        raise _bad("'absent' must be an object of part -> reason")
    for part in ASSESSMENT_PARTS:
        if (part in assessment) == (part in absent):
            raise _bad(f"{part!r} must be either present or absent with a reason")
    checks = {"descriptors": _check_descriptors, "size": _check_size, "calipers": _check_calipers}
    for part, check in checks.items():
        if part in assessment:
            check(assessment[part])
    if "malignancy_probability" in assessment:
        value = assessment["malignancy_probability"]
        if not _is_number(value) or not 0.0 <= value <= 1.0:
            raise _bad("'malignancy_probability' must be a number in [0, 1]")
    if "drivers" in assessment:
        drivers = assessment["drivers"]
        named = isinstance(drivers, list) and all(isinstance(d, dict) and isinstance(d.get("descriptor"), str)
                                                  and _is_number(d.get("contribution", 0.0)) for d in drivers)
        if not named:
            raise _bad("'drivers' must be a list of objects, each naming its 'descriptor'")
