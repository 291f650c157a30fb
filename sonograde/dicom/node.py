"""The DICOM node: a Storage SCP that grades what it receives and forwards the results to a PACS.

Three kinds of threads, so a slow step never holds up another:

- association threads (pynetdicom, one per association, several at once) check each C-STORE, decode its
  pixels, write it to ``DIR/incoming/`` and answer Success; anything not graded is refused there with a
  status and a log line (see ``grading.RefusedError``);
- grading workers take the queue, grade (``grading.grade_dataset``), write the SR, SEG (and SC) and a
  JSON summary to ``DIR/results/``, put the objects to forward in ``DIR/outbox/`` and only then remove
  the received image from ``incoming/``;
- the forwarder sends ``DIR/outbox/`` to the PACS by C-STORE and removes each file once the PACS
  answered Success. A dead or slow PACS only delays the forwarder: it retries with a growing pause (up to
  a minute), and nothing is lost, also across restarts (``incoming/`` is graded again and ``outbox/``
  sent again when the node starts; the objects' UIDs are derived from the source, so a repeat replaces).

Logs name the peer (AE title, address), SOP classes, SOP Instance UIDs, categories and statuses, never
the patient (no names, ids, dates of birth, file names from the scanner).
"""

from __future__ import annotations

import logging
import os
import queue
import shutil
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import UID

from sonograde.dicom import grading

LOG = logging.getLogger("sonograde.dicom")

DEFAULT_AE_TITLE = "SONOGRADE"
DEFAULT_PORT = 11112
VERIFICATION = "1.2.840.10008.1.1"
# Objects the node writes and forwards.
COMPREHENSIVE_3D_SR_STORAGE = "1.2.840.10008.5.1.4.1.1.88.34"
SEGMENTATION_STORAGE = "1.2.840.10008.5.1.4.1.1.66.4"
FORWARDED_SOP_CLASSES = (COMPREHENSIVE_3D_SR_STORAGE, SEGMENTATION_STORAGE,
                         grading.SECONDARY_CAPTURE_IMAGE_STORAGE)


@dataclass(frozen=True)
class ForwardTarget:
    """Where results go: ``AE@HOST:PORT``."""

    ae_title: str
    host: str
    port: int

    @classmethod
    def parse(cls, text: str) -> ForwardTarget:
        """``PACS@127.0.0.1:104`` -> ForwardTarget; ValueError with the expected form otherwise."""
        ae, at, address = text.partition("@")
        host, colon, port = address.rpartition(":")
        if not (at and colon and ae and host and port.isdigit()) or not 0 < int(port) < 65536 or len(ae) > 16:
            raise ValueError(f"--forward {text!r}: expected AE@HOST:PORT, e.g. PACS@127.0.0.1:104 "
                             "(AE title of at most 16 characters)")
        return cls(ae, host, int(port))

    def __str__(self) -> str:
        return f"{self.ae_title}@{self.host}:{self.port}"


def decodable_transfer_syntaxes() -> list[str]:
    """Transfer syntaxes whose pixel data this installation decodes (native ones first)."""
    from pydicom.pixels import get_decoder
    from pydicom.uid import AllTransferSyntaxes

    uids = []
    for uid in AllTransferSyntaxes:
        try:
            if get_decoder(uid).is_available:
                uids.append(str(uid))
        except NotImplementedError:  # no decoder exists for it at all
            continue
    return uids


def storage_sop_classes() -> list[str]:
    """Every storage SOP class pynetdicom knows: accepted at negotiation so that what is not graded gets a
    C-STORE refusal with a reason instead of a bare rejected presentation context."""
    from pynetdicom import AllStoragePresentationContexts

    return [str(cx.abstract_syntax) for cx in AllStoragePresentationContexts]


@dataclass
class _Job:
    path: Path
    dataset: Dataset | None
    frames: object
    received: float  # time.perf_counter() when the C-STORE arrived


@dataclass
class NodeCounters:
    echoes: int = 0
    received: int = 0
    refused: int = 0
    graded: int = 0
    not_graded: int = 0
    forwarded: int = 0
    forward_failures: int = 0

    def line(self) -> str:
        return (f"received {self.received}, refused {self.refused}, graded {self.graded}, failed "
                f"{self.not_graded}, forwarded {self.forwarded}, echoes {self.echoes}")


