"""Reading one image file for grading: JPEG, PNG, BMP, TIFF (8 or 16 bit) or DICOM, with the pixel cap
checked before decoding, and the pixel size a DICOM file carries. Shared by ``sonograde grade`` and the
archive grader (``sonograde.archive``); writes nothing unless asked (``write_png``).
"""

from __future__ import annotations

from pathlib import Path

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".dcm")


def dicom_pixel_size(path: Path) -> tuple[float | None, str | None]:
    """(pixel size in mm, source) from a DICOM file's Sequence of Ultrasound Regions or Pixel Spacing
    (capture's reader), (None, None) where it has neither or is not DICOM."""
    from capture.sources import is_dicom_file

    if not is_dicom_file(path):
        return None, None
    import pydicom

    try:
        ds = pydicom.dcmread(str(path), stop_before_pixels=True)
    except Exception:  # unreadable headers are reported by read_image
        return None, None
    return dataset_pixel_size(ds)


def dataset_pixel_size(ds) -> tuple[float | None, str | None]:
    """(pixel size in mm, source) of a read DICOM dataset: its Sequence of Ultrasound Regions, else its
    Pixel Spacing; (None, None) where it has neither."""
    from capture.sources import dicom_pixel_size_mm

    size = dicom_pixel_size_mm(ds)
    if size is None or not size > 0:
        return None, None
    regions = getattr(ds, "SequenceOfUltrasoundRegions", None)
    from_regions = bool(regions) and any(int(getattr(r, "PhysicalUnitsXDirection", 0)) == 3
                                         and getattr(r, "PhysicalDeltaX", None) for r in regions)
    return size, "dicom_ultrasound_regions" if from_regions else "dicom_pixel_spacing"


def read_image(path: Path, max_pixels: int | None = None):
    """Read an image as uint8 (H x W gray or H x W x 3 BGR; ``capture.sources.read_image_file``: 16-bit
    data by its significant bits, the pixel cap checked from the header). Raises ValueError saying why
    it cannot."""
    from capture.sources import MAX_PIXELS, is_dicom_file, read_image_file

    limit = MAX_PIXELS if max_pixels is None else max_pixels
    if path.is_file() and is_dicom_file(path):
        return _read_dicom(path, limit)
    return read_image_file(path, limit)  # SourceError is a ValueError


def _read_dicom(path: Path, max_pixels: int):
    """First frame of a DICOM file as uint8 gray, through the capture package's DICOM reader."""
    return read_dicom_frames(path, max_pixels)[0][0]


def read_dicom_frames(path: Path, max_pixels: int | None = None, check=None):
    """All frames of a DICOM file as (N, H, W) uint8 gray, and the dataset (for its pixel size and UIDs).
    ``check(dataset)``, when given, runs before the pixels are decoded and may raise (e.g. to refuse what
    is not an ultrasound image). Raises ValueError (one line) when it cannot be read or is over
    ``max_pixels`` a frame."""
    import pydicom

    from capture.sources import MAX_PIXELS, dicom_frames_gray

    limit = MAX_PIXELS if max_pixels is None else max_pixels
    try:
        dataset = pydicom.dcmread(str(path))
        if check is not None:
            check(dataset)
        rows, columns = int(getattr(dataset, "Rows", 0) or 0), int(getattr(dataset, "Columns", 0) or 0)
        if rows * columns > limit:
            raise ValueError(f"{columns} x {rows} pixels is more than the limit of {limit:,}")
        frames = dicom_frames_gray(dataset)
    except ValueError:
        raise
    except Exception as exc:  # pydicom and the pixel decoders raise many types
        raise ValueError(f"not a readable DICOM image ({type(exc).__name__}: {str(exc)[:120]})") from exc
    return frames, dataset


def write_png(path: Path, image) -> None:
    import cv2

    ok, encoded = cv2.imencode(".png", image)
    if not ok:  # pragma: no cover - PNG encoding of uint8 arrays does not fail
        raise OSError(f"could not encode {path}")
    encoded.tofile(str(path))
