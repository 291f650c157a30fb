"""The stream's security, for real: CURVE keys and ZAP with a real `sonograde run` process, message size
limits (a 10 MB subscription against a running publisher, oversized frames at a subscriber), and no
file name or path of the source in any published byte.

No timing assertions: deadlines only bound how long a test waits.
"""

from __future__ import annotations

import json
import os
import queue
import re
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest
import zmq

from engine.backends.dev_models import make_grader_model, make_roi_model
from sonograde.benchmarks.soak import rss_mb
from sonograde.cli import main as cli_main
from sonograde.curve import CurveKeyError, apply_client_curve, make_keys
from sonograde.messages import encode, encode_frame, redact_paths
from sonograde.publisher import EndpointError, Publisher, PublisherConfig, check_endpoint
from sonograde.subscriber import Subscriber

REPO_ROOT = Path(__file__).resolve().parents[1]
DEADLINE_S = 60.0
PATIENT = "DOE_JANE_1962-03-14_MRN4471"  # a file name that names a patient, as real exports often do


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("dev_models")
    make_roi_model(directory / "roi_cnn.onnx")
    make_grader_model(directory / "g_cnn.onnx")
    return directory


@pytest.fixture(scope="module")
def keys(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("keys")
    make_keys(directory)
    return directory


def free_endpoint() -> str:
    """A loopback TCP endpoint nobody listens on now (to connect a subscriber before `run` binds it)."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return f"tcp://127.0.0.1:{probe.getsockname()[1]}"


class RunProcess:
    """`sonograde run` in a subprocess, publishing on ``endpoint`` (default: a free loopback port it
    reports on stderr)."""

    def __init__(self, *args: str, endpoint: str = "tcp://127.0.0.1:*") -> None:
        env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "sonograde.cli", "run", "--publish", endpoint,
             "--seconds", "300", *args],
            stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=env)
        self.lines: queue.Queue[str] = queue.Queue()
        self.stderr: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()
        self.endpoint = self._wait_for_endpoint()

    def _read(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.stderr.append(line)
            self.lines.put(line)

    def _wait_for_endpoint(self) -> str:
        deadline = time.monotonic() + DEADLINE_S
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=0.5)
            except queue.Empty:
                if self.process.poll() is not None:
                    break
                continue
            match = re.search(r"publishing on (tcp://\S+)", line)
            if match:
                return match.group(1)
        self.stop()
        raise AssertionError("`sonograde run` did not start publishing:\n" + "".join(self.stderr))

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)


@pytest.fixture
def context() -> Iterator[zmq.Context]:
    ctx = zmq.Context()
    yield ctx
    ctx.destroy(linger=0)


def raw_subscriber(context: zmq.Context, endpoint: str, curve: Path | None = None) -> zmq.Socket:
    """A plain SUB socket that takes everything (no Sonograde decoding, no limits)."""
    socket = context.socket(zmq.SUB)
    socket.setsockopt(zmq.LINGER, 0)
    socket.setsockopt(zmq.RCVHWM, 100000)
    if curve is not None:
        apply_client_curve(socket, curve)
    socket.setsockopt(zmq.SUBSCRIBE, b"")
    socket.connect(endpoint)
    return socket


def drain(socket: zmq.Socket, seconds: float) -> list[list[bytes]]:
    messages = []
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        if socket.poll(int(left * 1000) + 1, zmq.POLLIN):
            messages.append(socket.recv_multipart())
    return messages


def receive_results(socket: zmq.Socket, count: int) -> list[list[bytes]]:
    """Messages until ``count`` results arrived (fails at the deadline)."""
    messages: list[list[bytes]] = []
    deadline = time.monotonic() + DEADLINE_S
    while sum(m[0] == b"sonograde.result" for m in messages) < count:
        assert time.monotonic() < deadline, f"only {len(messages)} messages within {DEADLINE_S} s"
        if socket.poll(200, zmq.POLLIN):
            messages.append(socket.recv_multipart())
    return messages


# ------------------------------------------------------------------------------------------------ keys


def test_keys_command_writes_private_keys_and_never_overwrites(tmp_path: Path, capsys) -> None:
    out = tmp_path / "keys"
    assert cli_main(["keys", "--out", str(out)]) == 0
    for name in ("server.key", "server.key_secret", "client.key", "client.key_secret",
                 "authorized/client.key"):
        assert (out / name).is_file(), name
    for name in ("server.key_secret", "client.key_secret"):
        assert stat.S_IMODE((out / name).stat().st_mode) == 0o600
    assert (out / "authorized" / "client.key").read_text() == (out / "client.key").read_text()
    assert not [p for p in out.iterdir() if p.name.startswith(".sonograde-keys")]
    secret = (out / "server.key_secret").read_text()
    import zmq.auth

    public, private = zmq.auth.load_certificate(out / "server.key_secret")
    assert len(public) == 40 and len(private) == 40  # pyzmq's certificate format, Z85 keys

    capsys.readouterr()
    assert cli_main(["keys", "--out", str(out)]) == 2
    error = capsys.readouterr().err.strip()
    assert "--force" in error and "\n" not in error
    assert (out / "server.key_secret").read_text() == secret
    assert cli_main(["keys", "--out", str(out), "--force"]) == 0
    assert (out / "server.key_secret").read_text() != secret


def test_secret_key_readable_by_others_is_refused(tmp_path: Path) -> None:
    make_keys(tmp_path)
    os.chmod(tmp_path / "server.key_secret", 0o644)
    with pytest.raises(CurveKeyError, match="chmod 600"):
        Publisher(PublisherConfig(endpoint="tcp://127.0.0.1:*", curve=tmp_path))


def test_allow_remote_without_curve_is_refused(capsys) -> None:
    assert cli_main(["run", "--allow-remote", "--publish", "tcp://0.0.0.0:5555"]) == 2
    error = capsys.readouterr().err.strip()
    assert "\n" not in error and "--curve" in error and "sonograde keys --out DIR" in error
    with pytest.raises(EndpointError, match="sonograde keys"):
        check_endpoint("tcp://127.0.0.1:5555", allow_remote=True)
    with pytest.raises(EndpointError, match="sonograde keys"):
        Publisher(PublisherConfig(endpoint="tcp://0.0.0.0:*", allow_remote=True))
    with pytest.raises(EndpointError, match="--allow-remote --curve"):
        check_endpoint("tcp://0.0.0.0:5555")


def test_curve_run_only_authorized_keyed_displays_get_results(models_dir, keys, tmp_path, context) -> None:
    """A real `sonograde run --curve`: a display with the authorized key gets results; one without keys
    and one with a valid but unauthorized key get nothing at all while it does."""
    stranger = tmp_path / "stranger"
    make_keys(stranger)  # valid CURVE keys for this server's public key, but not in keys/authorized
    (stranger / "server.key").write_text((keys / "server.key").read_text())
    run = RunProcess("--models", str(models_dir), "--curve", str(keys), "--quiet")
    try:
        assert "CURVE-encrypted" in "".join(run.stderr)
        unkeyed = raw_subscriber(context, run.endpoint)
        unauthorized = raw_subscriber(context, run.endpoint, curve=stranger)
        keyed = raw_subscriber(context, run.endpoint, curve=keys)
        results = receive_results(keyed, 10)
        assert any(m[0] == b"sonograde.status" for m in results)
        receive_results(keyed, 3)  # and they keep flowing
        assert drain(unkeyed, 0.5) == []
        assert drain(unauthorized, 0.5) == []
        # The Sonograde subscriber (what the overlay uses) with the keys decodes them.
        with Subscriber(run.endpoint, curve=keys) as subscriber:
            deadline = time.monotonic() + DEADLINE_S
            message = None
            while message is None or message.kind != "result":
                assert time.monotonic() < deadline
                message = subscriber.recv(500)
            assert message.frame is not None and message.header["source"] == "phantom"
    finally:
        run.stop()


def test_overlay_with_keys_snapshots_an_encrypted_stream(models_dir, keys, tmp_path) -> None:
    run = RunProcess("--models", str(models_dir), "--curve", str(keys), "--quiet")
    try:
        snapshot = tmp_path / "overlay.png"
        code = cli_main(["overlay", "--connect", run.endpoint, "--curve", str(keys), "--no-window",
                         "--snapshot", str(snapshot), "--frames", "5", "--seconds", str(DEADLINE_S)])
        assert code == 0
        picture = cv2.imread(str(snapshot))
        assert picture is not None and picture.shape[0] > 100
    finally:
        run.stop()


# ---------------------------------------------------------------------------------------------- limits


def test_a_10mb_subscription_does_not_grow_run_and_results_keep_flowing(models_dir, context) -> None:
    """The worst a local client can do to the publisher's memory: a 10 MB subscription to `run`."""
    run = RunProcess("--models", str(models_dir), "--quiet")
    try:
        display = raw_subscriber(context, run.endpoint)
        receive_results(display, 30)  # warmed up, steady state
        time.sleep(1.0)
        before = rss_mb(run.process.pid)
        send_subscription(run.endpoint, b"sonograde." + bytes(10_000_000))
        time.sleep(3.0)  # time to store it, were it stored
        peak = rss_mb(run.process.pid)
        drain(display, 0.0)
        after_results = receive_results(display, 30)  # results and heartbeats keep flowing
        assert any(m[0] == b"sonograde.status" for m in after_results) or len(after_results) >= 30
        after = rss_mb(run.process.pid)
        assert run.process.poll() is None, "run is still running"
        growth = max(peak, after) - before
        assert growth < 64.0, f"publisher grew by {growth:.1f} MB after a 10 MB subscription"
    finally:
        run.stop()


def send_subscription(endpoint: str, topic: bytes) -> None:
    """Subscribe to ``topic`` the way any ZMTP 3.0 peer can: greeting, READY as a SUB, then one
    subscription message. (A libzmq SUB socket cannot be the attacker here: its own subscription trie
    overflows the stack on a 10 MB topic.) Returns when sent or when the publisher hangs up."""
    import socket
    import struct

    host, port = endpoint.removeprefix("tcp://").rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=10) as connection:
        mechanism = b"NULL".ljust(20, b"\x00")
        connection.sendall(b"\xff" + bytes(8) + b"\x7f" + bytes([3, 0]) + mechanism + b"\x00" + bytes(31))
        greeting = b""
        while len(greeting) < 64:
            chunk = connection.recv(64 - len(greeting))
            assert chunk, "the publisher closed the connection during the greeting"
            greeting += chunk
        ready = b"\x05READY" + bytes([11]) + b"Socket-Type" + struct.pack(">I", 3) + b"SUB"
        message = b"\x01" + topic
        try:
            connection.sendall(bytes([0x04, len(ready)]) + ready)
            connection.sendall(b"\x02" + struct.pack(">Q", len(message)) + message)
        except (ConnectionResetError, BrokenPipeError):
            pass  # the publisher refused the oversized message and hung up: what it should do


