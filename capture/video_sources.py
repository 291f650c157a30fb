"""Video through OpenCV: video files (``VideoFileSource``) and capture devices (``CaptureDeviceSource``:
capture cards, webcams; V4L2 on Linux), and the list of capture devices found."""

from __future__ import annotations

import glob
import sys
from pathlib import Path

import cv2
import numpy as np

from capture.frame_source import FrameSource, SourceDisconnectedError, SourceError
from capture.geometry import GeometryProfile

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv", ".ogv")


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
