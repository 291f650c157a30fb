"""Scanner-screen geometry on phantom screens: image rectangle within 2 px, mm per pixel within 2 %."""

from __future__ import annotations

import json

import numpy as np
import pytest

from capture.geometry import GeometryProfile
from capture.phantom import PhantomScanner
from capture.screen import LAYOUTS, render_scanner_screen
from capture.screen_measure import GeometryMeasurementError, measure_geometry


@pytest.mark.parametrize("layout", range(len(LAYOUTS)))
def test_phantom_screens_rectangle_and_scale(layout, rng):
    scanner = PhantomScanner(int(rng.integers(0, 10_000)), (384, 320))
    for _ in range(3):
        depth = float(rng.uniform(25.0, 70.0))
        image = scanner.sample().image
        screen, truth = render_scanner_screen(image, depth, layout=layout, seed=int(rng.integers(0, 1000)))
        result = measure_geometry(screen)
        assert result.method == "ruler" and result.ruler is not None
        error_px = max(abs(a - b) for a, b in zip(result.image_rect, truth.image_rect, strict=True))
        assert error_px <= 2, (layout, depth, result.image_rect, truth.image_rect)
        assert abs(result.mm_per_pixel / truth.mm_per_pixel - 1) < 0.02, (layout, depth)
        assert result.ruler.side == truth.ruler_side
        assert len(result.ruler.rows) == len(truth.ticks)


def test_given_depth_sets_scale_and_ruler_cross_checks(rng):
    image = PhantomScanner(3, (384, 320)).sample().image
    screen, truth = render_scanner_screen(image, 40.0, layout=1)
    result = measure_geometry(screen, depth_mm=40.0)
    assert result.method == "depth" and abs(result.mm_per_pixel / truth.mm_per_pixel - 1) < 0.01
    assert not result.notes  # the ruler agrees with the given depth
    wrong = measure_geometry(screen, depth_mm=50.0)
    assert any("check the depth setting" in note for note in wrong.notes)


def test_uniform_screen_is_an_error():
    with pytest.raises(GeometryMeasurementError, match="no image region"):
        measure_geometry(np.full((480, 640), 16, np.uint8))


def test_cli_writes_profile_that_crops_the_image(tmp_path, capsys):
    from capture.sources import open_source
    from sonograde.cli import main

    spec = "phantom:screen=1,layout=2,depth=45,seed=5"
    out = tmp_path / "geometry.json"
    args = ["screen", "measure", "--source", spec, "--frames", "2", "--out", str(out), "--json"]
    assert main(args) == 0
    printed = json.loads(capsys.readouterr().out)
    profile = GeometryProfile.load(out)
    source = open_source(spec, realtime=False)
    frame = source.read()
    source.close()
    truth = frame.meta["screen_truth"]
    assert max(abs(a - b) for a, b in zip(profile.image_rect, truth.image_rect, strict=True)) <= 2
    assert abs(profile.mm_per_pixel / truth.mm_per_pixel - 1) < 0.02
    assert printed["method"] == "ruler" and abs(printed["depth_mm"] - 45.0) < 0.9
    assert profile.crop(frame.image).shape == (truth.image_rect[3], truth.image_rect[2])


def test_calibrate_geometry_is_a_deprecated_alias_of_screen_measure(tmp_path, capsys):
    """The old spelling still measures, writes the same profile and says on stderr that it is deprecated."""
    from sonograde.cli import main

    spec = "phantom:screen=1,layout=2,depth=45,seed=5"
    options = ["--source", spec, "--frames", "1", "--json"]
    assert main(["screen", "measure", *options, "--out", str(tmp_path / "new.json")]) == 0
    new = capsys.readouterr()
    assert "deprecated" not in new.err
    assert main(["calibrate", "geometry", *options, "--out", str(tmp_path / "old.json")]) == 0
    old = capsys.readouterr()
    assert "deprecated" in old.err and "sonograde screen measure" in old.err
    assert {**json.loads(old.out), "out": None} == {**json.loads(new.out), "out": None}
    assert GeometryProfile.load(tmp_path / "old.json") == GeometryProfile.load(tmp_path / "new.json")