def test_subscriber_refuses_oversized_frames_before_decoding(context) -> None:
    publisher = Publisher(PublisherConfig(endpoint="tcp://127.0.0.1:*", sndhwm=1000))
    subscriber = Subscriber(publisher.endpoint, rcvhwm=1000, max_message_bytes=100_000,
                            max_frame_pixels=50_000)
    try:
        assert publisher.wait_for_subscriber(10)
        header = _result_header()

        def send(image: np.ndarray | None, encoding: str = "raw", declared: list[int] | None = None) -> None:
            frame_part = None
            body = dict(header)
            if image is not None:
                descriptor, frame_part = encode_frame(image, encoding)
                if declared is not None:
                    descriptor["shape"] = declared
                body["frame"] = descriptor
                body["image_size"] = list(descriptor["shape"])
            publisher.send(encode("result", body, frame_part))

        # A small JPEG that claims 8000 x 8000 (64 Mpixel): refused by its declared size, never decoded.
        tiny = np.full((8, 8), 128, np.uint8)
        send(tiny, "jpeg", declared=[8000, 8000])
        send(np.full((100, 100), 7, np.uint8))  # 10 000 pixels: fine
        message = subscriber.recv(5000)
        assert message is not None and message.frame is not None and message.frame.shape == (100, 100)
        assert subscriber.invalid["frame too large"] == 1
        # A 200 kB part is over the socket's limit: libzmq drops it (and the connection) unread.
        send(np.full((400, 500), 9, np.uint8))
        assert subscriber.recv(1000) is None
        # libzmq does not reconnect after that; the subscriber does, and takes what fits again.
        deadline = time.monotonic() + DEADLINE_S
        while (message := subscriber.recv(100)) is None:
            assert time.monotonic() < deadline
            publisher.poll_subscriptions()
            send(np.full((50, 60), 3, np.uint8))
        assert message.frame.shape == (50, 60) and subscriber.reconnects >= 1
    finally:
        subscriber.close()
        publisher.close()


