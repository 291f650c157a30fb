"""Every frame source on files the tests write: video, image folder and glob, DICOM (single/multi-frame,
MONOCHROME2, RGB, YBR_FULL, YBR_FULL_422, Pixel Spacing and Ultrasound Regions), phantom; bad strings;
geometry profiles."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, RLELossless, generate_uid

from capture.frame import Frame
from capture.geometry import GeometryError, GeometryProfile
from capture.sources import (
    DicomSource,
    ImageFilesSource,
    SourceError,
    VideoFileSource,
    open_source,
)

# ----------------------------------------------------------------------------------------------- helpers


def _smooth_frames(rng: np.random.Generator, count: int, height: int = 96, width: int = 128) -> np.ndarray:
    """Frames with large smooth structures, so that lossy video codecs keep them recognizable."""
    base = cv2.GaussianBlur(rng.uniform(0, 255, (height, width)).astype(np.float32), (0, 0), 6)
    base = cv2.normalize(base, None, 20, 235, cv2.NORM_MINMAX)
    return np.stack([np.roll(base, 3 * i, axis=1) for i in range(count)]).astype(np.uint8)


def _write_dicom(path: Path, pixels: np.ndarray, photometric: str, **tags: object) -> Path:
    """Write an uncompressed DICOM. ``pixels``: (N, H, W) gray or (N, H, W, 3) colour, already in the
    layout the photometric interpretation needs (YBR_FULL_422 is subsampled here)."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.3.1"  # US multi-frame image storage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "US"
    frames, height, width = pixels.shape[:3]
    ds.Rows, ds.Columns = height, width
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PhotometricInterpretation = photometric
    if pixels.ndim == 4:
        ds.SamplesPerPixel = 3
        ds.PlanarConfiguration = 0
    else:
        ds.SamplesPerPixel = 1
    if frames > 1:
        ds.NumberOfFrames = frames
    for key, value in tags.items():
        setattr(ds, key, value)
    if photometric == "YBR_FULL_422":
        # Each pair of pixels is stored as Y1 Y2 Cb Cr (chroma shared by the pair).
        y, cb, cr = pixels[..., 0], pixels[..., 1], pixels[..., 2]
        packed = np.empty((frames, height, width // 2, 4), np.uint8)
        packed[..., 0], packed[..., 1] = y[..., 0::2], y[..., 1::2]
        packed[..., 2], packed[..., 3] = cb[..., 0::2], cr[..., 0::2]
        ds.PixelData = packed.tobytes()
    else:
        ds.PixelData = np.ascontiguousarray(pixels, np.uint8).tobytes()
    ds.save_as(str(path), enforce_file_format=True)
    return path


def _read_all(source) -> list[Frame]:
    with source:
        return list(source)


# ----------------------------------------------------------------------------------------------- files


def test_video_file_source_reads_every_frame_in_order(tmp_path: Path, rng: np.random.Generator) -> None:
    frames = _smooth_frames(rng, 12)
    path = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 25.0, (128, 96), isColor=False)
    assert writer.isOpened()
    for frame in frames:
        writer.write(frame)
    writer.release()

    source = open_source(str(path), realtime=False)
    assert isinstance(source, VideoFileSource) and not source.is_live
    assert source.fps == pytest.approx(25.0)
    got = _read_all(source)
    assert [f.index for f in got] == list(range(12))
    assert all(f.image.shape == (96, 128) and f.image.dtype == np.uint8 for f in got)
    # MJPG is lossy: each decoded frame must be far closer to its own original than to the others.
    errors = np.array([[np.abs(g.image.astype(int) - o.astype(int)).mean() for o in frames] for g in got])
    assert np.all(np.argmin(errors, axis=1) == np.arange(12))
    assert errors.diagonal().max() < 6
    times = [f.t_capture_ns for f in got]
    assert times == sorted(times)


def test_video_loop_restarts_and_keeps_counting(tmp_path: Path, rng: np.random.Generator) -> None:
    path = tmp_path / "short.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 30.0, (128, 96), isColor=False)
    for frame in _smooth_frames(rng, 3):
        writer.write(frame)
    writer.release()
    with open_source(str(path), realtime=False, loop=True) as source:
        got = [next(source) for _ in range(8)]
    assert [f.index for f in got] == list(range(8))
    assert np.abs(got[0].image.astype(int) - got[3].image.astype(int)).mean() < 1.0


def test_image_folder_and_glob(tmp_path: Path, rng: np.random.Generator) -> None:
    folder = tmp_path / "frames"
    folder.mkdir()
    images = rng.integers(0, 256, (4, 40, 50), dtype=np.uint8)
    for i, image in enumerate(images):
        colour = cv2.merge([image, image, image])  # colour files come out gray
        cv2.imwrite(str(folder / f"f{i:02d}.png"), colour)
    (folder / "notes.txt").write_text("not an image")

    got = _read_all(open_source(str(folder), realtime=False))
    assert len(got) == 4
    for frame, image in zip(got, images, strict=True):
        np.testing.assert_array_equal(frame.image, image)
        assert frame.pixel_size_mm is None and frame.meta["path"].endswith(".png")

    got = _read_all(open_source(str(folder / "f0[12].png"), realtime=False))
    assert [f.meta["path"][-7:] for f in got] == ["f01.png", "f02.png"]


def test_realtime_pacing_spaces_frames_by_the_frame_period(tmp_path: Path, rng: np.random.Generator) -> None:
    for i in range(4):
        cv2.imwrite(str(tmp_path / f"{i}.png"), rng.integers(0, 256, (16, 16), dtype=np.uint8))
    got = _read_all(open_source(str(tmp_path), fps=40.0, realtime=True))
    since_first = (np.array([f.t_capture_ns for f in got]) - got[0].t_capture_ns) / 1e9
    # Paced against the stream's clock: frame k never comes before k / fps (less the decode time of
    # frame 0, a few ms at most); a late frame lets the next one catch up, so no drift builds up.
    assert np.all(since_first >= np.arange(len(got)) / 40.0 - 0.005)


def test_unreadable_image_in_folder_is_named(tmp_path: Path) -> None:
    (tmp_path / "a.png").write_bytes(b"not a png at all")
    with pytest.raises(SourceError, match=r"a\.png"), open_source(str(tmp_path), realtime=False) as source:
        list(source)


# ----------------------------------------------------------------------------------------------- DICOM


def test_dicom_single_frame_monochrome2_pixel_spacing(tmp_path: Path, rng: np.random.Generator) -> None:
    image = rng.integers(0, 256, (1, 30, 40), dtype=np.uint8)
    path = _write_dicom(tmp_path / "one.dcm", image, "MONOCHROME2", PixelSpacing=[0.08, 0.07])
    got = _read_all(open_source(f"dicom:{path}", realtime=False))
    assert len(got) == 1
    np.testing.assert_array_equal(got[0].image, image[0])
    assert got[0].pixel_size_mm == pytest.approx(0.07)


def test_dicom_multiframe_rgb_with_ultrasound_regions(tmp_path: Path, rng: np.random.Generator) -> None:
    gray = rng.integers(0, 256, (5, 24, 32), dtype=np.uint8)
    rgb = np.repeat(gray[..., None], 3, axis=3)
    rgb[..., 0] = np.clip(gray.astype(int) + 9, 0, 255)  # a tint, so the conversion is really exercised
    region = Dataset()
    region.PhysicalUnitsXDirection = 3  # cm
    region.PhysicalUnitsYDirection = 3
    region.PhysicalDeltaX = 0.0125  # cm per pixel -> 0.125 mm
    region.PhysicalDeltaY = 0.0125
    path = _write_dicom(
        tmp_path / "cine.dcm", rgb, "RGB", SequenceOfUltrasoundRegions=Sequence([region]), CineRate=20
    )
    # Auto-detected from the .dcm suffix, no prefix needed.
    source = open_source(str(path), realtime=False)
    assert isinstance(source, DicomSource) and source.fps == pytest.approx(20.0)
    got = _read_all(source)
    assert [f.index for f in got] == list(range(5))
    expected = np.clip(rgb[..., 0] * 0.299 + rgb[..., 1] * 0.587 + rgb[..., 2] * 0.114 + 0.5, 0, 255)
    for frame, want in zip(got, expected.astype(np.uint8), strict=True):
        assert np.abs(frame.image.astype(int) - want.astype(int)).max() <= 1
        assert frame.pixel_size_mm == pytest.approx(0.125)


@pytest.mark.parametrize(
    ("photometric", "rle"), [("YBR_FULL", False), ("YBR_FULL_422", False), ("YBR_FULL", True)]
)
def test_dicom_ybr_uses_luma(tmp_path: Path, rng: np.random.Generator, photometric: str, rle: bool) -> None:
    luma = rng.integers(0, 256, (3, 20, 30), dtype=np.uint8)
    ybr = np.stack([luma, np.full_like(luma, 110), np.full_like(luma, 150)], axis=3)
    path = _write_dicom(tmp_path / "ybr.dcm", ybr, photometric, PixelSpacing=[0.1, 0.1])
    if rle:  # a compressed transfer syntax goes through a pixel decoder
        ds = pydicom.dcmread(path)
        ds.compress(RLELossless)
        ds.save_as(path)
    got = _read_all(open_source(f"dicom:{path}", realtime=False))
    assert len(got) == 3
    for frame, want in zip(got, luma, strict=True):
        np.testing.assert_array_equal(frame.image, want)


def test_dicom_folder_sorted_by_instance_number(tmp_path: Path, rng: np.random.Generator) -> None:
    images = rng.integers(0, 256, (3, 12, 14), dtype=np.uint8)
    for name, number in (("b.dcm", 1), ("a.dcm", 2), ("c.dcm", 0)):
        _write_dicom(tmp_path / name, images[number][None], "MONOCHROME2", InstanceNumber=number)
    got = _read_all(open_source(f"dicom:{tmp_path}", realtime=False))
    for frame, want in zip(got, images, strict=True):
        np.testing.assert_array_equal(frame.image, want)


# ----------------------------------------------------------------------------------------------- phantom


def test_phantom_source_string_options() -> None:
    with open_source("phantom:seed=4,frames=3,size=160x128", realtime=False) as source:
        got = list(source)
    assert len(got) == 3 and got[0].image.shape == (128, 160)
    assert got[0].pixel_size_mm == pytest.approx(40.0 / 128)
    assert "seed=4" in source.description


def test_geometry_profile_applied_to_screen_frames() -> None:
    spec = "phantom:screen=1,layout=1,frames=1,start=150"  # 5 s in: the first lesion is in view
    with open_source(spec, realtime=False) as source:
        frame = next(source)
    truth = frame.meta["screen_truth"]
    profile = GeometryProfile(truth.image_rect, truth.mm_per_pixel, "truth")
    assert frame.pixel_size_mm is None  # a capture card does not know the scale
    assert frame.meta["mask"] is not None and frame.meta["mask"].shape == frame.image.shape
    with open_source(spec, realtime=False, geometry=profile) as source:
        cropped = next(source)
    x, y, w, h = truth.image_rect
    np.testing.assert_array_equal(cropped.image, frame.image[y : y + h, x : x + w])
    np.testing.assert_array_equal(cropped.meta["mask"], frame.meta["mask"][y : y + h, x : x + w])
    assert cropped.meta["mask"].any() and cropped.index == 0
    assert cropped.pixel_size_mm == pytest.approx(truth.mm_per_pixel)


def test_missing_capture_device_index() -> None:
    with pytest.raises(SourceError, match="cannot open capture device 63"):
        open_source("63")


# ----------------------------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("spec", "named"),
    [
        ("", "empty source"),
        ("no/such/file.mp4", "'no/such/file.mp4'"),
        ("camera-one", "'camera-one'"),
        ("phantom:bogus=1", "bogus"),
        ("phantom:seed", "'seed' must be key=value"),
        ("phantom:seed=x", "phantom options"),
        ("dicom:/no/such.dcm", "'/no/such.dcm' does not exist"),
        ("/dev/video987", "'/dev/video987' does not exist"),
        ("nothing-*.png", "'nothing-*.png' matches no image"),
    ],
)
def test_bad_source_strings_raise_clear_errors(spec: str, named: str) -> None:
    """The error names the offending string (or part) and, where it is not obvious, what is accepted."""
    with pytest.raises(SourceError) as info:
        open_source(spec)
    message = str(info.value)
    assert named in message
    if not spec.startswith("phantom"):
        assert "accepted:" in message or "sonograde sources" in message


