"""Overlay drawing, recording and snapshots (pure: messages built here; the end-to-end test with real
published messages is in test_pipeline.py)."""

from __future__ import annotations

import time

import cv2
import numpy as np

from sonograde import RESEARCH_USE_ONLY
from sonograde.cli import main as cli_main
from sonograde.messages import Message, decode, encode, encode_frame
from sonograde.overlay import REFINED_RED, ROI_BLUE, OverlayRenderer, OverlaySink, display_available


def result_message(rng: np.random.Generator, *, with_frame: bool = True, state: str = "connected") -> Message:
    h, w = 240, 320
    image = rng.integers(90, 160, (h, w), dtype=np.uint8)
    cx, cy = int(rng.integers(100, 220)), int(rng.integers(80, 160))
    angles = np.linspace(0, 2 * np.pi, 40, endpoint=False)
    roi = np.stack([cx + 45 * np.cos(angles), cy + 35 * np.sin(angles)], 1).round().astype(int)
    refined = np.stack([cx + 30 * np.cos(angles), cy + 22 * np.sin(angles)], 1).round().astype(int)
    header = {
        "seq": 0, "frame_index": 7, "t_capture_ns": time.monotonic_ns() - 20_000_000,
        "t_publish_ns": time.monotonic_ns(), "source": "test", "source_state": state, "image_size": [h, w],
        "pixel_size_mm": 0.1, "lesion_found": True, "roi_contour": roi.tolist(),
        "refined_contour": refined.tolist(),
        "bbox": [cx - 30, cy - 22, 61, 45], "area_px": 2070.0, "area_mm2": 20.7, "category": "4B",
        "probabilities": {"3": 0.1, "4A": 0.2, "4B": 0.4, "4C": 0.2, "5": 0.1}, "smoothed_category": "4A",
        "smoothed_probabilities": {"3": 0.1, "4A": 0.4, "4B": 0.3, "4C": 0.1, "5": 0.1},
        "track": {"id": 1, "age": 12, "missed": 0},
        "timings_ms": {"locate": 6.0, "refine": 3.0, "classify": 20.0},
        "model_ids": {"roi": "r", "grader": "g"}, "dropped": {"total": 0}, "stale_graded": 0, "frame": None,
        "research_use": RESEARCH_USE_ONLY,
    }
    part = None
    if with_frame:
        header["frame"], part = encode_frame(image)
    return decode(encode("result", header, part), t_receive_ns=time.monotonic_ns())


def colour_mask(picture: np.ndarray, colour: tuple[int, int, int]) -> np.ndarray:
    return np.abs(picture.astype(int) - np.array(colour)).max(axis=2) <= 60


def test_render_draws_both_contours_banner_and_is_fixed_size(rng):
    renderer = OverlayRenderer()
    picture = renderer.render(result_message(rng), None, 29.5)
    assert picture.shape == (renderer.height, renderer.width, 3) and picture.dtype == np.uint8
    image_area = picture[renderer.style.banner_height:, :renderer.image_width]
    assert colour_mask(image_area, REFINED_RED).sum() > 100
    assert colour_mask(image_area, ROI_BLUE).sum() > 100
    banner = picture[:renderer.style.banner_height]
    assert colour_mask(banner, (0, 190, 255)).mean() > 0.5  # amber research-use banner
    empty = renderer.render(None)
    assert empty.shape == picture.shape  # a recorder gets equal-sized pictures


def test_render_without_frame_still_draws_contours(rng):
    renderer = OverlayRenderer()
    picture = renderer.render(result_message(rng, with_frame=False))
    area = picture[renderer.style.banner_height:, :renderer.image_width]
    assert colour_mask(area, REFINED_RED).sum() > 100


def test_reconnecting_source_dims_the_image(rng):
    renderer = OverlayRenderer()
    result = result_message(rng)
    normal = renderer.render(result)
    status_header = {"seq": 1, "t_publish_ns": time.monotonic_ns() + 1, "source": "test",
                     "source_state": "reconnecting", "research_use": RESEARCH_USE_ONLY, "frames_published": 1,
                     "fps": 0.0, "dropped": {"total": 0}, "stale_graded": 0, "last_error": "unplugged"}
    status = Message("status", status_header)
    dimmed = renderer.render(result, status)
    top, width = renderer.style.banner_height, renderer.image_width
    assert dimmed[top:, :width].mean() < 0.8 * normal[top:, :width].mean()


def test_sink_records_mp4_and_writes_snapshot(rng, tmp_path):
    renderer = OverlayRenderer()
    sink = OverlaySink(window=False, record=tmp_path / "out.mp4", snapshot=tmp_path / "snap.png")
    pictures = [renderer.render(result_message(rng), None, 30.0) for _ in range(5)]
    for picture in pictures:
        sink.show(picture)
    assert sink.close() == tmp_path / "snap.png"
    capture = cv2.VideoCapture(str(tmp_path / "out.mp4"))
    frames = 0
    while capture.read()[0]:
        frames += 1
    capture.release()
    assert frames == 5
    np.testing.assert_array_equal(cv2.imread(str(tmp_path / "snap.png")), pictures[-1])


def test_no_display_is_reported(monkeypatch):
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    available, why = display_available()
    assert not available and "DISPLAY" in why
    assert cli_main(["overlay", "--frames", "1"]) == 2  # no window, nothing to record: clear error
    assert cli_main(["run", "--overlay", "--frames", "1"]) == 2