def _result_header() -> dict:
    return {
        "seq": 0, "frame_index": 0, "t_capture_ns": time.monotonic_ns(), "t_publish_ns": time.monotonic_ns(),
        "source": "phantom", "source_state": "connected", "image_size": [100, 100], "pixel_size_mm": None,
        "lesion_found": False, "roi_contour": None, "refined_contour": None, "bbox": None, "area_px": None,
        "area_mm2": None, "category": None, "probabilities": None, "smoothed_category": None,
        "smoothed_probabilities": None, "track": None, "timings_ms": {}, "model_ids": {}, "dropped": {},
        "stale_graded": 0, "frame": None, "research_use": "RESEARCH USE ONLY - NOT FOR DIAGNOSIS",
    }


# ------------------------------------------------------------------------------------------------- PHI


def _write_dicom(path: Path, frames: np.ndarray) -> None:
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.3.1"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality = "US"
    ds.PatientName = "DOE^JANE"
    ds.PatientID = "MRN4471"
    ds.Rows, ds.Columns = frames.shape[1:]
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PhotometricInterpretation, ds.SamplesPerPixel = "MONOCHROME2", 1
    ds.NumberOfFrames = frames.shape[0]
    ds.PixelData = np.ascontiguousarray(frames, np.uint8).tobytes()
    ds.save_as(str(path), enforce_file_format=True)


