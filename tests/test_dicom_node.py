"""The DICOM node with real associations on 127.0.0.1: pynetdicom's SCU as the scanner, a second pynetdicom
SCP as the PACS, free ports chosen by the system at run time, the shipped models grading."""

from __future__ import annotations

import csv
import logging
import re
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("pynetdicom")
hd = pytest.importorskip("highdicom")

from dicom_samples import (  # noqa: E402
    CT_IMAGE_STORAGE,
    PATIENT_ID,
    PATIENT_NAME,
    US_IMAGE_STORAGE,
    ultrasound_dataset,
)
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian  # noqa: E402
from pynetdicom import AE, evt  # noqa: E402

from sonograde.dicom.node import DicomNode, ForwardTarget  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]
BREAST = Path(__file__).resolve().parents[2] / "shared" / "data" / "breast_lesions_usg"
MPEG2 = "1.2.840.10008.1.2.4.100"
SR_STORAGE = "1.2.840.10008.5.1.4.1.1.88.34"
SEG_STORAGE = "1.2.840.10008.5.1.4.1.1.66.4"
SC_STORAGE = "1.2.840.10008.5.1.4.1.1.7"


@pytest.fixture(scope="module")
def grader():
    from engine.grader import DEFAULT_MODELS_DIR, TwoStageGrader

    if not (DEFAULT_MODELS_DIR / "roi_cnn.onnx").exists():
        pytest.skip("shipped models not present")
    grader = TwoStageGrader.from_models_dir()
    grader.warm_up()
    return grader


def phantom_image(seed: int) -> tuple[np.ndarray, float]:
    from capture.phantom import PhantomScanner

    sample = PhantomScanner(seed).sample()
    return sample.image, sample.pixel_size_mm


