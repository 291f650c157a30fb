"""Frame sources behind one interface, and ``open_source`` that picks one from a string.

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
import re
import sys
import warnings
from pathlib import Path

import cv2
import numpy as np

from capture.frame_source import FrameSource, scale_to_u8, to_gray, to_u8
from capture.geometry import GeometryProfile

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".pgm", ".ppm", ".webp")
VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv", ".ogv")
ACCEPTED = (
    "accepted: 'phantom[:seed=N,screen=1,...]', a capture device index ('0') or '/dev/videoN', a video "
    "file, an image folder or glob ('frames/*.png'), or 'dicom:PATH' (a .dcm file or folder)"
)


MAX_PIXELS = 50_000_000  # ~7000 x 7000; an ultrasound frame is under 1 MP, a screen capture under 10 MP


class SourceError(ValueError):
    """A source string that names nothing readable, or a source that cannot deliver frames."""


class ImageTooLargeError(SourceError):
    """An image whose header declares more pixels than the cap (refused before decoding it)."""


class SourceDisconnectedError(RuntimeError):
    """A live source stopped delivering frames (device unplugged, capture card lost signal)."""


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


# --------------------------------------------------------------------------------------------- files


class VideoFileSource(FrameSource):
    """A video file read with OpenCV; fps from the file (30 when it does not say) unless given."""

    def __init__(
        self,
        path: str | Path,
        *,
        fps: float | None = None,
        realtime: bool = True,
        loop: bool = False,
        geometry: GeometryProfile | None = None,
    ):
        self.path = Path(path)
        self._cap = cv2.VideoCapture(str(self.path))
        if not self._cap.isOpened():
            raise SourceError(f"cannot open video file {str(self.path)!r}: OpenCV cannot decode it")
        native = self._cap.get(cv2.CAP_PROP_FPS)
        native = native if native and 0 < native < 1000 else 30.0
        self.frame_count = int(self._cap.get(cv2.CAP_PROP_FRAME_COUNT))
        width, height = (
            int(self._cap.get(cv2.CAP_PROP_FRAME_WIDTH)),
            int(self._cap.get(cv2.CAP_PROP_FRAME_HEIGHT)),
        )
        self.loop = loop
        super().__init__(
            f"video {self.path.name} ({width}x{height}, {native:g} fps, {self.frame_count} frames)",
            is_live=False,
            fps=fps or native,
            realtime=realtime,
            geometry=geometry,
            stream_name=f"video file, {self.frame_count} frames",
        )

    def _next_raw(self) -> tuple[np.ndarray, float | None, dict] | None:
        ok, image = self._cap.read()
        if not ok and self.loop and self._emitted > 0:
            self._cap.set(cv2.CAP_PROP_POS_FRAMES, 0)
            ok, image = self._cap.read()
        if not ok:
            return None
        return image, None, {}

    def _release(self) -> None:
        self._cap.release()


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


# --------------------------------------------------------------------------------------------- DICOM


def is_dicom_file(path: Path) -> bool:
    """True for ``.dcm`` files and files with the ``DICM`` signature at byte 128."""
    if path.suffix.lower() in (".dcm", ".dicom"):
        return True
    try:
        with path.open("rb") as handle:
            handle.seek(128)
            return handle.read(4) == b"DICM"
    except OSError:
        return False


def dicom_pixel_size_mm(ds: object) -> float | None:
    """Pixel size in mm: from the Sequence of Ultrasound Regions (PhysicalDeltaX in cm when the unit code
    is 3), else PixelSpacing (mm; the column spacing), else None."""
    spacing = dicom_pixel_spacing_mm(ds)
    return None if spacing is None else spacing[0][1]


ULTRASOUND_UNITS_CM = 3  # Physical Units X/Y Direction code for centimetres (PS3.3 C.8.5.5.1.15)


def dicom_pixel_spacing_mm(ds: object, point: tuple[float, float] | None = None
                           ) -> tuple[tuple[float, float], str] | None:
    """(row_mm, col_mm) and where it came from, or None when the dataset carries no physical pixel size.

    First the Sequence of Ultrasound Regions: a region calibrated in cm on both axes (units code 3),
    the one containing ``point`` (x, y in pixels, e.g. the lesion's centre) when given and one does, else
    the first calibrated region; Physical Delta Y / X are cm per pixel (source
    ``"dicom_ultrasound_regions"``). Else Pixel Spacing or Imager Pixel Spacing, which DICOM gives in mm
    as (row spacing, column spacing) (source ``"dicom_pixel_spacing"``).
    """
    regions = getattr(ds, "SequenceOfUltrasoundRegions", None) or []
    calibrated = []
    for region in regions:
        units_x = int(getattr(region, "PhysicalUnitsXDirection", 0) or 0)
        units_y = int(getattr(region, "PhysicalUnitsYDirection", units_x) or 0)
        delta_x = getattr(region, "PhysicalDeltaX", None)
        delta_y = getattr(region, "PhysicalDeltaY", None) or delta_x
        if units_x == ULTRASOUND_UNITS_CM and units_y == ULTRASOUND_UNITS_CM and delta_x:
            calibrated.append((region, (abs(float(delta_y)) * 10.0, abs(float(delta_x)) * 10.0)))
    if calibrated:
        if point is not None:
            x, y = point
            for region, spacing in calibrated:
                x0 = getattr(region, "RegionLocationMinX0", None)
                y0 = getattr(region, "RegionLocationMinY0", None)
                x1 = getattr(region, "RegionLocationMaxX1", None)
                y1 = getattr(region, "RegionLocationMaxY1", None)
                if None not in (x0, y0, x1, y1) and x0 <= x <= x1 and y0 <= y <= y1:
                    return spacing, "dicom_ultrasound_regions"
        return calibrated[0][1], "dicom_ultrasound_regions"
    for tag in ("PixelSpacing", "ImagerPixelSpacing"):
        spacing = getattr(ds, tag, None)
        if spacing:
            row = float(spacing[0])
            col = float(spacing[1]) if len(spacing) > 1 else row
            return (row, col), "dicom_pixel_spacing"
    return None


def dicom_frames_gray(ds: object) -> np.ndarray:
    """All frames of a DICOM dataset as (N, H, W) uint8 gray.

    MONOCHROME2 as is, MONOCHROME1 inverted; RGB converted with the ITU-R 601 luma weights; YBR_FULL and
    YBR_FULL_422 (also JPEG-compressed, kept in YBR by ``raw=True``) use the Y (luma) channel; YBR_ICT and
    YBR_RCT (JPEG 2000, which decoders return as RGB) are converted like RGB. Wider than 8 bits: windowed by
    WindowCenter/Width when present, else scaled from min to max.
    """
    from pydicom.pixels import pixel_array

    photometric = str(getattr(ds, "PhotometricInterpretation", "MONOCHROME2")).upper()
    # raw=True keeps YBR data as YBR (no colour conversion by pydicom), so we know what channel 0 is.
    data = pixel_array(ds, raw=True)
    frames = int(getattr(ds, "NumberOfFrames", 1) or 1)
    samples = int(getattr(ds, "SamplesPerPixel", 1) or 1)
    if (samples == 1 and data.ndim == 2) or (samples > 1 and data.ndim == 3):
        data = data[None]
    if frames != data.shape[0]:
        data = data.reshape((frames, *(data.shape[-3:] if samples > 1 else data.shape[-2:])))
    if samples > 1:
        # JPEG 2000 decoders return YBR_ICT/YBR_RCT data as RGB; the other YBR forms stay YBR (raw=True).
        if photometric.startswith("YBR") and photometric not in ("YBR_ICT", "YBR_RCT"):
            gray = data[..., 0]
        elif photometric in ("RGB", "RGBA", "ARGB", "YBR_ICT", "YBR_RCT"):
            rgb = data[..., :3].astype(np.float32)
            gray = rgb[..., 0] * 0.299 + rgb[..., 1] * 0.587 + rgb[..., 2] * 0.114
            gray = np.clip(gray + 0.5, 0, 255 if data.dtype == np.uint8 else np.inf)
        else:
            raise SourceError(
                f"unsupported DICOM photometric interpretation {photometric!r} with {samples} samples"
            )
    else:
        gray = data
    if gray.dtype != np.uint8:
        center, width = getattr(ds, "WindowCenter", None), getattr(ds, "WindowWidth", None)
        if center is not None and width is not None and np.issubdtype(gray.dtype, np.integer):
            center = float(
                center[0] if isinstance(center, list | tuple) or hasattr(center, "__len__") else center
            )
            width = float(width[0] if isinstance(width, list | tuple) or hasattr(width, "__len__") else width)
            low = center - width / 2
            gray = np.clip((gray.astype(np.float32) - low) * (255.0 / max(width, 1.0)), 0, 255).astype(
                np.uint8
            )
        elif gray.dtype.kind == "f" and float(gray.max()) <= 255.0 and float(gray.min()) >= 0.0:
            gray = np.clip(gray + 0.5, 0, 255).astype(np.uint8)
        else:
            gray = scale_to_u8(gray)
    if photometric == "MONOCHROME1":
        gray = 255 - gray
    return np.ascontiguousarray(gray)


class DicomSource(FrameSource):
    """DICOM frames: one file (single or multi-frame cine) or a folder of files (sorted by InstanceNumber,
    then name). fps from CineRate, RecommendedDisplayFrameRate or FrameTime (ms) when present, else 30."""

    def __init__(
        self,
        path: str | Path,
        *,
        fps: float | None = None,
        realtime: bool = True,
        loop: bool = False,
        geometry: GeometryProfile | None = None,
    ):
        import pydicom

        self.path = Path(path)
        if self.path.is_dir():
            files = sorted(p for p in self.path.iterdir() if p.is_file() and is_dicom_file(p))
        elif self.path.is_file():
            files = [self.path]
        else:
            raise SourceError(f"DICOM source {str(self.path)!r} does not exist; {ACCEPTED}")
        if not files:
            raise SourceError(f"no DICOM files (.dcm or DICM signature) in {str(self.path)!r}")
        datasets = []
        unreadable: dict[str, str] = {}
        for file in files:
            try:
                dataset = pydicom.dcmread(str(file))
                if "PixelData" not in dataset:
                    raise SourceError("no pixel data")
                datasets.append((dataset, file))
            except Exception as error:  # pydicom raises several types for bad files: skip, count
                unreadable[str(file)] = f"{file.name}: {type(error).__name__}: {str(error)[:120]}"
        if not datasets:
            first = next(iter(unreadable.values()))
            raise SourceError(f"cannot read DICOM {'file' if len(files) == 1 else 'files'} in "
                              f"{str(self.path)!r}: {first}")
        datasets.sort(key=lambda pair: int(getattr(pair[0], "InstanceNumber", 0) or 0))
        self._datasets = [dataset for dataset, _ in datasets]
        self._files = [file for _, file in datasets]
        self.loop = loop
        self._dataset_index = 0
        self._frames: np.ndarray | None = None
        self._frame_index = 0
        self._pixel_size: float | None = None
        first = self._datasets[0]
        native = None
        for tag in ("CineRate", "RecommendedDisplayFrameRate"):
            if getattr(first, tag, None):
                native = float(getattr(first, tag))
                break
        if native is None and getattr(first, "FrameTime", None):
            native = 1000.0 / float(first.FrameTime)
        total = sum(int(getattr(d, "NumberOfFrames", 1) or 1) for d in self._datasets)
        label = self.path.name + (f" ({len(files)} files)" if len(files) > 1 else "")
        super().__init__(
            f"dicom {label}, {total} frames",
            is_live=False,
            fps=fps or native or 30.0,
            realtime=realtime,
            geometry=geometry,
            stream_name=f"dicom, {total} frame{'s' if total != 1 else ''}",
        )
        self.unreadable.update(unreadable)

    def _load(self) -> bool:
        """Decode the current dataset's frames; False (recorded in ``unreadable``) when they cannot be."""
        ds, file = self._datasets[self._dataset_index], self._files[self._dataset_index]
        if str(file) in self.unreadable:
            return False
        try:
            self._frames = dicom_frames_gray(ds)
        except Exception as error:  # truncated or damaged pixel data: skip this file, count it
            self.unreadable[str(file)] = f"{file.name}: cannot decode pixels: {str(error)[:120]}"
            return False
        self._pixel_size = dicom_pixel_size_mm(ds)
        self._frame_index = 0
        return True

    def _next_raw(self) -> tuple[np.ndarray, float | None, dict] | None:
        while True:
            if self._frames is None:
                if all(str(f) in self.unreadable for f in self._files):
                    raise SourceError(f"none of the DICOM pixel data can be decoded (first: "
                                      f"{next(iter(self.unreadable.values()))})")
                if self._dataset_index >= len(self._datasets):
                    if not self.loop:
                        return None
                    self._dataset_index = 0
                if not self._load():
                    self._dataset_index += 1
                    continue
            assert self._frames is not None
            if self._frame_index < len(self._frames):
                image = self._frames[self._frame_index]
                meta = {"dicom_frame": self._frame_index, "dicom_instance": self._dataset_index}
                self._frame_index += 1
                return image, self._pixel_size, meta
            self._frames = None
            self._dataset_index += 1


# --------------------------------------------------------------------------------------------- devices


def parse_fourcc(fourcc: str | None) -> int | None:
    if fourcc is None:
        return None
    if len(fourcc) != 4:
        raise SourceError(f"FOURCC must be 4 characters (e.g. MJPG, YUYV); got {fourcc!r}")
    return cv2.VideoWriter_fourcc(*fourcc)


def fourcc_text(code: float) -> str:
    value = int(code)
    text = "".join(chr((value >> (8 * i)) & 0xFF) for i in range(4))
    return text if text.isprintable() and text.strip() else f"0x{value:08x}"


class CaptureDeviceSource(FrameSource):
    """A capture device (UVC/V4L2 capture card, webcam) through OpenCV.

    ``device`` is an index or a ``/dev/videoN`` path. The V4L2 backend is used on Linux. Requested
    FOURCC, width, height and fps are set before reading; ``delivered`` holds what the device reports
    back (it may silently choose something else), and the description says both. A failed read raises
    ``SourceDisconnectedError`` (the grabber then reconnects).
    """

    def __init__(
        self,
        device: int | str,
        *,
        width: int | None = None,
        height: int | None = None,
        fps: float | None = None,
        fourcc: str | None = None,
        geometry: GeometryProfile | None = None,
    ):
        backend = cv2.CAP_V4L2 if sys.platform.startswith("linux") else cv2.CAP_ANY
        target = device if isinstance(device, int) else str(device)
        self._cap = cv2.VideoCapture(target, backend)
        if not self._cap.isOpened():
            self._cap.release()
            raise SourceError(
                f"cannot open capture device {device!r} (missing, busy or no permission); "
                "`sonograde sources` lists the devices found"
            )
        # Keep the driver's queue short: the pipeline wants the newest frame, not a backlog.
        self._cap.set(cv2.CAP_PROP_BUFFERSIZE, 1)
        code = parse_fourcc(fourcc)
        if code is not None:
            self._cap.set(cv2.CAP_PROP_FOURCC, code)
        if width:
            self._cap.set(cv2.CAP_PROP_FRAME_WIDTH, int(width))
        if height:
            self._cap.set(cv2.CAP_PROP_FRAME_HEIGHT, int(height))
        if fps:
            self._cap.set(cv2.CAP_PROP_FPS, float(fps))
        self.requested = {"width": width, "height": height, "fps": fps, "fourcc": fourcc}
        self.delivered = {
            "width": int(self._cap.get(cv2.CAP_PROP_FRAME_WIDTH)),
            "height": int(self._cap.get(cv2.CAP_PROP_FRAME_HEIGHT)),
            "fps": float(self._cap.get(cv2.CAP_PROP_FPS)),
            "fourcc": fourcc_text(self._cap.get(cv2.CAP_PROP_FOURCC)),
            "backend": self._cap.getBackendName(),
        }
        d = self.delivered
        asked = ", ".join(f"{k}={v}" for k, v in self.requested.items() if v)
        description = (
            f"device {device} ({d['backend']}): {d['width']}x{d['height']} @ {d['fps']:g} fps "
            f"{d['fourcc']}" + (f" (requested {asked})" if asked else "")
        )
        self.device = device
        number = str(device).removeprefix("/dev/video")
        super().__init__(description, is_live=True, fps=d["fps"] or fps, realtime=False, geometry=geometry,
                         stream_name=f"capture device {number if number.isdigit() else ''}".strip())

    def _next_raw(self) -> tuple[np.ndarray, float | None, dict] | None:
        ok, image = self._cap.read()
        if not ok or image is None:
            raise SourceDisconnectedError(f"capture device {self.device!r} stopped delivering frames")
        return image, None, {}

    def _release(self) -> None:
        self._cap.release()


def list_capture_devices() -> list[dict]:
    """Each ``/dev/video*`` node with what OpenCV (V4L2) reports, or the error opening it."""
    found = []
    for node in sorted(glob.glob("/dev/video*"), key=lambda p: (len(p), p)):
        entry: dict = {"path": node}
        cap = cv2.VideoCapture(node, cv2.CAP_V4L2)
        try:
            if not cap.isOpened():
                entry["error"] = "cannot open (busy, no permission, or a metadata-only node)"
            else:
                entry.update(
                    width=int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)),
                    height=int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT)),
                    fps=float(cap.get(cv2.CAP_PROP_FPS)),
                    fourcc=fourcc_text(cap.get(cv2.CAP_PROP_FOURCC)),
                    backend=cap.getBackendName(),
                )
        finally:
            cap.release()
        found.append(entry)
    return found


# --------------------------------------------------------------------------------------------- factory


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


__all__ = [
    "ACCEPTED",
    "CaptureDeviceSource",
    "DicomSource",
    "FrameSource",
    "ImageFilesSource",
    "SourceDisconnectedError",
    "SourceError",
    "VideoFileSource",
    "dicom_frames_gray",
    "dicom_pixel_size_mm",
    "dicom_pixel_spacing_mm",
    "list_capture_devices",
    "open_source",
    "stream_name_of",
    "to_gray",
]
