"""Frame sources: capture cards, files, DICOM, the synthetic phantom scanner, and the live grabber."""

from capture.frame import Frame

__all__ = ["Frame"]
