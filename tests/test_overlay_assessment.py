"""The overlay's explained assessment: calipers drawn on the lesion, the descriptor column filled, the
research-use line, version-1 messages shown without an assessment (snapshot PNGs read back)."""

from __future__ import annotations

import json

import cv2
import numpy as np
from assessment_samples import sample_assessment
from test_overlay import colour_mask, result_message

from sonograde.assessment import NO_LESION
from sonograde.messages import RESULT_TOPIC, decode, encode, encode_frame
from sonograde.overlay import _TICK_PX, CALIPER_GREEN, OverlayRenderer, OverlaySink


def with_assessment(rng, assessment: dict | None, version: int = 2):
    base = result_message(rng)
    header = dict(base.header)
    header.pop("schema_version")
    header.pop("assessment")
    header["frame"], part = encode_frame(base.frame)
    if version == 1:
        header["schema_version"] = 1
        return decode([RESULT_TOPIC, json.dumps(header).encode(), part])
    if assessment is not None:
        header["assessment"] = assessment
    return decode(encode("result", header, part))


def canvas_transform(renderer: OverlayRenderer, shape: tuple[int, int]):
    h, w = shape
    style = renderer.style
    scale = min(renderer.image_width / w, style.image_height / h)
    dx = (renderer.image_width - round(w * scale)) // 2
    dy = (style.image_height - round(h * scale)) // 2 + style.banner_height

    def to_canvas(point) -> np.ndarray:
        return np.asarray(point, float) * scale + 0.5 * scale - 0.5 + (dx, dy)

    return to_canvas


def near(mask: np.ndarray, x: float, y: float, radius: int = 1) -> bool:
    xi, yi = round(x), round(y)
    return bool(mask[yi - radius:yi + radius + 1, xi - radius:xi + radius + 1].any())


def test_calipers_and_descriptor_column_in_the_snapshot(rng, tmp_path):
    first = result_message(rng)
    assessment = sample_assessment(rng, tuple(first.header["bbox"]), pixel_size_mm=0.1)
    message = with_assessment(rng, assessment)
    renderer = OverlayRenderer()
    sink = OverlaySink(window=False, snapshot=tmp_path / "snap.png")
    sink.show(renderer.render(message, None, 30.0))
    picture = cv2.imread(str(sink.close()))
    assert picture.shape == (renderer.height, renderer.width, 3)

    green = colour_mask(picture, CALIPER_GREEN)
    to_canvas = canvas_transform(renderer, message.frame.shape)
    for key in ("width", "height"):
        start, end = (to_canvas(p) for p in message.assessment["calipers"][key])
        along = [start + t * (end - start) for t in np.linspace(0.05, 0.95, 25)]
        assert np.mean([near(green, x, y) for x, y in along]) >= 0.9, key
        # End ticks: across the line, a few pixels off it, at both ends.
        offset = np.array([0.0, _TICK_PX - 2]) if key == "width" else np.array([_TICK_PX - 2, 0.0])
        for point in (start, end):
            assert near(green, *(point + offset)) and near(green, *(point - offset)), key
    # Nothing green outside the image area but the caliper labels' text
    assert green[:, renderer.image_width:].sum() == 0

    style = renderer.style
    column = picture[style.banner_height:, renderer.image_width + style.panel_width:]
    bright = (column.astype(int).min(axis=2) > 150)
    descriptor_rows = bright[150:360]
    assert descriptor_rows.sum() > 1500, "descriptor panel text missing"
    amber = colour_mask(column[-60:], (0, 190, 255))
    assert amber.sum() > 200, "research-use line missing"

    absent = with_assessment(rng, {"absent": dict.fromkeys(
        ("descriptors", "size", "calipers", "malignancy_probability", "drivers"), NO_LESION)})
    bare = renderer.render(absent, None, 30.0)
    assert colour_mask(bare, CALIPER_GREEN).sum() == 0
    bare_column = bare[style.banner_height:, renderer.image_width + style.panel_width:]
    assert (bare_column.astype(int).min(axis=2) > 150)[150:360].sum() < descriptor_rows.sum() / 4


def test_size_in_px_is_labelled_px(rng):
    first = result_message(rng)
    assessment = sample_assessment(rng, tuple(first.header["bbox"]), pixel_size_mm=None)
    with_px = OverlayRenderer().render(with_assessment(rng, assessment), None, 30.0)
    assessment_mm = sample_assessment(rng, tuple(first.header["bbox"]), pixel_size_mm=0.1)
    with_mm = OverlayRenderer().render(with_assessment(rng, assessment_mm), None, 30.0)
    assert colour_mask(with_px, CALIPER_GREEN).sum() > 100
    assert not np.array_equal(with_px, with_mm)


def test_version_1_result_draws_no_calipers_and_says_the_publisher_is_older(rng):
    renderer = OverlayRenderer()
    message = with_assessment(rng, None, version=1)
    assert message.assessment is None
    picture = renderer.render(message, None, 30.0)
    assert colour_mask(picture, CALIPER_GREEN).sum() == 0
    style = renderer.style
    column = picture[style.banner_height:, renderer.image_width + style.panel_width:]
    assert (column.astype(int).min(axis=2) > 100)[70:120].sum() > 100  # the "schema 1" note
