"""Image files as frames: reading one file safely (a pixel cap checked before decoding, 16-bit data scaled
by its significant bits) and ``ImageFilesSource``, a folder or glob of images played as a sequence."""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import cv2
import numpy as np

from capture.frame_source import ACCEPTED, FrameSource, SourceError, to_u8
from capture.geometry import GeometryProfile

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".pgm", ".ppm", ".webp")
MAX_PIXELS = 50_000_000  # ~7000 x 7000; an ultrasound frame is under 1 MP, a screen capture under 10 MP


class ImageTooLargeError(SourceError):
    """An image whose header declares more pixels than the cap (refused before decoding it)."""


def png_significant_bits(data: bytes) -> int | None:
    """The gray (or first colour) channel's significant bits from a PNG's sBIT chunk, else None."""
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        return None
    position = 8
    while position + 8 <= len(data):
        length = int.from_bytes(data[position:position + 4], "big")
        kind = data[position + 4:position + 8]
        if kind == b"sBIT" and length >= 1 and position + 9 <= len(data):
            return int(data[position + 8])
        if kind in (b"IDAT", b"IEND"):
            return None
        position += 12 + length
    return None


def image_file_size(path: str | Path) -> tuple[int, int] | None:
    """(width, height) from an image file's header without decoding its pixels (Pillow), or None when
    Pillow does not know the format."""
    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our cap decides
            with Image.open(path) as image:
                return int(image.size[0]), int(image.size[1])
    except Image.DecompressionBombError as error:  # Pillow's own cap (~179 MP) is far above ours
        numbers = [int(n) for n in re.findall(r"\d+", str(error))]
        pixels = numbers[0] if numbers else 2 * (Image.MAX_IMAGE_PIXELS or 0)
        return pixels, 1  # the pixel count is what the cap needs
    except Exception:  # Pillow raises many types for formats it does not read; OpenCV may still
        return None


def read_image_file(path: str | Path, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """An image file as uint8 (H x W gray or H x W x 3 BGR), 16-bit data scaled by its significant bits.

    Raises ImageTooLargeError when the header declares more than ``max_pixels`` pixels (checked before
    decoding: a 1 MB PNG may hold a 30000 x 30000 picture), SourceError when it is empty, missing or
    not a readable image."""
    path = Path(path)
    if not path.is_file():
        raise SourceError("no such file" if not path.exists() else "not a file")
    size = image_file_size(path)
    if size is not None and size[0] * size[1] > max_pixels:
        what = f"{size[0]} x {size[1]} pixels" if size[1] > 1 else f"{size[0]:,} pixels"
        raise ImageTooLargeError(f"{what} is more than the limit of {max_pixels:,} "
                                 "(shrink the image, or raise the limit where the command offers it)")
    data = np.fromfile(str(path), dtype=np.uint8)
    if data.size == 0:
        raise SourceError("the file is empty")
    image = cv2.imdecode(data, cv2.IMREAD_UNCHANGED)
    if image is None or image.size == 0:
        raise SourceError("not a readable image (JPEG, PNG, BMP or TIFF expected), or the file is damaged")
    if image.shape[0] * image.shape[1] > max_pixels:  # a format Pillow did not know
        raise ImageTooLargeError(f"{image.shape[1]} x {image.shape[0]} pixels is more than the limit of "
                                 f"{max_pixels:,}")
    if image.dtype != np.uint8:
        image = to_u8(image, png_significant_bits(data[:4096].tobytes()))
    if image.ndim == 3 and image.shape[2] == 4:
        image = cv2.cvtColor(image, cv2.COLOR_BGRA2BGR)
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    return image


class ImageFilesSource(FrameSource):
    """A list of image files (a folder in name order, or a glob), one frame each; 30 fps unless given.

    A file that cannot be read (damaged, not an image, over ``max_pixels``) is skipped and recorded in
    ``unreadable`` (counted once, not retried when looping); SourceError only when none can be read.
    """

    def __init__(
        self,
        paths: list[Path],
        label: str,
        *,
        fps: float | None = None,
        realtime: bool = True,
        loop: bool = False,
        geometry: GeometryProfile | None = None,
        max_pixels: int = MAX_PIXELS,
    ):
        self.max_pixels = max_pixels
        if not paths:
            raise SourceError(
                f"no images in {label!r} (looked for {', '.join(IMAGE_EXTENSIONS)}); {ACCEPTED}"
            )
        self.paths = paths
        self.loop = loop
        self._next = 0
        super().__init__(
            f"images {label} ({len(paths)} files)",
            is_live=False,
            fps=fps or 30.0,
            realtime=realtime,
            geometry=geometry,
            stream_name=f"image folder, {len(paths)} image{'s' if len(paths) != 1 else ''}",
        )

    def _next_raw(self) -> tuple[np.ndarray, float | None, dict] | None:
        while True:
            if len(self.unreadable) >= len(self.paths):
                raise SourceError(f"none of the {len(self.paths)} images can be read (first: "
                                  f"{next(iter(self.unreadable.values()))})")
            if self._next >= len(self.paths):
                if not self.loop:
                    return None
                self._next = 0
            path = self.paths[self._next]
            self._next += 1
            if str(path) in self.unreadable:
                continue
            try:
                image = read_image_file(path, self.max_pixels)
            except (SourceError, OSError) as error:  # skip it, count it, go on with the next file
                self.unreadable[str(path)] = f"{path.name}: {error}"
                continue
            return image, None, {"path": str(path)}