class Pacs:
    """A pynetdicom Storage SCP standing in for the PACS: keeps what it receives in memory."""

    def __init__(self, port: int = 0, gate: threading.Event | None = None,
                 sop_classes: tuple[str, ...] = (SR_STORAGE, SEG_STORAGE, SC_STORAGE)) -> None:
        self.received: list = []
        self.waiting = threading.Event()  # set while a C-STORE waits at the gate
        self.gate = gate  # when given, each C-STORE waits until it is set: a PACS that hangs
        self._lock = threading.Lock()
        ae = AE(ae_title="TESTPACS")
        for sop_class in sop_classes:
            ae.add_supported_context(sop_class, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
        self.server = ae.start_server(("127.0.0.1", port), block=False,
                                      evt_handlers=[(evt.EVT_C_STORE, self._store)])
        self.port = int(self.server.server_address[1])

    def _store(self, event):
        if self.gate is not None:
            self.waiting.set()
            self.gate.wait(120)
        ds = event.dataset
        ds.file_meta = event.file_meta
        with self._lock:
            self.received.append(ds)
        return 0x0000

    def stop(self) -> None:
        self.server.shutdown()


def store(port: int, datasets, *, transfer_syntaxes=None, sop_classes=None, calling="SCANNER"):
    """Send ``datasets`` over one association; the statuses (int, or None without an answer) and the
    SCU's view of the association's presentation contexts."""
    ae = AE(ae_title=calling)
    for sop_class in sop_classes or sorted({str(ds.SOPClassUID) for ds in datasets}):
        ae.add_requested_context(sop_class, transfer_syntaxes or [ExplicitVRLittleEndian])
    assoc = ae.associate("127.0.0.1", port, ae_title="SONOGRADE")
    assert assoc.is_established, "the node did not accept the association"
    statuses = []
    try:
        for ds in datasets:
            status = assoc.send_c_store(ds)
            statuses.append(int(status.Status) if status and "Status" in status else None)
        rejected = list(assoc.rejected_contexts)
    finally:
        assoc.release()
    return statuses, rejected


def echo(port: int) -> int:
    ae = AE(ae_title="SCANNER")
    ae.add_requested_context("1.2.840.10008.1.1")
    assoc = ae.associate("127.0.0.1", port, ae_title="SONOGRADE")
    assert assoc.is_established
    try:
        return int(assoc.send_c_echo().Status)
    finally:
        assoc.release()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


# ----------------------------------------------------------------------------------------- refusals


def test_refusals_get_a_status_and_a_log_line_and_the_node_keeps_serving(grader, tmp_path, caplog,
                                                                          monkeypatch):
    from pynetdicom import _config

    caplog.set_level(logging.INFO, logger="sonograde.dicom")
    monkeypatch.setattr(_config, "STORE_SEND_CHUNKED_DATASET", True)  # send files as they are, unread
    image, pixel_size = phantom_image(11)
    with DicomNode(grader, tmp_path / "node", port=0) as node:
        assert echo(node.port) == 0x0000

        ct = ultrasound_dataset(image, pixel_size_mm=pixel_size, sop_class_uid=CT_IMAGE_STORAGE,
                                modality="CT")
        statuses, _ = store(node.port, [ct])
        assert statuses == [0x0122]

        corrupt = ultrasound_dataset(image, pixel_size_mm=pixel_size)
        corrupt.PixelData = corrupt.PixelData[: len(corrupt.PixelData) // 3]  # truncated in transit
        statuses, _ = store(node.port, [corrupt])
        assert statuses == [0xC102]

        # a file whose data set is garbage after a valid header: sent as is, undecodable at the node
        garbage = ultrasound_dataset(image, pixel_size_mm=pixel_size)
        path = tmp_path / "garbage.dcm"
        garbage.save_as(path, enforce_file_format=True)
        data = path.read_bytes()
        header_end = 132 + 12 + int.from_bytes(data[140:144], "little")  # preamble, DICM, group length
        path.write_bytes(data[:header_end] + bytes([0x08, 0x00, 0x16, 0x00]) + b"\xff" * 64)
        statuses, _ = store(node.port, [path], sop_classes=[US_IMAGE_STORAGE])
        assert statuses == [0xC102]

        wrong_modality = ultrasound_dataset(image, pixel_size_mm=pixel_size, modality="MR")
        statuses, _ = store(node.port, [wrong_modality])
        assert statuses == [0xC101]

        # Only a transfer syntax nothing here decodes: the presentation context is refused (0x04)
        ae = AE(ae_title="SCANNER")
        ae.add_requested_context(US_IMAGE_STORAGE, [MPEG2])
        ae.add_requested_context("1.2.840.10008.1.1")  # C-ECHO, so the association itself stands
        assoc = ae.associate("127.0.0.1", node.port, ae_title="SONOGRADE")
        assert assoc.is_established
        rejected = [(str(cx.abstract_syntax), cx.result) for cx in assoc.rejected_contexts]
        assert rejected == [(US_IMAGE_STORAGE, 4)]
        with pytest.raises(ValueError, match="presentation context"):
            assoc.send_c_store(ultrasound_dataset(image, pixel_size_mm=pixel_size))
        assoc.release()

        good = ultrasound_dataset(image, pixel_size_mm=pixel_size)
        statuses, _ = store(node.port, [good])
        assert statuses == [0x0000]
        assert node.wait_idle(60)
        assert (node.results / f"{good.SOPInstanceUID}_sr.dcm").exists()
        assert node.counters.refused == 4 and node.counters.graded == 1

    log = [r.getMessage() for r in caplog.records if r.name == "sonograde.dicom"]
    assert any("status 0x0122" in m and "CT Image Storage" in m for m in log), log
    assert any("status 0xC102" in m and "pixel data cannot be decoded" in m for m in log), log
    assert any("status 0xC102" in m and "data set cannot be decoded" in m for m in log), log
    assert any("status 0xC101" in m and "modality MR" in m for m in log), log
    assert any("result 0x04" in m and "MPEG2" in m for m in log), log
    text = "\n".join(log)
    assert PATIENT_NAME.split("^")[0] not in text and PATIENT_ID not in text


# ------------------------------------------------------------------------------------- forwarding


def test_dead_pacs_then_alive_gets_everything_and_receiving_never_waits(grader, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="sonograde.dicom")
    pacs_port = free_port()  # nothing listens there yet
    first, second = phantom_image(11), phantom_image(12)
    target = ForwardTarget("TESTPACS", "127.0.0.1", pacs_port)
    node = DicomNode(grader, tmp_path / "node", port=0, forward=target, retry_initial_s=0.2, retry_max_s=0.5)
    pacs = None
    try:
        node.start()
        a = ultrasound_dataset(first[0], pixel_size_mm=first[1])
        assert store(node.port, [a])[0] == [0x0000]
        wait_for(lambda: any("incomplete" in r.getMessage() for r in caplog.records), 60,
                 "a failed forward attempt")
        # The PACS is dead: receiving and grading go on, results wait in the outbox.
        t0 = time.perf_counter()
        b = ultrasound_dataset(second[0], pixel_size_mm=second[1])
        assert store(node.port, [b])[0] == [0x0000]
        assert time.perf_counter() - t0 < 10
        wait_for(lambda: node.counters.graded == 2, 60, "both images graded")
        kept = sorted(p.name for p in node.outbox.glob("*.dcm"))
        assert len(kept) >= 3, kept  # two SRs and at least one SEG (phantom lesions are found)
        pacs = Pacs(pacs_port)
        assert node.wait_idle(60), "outbox not emptied after the PACS came up"
        delivered = {str(ds.SOPInstanceUID) for ds in pacs.received}
        for path in node.results.glob("*_s[er]*.dcm"):
            assert str(hd.sr.srread(path).SOPInstanceUID if path.name.endswith("_sr.dcm")
                       else hd.seg.segread(path).SOPInstanceUID) in delivered
        assert len(delivered) == len(kept)
        srs = [ds for ds in pacs.received if str(ds.SOPClassUID) == SR_STORAGE]
        assert {str(ds.StudyInstanceUID) for ds in srs} == {str(a.StudyInstanceUID), str(b.StudyInstanceUID)}
    finally:
        node.stop()
        if pacs is not None:
            pacs.stop()


def test_a_hanging_pacs_never_holds_up_receiving(grader, tmp_path):
    gate = threading.Event()
    pacs = Pacs(gate=gate)
    target = ForwardTarget("TESTPACS", "127.0.0.1", pacs.port)
    node = DicomNode(grader, tmp_path / "node", port=0, forward=target)
    try:
        node.start()
        first, second = phantom_image(11), phantom_image(12)
        assert store(node.port, [ultrasound_dataset(first[0], pixel_size_mm=first[1])])[0] == [0x0000]
        assert pacs.waiting.wait(60), "the forwarder never reached the PACS"
        # the forwarder is stuck inside the PACS's C-STORE: the node still receives and grades
        assert store(node.port, [ultrasound_dataset(second[0], pixel_size_mm=second[1])])[0] == [0x0000]
        wait_for(lambda: node.counters.graded == 2, 60, "the second image graded while the PACS hangs")
        assert not node.idle()  # results still waiting for the PACS
        gate.set()
        assert node.wait_idle(60)
        assert len(pacs.received) == node.counters.forwarded >= 3
    finally:
        gate.set()
        node.stop()
        pacs.stop()


def test_a_pacs_without_segmentation_storage_gets_the_report_and_the_seg_is_kept(grader, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="sonograde.dicom")
    pacs = Pacs(sop_classes=(SR_STORAGE,))
    target = ForwardTarget("TESTPACS", "127.0.0.1", pacs.port)
    node = DicomNode(grader, tmp_path / "node", port=0, forward=target, retry_initial_s=0.1, retry_max_s=0.2,
                     max_attempts=2)
    try:
        node.start()
        image, pixel_size = phantom_image(11)
        ds = ultrasound_dataset(image, pixel_size_mm=pixel_size)
        assert store(node.port, [ds])[0] == [0x0000]
        assert node.wait_idle(60)
        assert [str(d.SOPClassUID) for d in pacs.received] == [SR_STORAGE]
        assert [p.name for p in node.failed.iterdir()] == [f"{ds.SOPInstanceUID}_seg.dcm"]
        assert any("gave up" in r.getMessage() for r in caplog.records)
    finally:
        node.stop()
        pacs.stop()


def test_serve_rejects_bad_options_in_one_line(tmp_path, capsys):
    from sonograde.cli import main

    assert main(["dicom", "serve", "--out", str(tmp_path), "--forward", "PACS@nowhere"]) == 2
    err = capsys.readouterr().err
    assert "AE@HOST:PORT" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert main(["dicom", "serve", "--out", str(tmp_path), "--port", "70000"]) == 2


def test_images_left_in_incoming_are_graded_on_the_next_start(grader, tmp_path):
    image, pixel_size = phantom_image(11)
    ds = ultrasound_dataset(image, pixel_size_mm=pixel_size)
    out = tmp_path / "node"
    (out / "incoming").mkdir(parents=True)
    ds.save_as(out / "incoming" / f"{ds.SOPInstanceUID}.dcm", enforce_file_format=True)
    with DicomNode(grader, out, port=0) as node:
        assert node.wait_idle(60)
        assert (node.results / f"{ds.SOPInstanceUID}_sr.dcm").exists()
        assert not any(node.incoming.iterdir())


# --------------------------------------------------------------------- eight real images, the CLI


def breast_cases(count: int) -> list[dict]:
    """The first ``count`` BrEaST-Lesions_USG cases with a lesion mask, in manifest order."""
    manifest = BREAST / "manifest.csv"
    if not manifest.exists():
        pytest.skip(f"BrEaST-Lesions_USG not found at {BREAST}")
    with manifest.open() as handle:
        rows = [r for r in csv.DictReader(handle) if r["mask"] and r["pixel_size_mm"]]
    return rows[:count]


# Median over the eight of |longest diameter (graded lesion) - longest (annotated)| / annotated. The SR's
# mm values are checked exactly against the grader's mask above; this bound is about the segmentation
# (first run: median 0.155, DSC 0.75-0.93 on seven cases, one lesion missed), so it is loose on purpose.
SIZE_TOLERANCE = 0.25


@pytest.mark.realdata
@pytest.mark.slow
def test_eight_ultrasound_images_through_dicom_serve(grader, tmp_path):
    import cv2

    from capture.sources import dicom_frames_gray
    from refine.measure import lesion_size
    from refine.metrics import dice

    cases = breast_cases(8)
    study = None
    datasets = []
    for i, case in enumerate(cases):
        gray = cv2.imread(str(BREAST / case["image"]), cv2.IMREAD_GRAYSCALE)
        ds = ultrasound_dataset(gray, pixel_size_mm=float(case["pixel_size_mm"]), study_uid=study,
                                instance_number=i + 1)
        assert "PixelSpacing" not in ds  # the pixel size is only in the Sequence of Ultrasound Regions
        study = str(ds.StudyInstanceUID)
        datasets.append(ds)

    pacs = Pacs()
    out = tmp_path / "node"
    command = [sys.executable, "-m", "sonograde.cli", "dicom", "serve", "--out", str(out), "--port", "0",
               "--forward", f"TESTPACS@127.0.0.1:{pacs.port}"]
    process = subprocess.Popen(command, cwd=REPO_ROOT, stderr=subprocess.PIPE, text=True)
    lines: list[str] = []
    try:
        port = None
        for line in process.stderr:  # wait for "listening on 127.0.0.1:PORT"
            lines.append(line)
            found = re.search(r"listening on 127\.0\.0\.1:(\d+) as", line)
            if found:
                port = int(found.group(1))
                break
        assert port, "".join(lines)
        reader = threading.Thread(target=lambda: lines.extend(process.stderr), daemon=True)
        reader.start()

        t0 = time.perf_counter()
        with ThreadPoolExecutor(2) as pool:  # two scanners at once, four images each
            results = list(pool.map(lambda part: store(port, part)[0], [datasets[0::2], datasets[1::2]]))
        assert results == [[0x0000] * 4, [0x0000] * 4]
        results_dir = out / "results"

        def done() -> bool:
            return len(list(results_dir.glob("*.json"))) == 8

        wait_for(done, 8 * 20, "eight graded images")
        wall = time.perf_counter() - t0
        wait_for(lambda: len(pacs.received) == 16, 60, "16 forwarded objects at the PACS")
    finally:
        process.terminate()
        process.wait(30)
        pacs.stop()
    log = "".join(lines)
    assert PATIENT_NAME.split("^")[0] not in log and PATIENT_ID not in log

    import json

    rows = []
    for ds, case in zip(datasets, cases, strict=True):
        uid = str(ds.SOPInstanceUID)
        summary = json.loads((results_dir / f"{uid}.json").read_text())
        sr = hd.sr.srread(results_dir / f"{uid}_sr.dcm")
        seg = hd.seg.segread(results_dir / f"{uid}_seg.dcm")
        # identity carried from the source, the source referenced
        for obj in (sr, seg):
            assert (obj.PatientName, obj.PatientID, obj.StudyInstanceUID) == (ds.PatientName, ds.PatientID,
                                                                               ds.StudyInstanceUID)
        assert str(seg.SourceImageSequence[0].ReferencedSOPInstanceUID) == uid
        group = sr.content.get_planar_roi_measurement_groups()[0]
        assert str(group.roi.ContentSequence[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID) == uid

        # the grader's own result on the same frame, measured with the manifest's pixel size
        frame = dicom_frames_gray(ds)[0]
        expected = grader.grade(frame)
        assert expected.lesion_found
        size = lesion_size(expected.refined_mask, float(case["pixel_size_mm"]), "dicom_ultrasound_regions")
        values = {m.name.meaning: (m.value, m.unit.value) for m in group.get_measurements()}
        assert values["Width"] == (pytest.approx(size["width"]), "mm")
        assert values["Height"] == (pytest.approx(size["height"]), "mm")
        assert values["Long axis"] == (pytest.approx(size["longest"]), "mm")
        evaluations = {e.name.meaning: e.value for e in group.get_qualitative_evaluations()}
        assert evaluations["Assessment Category"].value == f"BIRADS-{expected.category}"
        assert summary["category"] == expected.category
        np.testing.assert_array_equal(_seg_mask(seg), expected.refined_mask)

        annotated = cv2.imread(str(BREAST / case["mask"]), cv2.IMREAD_GRAYSCALE) > 0
        truth = lesion_size(annotated, float(case["pixel_size_mm"]), "manifest")
        relative = abs(values["Long axis"][0] - truth["longest"]) / truth["longest"]
        rows.append((case["id"], values["Long axis"][0], truth["longest"], relative,
                     dice(expected.refined_mask, annotated), summary["received_to_written_ms"]))

    print(f"\n{'case':<8} {'longest mm':>10} {'annotated':>10} {'rel diff':>9} {'DSC':>6} "
          f"{'receipt->SR+SEG ms':>19}")
    for case_id, longest, truth, relative, overlap, ms in rows:
        print(f"{case_id:<8} {longest:>10.2f} {truth:>10.2f} {relative:>9.3f} {overlap:>6.3f} {ms:>19.0f}")
    per_image = wall / len(rows)
    print(f"8 images, two associations at once: {wall:.2f} s from first C-STORE to the eighth result "
          f"({per_image:.2f} s per image); median relative longest-diameter difference "
          f"{np.median([r[3] for r in rows]):.3f}")
    assert np.median([r[3] for r in rows]) <= SIZE_TOLERANCE, rows
    assert per_image < 20  # a sanity bound on a loaded machine, not a speed claim (see the printed times)


def _seg_mask(seg) -> np.ndarray:
    """The SEG's segment 1 as a bool mask of the (single-frame) source image."""
    uid = str(seg.SourceImageSequence[0].ReferencedSOPInstanceUID)
    pixels = seg.get_pixels_by_source_instance(source_sop_instance_uids=[uid], segment_numbers=[1])
    return np.asarray(pixels)[0, :, :, 0] > 0
