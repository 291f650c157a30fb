"""The phantom scanner: reproducible from the seed, lexicon-valid samples with visible lesions, a coherent
sweep in which lesions enter and leave, the scanner screen, and the `sonograde phantom` command."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from capture.phantom import (
    CATEGORIES,
    CATEGORY_TABLE,
    DESCRIPTOR_CHOICES,
    PhantomError,
    PhantomScanner,
)
from capture.phantom_sequence import PhantomSequence
from capture.screen import LAYOUTS, render_scanner_screen
from capture.sources import open_source
from engine.data.manifest import load_gray, load_mask, read_manifest
from sonograde.cli import main

SMALL = (160, 128)


def test_category_table_is_a_probability_table() -> None:
    assert set(CATEGORY_TABLE) == set(CATEGORIES)
    for row in CATEGORY_TABLE.values():
        assert set(row) == set(DESCRIPTOR_CHOICES)
        for key, probabilities in row.items():
            assert len(probabilities) == len(DESCRIPTOR_CHOICES[key])
            assert sum(probabilities) == pytest.approx(1.0)


def test_same_seed_same_samples_and_other_seeds_differ(rng: np.random.Generator) -> None:
    seed = int(rng.integers(0, 2**31))
    a, b = PhantomScanner(seed, SMALL), PhantomScanner(seed, SMALL)
    for _ in range(3):
        x, y = a.sample(), b.sample()
        np.testing.assert_array_equal(x.image, y.image)
        np.testing.assert_array_equal(x.mask, y.mask)
        assert (x.category, x.descriptors) == (y.category, y.descriptors)
    # sample_at regenerates any sample alone.
    np.testing.assert_array_equal(PhantomScanner(seed, SMALL).sample_at(2).image, x.image)
    other = PhantomScanner(seed + 1, SMALL).sample_at(2)
    assert not np.array_equal(other.image, x.image)


@pytest.mark.parametrize("category", CATEGORIES)
def test_samples_are_valid_and_lesions_stand_out(category: str, rng: np.random.Generator) -> None:
    scanner = PhantomScanner(int(rng.integers(0, 2**31)))
    contrasts = []
    for index in range(4):
        sample = scanner.sample_at(index, category)
        assert sample.category == category
        assert sample.image.dtype == np.uint8 and sample.image.shape == (320, 384)
        assert sample.mask.dtype == bool and sample.mask.shape == sample.image.shape
        for key, value in sample.descriptors.items():
            assert value in DESCRIPTOR_CHOICES[key]
        area = sample.mask.mean()
        assert 0.003 < area < 0.5
        # The lesion is one connected body.
        count, _ = cv2.connectedComponents(sample.mask.astype(np.uint8))
        assert count == 2
        # Contrast against a 2 mm ring around the lesion (lesion texture differs from its surroundings).
        ring_px = max(3, round(2.0 / sample.pixel_size_mm))
        kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * ring_px + 1, 2 * ring_px + 1))
        ring = (cv2.dilate(sample.mask.astype(np.uint8), kernel) > 0) & ~sample.mask
        image = cv2.GaussianBlur(sample.image, (0, 0), 2).astype(float)
        contrasts.append(abs(image[sample.mask].mean() - image[ring].mean()))
    # Every category's lesions are, on average, clearly darker or brighter than what surrounds them.
    assert np.mean(contrasts) > 15


def test_descriptor_frequencies_follow_the_table() -> None:
    scanner = PhantomScanner(11, (96, 80))
    benign = [scanner.sample_at(i, "3").descriptors for i in range(60)]
    malignant = [scanner.sample_at(100 + i, "5").descriptors for i in range(60)]
    assert sum(d["margin"] == "circumscribed" for d in benign) > 35  # p = 0.85
    assert sum(d["margin"] == "circumscribed" for d in malignant) == 0  # p = 0
    assert sum(d["shape"] == "irregular" for d in malignant) > 45  # p = 0.90
    assert sum(d["orientation"] == "not parallel" for d in malignant) > sum(
        d["orientation"] == "not parallel" for d in benign
    )


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(PhantomError, match="unknown category"):
        PhantomScanner(0).sample("6")
    with pytest.raises(PhantomError, match="size"):
        PhantomScanner(0, (10, 10))


def test_sequence_is_coherent_and_lesions_enter_and_leave() -> None:
    sequence = PhantomSequence(seed=3, size=SMALL, fps=30.0, realtime=False, speed_mm_s=15.0)
    frames = [sequence.read() for _ in range(100)]  # 50 mm of sweep: the first lesion (at 25 mm) passes
    sequence.close()
    assert all(f is not None for f in frames)
    assert [f.index for f in frames] == list(range(100))
    in_view = [f.meta["mask"] is not None for f in frames]
    assert not in_view[0] and any(in_view)
    first, last = in_view.index(True), len(in_view) - 1 - in_view[::-1].index(True)
    assert last < 95 and not any(in_view[last + 1 :])  # it left the view again
    assert all(f.meta["category"] is not None for f in frames[first : last + 1] if f.meta["mask"] is not None)
    # Coherent: consecutive frames are alike, also in their speckle (the high-pass part), while the
    # speckle of frames 2 s (30 mm) apart is unrelated.
    images = [f.image.astype(np.float32) for f in frames]
    fine = [image - cv2.GaussianBlur(image, (0, 0), 3) for image in images]

    def corr(a: np.ndarray, b: np.ndarray) -> float:
        return float(np.corrcoef(a.ravel(), b.ravel())[0, 1])

    assert np.mean([corr(images[i], images[i + 1]) for i in range(0, 90, 10)]) > 0.8
    near = np.mean([corr(fine[i], fine[i + 1]) for i in range(0, 90, 10)])
    far = np.mean([corr(fine[i], fine[i + 60]) for i in range(0, 40, 10)])
    assert near > 0.5 and abs(far) < 0.2
    # The mask area grows then shrinks as the probe crosses the lesion.
    areas = [int(f.meta["mask"].sum()) if f.meta["mask"] is not None else 0 for f in frames]
    peak = int(np.argmax(areas))
    assert first < peak < last
    assert frames[0].pixel_size_mm == pytest.approx(40.0 / SMALL[1])
    # Same seed, same frames.
    again = PhantomSequence(seed=3, size=SMALL, fps=30.0, realtime=False, speed_mm_s=15.0)
    np.testing.assert_array_equal(again.render(peak)[0], frames[peak].image)


@pytest.mark.parametrize("shape", [(320, 384), (320, 512), (300, 600)])
@pytest.mark.parametrize("layout", range(len(LAYOUTS)))
def test_scanner_screen_truth(layout: int, shape: tuple[int, int], rng: np.random.Generator) -> None:
    # Wide images too: the info panel and grey bar right of the image must never cover it.
    image = rng.integers(0, 256, shape, dtype=np.uint8)
    screen, truth = render_scanner_screen(image, 45.0, layout=layout, seed=int(rng.integers(0, 99)))
    x, y, w, h = truth.image_rect
    assert screen.shape == (truth.screen_size[1], truth.screen_size[0])
    np.testing.assert_array_equal(screen[y : y + h, x : x + w], cv2.resize(image, (w, h)))
    assert truth.mm_per_pixel == pytest.approx(45.0 / h)
    # Ticks every 5 mm at the documented rows, beside the image on the documented side.
    assert [t[1] for t in truth.ticks] == [5.0 * k for k in range(len(truth.ticks))]
    assert len(truth.ticks) == 9  # 0 .. 40 mm
    for row, depth, major in truth.ticks:
        assert row == y + round(depth / truth.mm_per_pixel)
        inner = x - 8 if truth.ruler_side == "left" else x + w - 1 + 8
        assert screen[row, inner] == 220
        assert major == (depth % 10 == 0)
    # Nothing touches the image: a 6 px border all around it is background.
    ring = screen[y - 6 : y + h + 6, x - 6 : x + w + 6].copy()
    ring[6:-6, 6:-6] = 0
    assert ring.max() < 50


def test_cli_dataset_is_byte_identical_and_loads_with_the_manifest_reader(tmp_path: Path) -> None:
    args = ["phantom", "--count", "6", "--seed", "1", "--size", "128", "112"]
    assert main([*args, "--out", str(tmp_path / "a")]) == 0
    assert main([*args, "--out", str(tmp_path / "b")]) == 0
    files_a = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*") if p.is_file())
    files_b = sorted(p.relative_to(tmp_path / "b") for p in (tmp_path / "b").rglob("*") if p.is_file())
    assert files_a == files_b and len(files_a) == 13
    for rel in files_a:
        assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes()
    records = read_manifest(tmp_path / "a")
    assert [r.birads for r in records] == ["3", "4A", "4B", "4C", "5", "3"]
    for record in records:
        image, mask = load_gray(record.image), load_mask(record)
        assert image.shape == (112, 128) and mask is not None and mask.any()
        assert set(record.extra) >= set(DESCRIPTOR_CHOICES)
        assert record.pixel_size_mm is not None and 0.2 < record.pixel_size_mm < 0.5
    # The files are what the scanner produces for the same seed.
    expected = PhantomScanner(1, (128, 112)).sample_at(2, "4B").image
    np.testing.assert_array_equal(load_gray(records[2].image), expected)


def test_cli_video_and_contact_sheet(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    video = tmp_path / "sweep.avi"
    assert (
        main(
            [
                "phantom",
                "--video",
                str(video),
                "--seconds",
                "0.5",
                "--fps",
                "20",
                "--screen",
                "--layout",
                "compact",
            ]
        )
        == 0
    )
    with open_source(str(video), realtime=False) as source:
        frames = list(source)
    assert len(frames) == 10 and frames[0].image.shape == (480, 640)
    sheet = tmp_path / "sheet.png"
    assert main(["phantom", "--contact-sheet", str(sheet), "--size", "128", "112"]) == 0
    image = cv2.imread(str(sheet))
    assert image is not None and image.shape[1] >= 5 * 128
    assert main(["phantom"]) == 2
    assert "nothing to do" in capsys.readouterr().err
    assert main(["phantom", "--out", str(tmp_path / "x"), "--count", "0"]) == 2


def test_phantom_draws_exactly_the_grader_categories():
    """The phantom's category table (capture cannot import engine) names the BI-RADS vocabulary's
    categories in the same order."""
    from engine.birads import CATEGORIES as BIRADS_CATEGORIES

    assert CATEGORIES == BIRADS_CATEGORIES
