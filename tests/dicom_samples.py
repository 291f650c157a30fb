"""Ultrasound DICOM images for the DICOM tests, built from real images (test helper, not product code)."""

from __future__ import annotations

import datetime as dt

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

US_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.6.1"
US_MULTIFRAME_STORAGE = "1.2.840.10008.5.1.4.1.1.3.1"
CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
PATIENT_NAME = "Testpatient^Sonograde"  # a recognizable name the tests look for in the logs
PATIENT_ID = "SG-TEST-0042"


def ultrasound_dataset(gray: np.ndarray, *, pixel_size_mm: float | None, study_uid: str | None = None,
                       instance_number: int = 1, regions_only: bool = True,
                       sop_class_uid: str = US_IMAGE_STORAGE, modality: str = "US") -> Dataset:
    """A single- or multi-frame 8-bit MONOCHROME2 image dataset; the pixel size (mm, square) only in a
    Sequence of Ultrasound Regions (cm per pixel, units code 3) unless ``regions_only`` is False."""
    gray = np.ascontiguousarray(gray, dtype=np.uint8)
    frames = gray.shape[0] if gray.ndim == 3 else 1
    rows, cols = gray.shape[-2:]
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = sop_class_uid
    ds.SOPClassUID = sop_class_uid
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.PatientName = PATIENT_NAME
    ds.PatientID = PATIENT_ID
    ds.PatientBirthDate = "19700101"
    ds.PatientSex = "F"
    ds.StudyInstanceUID = study_uid or generate_uid()
    ds.SeriesInstanceUID = generate_uid(entropy_srcs=[ds.StudyInstanceUID, "series"])
    ds.StudyID = "1"
    ds.AccessionNumber = "A42"
    ds.ReferringPhysicianName = ""
    today = dt.date(2026, 1, 2)
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = today.strftime("%Y%m%d")
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = "101500"
    ds.Modality = modality
    ds.SeriesNumber = 1
    ds.InstanceNumber = instance_number
    ds.Manufacturer = "Test scanner"
    ds.PatientOrientation = ""
    ds.Laterality = "L"
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.Rows, ds.Columns = rows, cols
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    if frames > 1:
        ds.NumberOfFrames = frames
        ds.FrameIncrementPointer = 0x00181063  # Frame Time
        ds.FrameTime = 33.3
    if pixel_size_mm is not None:
        region = Dataset()
        region.RegionSpatialFormat = 1  # 2D
        region.RegionDataType = 1  # tissue
        region.RegionFlags = 0
        region.RegionLocationMinX0, region.RegionLocationMinY0 = 0, 0
        region.RegionLocationMaxX1, region.RegionLocationMaxY1 = cols - 1, rows - 1
        region.PhysicalUnitsXDirection = region.PhysicalUnitsYDirection = 3  # cm
        region.PhysicalDeltaX = region.PhysicalDeltaY = pixel_size_mm / 10.0
        region.ReferencePixelX0 = region.ReferencePixelY0 = 0
        ds.SequenceOfUltrasoundRegions = [region]
        if not regions_only:
            ds.PixelSpacing = [pixel_size_mm, pixel_size_mm]
    ds.PixelData = gray.tobytes()
    return ds
