"""The real-time pipeline: source -> ROI-CNN -> refinement -> G-CNN -> publish, in overlapping threads.

```
(phantom process: capture.process_source renders the phantom apart, hands frames over newest-wins)
capture thread (LatestFrameGrabber: newest frame wins, reconnects)
  -> locate thread   (ROI-CNN + area filter)          -> 1-slot handoff
  -> refine thread   (Chan–Vese, contours, bbox)      -> 1-slot handoff
  -> classify thread (G-CNN)                          -> 1-slot handoff
  -> publish thread  (track + smooth, encode, ZeroMQ send; heartbeat status messages)
```

Every handoff holds one item and the newest wins: a stage that finishes while the next one is still busy
replaces the waiting item and the replaced one is counted as dropped. So each stage always takes the
newest work there is, the grader never grades a frame older than one it already graded (checked and
counted as ``stale_graded``, which must stay 0), and a slow stage sheds frames instead of building a
queue (latency stays bounded). ONNX Runtime and the ``nogil`` Numba Chan–Vese release the GIL, so on two
cores the ROI-CNN of frame n+1 really runs while the G-CNN grades frame n.

Times are ``time.monotonic_ns()`` (CLOCK_MONOTONIC), the clock the capture stamps frames with, so the
latency a subscriber on this machine computes is capture -> receipt. Besides each stage's duration, every
frame records how long it waited in each slot (``wait_refine``, ``wait_classify``, ``wait_publish``):
stages and waits add up to the frame's capture -> publish time.

Nothing here is global: everything hangs off one ``Pipeline`` built from a ``PipelineConfig``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, TypeVar

import numpy as np

from engine.birads import CATEGORIES
from engine.gradeability import check_gradeable
from sonograde import RESEARCH_USE_ONLY
from sonograde.assessment import descriptor_ms, frame_assessment, grader_accepts_pixel_size
from sonograde.messages import absent_assessment, encode, encode_frame, polygon_to_json, redact_paths
from sonograde.publisher import DEFAULT_ENDPOINT, Publisher, PublisherConfig
from sonograde.smoothing import LesionTracker, SmoothingConfig

LOG = logging.getLogger("sonograde.pipeline")
STAGES = ("locate", "refine", "classify")
T = TypeVar("T")
def one_line_error(text: str | None, limit: int = 160, private: tuple[str, ...] = ()) -> str | None:
    """An error for the stream and the status line: its first line, paths, file names and the
    ``private`` strings (the source string) replaced (``messages.redact_paths``: file names are often
    patient names), at most ``limit`` characters."""
    if not text:
        return None
    line = str(text).strip().splitlines()[0] if str(text).strip() else ""
    line = redact_paths(line, private) or ""
    return line if len(line) <= limit else line[:limit - 3] + "..."


@dataclass(frozen=True)
class PipelineConfig:
    """Everything the pipeline needs to know, with the defaults of ``sonograde run``.

    source : any source string ``capture.sources.open_source`` accepts (default ``"phantom"``).
    source_fps : frame rate for sources that pace themselves (phantom, files); None = source default
        (30 for the phantom).
    loop : loop finite sources (files, folders) instead of ending (default True: a demo keeps running).
    geometry : geometry profile JSON (image region, mm per pixel) or None.
    models_dir : folder with ``roi_cnn*.onnx`` / ``g_cnn*.onnx`` (None = shipped ``models/``).
    roi_model : a ROI-CNN file used instead of the folder's (e.g. the paper's network,
        ``models/roi_cnn_vgg16.int8.onnx``), or None.
    precision : "auto" (int8 where both int8 files exist, else fp32), "fp32", "int8" or "fp16".
    backend : "auto", "onnxruntime" or "tensorrt".
    threads : intra-op threads per ONNX Runtime session (None = backend default, 1: the stages already
        keep both cores busy).
    publish : endpoint to bind, or None for no publishing (results still reach ``on_result``).
    allow_remote : allow a non-loopback publish address (needs ``curve``).
    curve : keys folder for CURVE encryption and authentication (``sonograde keys``), or None.
    sndhwm : send high-water mark (messages per subscriber).
    send_frames : send the frame as a third message part (default True).
    frame_encoding : "raw" (default; ~0.01 ms) or "jpeg" (~0.4 ms encode at 640x480, 10x smaller).
    jpeg_quality : JPEG quality 1-100 (default 85).
    smoothing : temporal smoothing parameters.
    status_interval_s : heartbeat status message period in seconds (default 1.0).
    reconnect : reopen a source that fails or ends (default True).
    stats_window : frames kept for the latency/timing statistics (default 20000, ~11 min at 30 fps).
    source_process : render the phantom in a child process that hands frames over through a one-slot
        shared-memory buffer (``capture.process_source``; default True), so that its rendering does not
        take the grading threads' time; False renders it in the grabber thread. Other sources are read in
        the grabber thread either way (a capture card's driver does the work outside Python).
    """

    source: str = "phantom"
    source_fps: float | None = None
    loop: bool = True
    geometry: str | None = None
    models_dir: str | None = None
    roi_model: str | None = None
    precision: str = "auto"
    backend: str = "auto"
    threads: int | None = None
    publish: str | None = DEFAULT_ENDPOINT
    allow_remote: bool = False
    curve: str | None = None
    sndhwm: int = 2
    send_frames: bool = True
    frame_encoding: str = "raw"
    jpeg_quality: int = 85
    smoothing: SmoothingConfig = field(default_factory=SmoothingConfig)
    status_interval_s: float = 1.0
    reconnect: bool = True
    stats_window: int = 20000
    source_process: bool = True


# --------------------------------------------------------------------------------------------- handoffs


class LatestSlot(Generic[T]):
    """A one-item handoff between two threads where the newest item wins.

    ``put`` never blocks: an item still waiting is replaced and counted in ``dropped``. ``take`` waits
    up to ``timeout`` seconds for an item. ``close`` wakes every waiter (take then returns None).
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._item: T | None = None
        self._closed = False
        self.dropped = 0

    def put(self, item: T) -> None:
        with self._cond:
            if self._item is not None:
                self.dropped += 1
            self._item = item
            self._cond.notify()

    def take(self, timeout: float) -> T | None:
        with self._cond:
            if self._item is None and not self._closed:
                self._cond.wait(timeout)
            item, self._item = self._item, None
            return item

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()


@dataclass
class _Work:
    """One frame on its way through the stages (mutable; owned by one stage at a time)."""

    frame: Any  # capture.Frame
    t_locate_start: int = 0
    roi: Any = None
    refined: Any = None
    classified: Any = None
    not_gradeable: str | None = None  # why the frame was not graded (then roi/refined/classified stay None)
    ns: dict[str, int] = field(default_factory=dict)  # stage -> duration in ns (monotonic)
    t_handed_ns: int = 0  # when the last stage put it into the next one's slot

    def handed_to(self, slot: LatestSlot[_Work]) -> None:
        """Stamp the handoff and put this work into ``slot`` (the next stage)."""
        self.t_handed_ns = time.monotonic_ns()
        slot.put(self)

    def taken_by(self, stage: str) -> None:
        """Record how long the work waited in ``stage``'s slot (``wait_<stage>``): the next stage was busy
        with an older frame or waiting for a core or the GIL."""
        if self.t_handed_ns:
            self.ns[f"wait_{stage}"] = time.monotonic_ns() - self.t_handed_ns


# ------------------------------------------------------------------------------------------- statistics


@dataclass(frozen=True)
class PipelineStats:
    """A snapshot of the pipeline's counters (see ``Pipeline.stats``).

    source_frames : frames the grabber received from the source(s).
    frames_taken : distinct frames the locate stage took from the grabber.
    graded : frames the G-CNN stage finished (with or without a lesion).
    published : result messages sent (or handed to ``on_result`` when not publishing).
    publish_dropped : messages the socket refused (EAGAIN) and were dropped.
    dropped : frames dropped before grading, by place ("source": overwritten in the grabber before the
        pipeline took them; "refine"/"classify"/"publish": replaced while waiting for that stage),
        and "total".
    stale_graded : frames graded although a newer frame had already been graded (must be 0).
    errors : frames a stage failed on (logged once per kind; the pipeline goes on), e.g. a model that
        gave NaN.
    error_counts : ``errors`` by stage ("locate", "refine", "classify", "publish"), plus
        "source_skipped" (unreadable files the source skipped) and "total" (the stages' sum).
    not_gradeable : frames refused before grading (too small, no tissue, colour overlay).
    source_state, reconnects, last_error : from the grabber (``last_error``: why the source failed).
    pipeline_error : the newest stage error, one line without paths (None when there was none).
    fps : results per second over the last two seconds.
    latency_ms : capture -> publish percentiles (p50, p99) over the recent window.
    category, smoothed_category : of the newest result.
    """

    source_frames: int
    frames_taken: int
    graded: int
    published: int
    publish_dropped: int
    dropped: dict[str, int]
    stale_graded: int
    errors: int
    error_counts: dict[str, int]
    not_gradeable: int
    pipeline_error: str | None
    source_state: str
    reconnects: int
    last_error: str | None
    fps: float
    latency_ms: dict[str, float]
    category: str | None
    smoothed_category: str | None
    elapsed_s: float

    def status_line(self) -> str:
        """One terminal line: fps, latency, dropped, category, source state."""
        lat = self.latency_ms
        latency = f"{lat['p50']:.0f}/{lat['p99']:.0f} ms" if lat else "-"
        category = self.smoothed_category or "no lesion"
        state = self.source_state if self.source_state == "connected" else self.source_state.upper()
        errors = f" | ERRORS {self.errors} (last: {self.pipeline_error})" if self.errors else ""
        skipped = self.error_counts.get("source_skipped", 0)
        errors += f" | SKIPPED FILES {skipped}" if skipped else ""
        return (f"{self.fps:5.1f} fps | latency p50/p99 {latency} | dropped {self.dropped['total']} | "
                f"BI-RADS {category:>9} | source {state} | frames {self.published}{errors}")


def percentiles(values: list[float] | np.ndarray, qs: tuple[int, ...] = (50, 99)) -> dict[str, float]:
    """``{"p50": .., "p99": ..}`` of ``values`` (empty dict when there are none), rounded to 0.01."""
    if len(values) == 0:
        return {}
    array = np.asarray(values, dtype=np.float64)
    return {f"p{q}": round(float(np.percentile(array, q)), 2) for q in qs}


def warm_up_grader(grader: Any, shape: tuple[int, int] = (480, 640), passes: int = 3) -> None:
    """Load and compile everything a frame will touch before the clock starts: the grader's own warm-up
    (models on zeros, Numba Chan–Vese), then ``passes`` full passes through the three stages on a
    synthetic frame with a dark elliptical "lesion" on speckle (so refinement, contours and the G-CNN
    run too, when the ROI-CNN takes it for a lesion; a real model may not)."""
    if hasattr(grader, "warm_up"):
        grader.warm_up()
    rng = np.random.default_rng(0)
    height, width = shape
    image = rng.normal(140.0, 30.0, shape).clip(0, 255).astype(np.uint8)
    import cv2

    image = cv2.GaussianBlur(image, (0, 0), 1.5)
    cv2.ellipse(image, (width // 2, height // 2), (width // 8, height // 10), 0, 0, 360, 30, -1)
    for _ in range(passes):
        roi = grader.locate(image)
        refined = grader.refine(image, roi)
        grader.classify(image, refined)


# ---------------------------------------------------------------------------------------------- pipeline


class Pipeline:
    """Threads wired together around one grader.

    grader : object with ``locate(image)``, ``refine(image, roi)``, ``classify(image, refined)``,
        ``categories`` and ``model_ids`` (``engine.grader.TwoStageGrader``); warmed up by the caller or
        by ``start(warm_up=True)``.
    open_source : zero-argument callable returning a frame source (an iterator of ``capture.Frame``
        with ``close()``); the grabber calls it again to reconnect.
    config : the ``PipelineConfig``.
    publisher : an already bound ``Publisher`` to use (the caller closes it, after ``stop``); None = bind
        ``config.publish`` on start (if set) and close it on ``stop``.
    on_result : optional callable(header: dict, frame: np.ndarray) run in the publish thread after each
        result is sent; keep it fast (it delays the next publish, never grading).
    description : what the source is, for the operator's terminal (may name a file).
    stream_name : what kind of source it is, for the published messages: never a file name or path
        (default: ``capture.sources.stream_name_of(config.source)``).
    """

    def __init__(self, grader: Any, open_source: Callable[[], Any], config: PipelineConfig | None = None, *,
                 publisher: Publisher | None = None,
                 on_result: Callable[[dict, np.ndarray], None] | None = None,
                 description: str = "", stream_name: str | None = None) -> None:
        self.grader = grader
        self.config = config or PipelineConfig()
        self._open_source = open_source
        self.publisher = publisher
        self._owns_publisher = publisher is None  # close only a socket we bound ourselves
        self.on_result = on_result
        self.description = description or self.config.source
        from capture.sources import stream_name_of

        self.stream_name = stream_name or stream_name_of(self.config.source)
        # What an error message bound for the stream must not contain (see messages.redact_paths).
        self._private_names = _private_names(self.config.source)
        self.categories = tuple(getattr(grader, "categories", CATEGORIES))
        self.model_ids = dict(getattr(grader, "model_ids", {}))
        self.tracker = LesionTracker(self.categories, self.config.smoothing)

        self._stop = threading.Event()
        self._slots: dict[str, LatestSlot[_Work]] = {name: LatestSlot() for name in ("refine", "classify",
                                                                                       "publish")}
        self._threads: list[threading.Thread] = []
        self._grabber: Any = None
        self._lock = threading.Lock()  # guards the counters and windows below
        self._frames_taken = 0
        self._graded = 0
        self._published = 0
        self._stale = 0
        self._errors: Counter[str] = Counter()  # by stage
        self._error_kinds: set[str] = set()
        self._last_error: str | None = None
        self._not_gradeable = 0
        self._last_graded_t = -1
        self._seq = 0
        self._latency_ms: deque[float] = deque(maxlen=self.config.stats_window)
        # (t_capture_ns, timings_ms) of recent results, for benchmarks.
        self._timings: deque[tuple[int, dict[str, float]]] = deque(maxlen=self.config.stats_window)
        self._publish_times: deque[int] = deque(maxlen=256)
        self._last_category: str | None = None
        self._last_smoothed: str | None = None
        self._started_ns = 0
        self._started = False

    # ---------------------------------------------------------------------------------------- control

    def start(self, *, warm_up: bool = True) -> None:
        """Bind the publisher, warm the models up (``warm_up_grader``, unless told not to), start the
        grabber and the stage threads. Raises EndpointError if the endpoint cannot be bound."""
        if self._started:
            raise RuntimeError("pipeline already started")
        if self.publisher is None and self.config.publish:  # bind first: a busy port fails fast
            cfg = self.config
            self.publisher = Publisher(PublisherConfig(endpoint=cfg.publish, sndhwm=cfg.sndhwm,
                                                       allow_remote=cfg.allow_remote, curve=cfg.curve))
        if warm_up:
            warm_up_grader(self.grader)
        from capture.grabber import LatestFrameGrabber

        self._grabber = LatestFrameGrabber(self._open_source, reconnect=self.config.reconnect)
        self._started = True
        self._started_ns = time.monotonic_ns()
        self._grabber.start()
        for name, target in (("locate", self._locate_loop), ("refine", self._refine_loop),
                             ("classify", self._classify_loop), ("publish", self._publish_loop)):
            thread = threading.Thread(target=target, name=f"sonograde-{name}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self, timeout: float = 5.0) -> None:
        """Stop every thread, join them, stop the grabber and close the socket. Idempotent."""
        self._stop.set()
        for slot in self._slots.values():
            slot.close()
        if self._grabber is not None:
            self._grabber.stop()
        for thread in self._threads:
            thread.join(timeout)
        alive = [t.name for t in self._threads if t.is_alive()]
        if alive:
            LOG.warning("threads still running after %.1f s: %s", timeout, ", ".join(alive))
        self._threads.clear()
        if self.publisher is not None and self._owns_publisher:
            # Only after the publish thread has ended: ZeroMQ sockets are not thread-safe.
            self.publisher.close()

    @property
    def running(self) -> bool:
        return self._started and not self._stop.is_set()

    def __enter__(self) -> Pipeline:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------------------------------------ stages

    def _record_error(self, stage: str, error: BaseException) -> None:
        kind = f"{stage}: {type(error).__name__}"
        with self._lock:
            self._errors[stage] += 1
            self._last_error = one_line_error(f"{kind}: {error}", private=self._private_names)
            first = kind not in self._error_kinds
            self._error_kinds.add(kind)
        if first:
            LOG.exception("%s failed on a frame (further %s errors are counted, not logged)", stage, kind,
                          exc_info=error)

    def _locate_loop(self) -> None:
        last_t = -1
        while not self._stop.is_set():
            frame = self._grabber.latest(timeout=0.1)
            if frame is None or frame.t_capture_ns <= last_t:
                continue  # nothing new (source idle or reconnecting)
            last_t = frame.t_capture_ns
            work = _Work(frame=frame)
            work.t_locate_start = time.monotonic_ns()
            with self._lock:
                self._frames_taken += 1
            verdict = check_gradeable(frame.image, float(frame.meta.get("colour_fraction", 0.0)))
            if not verdict.gradeable:  # no model runs on it; the reason goes out instead of a category
                work.not_gradeable = verdict.reason
                with self._lock:
                    self._not_gradeable += 1
                work.handed_to(self._slots["refine"])
                continue
            try:
                work.roi = self.grader.locate(frame.image)
            except Exception as error:  # one bad frame must not stop a live scanner
                self._record_error("locate", error)
                continue
            work.ns["locate"] = time.monotonic_ns() - work.t_locate_start
            work.handed_to(self._slots["refine"])

    def _refine_loop(self) -> None:
        slot = self._slots["refine"]
        while not self._stop.is_set():
            work = slot.take(0.1)
            if work is None:
                continue
            work.taken_by("refine")
            if work.not_gradeable:
                work.handed_to(self._slots["classify"])
                continue
            t0 = time.monotonic_ns()
            try:
                work.refined = self.grader.refine(work.frame.image, work.roi)
            except Exception as error:
                self._record_error("refine", error)
                continue
            work.ns["refine"] = time.monotonic_ns() - t0
            work.handed_to(self._slots["classify"])

    def _classify_loop(self) -> None:
        slot = self._slots["classify"]
        while not self._stop.is_set():
            work = slot.take(0.1)
            if work is None:
                continue
            work.taken_by("classify")
            t_capture = work.frame.t_capture_ns
            with self._lock:
                if t_capture <= self._last_graded_t:
                    # Cannot happen with 1-slot newest-wins handoffs in a chain; counted to prove it.
                    self._stale += 1
                self._last_graded_t = max(self._last_graded_t, t_capture)
            if work.not_gradeable:
                work.handed_to(self._slots["publish"])
                continue
            t0 = time.monotonic_ns()
            try:
                work.classified = self.grader.classify(work.frame.image, work.refined,
                                                       **self._pixel_size(work))
            except Exception as error:
                self._record_error("classify", error)
                continue
            if work.refined.lesion_found:  # without a lesion the G-CNN does not run: no timing
                work.ns["classify"] = time.monotonic_ns() - t0
            with self._lock:
                self._graded += 1
            work.handed_to(self._slots["publish"])

    def _source_state(self) -> tuple[str, int, str | None]:
        grabber = self._grabber
        last_error = getattr(grabber, "last_error", None)
        return (str(getattr(grabber, "state", "connecting")), int(getattr(grabber, "reconnects", 0)),
                None if last_error is None else str(last_error))

    def error_counts(self) -> dict[str, int]:
        """Stage errors by stage and their total, plus the unreadable files the source skipped."""
        with self._lock:
            counts = {stage: int(n) for stage, n in self._errors.items()}
        counts["total"] = sum(counts.values())
        counts["source_skipped"] = int(getattr(self._grabber, "skipped", 0) or 0)
        return counts

    def _stream_error(self, state: str, source_error: str | None) -> str | None:
        """The error a display shows: why the source is not connected, else the newest stage error, else
        the source's last one; one line, no paths."""
        with self._lock:
            stage_error = self._last_error
        if state != "connected" and source_error:
            return one_line_error(source_error, private=self._private_names)
        return stage_error or one_line_error(source_error, private=self._private_names)

    def dropped(self) -> dict[str, int]:
        """Frames dropped before grading, by place, and their total."""
        counts = {"source": int(getattr(self._grabber, "dropped", 0) or 0)}
        counts["refine"] = self._slots["refine"].dropped
        counts["classify"] = self._slots["classify"].dropped
        counts["publish"] = self._slots["publish"].dropped
        counts["total"] = sum(counts.values())
        return counts

    def _header(self, work: _Work, state: str, track: Any) -> dict[str, Any]:
        frame, refined, classified = work.frame, work.refined, work.classified
        lesion = bool(refined is not None and refined.lesion_found)
        pixel = frame.pixel_size_mm
        probabilities = None
        if classified is not None and classified.probabilities is not None:
            probabilities = {c: round(float(p), 5) for c, p in zip(self.categories, classified.probabilities,
                                                                   strict=True)}
        area_px = float(refined.area_px) if lesion else None
        timings = {"queue": (work.t_locate_start - frame.t_capture_ns) / 1e6}
        timings.update({name: ns / 1e6 for name, ns in work.ns.items()})
        return {
            "seq": self._seq,
            "frame_index": int(frame.index),
            "t_capture_ns": int(frame.t_capture_ns),
            "t_publish_ns": 0,  # set just before sending
            "clock": "CLOCK_MONOTONIC",
            "source": self.stream_name,
            "source_state": state,
            "image_size": [int(frame.image.shape[0]), int(frame.image.shape[1])],
            "pixel_size_mm": float(pixel) if pixel else None,
            "lesion_found": lesion,
            "roi_contour": polygon_to_json(refined.raw_contour) if lesion else None,
            "refined_contour": polygon_to_json(refined.refined_contour) if lesion else None,
            "bbox": [int(v) for v in refined.bbox] if lesion and refined.bbox is not None else None,
            "area_px": area_px,
            "area_mm2": round(area_px * pixel * pixel, 3) if area_px is not None and pixel else None,
            "category": classified.category if classified is not None else None,
            "probabilities": probabilities,
            "smoothed_category": track.category if track is not None else None,
            "smoothed_probabilities": (
                {c: round(float(p), 5) for c, p in zip(self.categories, track.probabilities, strict=True)}
                if track is not None else None),
            "track": track.to_json() if track is not None else None,
            "categories": list(self.categories),
            "timings_ms": {k: round(v, 3) for k, v in timings.items()},
            "model_ids": self.model_ids,
            "dropped": self.dropped(),
            "stale_graded": self._stale,
            "frame": None,
            "not_gradeable": work.not_gradeable,
            "research_use": RESEARCH_USE_ONLY,
        }

    def _status_header(self, state: str, reconnects: int, last_error: str | None) -> dict[str, Any]:
        return {
            "seq": self._seq,
            "t_publish_ns": time.monotonic_ns(),
            "source": self.stream_name,
            "source_state": state,
            "reconnects": reconnects,
            "last_error": self._stream_error(state, last_error),
            "errors": self.error_counts(),
            "not_gradeable": self._not_gradeable,
            "frames_published": self._published,
            "fps": round(self._fps(), 2),
            "dropped": self.dropped(),
            "stale_graded": self._stale,
            "research_use": RESEARCH_USE_ONLY,
        }

    def _fps(self) -> float:
        with self._lock:
            times = list(self._publish_times)
        if len(times) < 2:
            return 0.0
        now = time.monotonic_ns()
        recent = [t for t in times if now - t <= 2_000_000_000]
        if len(recent) < 2:
            return 0.0
        return (len(recent) - 1) / max((recent[-1] - recent[0]) / 1e9, 1e-9)

    def _send(self, parts: list[bytes]) -> None:
        if self.publisher is not None:
            self.publisher.send(parts)
            self.publisher.poll_subscriptions()  # drain subscription notices so they never pile up

    def _publish_loop(self) -> None:
        slot = self._slots["publish"]
        cfg = self.config
        last_status_ns = 0
        last_state = None
        while not self._stop.is_set():
            work = slot.take(0.05)
            if work is not None:
                work.taken_by("publish")
            state, reconnects, last_error = self._source_state()
            if state != last_state:
                if last_state is not None and state != "connected":
                    self.tracker.reset()  # a new scan after a dropout: do not carry the old lesion over
                last_state = state
                last_status_ns = 0  # announce state changes at once
            now = time.monotonic_ns()
            if now - last_status_ns >= cfg.status_interval_s * 1e9:
                last_status_ns = now
                try:
                    self._send(encode("status", self._status_header(state, reconnects, last_error)))
                except Exception as error:
                    self._record_error("publish", error)
            if work is None:
                continue
            try:
                self._publish_result(work, state)
            except Exception as error:
                self._record_error("publish", error)

    def _publish_result(self, work: _Work, state: str) -> None:
        cfg = self.config
        t0 = time.monotonic_ns()
        classified, refined = work.classified, work.refined
        lesion = refined is not None and bool(refined.lesion_found)
        bbox = refined.bbox if lesion else None
        probabilities = classified.probabilities if classified is not None else None
        track = self.tracker.update(lesion, bbox, probabilities)
        header = self._header(work, state, track)
        self._add_assessment(header, work)
        frame_part = None
        if cfg.send_frames:
            descriptor, frame_part = encode_frame(work.frame.image, cfg.frame_encoding, cfg.jpeg_quality)
            header["frame"] = descriptor
        encode_ns = time.monotonic_ns() - t0
        header["timings_ms"]["encode"] = round(encode_ns / 1e6, 3)
        t_publish = time.monotonic_ns()
        header["t_publish_ns"] = t_publish
        header["timings_ms"]["total"] = round((t_publish - work.frame.t_capture_ns) / 1e6, 3)
        self._send(encode("result", header, frame_part))
        with self._lock:
            self._seq += 1
            self._published += 1
            self._publish_times.append(t_publish)
            self._latency_ms.append((t_publish - work.frame.t_capture_ns) / 1e6)
            self._timings.append((work.frame.t_capture_ns, header["timings_ms"]))
            self._last_category = header["category"]
            self._last_smoothed = header["smoothed_category"]
        if self.on_result is not None:
            self.on_result(header, work.frame.image)

    def _add_assessment(self, header: dict[str, Any], work: _Work) -> None:
        """Put the frame's explained assessment (schema 2) into ``header``, with its measuring time
        (``measure``) and the descriptor models' share of classify (``classify_descriptors``)."""
        refined, classified = work.refined, work.classified
        t0 = time.monotonic_ns()
        if work.not_gradeable:  # refused before grading: nothing to assess, and why
            header["assessment"] = absent_assessment(f"not gradeable: {work.not_gradeable}")
            return
        header["assessment"] = frame_assessment(refined, classified, work.frame.pixel_size_mm,
                                                self._pixel_size_source(work.frame))
        timings = header["timings_ms"]
        if refined is not None and refined.lesion_found:  # size and calipers are measured only on a lesion
            timings["measure"] = round((time.monotonic_ns() - t0) / 1e6, 3)
        share = descriptor_ms(classified)
        if share is not None:
            timings["classify_descriptors"] = round(share, 3)

    def _pixel_size(self, work: _Work) -> dict[str, Any]:
        """The frame's pixel size for a grader that measures the lesion in classify (mm sizes there)."""
        if not grader_accepts_pixel_size(self.grader) or not work.frame.pixel_size_mm:
            return {}
        return {"pixel_size_mm": work.frame.pixel_size_mm,
                "pixel_size_source": self._pixel_size_source(work.frame)}

    def _pixel_size_source(self, frame: Any) -> str | None:
        """Where the frame's pixel size came from: the frame's own word for it where it gives one, else
        the geometry profile when one is applied, else the frame source ("caller")."""
        if not frame.pixel_size_mm:
            return None
        stated = (frame.meta or {}).get("pixel_size_source") if isinstance(frame.meta, dict) else None
        if isinstance(stated, str):
            return stated
        return "geometry" if self.config.geometry else "caller"

    # ---------------------------------------------------------------------------------------- reporting

    def stats(self) -> PipelineStats:
        """A consistent snapshot of the counters (cheap; safe from any thread)."""
        state, reconnects, last_error = (self._source_state() if self._grabber is not None
                                         else ("idle", 0, None))
        with self._lock:
            latency = list(self._latency_ms)[-300:]  # the status line shows the last ~10 s
            snapshot = dict(frames_taken=self._frames_taken, graded=self._graded, published=self._published,
                            stale_graded=self._stale, errors=sum(self._errors.values()),
                            not_gradeable=self._not_gradeable, pipeline_error=self._last_error,
                            category=self._last_category, smoothed_category=self._last_smoothed)
        return PipelineStats(
            source_frames=int(getattr(self._grabber, "received", 0) or 0),
            publish_dropped=self.publisher.dropped if self.publisher is not None else 0,
            dropped=self.dropped(), error_counts=self.error_counts(), source_state=state,
            reconnects=reconnects, last_error=last_error,
            fps=self._fps(), latency_ms=percentiles(latency),
            elapsed_s=(time.monotonic_ns() - self._started_ns) / 1e9 if self._started else 0.0, **snapshot,
        )

    def stage_samples(self, since_ns: int = 0) -> dict[str, list[float]]:
        """Per-frame durations in ms of the results captured at or after ``since_ns`` (within the
        statistics window): queue (capture -> locate start), locate, refine, classify (absent for frames
        without a lesion), encode, total (capture -> publish)."""
        with self._lock:
            records = [timings for t_capture, timings in self._timings if t_capture >= since_ns]
        samples: dict[str, list[float]] = {}
        for timings in records:
            for name, value in timings.items():
                samples.setdefault(name, []).append(value)
        return samples


# ------------------------------------------------------------------------------------------- building


def resolve_precision(models_dir: str | Path | None, precision: str, backend: str = "auto") -> str:
    """``"auto"`` -> the fastest precision whose two files exist: int8, else fp32 (fp16 only helps on a
    GPU, so it is never chosen automatically). Other values pass through."""
    if precision != "auto":
        return precision
    from engine.grader import DEFAULT_MODELS_DIR, model_path

    directory = Path(models_dir) if models_dir else DEFAULT_MODELS_DIR
    if all(model_path(directory, kind, "int8", backend).exists() for kind in ("roi", "grader")):
        return "int8"
    return "fp32"


def load_grader(config: PipelineConfig) -> Any:
    """The TwoStageGrader for ``config`` (models_dir, precision incl. auto, backend, threads).

    Raises engine.backends.ModelLoadError naming a missing file and how to make it."""
    from engine.grader import TwoStageGrader

    precision = resolve_precision(config.models_dir, config.precision, config.backend)
    return TwoStageGrader.from_models_dir(config.models_dir, precision=precision, backend=config.backend,
                                          threads=config.threads, roi_model=config.roi_model)


def source_opener(config: PipelineConfig) -> Callable[[], Any]:
    """A zero-argument callable that opens ``config.source`` (with geometry, fps, loop) as a live source.

    Opens the source once right away so a bad source string fails here, with capture's message."""
    from capture.sources import open_source, stream_name_of

    geometry = None
    if config.geometry:
        from capture.geometry import GeometryProfile

        geometry = GeometryProfile.load(config.geometry)
    in_child = config.source_process and stream_name_of(config.source) == "phantom"

    def open_fn() -> Any:
        if in_child:
            from capture.process_source import ProcessSource

            return ProcessSource(config.source, fps=config.source_fps, realtime=True, loop=config.loop,
                                 geometry=geometry)
        return open_source(config.source, fps=config.source_fps, realtime=True, loop=config.loop,
                           geometry=geometry)

    # validate now, in this process (quicker than starting a child); the grabber opens its own
    probe = open_source(config.source, fps=config.source_fps, realtime=True, loop=config.loop,
                        geometry=geometry)
    try:
        description = getattr(probe, "description", config.source)
        stream_name = getattr(probe, "stream_name", None)
    finally:
        probe.close()
    open_fn.description = description  # type: ignore[attr-defined]
    open_fn.stream_name = stream_name  # type: ignore[attr-defined]
    return open_fn


def build_pipeline(config: PipelineConfig, *, grader: Any = None,
                   on_result: Callable[[dict, np.ndarray], None] | None = None) -> Pipeline:
    """Load the models (unless ``grader`` is given) and check the source; does not start anything."""
    grader = grader if grader is not None else load_grader(config)
    opener = source_opener(config)
    return Pipeline(grader, opener, config, on_result=on_result,
                    description=getattr(opener, "description", config.source),
                    stream_name=getattr(opener, "stream_name", None))


def _private_names(source: str) -> tuple[str, ...]:
    """The source string and the paths and names in it, to be kept out of published messages."""
    text = str(source).strip()
    if text.lower().startswith("dicom:"):
        text = text[6:]
    names = {text}
    try:
        path = Path(text).expanduser()
        names.update({str(path), str(path.resolve()), path.name, path.stem})
    except (OSError, RuntimeError, ValueError):
        pass
    return tuple(n for n in names if n and n not in (".", "..", "phantom") and not n.isdigit())
