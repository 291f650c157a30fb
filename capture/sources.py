"""``open_source``: the frame source a string names. The sources live in ``capture.image_files``,
``capture.video_sources``, ``capture.dicom_source`` and ``capture.phantom_sequence`` (their names are
importable from here too).

Source strings (``open_source(spec)``):

==========================  ===================================================================
``phantom``                 the synthetic scanner sweep (``capture.phantom_sequence.PhantomSequence``);
                            options after a colon: ``phantom:seed=3,screen=1,layout=2,size=384x320,
                            frames=300,speed=5,depth=40,start=150,fps=30`` (``frames``: stop after N;
                            ``speed``: mm/s; ``depth``: mm; ``start``: first frame of the sweep);
                            ``fps`` and ``width``/``height`` of ``open_source`` apply too
``0``, ``/dev/video0``      a capture device (OpenCV; the V4L2 backend on Linux); ``width``, ``height``,
                            ``fps`` and ``fourcc`` are requested, what the device delivers is reported
``clip.mp4``                a video file (anything OpenCV's FFmpeg backend reads)
``frames/``                 a folder of images (png, jpg, bmp, tif), in name order; ``.dcm`` files in
                            the folder make it a DICOM series instead
``frames/*.png``            a glob of images
``dicom:cine.dcm``          a DICOM file (single or multi-frame) or folder; ``.dcm`` files and files
                            with the DICM signature are recognized without the prefix
==========================  ===================================================================

Every source yields ``capture.Frame`` objects (2-D uint8 gray; colour is converted) with a strictly
increasing ``index`` and ``t_capture_ns = time.monotonic_ns()`` when read. File sources (video, images,
DICOM, phantom) are paced in real time at their frame rate when ``realtime`` (the default), or come as
fast as they decode; ``loop`` restarts them at the end. A ``GeometryProfile`` crops every frame to the
ultrasound image and sets ``pixel_size_mm``. Unknown or unreadable sources raise ``SourceError``.
"""

from __future__ import annotations

import glob
import os
from pathlib import Path

from capture.dicom_source import (
    DicomSource,
    dicom_frames_gray,
    dicom_pixel_size_mm,
    dicom_pixel_spacing_mm,
    is_dicom_file,
)
from capture.frame_source import ACCEPTED, FrameSource, SourceDisconnectedError, SourceError, to_gray
from capture.geometry import GeometryProfile
from capture.image_files import (
    IMAGE_EXTENSIONS,
    MAX_PIXELS,
    ImageFilesSource,
    ImageTooLargeError,
    image_file_size,
    png_significant_bits,
    read_image_file,
)
from capture.video_sources import (
    VIDEO_EXTENSIONS,
    CaptureDeviceSource,
    VideoFileSource,
    fourcc_text,
    list_capture_devices,
    parse_fourcc,
)


def _parse_phantom_options(text: str) -> dict[str, str]:
    options: dict[str, str] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        if "=" not in part:
            raise SourceError(f"phantom option {part!r} must be key=value (e.g. phantom:seed=3,screen=1)")
        key, value = (s.strip() for s in part.split("=", 1))
        options[key.lower()] = value
    return options


def _open_phantom(
    options_text: str,
    *,
    fps: float | None,
    realtime: bool,
    geometry: GeometryProfile | None,
    width: int | None,
    height: int | None,
) -> FrameSource:
    from capture.phantom import DEFAULT_SIZE
    from capture.phantom_sequence import PhantomSequence

    options = _parse_phantom_options(options_text)
    known = {"seed", "screen", "layout", "size", "frames", "speed", "fps", "depth", "start"}
    unknown = sorted(set(options) - known)
    if unknown:
        raise SourceError(
            f"unknown phantom option(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}"
        )
    try:
        size = DEFAULT_SIZE
        if "size" in options:
            w, h = options["size"].lower().split("x")
            size = (int(w), int(h))
        elif width or height:
            size = (int(width or DEFAULT_SIZE[0]), int(height or DEFAULT_SIZE[1]))
        layout: int | str = options.get("layout", "0")
        layout = int(layout) if str(layout).isdigit() else layout
        return PhantomSequence(
            seed=int(options.get("seed", 0)),
            size=size,
            fps=float(options.get("fps", fps or 30.0)),
            screen=options.get("screen", "0").lower() in ("1", "true", "yes", "on"),
            realtime=realtime,
            layout=layout,
            speed_mm_s=float(options.get("speed", 5.0)),
            depth_mm=float(options.get("depth", 40.0)),
            max_frames=int(options["frames"]) if "frames" in options else None,
            start_frame=int(options.get("start", 0)),
            geometry=geometry,
        )
    except SourceError:
        raise
    except ValueError as error:
        raise SourceError(f"bad phantom options {options_text!r}: {error}") from error


