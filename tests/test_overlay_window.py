"""The overlay window for real: `sonograde overlay` opens its OpenCV window on an Xvfb display, a
publisher sends results over tcp, and a screenshot of the X screen (ImageMagick's `import`, or `xwd`)
must show the red refined and blue ROI-CNN contours, the category in its colour in the side panel and
the research-use banner. Skipped where Xvfb, a screenshot tool or an OpenCV GUI backend is missing
(.ci/run installs Xvfb and ImageMagick on Debian)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from sonograde import RESEARCH_USE_ONLY
from sonograde.messages import encode, encode_frame
from sonograde.overlay import _CATEGORY_COLOURS, REFINED_RED, ROI_BLUE
from sonograde.publisher import Publisher, PublisherConfig

REPO = Path(__file__).resolve().parents[1]
DEADLINE_S = 60.0


def _gui_backend() -> bool:
    info = cv2.getBuildInformation()
    gui = info.split("GUI:", 1)[1].split("\n", 1)[0].strip() if "GUI:" in info else ""
    return gui.upper() not in ("", "NONE")


pytestmark = [
    pytest.mark.skipif(shutil.which("Xvfb") is None, reason="Xvfb not installed (apt-get install xvfb)"),
    pytest.mark.skipif(shutil.which("import") is None and shutil.which("xwd") is None,
                       reason="no screenshot tool (apt-get install imagemagick)"),
    pytest.mark.skipif(not _gui_backend(), reason="OpenCV without a GUI backend (headless build)"),
]


@pytest.fixture
def xvfb_display():
    """A fresh Xvfb server on a free display number (Xvfb picks it and reports it on a pipe)."""
    read_fd, write_fd = os.pipe()
    server = subprocess.Popen(["Xvfb", "-displayfd", str(write_fd), "-screen", "0", "1400x900x24",
                               "-nolisten", "tcp"], pass_fds=(write_fd,), stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    os.close(write_fd)
    try:
        with os.fdopen(read_fd) as pipe:
            number = pipe.readline().strip()
        if not number:
            pytest.skip("Xvfb did not start")
        yield f":{number}"
    finally:
        server.terminate()
        server.wait(10)


def screenshot(display: str, path: Path) -> np.ndarray | None:
    env = {**os.environ, "DISPLAY": display}
    if shutil.which("import"):
        subprocess.run(["import", "-window", "root", str(path)], env=env, capture_output=True, timeout=30)
    else:
        dump = subprocess.run(["xwd", "-root", "-silent"], env=env, capture_output=True, timeout=30).stdout
        path = path.with_suffix(".xwd")
        path.write_bytes(dump)
    return cv2.imread(str(path))


def near(picture: np.ndarray, colour: tuple[int, int, int], tolerance: int = 40) -> np.ndarray:
    return np.abs(picture.astype(int) - np.array(colour)).max(axis=2) <= tolerance


def result_parts(rng: np.random.Generator, seq: int) -> list[bytes]:
    h, w = 300, 400
    image = cv2.GaussianBlur(rng.normal(140, 30, (h, w)).clip(0, 255).astype(np.uint8), (0, 0), 1.5)
    angles = np.linspace(0, 2 * np.pi, 48, endpoint=False)
    roi = np.stack([200 + 90 * np.cos(angles), 150 + 70 * np.sin(angles)], 1).round().astype(int)
    refined = np.stack([200 + 60 * np.cos(angles), 150 + 45 * np.sin(angles)], 1).round().astype(int)
    header = {
        "seq": seq, "frame_index": seq, "t_capture_ns": time.monotonic_ns(),
        "t_publish_ns": time.monotonic_ns(),
        "source": "test", "source_state": "connected", "image_size": [h, w], "pixel_size_mm": 0.1,
        "lesion_found": True, "roi_contour": roi.tolist(), "refined_contour": refined.tolist(),
        "bbox": [140, 105, 121, 91], "area_px": 8500.0, "area_mm2": 85.0, "category": "4A",
        "probabilities": {"3": 0.1, "4A": 0.6, "4B": 0.1, "4C": 0.1, "5": 0.1}, "smoothed_category": "4A",
        "smoothed_probabilities": {"3": 0.1, "4A": 0.6, "4B": 0.1, "4C": 0.1, "5": 0.1},
        "track": {"id": 0, "age": seq + 1, "missed": 0}, "timings_ms": {"locate": 5.0},
        "model_ids": {"roi": "r", "grader": "g"}, "dropped": {"total": 0}, "stale_graded": 0, "frame": None,
        "research_use": RESEARCH_USE_ONLY,
    }
    header["frame"], part = encode_frame(image)
    return encode("result", header, part)


def test_overlay_window_on_xvfb_shows_contours_and_category(xvfb_display, rng, tmp_path):
    messages = [result_parts(rng, i) for i in range(4)]
    stop = threading.Event()
    with Publisher(PublisherConfig(endpoint="tcp://127.0.0.1:*")) as publisher:
        def send() -> None:
            seq = 0
            while not stop.is_set():
                publisher.send(messages[seq % len(messages)])
                seq += 1
                time.sleep(0.05)

        sender = threading.Thread(target=send, daemon=True)
        sender.start()
        snapshot = tmp_path / "snapshot.png"
        env = {**os.environ, "DISPLAY": xvfb_display, "PYTHONPATH": str(REPO), "QT_QPA_PLATFORM": "xcb"}
        command = [sys.executable, "-P", "-m", "sonograde.cli", "overlay", "--connect", publisher.endpoint,
                   "--snapshot", str(snapshot), "--seconds", str(DEADLINE_S)]
        overlay = subprocess.Popen(command, env=env, stderr=subprocess.PIPE, text=True)
        shot = None
        try:
            end = time.monotonic() + DEADLINE_S
            while time.monotonic() < end and overlay.poll() is None:
                time.sleep(0.5)
                picture = screenshot(xvfb_display, tmp_path / "screen.png")
                if picture is not None and near(picture, REFINED_RED).sum() > 100:
                    time.sleep(0.5)  # one more frame drawn, then the picture that is checked
                    shot = screenshot(xvfb_display, tmp_path / "screen.png")
                    break
        finally:
            stop.set()
            if overlay.poll() is None:
                overlay.send_signal(signal.SIGINT)
            _, err = overlay.communicate(timeout=30)
            sender.join(5)
    assert overlay.returncode == 0, err
    assert "no window" not in err and "recording/snapshot only" not in err, err
    assert shot is not None, f"the overlay window never showed a red contour on {xvfb_display}: {err}"
    red, blue = near(shot, REFINED_RED), near(shot, ROI_BLUE)
    assert red.sum() > 200 and blue.sum() > 200
    banner = near(shot, (0, 190, 255), 10)
    assert banner.sum() > 5000  # the amber research-use banner along the window's top
    top = int(np.nonzero(banner)[0].min())  # the window's first picture row
    # The large category label: in its colour, in the side panel right of the contours, above the bars
    # (which start 162 px below the banner; the banner is 40 px high).
    label_rows = near(shot, _CATEGORY_COLOURS["4A"], 30)[top + 40 + 30:top + 40 + 110]
    assert label_rows.sum() > 150, "the large category label in its colour"
    assert np.nonzero(label_rows)[1].min() > np.nonzero(red | blue)[1].max()
    assert snapshot.is_file()
