"""DICOM files as frames: recognizing them, their physical pixel size, their frames as 8-bit gray
(every photometric interpretation ultrasound uses) and ``DicomSource`` (a file, single or multi-frame, or
a folder of files)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from capture.frame_source import ACCEPTED, FrameSource, SourceError, scale_to_u8
from capture.geometry import GeometryProfile


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