class DicomNode:
    """Storage SCP + grading workers + forwarder. ``start()`` returns the bound port; ``stop()`` ends all.

    Parameters
    ----------
    grader : ``engine.grader.TwoStageGrader`` (warmed up by the caller).
    out_dir : results folder (``incoming/``, ``results/``, ``outbox/``, ``failed/`` are made in it).
    ae_title, host, port : where to listen; port 0 lets the system choose (``start()`` says which).
    forward : the PACS to send SR/SEG/SC to, or None.
    max_frames, overlay : as ``grading.grade_dataset``.
    workers : grading threads (the grader's sessions are shared; one per spare core is plenty).
    retry_initial_s, retry_max_s : the forwarder's first and longest pause after a failed attempt.
    max_attempts : times a PACS may refuse one object (a failure status) before it moves to ``failed/``;
        an unreachable PACS is retried without limit.
    """

    def __init__(self, grader, out_dir: Path, *, ae_title: str = DEFAULT_AE_TITLE, host: str = "127.0.0.1",
                 port: int = DEFAULT_PORT, forward: ForwardTarget | None = None,
                 max_frames: int = grading.DEFAULT_MAX_FRAMES, overlay: bool = False, workers: int = 1,
                 retry_initial_s: float = 2.0, retry_max_s: float = 60.0, max_attempts: int = 10,
                 max_associations: int = 16) -> None:
        self.grader = grader
        self.out_dir = Path(out_dir)
        self.incoming = self.out_dir / "incoming"
        self.results = self.out_dir / "results"
        self.outbox = self.out_dir / "outbox"
        self.failed = self.out_dir / "failed"
        self.ae_title = ae_title
        self.host = host
        self.port = port
        self.forward = forward
        self.max_frames = max_frames
        self.overlay = overlay
        self.workers = max(1, int(workers))
        self.retry_initial_s = retry_initial_s
        self.retry_max_s = retry_max_s
        self.max_attempts = max_attempts
        self.max_associations = max_associations
        self.counters = NodeCounters()
        self._lock = threading.Lock()
        self._queue: queue.Queue[_Job] = queue.Queue()
        self._pending = 0  # queued or being graded
        self._stop = threading.Event()
        self._wake_forwarder = threading.Event()
        self._threads: list[threading.Thread] = []
        self._server = None
        self._attempts: dict[str, int] = {}
        self.transfer_syntaxes: list[str] = []

    # -------------------------------------------------------------------------------------------- life

    def start(self) -> int:
        """Make the folders, queue what an earlier run left in ``incoming/``, start threads and server."""
        from pynetdicom import AE, evt

        for folder in (self.incoming, self.results, self.outbox, self.failed):
            folder.mkdir(parents=True, exist_ok=True)
        left = sorted(self.incoming.glob("*.dcm"), key=lambda p: p.stat().st_mtime)
        for path in left:
            self._enqueue(_Job(path, None, None, time.perf_counter()))
        if left:
            LOG.info("%d received image(s) from an earlier run queued for grading", len(left))
        for n in range(self.workers):
            self._spawn(self._grade_loop, f"sonograde-dicom-grader-{n}")
        if self.forward is not None:
            self._spawn(self._forward_loop, "sonograde-dicom-forwarder")

        ae = AE(ae_title=self.ae_title)
        ae.maximum_associations = self.max_associations
        ae.network_timeout = 60
        self.transfer_syntaxes = decodable_transfer_syntaxes()
        ae.add_supported_context(VERIFICATION)
        for sop_class in storage_sop_classes():
            ae.add_supported_context(sop_class, self.transfer_syntaxes)
        handlers = [(evt.EVT_C_ECHO, self._on_echo), (evt.EVT_C_STORE, self._on_store),
                    (evt.EVT_ACCEPTED, self._on_accepted), (evt.EVT_REJECTED, self._on_rejected),
                    (evt.EVT_ABORTED, self._on_aborted)]
        self._server = ae.start_server((self.host, self.port), block=False, evt_handlers=handlers)
        self.port = int(self._server.server_address[1])
        LOG.info("listening on %s:%d as %s; %d transfer syntaxes decodable; results in %s%s", self.host,
                 self.port, self.ae_title, len(self.transfer_syntaxes), self.out_dir,
                 f"; forwarding to {self.forward}" if self.forward else "")
        return self.port

    def stop(self, timeout: float = 10.0) -> None:
        """Stop accepting, let the workers finish the image in hand, stop the forwarder."""
        if self._server is not None:
            self._server.shutdown()
            self._server = None
        self._stop.set()
        self._wake_forwarder.set()
        for thread in self._threads:
            thread.join(timeout)
        LOG.info("stopped: %s", self.counters.line())

    def __enter__(self) -> DicomNode:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _spawn(self, target, name: str) -> None:
        thread = threading.Thread(target=target, name=name, daemon=True)
        thread.start()
        self._threads.append(thread)

    def _enqueue(self, job: _Job) -> None:
        with self._lock:
            self._pending += 1
        self._queue.put(job)

    def idle(self) -> bool:
        """Nothing queued or being graded, and (when forwarding) the outbox empty."""
        with self._lock:
            pending = self._pending
        pending_forward = self.forward is not None and any(self.outbox.glob("*.dcm"))
        return pending == 0 and not pending_forward

    def wait_idle(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.idle():
                return True
            time.sleep(0.05)
        return self.idle()

    # ------------------------------------------------------------------------------- network events

    @staticmethod
    def _peer(event) -> str:
        requestor = event.assoc.requestor
        return f"{requestor.ae_title}@{requestor.address}:{requestor.port}"

    def _on_accepted(self, event) -> None:
        accepted = {cx.context_id for cx in event.assoc.accepted_contexts}
        supported = {str(cx.abstract_syntax) for cx in event.assoc.acceptor.supported_contexts}
        for cx in event.assoc.requestor.requested_contexts:
            if cx.context_id in accepted:
                continue
            syntax = str(cx.abstract_syntax)
            if syntax not in supported:
                why = "SOP class not supported (result 0x03)"
            else:
                proposed = ", ".join(UID(str(ts)).name for ts in cx.transfer_syntax)
                why = f"transfer syntax not supported (result 0x04): proposed {proposed}"
            LOG.warning("association from %s: refused presentation context %s for %s: %s", self._peer(event),
                        cx.context_id, grading.sop_class_name(syntax), why)

    def _on_rejected(self, event) -> None:
        LOG.warning("association from %s rejected", self._peer(event))

    def _on_aborted(self, event) -> None:
        LOG.warning("association from %s aborted", self._peer(event))

    def _on_echo(self, event) -> int:
        with self._lock:
            self.counters.echoes += 1
        LOG.info("C-ECHO from %s", self._peer(event))
        return 0x0000

    def _on_store(self, event) -> int | Dataset:
        received = time.perf_counter()
        context_sop_class = str(event.context.abstract_syntax)
        peer = self._peer(event)
        try:
            try:
                ds = event.dataset
                ds.file_meta = event.file_meta
                uid = UID(str(ds.SOPInstanceUID))
            except Exception as exc:  # a data set that does not parse
                raise grading.RefusedError(grading.STATUS_CORRUPT,
                                           f"data set cannot be decoded ({type(exc).__name__})") from exc
            if not uid.is_valid:
                raise grading.RefusedError(grading.STATUS_CORRUPT, "SOP Instance UID is not a valid UID")
            grading.check_dataset(ds, context_sop_class)
            frames = grading.decode_frames(ds)
        except grading.RefusedError as exc:
            with self._lock:
                self.counters.refused += 1
            LOG.warning("refused C-STORE from %s of %s: status 0x%04X: %s", peer,
                        grading.sop_class_name(context_sop_class), exc.status, exc)
            return _status(exc.status, str(exc))
        except Exception as exc:  # never let one object take the node down
            with self._lock:
                self.counters.refused += 1
            LOG.error("C-STORE from %s of %s failed: %s", peer, grading.sop_class_name(context_sop_class),
                      type(exc).__name__)
            return _status(0xC000, f"internal error ({type(exc).__name__})")
        try:
            path = self.incoming / f"{uid}.dcm"
            grading.atomic_write_bytes(path, event.encoded_dataset())
        except OSError as exc:
            LOG.error("cannot keep %s from %s: %s", uid, peer, exc.strerror or type(exc).__name__)
            return _status(0xA700, "out of resources: cannot store the image")
        with self._lock:
            self.counters.received += 1
        self._enqueue(_Job(path, ds, frames, received))
        LOG.info("received %s %s from %s (%d frame(s)), queued for grading",
                 grading.sop_class_name(context_sop_class), uid, peer, len(frames))
        return 0x0000

    # --------------------------------------------------------------------------------------- grading

    def _grade_loop(self) -> None:
        while not self._stop.is_set():
            try:
                job = self._queue.get(timeout=0.2)
            except queue.Empty:
                continue
            try:
                self._grade(job)
            except Exception as exc:  # a bug in one image's path must not end the worker
                LOG.error("grading %s failed: %s: %s", job.path.stem, type(exc).__name__, str(exc)[:200])
                self._set_aside(job.path)
            finally:
                with self._lock:
                    self._pending -= 1

    def _grade(self, job: _Job) -> None:
        uid = job.path.stem
        ds, frames = job.dataset, job.frames
        if ds is None:
            try:
                ds = dcmread(job.path)
            except Exception as exc:
                LOG.error("cannot read kept image %s: %s", uid, type(exc).__name__)
                self._set_aside(job.path)
                return
        try:
            graded = grading.grade_dataset(ds, self.grader, frames=frames, max_frames=self.max_frames,
                                           overlay=self.overlay)
        except grading.RefusedError as exc:
            with self._lock:
                self.counters.not_graded += 1
            LOG.warning("not graded %s: status 0x%04X: %s", uid, exc.status, exc)
            self._set_aside(job.path)
            return
        written = grading.write_objects(graded, self.results, uid)
        elapsed_ms = (time.perf_counter() - job.received) * 1e3
        summary = {**graded.summary, "received_to_written_ms": round(elapsed_ms, 1)}
        grading.write_summary(self.results, uid, summary)
        if self.forward is not None:
            for path in written.values():
                _link_or_copy(path, self.outbox / path.name)
            self._wake_forwarder.set()
        job.path.unlink(missing_ok=True)
        with self._lock:
            self.counters.graded += 1
        result = graded.result
        size = graded.summary.get("size")
        size_text = (f", longest {size['longest']:.1f} {size['unit']}" if size else "")
        LOG.info("graded %s: %s%s; wrote %s in %.0f ms after receipt", uid,
                 f"BI-RADS {result.category}" if result.lesion_found else "no lesion found", size_text,
                 "+".join(k.upper() for k in graded.objects), elapsed_ms)

    def _set_aside(self, path: Path) -> None:
        """Keep an image that could not be graded in ``failed/`` (never silently dropped)."""
        try:
            if path.exists():
                os.replace(path, self.failed / path.name)
        except OSError as exc:
            LOG.error("cannot move %s to failed/: %s", path.name, exc.strerror or type(exc).__name__)

    # ------------------------------------------------------------------------------------ forwarding

    def _forward_loop(self) -> None:
        delay = self.retry_initial_s
        while not self._stop.is_set():
            pending = sorted(self.outbox.glob("*.dcm"), key=_mtime)
            if not pending:
                self._wake_forwarder.wait(1.0)
                self._wake_forwarder.clear()
                continue
            try:
                delivered_all = self._forward_batch(pending)
            except Exception as exc:  # pynetdicom raises several types on a broken connection
                LOG.warning("forward to %s failed: %s", self.forward, type(exc).__name__)
                delivered_all = False
            if delivered_all:
                delay = self.retry_initial_s
                continue
            left = sum(1 for _ in self.outbox.glob("*.dcm"))
            if left:
                LOG.warning("forward to %s incomplete: %d object(s) kept in outbox, retrying in %.0f s",
                            self.forward, left, delay)
                self._stop.wait(delay)
                delay = min(delay * 2, self.retry_max_s)

    def _forward_batch(self, files: list[Path]) -> bool:
        """One association, every pending file; True when all were delivered."""
        from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
        from pynetdicom import AE

        assert self.forward is not None
        ae = AE(ae_title=self.ae_title)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
        for sop_class in FORWARDED_SOP_CLASSES:
            ae.add_requested_context(sop_class, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
        assoc = ae.associate(self.forward.host, self.forward.port, ae_title=self.forward.ae_title)
        if not assoc.is_established:
            with self._lock:
                self.counters.forward_failures += 1
            LOG.warning("forward: no association with %s (unreachable, or it refused us)", self.forward)
            return False
        all_delivered = True
        try:
            for path in files:
                if self._stop.is_set():
                    return False
                try:
                    status = assoc.send_c_store(path)
                except ValueError as exc:  # the PACS accepted no presentation context for this SOP class
                    status = _status(0x0122, str(exc))
                code = int(getattr(status, "Status", -1)) if status else -1
                if code == -1:  # no answer: connection lost or timed out
                    LOG.warning("forward: no answer from %s for %s", self.forward, path.name)
                    return False
                if code == 0 or 0xB000 <= code <= 0xBFFF:  # success, or a warning: the PACS keeps it
                    path.unlink(missing_ok=True)
                    self._attempts.pop(path.name, None)
                    with self._lock:
                        self.counters.forwarded += 1
                    LOG.info("forwarded %s to %s", path.name, self.forward)
                    continue
                all_delivered = False
                attempts = self._attempts.get(path.name, 0) + 1
                self._attempts[path.name] = attempts
                LOG.warning("forward: %s refused %s with status 0x%04X (attempt %d of %d)", self.forward,
                            path.name, code, attempts, self.max_attempts)
                if attempts >= self.max_attempts:
                    os.replace(path, self.failed / path.name)
                    LOG.error("forward: gave up on %s after %d refusals; kept in failed/", path.name,
                              attempts)
        finally:
            if assoc.is_established:
                assoc.release()
        return all_delivered


def _status(code: int, comment: str) -> Dataset:
    status = Dataset()
    status.Status = code
    status.ErrorComment = comment[:64]  # LO: 64 characters
    return status


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


def _link_or_copy(source: Path, target: Path) -> None:
    tmp = target.with_name(f".{target.name}.tmp")
    try:
        os.link(source, tmp)
    except OSError:
        shutil.copyfile(source, tmp)
    os.replace(tmp, target)