def stream_name_of(spec: str | int) -> str:
    """The kind of source a source string names, without opening it and without its file names:
    "phantom", "capture device 0", "dicom", "video file", "image folder" or "file source"."""
    text = str(spec).strip()
    lowered = text.lower()
    if lowered == "phantom" or lowered.startswith("phantom:"):
        return "phantom"
    if text.isdigit() or text.startswith("/dev/video"):
        number = text.removeprefix("/dev/video")
        return f"capture device {number}" if number.isdigit() else "capture device"
    if lowered.startswith("dicom:") or lowered.endswith((".dcm", ".dicom")):
        return "dicom"
    if lowered.endswith(VIDEO_EXTENSIONS):
        return "video file"
    if lowered.endswith(IMAGE_EXTENSIONS) or any(ch in text for ch in "*?[") or os.path.isdir(text):
        return "image folder"
    return "file source"


def open_source(
    spec: str | int,
    *,
    fps: float | None = None,
    realtime: bool = True,
    loop: bool = False,
    geometry: GeometryProfile | None = None,
    width: int | None = None,
    height: int | None = None,
    fourcc: str | None = None,
) -> FrameSource:
    """Open the source a string names (see the module docstring); SourceError if it names nothing usable.

    ``fps`` overrides a file's frame rate (pacing) or is requested from a device; ``realtime`` paces file
    sources; ``loop`` restarts file sources at their end; ``geometry`` crops every frame; ``width``,
    ``height`` and ``fourcc`` are requested from capture devices (``width``/``height`` also size the
    phantom).
    """
    if isinstance(spec, int):
        return CaptureDeviceSource(
            spec, width=width, height=height, fps=fps, fourcc=fourcc, geometry=geometry
        )
    text = str(spec).strip()
    if not text:
        raise SourceError(f"empty source string; {ACCEPTED}")
    files = {"fps": fps, "realtime": realtime, "loop": loop, "geometry": geometry}
    lowered = text.lower()
    if lowered == "phantom" or lowered.startswith("phantom:"):
        return _open_phantom(
            text.partition(":")[2], fps=fps, realtime=realtime, geometry=geometry, width=width, height=height
        )
    if lowered.startswith("dicom:"):
        return DicomSource(Path(text[6:]).expanduser(), **files)
    if text.isdigit():
        return CaptureDeviceSource(
            int(text), width=width, height=height, fps=fps, fourcc=fourcc, geometry=geometry
        )
    if text.startswith("/dev/video"):
        if not os.path.exists(text):
            raise SourceError(
                f"capture device {text!r} does not exist; `sonograde sources` lists the devices found"
            )
        return CaptureDeviceSource(
            text, width=width, height=height, fps=fps, fourcc=fourcc, geometry=geometry
        )
    path = Path(text).expanduser()
    if path.is_dir():
        entries = sorted(p for p in path.iterdir() if p.is_file())
        images = [p for p in entries if p.suffix.lower() in IMAGE_EXTENSIONS]
        if not images and any(p.suffix.lower() in (".dcm", ".dicom") for p in entries):
            return DicomSource(path, **files)
        return ImageFilesSource(images, text, **files)
    if path.is_file():
        if is_dicom_file(path):
            return DicomSource(path, **files)
        if path.suffix.lower() in IMAGE_EXTENSIONS:
            return ImageFilesSource([path], text, **files)
        if path.suffix.lower() in VIDEO_EXTENSIONS or path.stat().st_size > 0:
            try:
                return VideoFileSource(path, **files)
            except SourceError as error:
                raise SourceError(
                    f"cannot read source {text!r}: not a video OpenCV can decode, an image or "
                    f"DICOM; {ACCEPTED}"
                ) from error
    if any(ch in text for ch in "*?["):
        matches = sorted(Path(p) for p in glob.glob(os.path.expanduser(text)))
        images = [p for p in matches if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS]
        if not images:
            raise SourceError(f"the pattern {text!r} matches no image files; {ACCEPTED}")
        return ImageFilesSource(images, text, **files)
    raise SourceError(f"unknown source {text!r}: no such file, folder or device; {ACCEPTED}")


__all__ = [  # the sources' names stay importable from here, where callers have found them
    "ACCEPTED",
    "IMAGE_EXTENSIONS",
    "MAX_PIXELS",
    "VIDEO_EXTENSIONS",
    "CaptureDeviceSource",
    "DicomSource",
    "FrameSource",
    "ImageFilesSource",
    "ImageTooLargeError",
    "SourceDisconnectedError",
    "SourceError",
    "VideoFileSource",
    "dicom_frames_gray",
    "dicom_pixel_size_mm",
    "dicom_pixel_spacing_mm",
    "fourcc_text",
    "image_file_size",
    "is_dicom_file",
    "list_capture_devices",
    "open_source",
    "parse_fourcc",
    "png_significant_bits",
    "read_image_file",
    "stream_name_of",
    "to_gray",
]
