"""The base of every frame source: conversion to 8-bit gray, the geometry crop, numbering, time stamps
and pacing (:class:`FrameSource`), and the errors every source raises. The concrete sources are in
``capture.image_files``, ``capture.video_sources``, ``capture.dicom_source`` and
``capture.phantom_sequence``, chosen from a string by ``capture.sources.open_source``; this module sits
below them all so that none imports another's base."""

from __future__ import annotations

import time
from abc import ABC, abstractmethod

import cv2
import numpy as np

from capture.frame import Frame
from capture.geometry import GeometryProfile

_STANDARD_BIT_DEPTHS = (8, 10, 12, 14, 16)
ACCEPTED = (
    "accepted: 'phantom[:seed=N,screen=1,...]', a capture device index ('0') or '/dev/videoN', a video "
    "file, an image folder or glob ('frames/*.png'), or 'dicom:PATH' (a .dcm file or folder)"
)


class SourceError(ValueError):
    """A source string that names nothing readable, or a source that cannot deliver frames."""


class SourceDisconnectedError(RuntimeError):
    """A live source stopped delivering frames (device unplugged, capture card lost signal)."""


def to_gray(image: np.ndarray) -> np.ndarray:
    """2-D uint8 from gray, BGR or BGRA input (higher bit depths are scaled down, see ``to_u8``)."""
    if image.dtype != np.uint8:
        image = to_u8(image)
    if image.ndim == 3:
        if image.shape[2] == 1:
            image = image[:, :, 0]
        elif image.shape[2] == 4:
            image = cv2.cvtColor(image, cv2.COLOR_BGRA2GRAY)
        else:
            image = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
    return np.ascontiguousarray(image)


def significant_bits(image: np.ndarray, declared: int | None = None) -> int:
    """Bits an unsigned integer image really uses: ``declared`` (a PNG's sBIT, DICOM's BitsStored) when
    given, else the smallest standard depth (8, 10, 12, 14, 16) that holds its maximum. 12-bit data in a
    16-bit container is then scaled by 4095, not 65535 (which would leave it near black)."""
    width = 8 * image.dtype.itemsize
    if declared is not None and 1 <= declared <= width:
        return int(declared)
    needed = int(image.max()).bit_length() if image.size else 8
    return next((bits for bits in _STANDARD_BIT_DEPTHS if bits >= needed and bits <= width), width)


def to_u8(image: np.ndarray, declared_bits: int | None = None) -> np.ndarray:
    """uint8 from any image: unsigned integers scaled by their significant bits (``significant_bits``),
    so every frame of a stream keeps one scale; signed and float data from their minimum to maximum."""
    if image.dtype == np.uint8:
        return image
    if image.dtype == np.bool_:
        return image.astype(np.uint8) * 255
    if image.dtype.kind == "u":
        data = image
        bits = significant_bits(data, declared_bits)
        top = float((1 << bits) - 1)
        return np.clip(data.astype(np.float32) * (255.0 / top) + 0.5, 0, 255).astype(np.uint8)
    return scale_to_u8(image)


def colour_fraction(image: np.ndarray, *, step: int = 4) -> float:
    """Fraction of pixels in strong colour (channel spread > 60 of 255 and not dark), on every
    ``step``-th row and column. Gray ultrasound is ~0; a colour Doppler box or an elastography map
    covers several percent. 0 for gray images."""
    if image.ndim != 3 or image.shape[2] < 3:
        return 0.0
    sample = image[::step, ::step, :3]
    if sample.dtype != np.uint8:
        sample = to_u8(np.ascontiguousarray(sample))
    spread = sample.max(axis=2).astype(np.int16) - sample.min(axis=2)
    saturated = (spread > 60) & (sample.max(axis=2) > 60)
    return float(saturated.mean()) if saturated.size else 0.0


def scale_to_u8(image: np.ndarray) -> np.ndarray:
    data = image.astype(np.float32)
    lo, hi = float(data.min()), float(data.max())
    if hi <= lo:
        return np.zeros(image.shape, np.uint8)
    return np.clip((data - lo) * (255.0 / (hi - lo)) + 0.5, 0, 255).astype(np.uint8)


class FrameSource(ABC):
    """An iterator of ``Frame`` objects; close it (or use ``with``) to release files and devices.

    Subclasses implement ``_next_raw() -> (image, pixel_size_mm, meta) | None`` (None at the end); the base
    class converts to gray, applies the geometry profile, numbers and time-stamps frames and paces file
    sources. ``description`` says what the source is, for the operator (it may name the file);
    ``stream_name`` says only what kind of source it is ("dicom, 60 frames", "image folder, 12 images",
    "phantom", "capture device 0"), never a file name or path: it is what leaves the process in published
    messages, and file names of patient data often name the patient. ``is_live`` is True for capture
    devices (the grabber reconnects those when they fail, and ends file sources cleanly).
    """

    def __init__(
        self,
        description: str,
        *,
        is_live: bool,
        fps: float | None = None,
        realtime: bool = False,
        geometry: GeometryProfile | None = None,
        stream_name: str | None = None,
    ):
        self.description = description
        self.stream_name = stream_name or ("capture device" if is_live else "file source")
        self.is_live = is_live
        self.fps = float(fps) if fps else None
        self.realtime = realtime
        self.geometry = geometry
        self._emitted = 0
        self._t0_ns: int | None = None
        self._closed = False
        # Files that could not be read, skipped (name -> reason); a looping source skips them for good.
        self.unreadable: dict[str, str] = {}

    @property
    def skipped(self) -> int:
        """Unreadable files skipped so far (each counted once)."""
        return len(self.unreadable)

    @abstractmethod
    def _next_raw(self) -> tuple[np.ndarray, float | None, dict] | None:
        """Next image (gray/BGR, any integer dtype), its pixel size (mm) and meta; None at the end."""

    def _release(self) -> None:  # noqa: B027 - optional hook, most sources hold something to free
        """Free the underlying file or device (subclasses)."""

    def read(self) -> Frame | None:
        """The next frame, or None when the source has ended."""
        if self._closed:
            return None
        if self.realtime and self.fps and not self.is_live:
            # Pace against the stream's own clock so that slow consumers do not accumulate drift.
            if self._t0_ns is None:
                self._t0_ns = time.monotonic_ns()
            due = self._t0_ns + int(self._emitted * 1e9 / self.fps)
            delay = (due - time.monotonic_ns()) / 1e9
            if delay > 0:
                time.sleep(delay)
        raw = self._next_raw()
        if raw is None:
            return None
        image, pixel_size, meta = raw
        t_ns = time.monotonic_ns()
        if image.ndim == 3 and image.shape[2] >= 3:  # before gray conversion: a gradeability cue
            meta = {**meta, "colour_fraction": colour_fraction(image)}
        image = to_gray(image)
        if self.geometry is not None:
            full_shape = image.shape
            image = np.ascontiguousarray(self.geometry.crop(image))
            pixel_size = self.geometry.mm_per_pixel
            mask = meta.get("mask")
            if isinstance(mask, np.ndarray) and mask.shape == full_shape:
                meta = {**meta, "mask": np.ascontiguousarray(self.geometry.crop(mask))}
        frame = Frame(image, self._emitted, t_ns, pixel_size, self.description, meta)
        self._emitted += 1
        return frame

    def __iter__(self) -> FrameSource:
        return self

    def __next__(self) -> Frame:
        frame = self.read()
        if frame is None:
            raise StopIteration
        return frame

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._release()

    def __enter__(self) -> FrameSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.description}>"