def test_unreadable_files_raise(tmp_path: Path) -> None:
    fake_video = tmp_path / "broken.mp4"
    fake_video.write_bytes(b"\x00" * 2048)
    with pytest.raises(SourceError, match=r"broken\.mp4"):
        open_source(str(fake_video))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(SourceError, match="no images"):
        open_source(str(empty))
    bad_dicom = tmp_path / "bad.dcm"
    bad_dicom.write_bytes(b"garbage")
    with pytest.raises(SourceError, match=r"bad\.dcm"):
        open_source(str(bad_dicom))
    assert isinstance(SourceError("x"), ValueError)


def test_image_source_requires_images() -> None:
    with pytest.raises(SourceError):
        ImageFilesSource([], "nothing")


# ----------------------------------------------------------------------------------------------- geometry


def test_geometry_profile_round_trip_and_crop(tmp_path: Path, rng: np.random.Generator) -> None:
    x, y = (int(v) for v in rng.integers(0, 20, 2))
    rect = (x, y, int(rng.integers(10, 40)), int(rng.integers(10, 40)))
    profile = GeometryProfile(rect, float(rng.uniform(0.05, 0.2)), "scanner A, 4 cm")
    loaded = GeometryProfile.load(profile.save(tmp_path / "geometry.json"))
    assert loaded == profile
    screen = rng.integers(0, 256, (80, 90), dtype=np.uint8)
    x, y, w, h = rect
    np.testing.assert_array_equal(loaded.crop(screen), screen[y : y + h, x : x + w])
    with pytest.raises(GeometryError, match="smaller"):
        loaded.crop(screen[: y + h - 1])
    assert GeometryProfile((0, 0, 5, 5)).mm_per_pixel is None


@pytest.mark.parametrize(
    "content",
    [
        "{not json",
        "[1, 2]",
        json.dumps({"version": 99, "image_rect": [0, 0, 5, 5]}),
        json.dumps({"version": 1}),
        json.dumps({"version": 1, "image_rect": [0, 0, 5]}),
        json.dumps({"version": 1, "image_rect": [0, 0, -5, 5]}),
        json.dumps({"version": 1, "image_rect": [0, 0, 5, 5], "mm_per_pixel": -1}),
        json.dumps({"version": 1, "image_rect": ["a", 0, 5, 5]}),
    ],
)
def test_malformed_geometry_profiles_are_refused(tmp_path: Path, content: str) -> None:
    path = tmp_path / "geometry.json"
    path.write_text(content)
    with pytest.raises(GeometryError, match="geometry profile"):
        GeometryProfile.load(path)


def test_missing_geometry_profile(tmp_path: Path) -> None:
    with pytest.raises(GeometryError, match="does not exist"):
        GeometryProfile.load(tmp_path / "absent.json")
