"""Scanner-screen geometry: where the ultrasound image sits on the captured screen and its mm per pixel.

A capture card delivers the whole scanner screen (image, text, rulers). A ``GeometryProfile`` (measured
by ``capture.screen_measure`` or written by hand) says which rectangle is the B-mode image and how many
millimetres one screen pixel spans; sources apply it to every frame (crop + ``pixel_size_mm``).

File format (JSON, ``version`` 1)::

    {"version": 1, "image_rect": [x, y, w, h], "mm_per_pixel": 0.0625, "source": "scanner XYZ, 4 cm"}
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

PROFILE_VERSION = 1


class GeometryError(ValueError):
    """A geometry profile that is malformed or does not fit the frames it is applied to."""


@dataclass(frozen=True, slots=True)
class GeometryProfile:
    """The image rectangle ``(x, y, w, h)`` in screen pixels and mm per pixel (None if unknown)."""

    image_rect: tuple[int, int, int, int]
    mm_per_pixel: float | None = None
    source: str = ""

    def __post_init__(self) -> None:
        rect = tuple(self.image_rect)
        if len(rect) != 4 or not all(
            isinstance(v, int | np.integer) and not isinstance(v, bool) for v in rect
        ):
            raise GeometryError(f"image_rect must be four integers (x, y, w, h); got {self.image_rect!r}")
        x, y, w, h = (int(v) for v in rect)
        if x < 0 or y < 0 or w <= 0 or h <= 0:
            raise GeometryError(f"image_rect needs x, y >= 0 and w, h > 0; got {rect}")
        object.__setattr__(self, "image_rect", (x, y, w, h))
        if self.mm_per_pixel is not None:
            mm = float(self.mm_per_pixel)
            if not np.isfinite(mm) or mm <= 0:
                raise GeometryError(
                    f"mm_per_pixel must be a positive number or null; got {self.mm_per_pixel!r}"
                )
            object.__setattr__(self, "mm_per_pixel", mm)

    def crop(self, image: np.ndarray) -> np.ndarray:
        """The image rectangle of a screen frame (a view, no copy); error if the frame is too small."""
        x, y, w, h = self.image_rect
        height, width = image.shape[:2]
        if x + w > width or y + h > height:
            raise GeometryError(
                f"frame of {width}x{height} pixels is smaller than the geometry profile's image rectangle "
                f"(x={x}, y={y}, w={w}, h={h}); the profile was measured on another screen layout or "
                "resolution: measure it again for this source"
            )
        return image[y : y + h, x : x + w]

    def to_dict(self) -> dict:
        return {
            "version": PROFILE_VERSION,
            "image_rect": list(self.image_rect),
            "mm_per_pixel": self.mm_per_pixel,
            "source": self.source,
        }

    def save(self, path: str | Path) -> Path:
        """Write the profile as JSON; returns the path."""
        path = Path(path)
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n", encoding="utf-8")
        return path

    @classmethod
    def load(cls, path: str | Path) -> GeometryProfile:
        """Read a profile written by ``save``; GeometryError naming the file and the problem otherwise."""
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError as error:
            raise GeometryError(f"geometry profile {path} does not exist") from error
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
            raise GeometryError(f"geometry profile {path} is not valid JSON: {error}") from error
        if not isinstance(data, dict):
            raise GeometryError(f"geometry profile {path} must hold a JSON object, got {type(data).__name__}")
        version = data.get("version")
        if version != PROFILE_VERSION:
            raise GeometryError(
                f"geometry profile {path} has version {version!r}; "
                f"this Sonograde reads version {PROFILE_VERSION}"
            )
        if "image_rect" not in data:
            raise GeometryError(f"geometry profile {path} lacks 'image_rect' ([x, y, w, h] in screen pixels)")
        try:
            return cls(tuple(data["image_rect"]), data.get("mm_per_pixel"), str(data.get("source", "")))
        except (GeometryError, TypeError, ValueError) as error:
            raise GeometryError(f"geometry profile {path}: {error}") from error
