"""Faults are seen, not swallowed: NaN model outputs refused and counted, the smoother never averages a
NaN, status messages carry error counts and the last error (one line, no paths), unreadable files are
skipped and counted, a source that fails for good ends `run` with exit 1 and the reason, a model with the
wrong output shape is a one-line error, the overlay child of `run` imports the right package.
Real ONNX Runtime sessions (dev models, one made to give NaN), real sockets, real files."""

from __future__ import annotations

import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import cv2
import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from capture.frame_source import significant_bits
from capture.sources import DicomSource, FrameSource, ImageFilesSource, read_image_file
from engine.backends.dev_models import make_grader_model, make_roi_model, synthetic_frame
from engine.gradeability import check_gradeable
from engine.grader import ModelOutputError, TwoStageGrader
from sonograde.cli import main as cli_main
from sonograde.commands.run import overlay_command
from sonograde.pipeline import Pipeline, PipelineConfig, one_line_error
from sonograde.publisher import Publisher, PublisherConfig
from sonograde.smoothing import LesionTracker
from sonograde.subscriber import Subscriber

DEADLINE_S = 30.0


def _replace_initializer(path: Path, name: str, array: np.ndarray) -> None:
    model = onnx.load(str(path))
    for index, initializer in enumerate(model.graph.initializer):
        if initializer.name == name:
            model.graph.initializer[index].CopyFrom(numpy_helper.from_array(array.astype(np.float32), name))
    onnx.save(model, str(path))


