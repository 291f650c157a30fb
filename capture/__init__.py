"""Frame sources: capture cards, files, DICOM, the synthetic phantom scanner, and the live grabber.

Modules: ``frame`` (the Frame dataclass), ``frame_source`` (the ``FrameSource`` base and the source
errors), ``sources`` (``open_source``, which picks a source from a string), ``image_files``,
``video_sources``, ``dicom_source`` and ``phantom_sequence`` (the sources), ``grabber``
(``LatestFrameGrabber``), ``geometry`` (``GeometryProfile``), ``phantom`` (the phantom scanner),
``screen`` (scanner-screen rendering). The names below are imported lazily so that ``import capture``
stays cheap.
"""

from __future__ import annotations

from typing import Any

from capture.frame import Frame

_LAZY = {
    "FrameSource": "capture.frame_source",
    "SourceError": "capture.frame_source",
    "open_source": "capture.sources",
    "GeometryProfile": "capture.geometry",
    "LatestFrameGrabber": "capture.grabber",
    "PhantomScanner": "capture.phantom",
    "PhantomSequence": "capture.phantom_sequence",
}

__all__ = ["Frame", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'capture' has no attribute {name!r}")