def _assert_no_phi(messages: list[list[bytes]], *names: str) -> None:
    for message in messages:
        for part in message:
            for name in names:
                for variant in {name, name.lower(), name.upper()}:
                    assert variant.encode() not in part, f"{variant!r} was published"


def _phi_names(path: Path) -> list[str]:
    return [str(path), path.name, path.stem, PATIENT, "DOE", "JANE", "MRN4471", path.parent.name]


def test_stream_names_a_dicom_source_by_kind_never_by_file_name(models_dir, tmp_path, rng, context) -> None:
    folder = tmp_path / f"patients {PATIENT}"
    folder.mkdir()
    dicom = folder / f"{PATIENT}.dcm"
    frames = rng.integers(90, 170, (6, 120, 160)).astype(np.uint8)
    _write_dicom(dicom, frames)
    endpoint = free_endpoint()
    subscriber = raw_subscriber(context, endpoint)  # connected before `run` binds: sees everything
    run = RunProcess("--models", str(models_dir), "--source", f"dicom:{dicom}", "--fps", "30", "--quiet",
                     endpoint=endpoint)
    try:
        messages = receive_results(subscriber, 12) + drain(subscriber, 1.5)
    finally:
        run.stop()
    headers = [m[1].decode() for m in messages]
    assert any('"source":"dicom, 6 frames"' in h for h in headers)
    assert any(m[0] == b"sonograde.status" for m in messages)
    _assert_no_phi(messages, *_phi_names(dicom))
    # The operator's own terminal still says which file it is.
    assert dicom.name in "".join(run.stderr)


def test_stream_errors_name_no_file(models_dir, tmp_path, rng, context) -> None:
    """An image folder with an unreadable file named after a patient: whatever the pipeline reports about
    it in the stream (status errors included) names no file or folder."""
    folder = tmp_path / PATIENT
    folder.mkdir()
    for index in range(3):
        cv2.imwrite(str(folder / f"{PATIENT}_{index}.png"), rng.integers(0, 255, (120, 160)).astype(np.uint8))
    (folder / f"{PATIENT}_9_broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    endpoint = free_endpoint()
    subscriber = raw_subscriber(context, endpoint)  # connected before `run` binds: sees everything
    run = RunProcess("--models", str(models_dir), "--source", str(folder), "--fps", "30", "--quiet",
                     endpoint=endpoint)
    def errors() -> list:
        """Reports of the unreadable file: a last error, or a count of skipped files."""
        statuses = [json.loads(m[1]) for m in messages if m[0] == b"sonograde.status"]
        return [s for s in statuses if s["last_error"] or (s.get("errors") or {}).get("source_skipped")]

    messages: list[list[bytes]] = []
    try:
        deadline = time.monotonic() + DEADLINE_S
        # Until the unreadable file is reported (`run` skips and counts it, or ends on it).
        while not errors() and run.process.poll() is None and time.monotonic() < deadline:
            messages += drain(subscriber, 0.5)
        messages += drain(subscriber, 0.5)
    finally:
        run.stop()
    assert all(b'"source":"image folder, 4 images"' in m[1] for m in messages)
    assert errors(), "the unreadable file is reported in the stream (without its name)"
    _assert_no_phi(messages, *_phi_names(folder / f"{PATIENT}_9_broken.png"))


def test_redact_paths_keeps_the_reason_and_drops_names() -> None:
    text = (f"SourceError: cannot read image '/data/{PATIENT}/{PATIENT}_3.png' (not an image or corrupt); "
            f"OSError: [Errno 2] No such file: C:\\scans\\{PATIENT}.dcm; {PATIENT}")
    redacted = redact_paths(text, [PATIENT])
    assert PATIENT not in redacted and "scans" not in redacted and "/data" not in redacted
    assert "cannot read image <file> (not an image or corrupt)" in redacted
    plain = "capture device 0 stopped delivering frames"
    assert redact_paths(plain) == plain
    assert redact_paths(None) is None


@pytest.mark.parametrize(("spec", "kind"), [
    ("phantom", "phantom"), ("phantom:seed=3,screen=1", "phantom"), ("0", "capture device 0"),
    ("/dev/video2", "capture device 2"), (f"dicom:/data/{PATIENT}/cine.dcm", "dicom"),
    (f"/data/{PATIENT}.dcm", "dicom"), (f"/data/{PATIENT}.mp4", "video file"),
    (f"/data/{PATIENT}/*.png", "image folder"), (f"/data/{PATIENT}.bin", "file source"),
])
def test_stream_name_of_a_source_string_is_its_kind(spec: str, kind: str) -> None:
    from capture.sources import stream_name_of

    assert stream_name_of(spec) == kind