@pytest.fixture(scope="module")
def dev_models(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("dev_models")
    make_roi_model(directory / "roi_cnn.onnx")
    make_grader_model(directory / "g_cnn.onnx")
    return directory


@pytest.fixture(scope="module")
def nan_models(tmp_path_factory) -> Path:
    """The dev models with a G-CNN whose last bias is NaN: every softmax it gives is NaN."""
    directory = tmp_path_factory.mktemp("nan_models")
    make_roi_model(directory / "roi_cnn.onnx")
    make_grader_model(directory / "g_cnn.onnx")
    _replace_initializer(directory / "g_cnn.onnx", "fb", np.full(5, np.nan))
    return directory


@pytest.fixture(scope="module")
def narrow_models(tmp_path_factory) -> Path:
    """A G-CNN with 3 outputs although its metadata lists 5 categories."""
    directory = tmp_path_factory.mktemp("narrow_models")
    make_roi_model(directory / "roi_cnn.onnx")
    path = make_grader_model(directory / "g_cnn.onnx")
    model = onnx.load(str(path))
    for index, initializer in enumerate(model.graph.initializer):
        array = numpy_helper.to_array(initializer)
        if initializer.name in ("fw", "fb"):
            model.graph.initializer[index].CopyFrom(numpy_helper.from_array(array[..., :3].copy(),
                                                                            initializer.name))
    model.graph.output[0].type.tensor_type.shape.dim[1].dim_value = 3
    onnx.save(model, str(path))
    return directory


class LiveFrames(FrameSource):
    """A live source cycling through ``images`` at ``fps`` until stopped."""

    def __init__(self, images: list[np.ndarray], fps: float = 40.0) -> None:
        super().__init__("test live", is_live=True)
        self.images, self.period, self.count = images, 1.0 / fps, 0

    def _next_raw(self):
        time.sleep(self.period)
        self.count += 1
        return self.images[self.count % len(self.images)], 0.2, {}


def wait_for(predicate, what: str) -> None:
    end = time.monotonic() + DEADLINE_S
    while not predicate():
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


# ---------------------------------------------------------------------------------------- model outputs


def test_nan_grader_output_is_refused_counted_and_reported_in_status(nan_models, rng):
    grader = TwoStageGrader.from_models_dir(nan_models)
    grader.warm_up()  # the shape is right: NaN is refused per frame
    image, _ = synthetic_frame(rng, 240, 320)
    with pytest.raises(ModelOutputError, match="NaN"):
        grader.grade(image)

    images = [synthetic_frame(rng, 240, 320)[0] for _ in range(3)]
    publisher = Publisher(PublisherConfig(endpoint="tcp://127.0.0.1:*", sndhwm=1000))
    subscriber = Subscriber(publisher.endpoint, rcvhwm=1000)
    config = PipelineConfig(publish=None, status_interval_s=0.2)
    pipeline = Pipeline(grader, lambda: LiveFrames(images), config, publisher=publisher)
    try:
        assert publisher.wait_for_subscriber(10)
        pipeline.start(warm_up=False)
        wait_for(lambda: pipeline.stats().errors >= 3, "three classify errors")
        status = None
        end = time.monotonic() + DEADLINE_S
        while time.monotonic() < end:
            message = subscriber.recv(500)
            if message is not None and message.kind == "result":
                assert message.header["category"] is None  # a NaN never becomes a grade
            if (message is not None and message.kind == "status"
                    and message.header.get("errors", {}).get("classify", 0) >= 1):
                status = message
                break
        assert status is not None, "no status message with the classify errors"
        assert status.header["errors"]["total"] >= 1
        last = status.header["last_error"]
        assert "NaN" in last and "\n" not in last and "/" not in last and ".onnx" not in last
        stats = pipeline.stats()
        assert stats.error_counts["classify"] == stats.errors and "ERRORS" in stats.status_line()
    finally:
        pipeline.stop()
        subscriber.close()
        publisher.close()


def test_smoother_never_takes_a_nan():
    tracker = LesionTracker(("3", "4A", "4B", "4C", "5"))
    first = tracker.update(True, [10, 10, 20, 20], [0.1, 0.6, 0.1, 0.1, 0.1])
    for bad in ([np.nan, 0.6, 0.1, 0.1, 0.1], [np.inf, 0, 0, 0, 0], [-0.5, 1.5, 0, 0, 0]):
        state = tracker.update(True, [10, 10, 20, 20], bad)
        assert np.isfinite(state.probabilities).all()
        np.testing.assert_array_equal(state.probabilities, first.probabilities)
    assert tracker.rejected == 3
    later = tracker.update(True, [10, 10, 20, 20], [0.1, 0.1, 0.6, 0.1, 0.1])
    assert np.isfinite(later.probabilities).all() and later.track_id == first.track_id


def test_wrong_output_shape_is_a_one_line_error(narrow_models, tmp_path, rng, capsys):
    grader = TwoStageGrader.from_models_dir(narrow_models)
    with pytest.raises(ModelOutputError, match=r"output has shape \(1, 3\), expected \(1, 5\)"):
        grader.warm_up()
    image = tmp_path / "scan.png"
    cv2.imwrite(str(image), synthetic_frame(rng, 240, 320)[0])
    for argv in (["grade", str(image), "--models", str(narrow_models)],
                 ["run", "--models", str(narrow_models), "--frames", "1", "--publish", "none", "--quiet"]):
        rc = cli_main(argv)
        err = capsys.readouterr().err
        assert rc == 2, err
        lines = [line for line in err.splitlines() if "shape" in line]
        assert len(lines) == 1 and "(1, 3)" in lines[0] and "Traceback" not in err


def test_one_line_error_has_no_paths():
    text = "SourceError: cannot read image '/data/patients/Jane Doe/IMG_0001.png' (not an image)\nmore"
    line = one_line_error(text)
    assert "\n" not in line and "/" not in line and "IMG_0001" not in line and "cannot read image" in line
    assert "<file>" in one_line_error("cannot decode pixels of DICOM smith_john.dcm: truncated")
    assert one_line_error(None) is None and len(one_line_error("x" * 500)) <= 160


# ---------------------------------------------------------------------------------------- files


def _png_header_only(path: Path, width: int, height: int) -> Path:
    """A PNG whose header declares width x height (its pixels are missing): what a decompression bomb
    looks like to a header check, without the memory."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
                     + chunk(b"IEND", b""))
    return path


def _image_folder(tmp_path: Path, rng, good: int = 3) -> Path:
    folder = tmp_path / "frames"
    folder.mkdir()
    for i in range(good):
        cv2.imwrite(str(folder / f"a{i}.png"), synthetic_frame(rng, 240, 320)[0])
    noise = bytes(rng.integers(0, 256, 300, dtype=np.uint8))
    (folder / "b_damaged.png").write_bytes(b"\x89PNG\r\n\x1a\n" + noise)
    _png_header_only(folder / "c_huge.png", 30000, 30000)
    return folder


def test_image_folder_skips_and_counts_unreadable_files(tmp_path, rng):
    folder = _image_folder(tmp_path, rng)
    paths = sorted(folder.iterdir())
    with ImageFilesSource(paths, "frames", realtime=False, loop=True) as source:
        frames = [source.read() for _ in range(9)]  # three passes over the three good files
    assert all(f is not None and f.image.shape == (240, 320) for f in frames)
    assert source.skipped == 2  # counted once each, not once per pass
    assert any("more than the limit" in reason for reason in source.unreadable.values())


def test_run_counts_skipped_files_and_fails_loudly_when_none_is_readable(dev_models, tmp_path, rng, capsys):
    folder = _image_folder(tmp_path, rng)
    rc = cli_main(["run", "--source", str(folder), "--models", str(dev_models), "--frames", "8",
                   "--publish", "tcp://127.0.0.1:*", "--quiet"])
    err = capsys.readouterr().err
    assert rc == 0, err
    assert "skipped files 2" in err
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "x.png").write_bytes(b"not a png")
    (bad / "y.jpg").write_bytes(b"")
    rc = cli_main(["run", "--source", str(bad), "--models", str(dev_models), "--seconds", "20",
                   "--publish", "none", "--quiet"])
    err = capsys.readouterr().err
    assert rc == 1, err
    assert "the source failed" in err and "none of the 2 images can be read" in err
    assert "Traceback" not in err


def test_truncated_dicom_in_a_series_is_skipped_and_counted(tmp_path, rng):
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    def write(path: Path, pixels: np.ndarray, number: int) -> Path:
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.6.1"
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
        ds.Modality, ds.InstanceNumber = "US", number
        ds.Rows, ds.Columns = pixels.shape
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
        ds.PhotometricInterpretation, ds.SamplesPerPixel = "MONOCHROME2", 1
        ds.PixelData = pixels.tobytes()
        ds.save_as(str(path), enforce_file_format=True)
        return path

    series = tmp_path / "series"
    series.mkdir()
    write(series / "1.dcm", rng.integers(0, 255, (120, 160), dtype=np.uint8), 1)
    truncated = write(series / "2.dcm", rng.integers(0, 255, (120, 160), dtype=np.uint8), 2)
    truncated.write_bytes(truncated.read_bytes()[:-9000])
    with DicomSource(series, realtime=False, loop=True) as source:
        frames = [source.read() for _ in range(3)]
    assert all(f is not None for f in frames) and source.skipped == 1
    assert "2.dcm" in next(iter(source.unreadable.values()))


# ---------------------------------------------------------------------------------------- inputs


def _with_sbit(png: bytes, bits: int) -> bytes:
    """Insert an sBIT chunk (significant bits of the gray channel) right after IHDR."""
    chunk = b"sBIT" + bytes([bits])
    sbit = struct.pack(">I", 1) + chunk + struct.pack(">I", zlib.crc32(chunk))
    return png[:33] + sbit + png[33:]


def test_twelve_bit_data_in_a_sixteen_bit_png_keeps_its_contrast(tmp_path, rng):
    image, _ = synthetic_frame(rng, 240, 320)
    twelve = np.round(image.astype(np.float64) * 4095 / 255).astype(np.uint16)
    cv2.imwrite(str(tmp_path / "twelve.png"), twelve)
    read = read_image_file(tmp_path / "twelve.png")
    assert read.dtype == np.uint8 and np.abs(read.astype(int) - image).max() <= 1  # not near black
    assert significant_bits(np.array([700], np.uint16)) == 10
    assert significant_bits(np.array([65535], np.uint16)) == 16
    # A PNG that declares 10 significant bits (sBIT) is scaled by 1023 whatever its maximum.
    ten = np.round(image.astype(np.float64) * 500 / 255).astype(np.uint16)
    _, encoded = cv2.imencode(".png", ten)
    (tmp_path / "ten.png").write_bytes(_with_sbit(encoded.tobytes(), 10))
    declared = read_image_file(tmp_path / "ten.png")
    expected = np.clip(ten * (255 / 1023) + 0.5, 0, 255).astype(np.uint8)
    assert np.abs(declared.astype(int) - expected).max() <= 1


def test_grade_refuses_an_image_over_the_pixel_cap_from_its_header(dev_models, tmp_path, capsys):
    bomb = _png_header_only(tmp_path / "bomb.png", 30000, 30000)
    started = time.monotonic()
    rc = cli_main(["grade", str(bomb), "--models", str(dev_models)])
    err = capsys.readouterr().err
    assert rc == 1 and "900,000,000 pixels is more than the limit" in err and "Traceback" not in err
    assert time.monotonic() - started < 20  # refused from the header, not after decoding 900 MP
    rc = cli_main(["grade", str(bomb), "--models", str(dev_models), "--max-pixels", "0"])
    assert rc == 2 and "--max-pixels" in capsys.readouterr().err


def doppler_frame(rng) -> np.ndarray:
    """A B-mode frame with a colour Doppler box (red and blue flow) over a tenth of it."""
    image = cv2.cvtColor(synthetic_frame(rng, 240, 320)[0], cv2.COLOR_GRAY2BGR)
    box = image[80:160, 100:200]
    flow = rng.random(box.shape[:2]) < 0.6
    box[flow & (rng.random(box.shape[:2]) < 0.5)] = (0, 0, 230)
    box[flow & ~(box == (0, 0, 230)).all(axis=2)] = (230, 60, 0)
    return image


def test_gradeability_reasons(rng):
    assert check_gradeable(synthetic_frame(rng, 240, 320)[0]).gradeable
    assert "too small" in check_gradeable(rng.integers(0, 255, (10, 10), dtype=np.uint8)).reason
    assert "no tissue" in check_gradeable(np.full((300, 400), 128, np.uint8)).reason
    assert "no tissue" in check_gradeable(np.zeros((300, 400), np.uint8)).reason
    assert "colour overlay" in check_gradeable(doppler_frame(rng)).reason
    gray_as_bgr = cv2.cvtColor(synthetic_frame(rng, 240, 320)[0], cv2.COLOR_GRAY2BGR)
    assert check_gradeable(gray_as_bgr).gradeable


def test_real_images_are_gradeable(shared_data):
    """No image of the data sets the models learnt from is refused (a sample of each)."""
    import csv

    checked = 0
    for manifest in sorted(shared_data.glob("*/manifest.csv")):
        with manifest.open() as handle:
            rows = list(csv.DictReader(handle))[::40]
        for row in rows:
            image = read_image_file(manifest.parent / row["image"])
            verdict = check_gradeable(image)
            assert verdict.gradeable, (row["image"], verdict.reason)
            checked += 1
    if checked == 0:
        pytest.skip("no manifest data sets found")


def test_not_gradeable_frames_are_published_with_the_reason(dev_models, rng):
    grader = TwoStageGrader.from_models_dir(dev_models)
    headers: list[dict] = []
    frames = [doppler_frame(rng), np.zeros((240, 320), np.uint8), synthetic_frame(rng, 240, 320)[0]]
    pipeline = Pipeline(grader, lambda: LiveFrames(frames), PipelineConfig(publish=None),
                        on_result=lambda header, image: headers.append(header))
    try:
        pipeline.start(warm_up=True)
        wait_for(lambda: {bool(h["not_gradeable"]) for h in headers} == {True, False}
                 and sum("colour" in (h["not_gradeable"] or "") for h in headers) > 0, "both kinds of frame")
    finally:
        pipeline.stop()
    refused = [h for h in headers if h["not_gradeable"]]
    assert all(h["category"] is None and h["probabilities"] is None and not h["lesion_found"]
               for h in refused)
    assert {h["not_gradeable"].split(" ")[0] for h in refused} <= {"colour", "no"}
    assert pipeline.stats().not_gradeable >= len(refused)  # published ones; some were dropped as stale
    assert pipeline.stats().stale_graded == 0


# ---------------------------------------------------------------------------------------- the overlay child


def test_overlay_child_ignores_a_package_named_like_ours_in_the_working_folder(tmp_path):
    """`run --overlay` from a folder holding something named `sonograde`: the child still imports this
    sonograde (the bug: the checkout's parent folder made `python -m sonograde.cli` import the wrong one
    and nothing was recorded)."""
    decoy = tmp_path / "sonograde"
    decoy.mkdir()
    (decoy / "__init__.py").write_text("raise SystemExit('imported the decoy from the working folder')\n")
    command, env = overlay_command("tcp://127.0.0.1:1", None)
    command = [*command[:command.index("overlay")], "overlay", "--help"]
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "decoy" not in done.stderr and "Subscribes to a `sonograde run` publisher" in done.stdout
    # Without the protection the same command imports the decoy: the test above can fail.
    unsafe = [sys.executable, "-m", "sonograde.cli", "overlay", "--help"]
    done = subprocess.run(unsafe, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode != 0 and "decoy" in done.stderr


def test_run_overlay_record_from_a_folder_with_a_decoy_package(dev_models, tmp_path, monkeypatch, capsys):
    decoy = tmp_path / "sonograde"
    decoy.mkdir()
    (decoy / "__init__.py").write_text("raise SystemExit('imported the decoy package')\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    record = tmp_path / "overlay.mp4"
    rc = cli_main(["run", "--models", str(dev_models), "--seconds", "12", "--publish", "tcp://127.0.0.1:*",
                   "--overlay", "--record", "overlay.mp4", "--quiet"])
    err = capsys.readouterr().err
    assert rc == 0, err
    capture = cv2.VideoCapture(str(record))
    frames = int(capture.get(cv2.CAP_PROP_FRAME_COUNT))
    capture.release()
    assert frames > 0, err
