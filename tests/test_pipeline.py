"""The real-time pipeline end to end: real grader (small dev ONNX models), real grabber, real ZeroMQ.

No timing assertions: the tests check counts and ordering (no stale frames, nothing lost between
publisher and subscriber, publishing never stalls) and what a user sees (contours drawn in the overlay
snapshot). Deadlines only bound how long a test may wait.
"""

from __future__ import annotations

import argparse
import itertools
import json
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import zmq

from capture.sources import FrameSource, SourceError
from engine.backends.dev_models import make_grader_model, make_roi_model, synthetic_frame
from engine.grader import TwoStageGrader
from sonograde.cli import main as cli_main
from sonograde.commands import overlay as overlay_command
from sonograde.overlay import REFINED_RED, ROI_BLUE, OverlayRenderer
from sonograde.pipeline import Pipeline, PipelineConfig
from sonograde.publisher import Publisher, PublisherConfig
from sonograde.subscriber import Subscriber

DEADLINE_S = 30.0


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("dev_models")
    make_roi_model(directory / "roi_cnn.onnx")
    make_grader_model(directory / "g_cnn.onnx")
    return directory


@pytest.fixture(scope="module")
def grader(models_dir):
    grader = TwoStageGrader.from_models_dir(models_dir)
    grader.warm_up()
    return grader


class SyntheticLive(FrameSource):
    """A live (capture-card-like) source of synthetic frames with one dark lesion each.

    ``frames``: how many to deliver before ending (None = endless); ``disconnect``: raise
    OSError after them instead of ending (an unplugged card). Frames come every
    ``1/fps`` s from a few pre-drawn images (so the test machine's CPU goes to the pipeline).
    """

    def __init__(self, images: list[np.ndarray], *, frames: int | None = None, fps: float = 60.0,
                 disconnect: bool = False, label: str = "synthetic live") -> None:
        super().__init__(label, is_live=True)
        self.images, self.frames, self.period, self.disconnect = images, frames, 1.0 / fps, disconnect
        self.count = 0

    def _next_raw(self):
        if self.frames is not None and self.count >= self.frames:
            if self.disconnect:
                raise OSError("test: cable pulled")
            return None
        time.sleep(self.period)
        image = self.images[self.count % len(self.images)]
        self.count += 1
        return image, 0.2, {}


def lesion_images(rng: np.random.Generator, count: int = 4, shape=(240, 320)) -> list[np.ndarray]:
    return [synthetic_frame(rng, *shape)[0] for _ in range(count)]


def wait_until(predicate, what: str, deadline_s: float = DEADLINE_S, poll_s: float = 0.01) -> None:
    end = time.monotonic() + deadline_s
    while not predicate():
        if time.monotonic() > end:
            raise AssertionError(f"timed out after {deadline_s} s waiting for {what}")
        time.sleep(poll_s)


def test_results_are_in_order_with_no_stale_frames(grader, rng):
    images = lesion_images(rng)
    headers: list[dict] = []
    config = PipelineConfig(publish=None, send_frames=False)
    pipeline = Pipeline(grader, lambda: SyntheticLive(images, fps=90.0), config,
                        on_result=lambda header, frame: headers.append(header))
    with pipeline:
        pipeline.start(warm_up=False)
        wait_until(lambda: pipeline.stats().published >= 40, "40 results")
    stats = pipeline.stats()
    assert stats.stale_graded == 0
    assert stats.errors == 0
    assert len(headers) == stats.published
    indices = [h["frame_index"] for h in headers]
    captures = [h["t_capture_ns"] for h in headers]
    assert all(b > a for a, b in itertools.pairwise(indices)), "frames out of order"
    assert all(b > a for a, b in itertools.pairwise(captures))
    # Every frame taken is graded or counted as dropped (up to the ones in flight when stopped).
    in_flight = stats.frames_taken - stats.graded - stats.dropped["refine"] - stats.dropped["classify"]
    assert 0 <= in_flight <= 3
    assert [h["seq"] for h in headers] == list(range(len(headers)))
    lesion = [h for h in headers if h["lesion_found"]]
    assert lesion, "the dev ROI model finds the dark synthetic lesion"
    h = lesion[-1]
    assert set(h["timings_ms"]) >= {"queue", "locate", "refine", "classify", "encode", "total"}
    assert h["area_mm2"] == pytest.approx(h["area_px"] * 0.04, rel=1e-3)
    assert h["smoothed_category"] in h["categories"] and h["track"]["age"] >= 1


def test_subscriber_in_order_and_complete_over_tcp(grader, rng):
    """Everything published reaches a subscriber that keeps up (no loss at SNDHWM 2 over loopback)."""
    images = lesion_images(rng)
    publisher = Publisher(PublisherConfig(endpoint="tcp://127.0.0.1:*"))
    subscriber = Subscriber(publisher.endpoint, rcvhwm=10000)
    try:
        assert publisher.wait_for_subscriber(10)
        pipeline = Pipeline(grader, lambda: SyntheticLive(images, fps=60.0),
                            PipelineConfig(publish=None), publisher=publisher)
        received = []

        def read() -> None:
            while not done.is_set() or len(received) < pipeline.stats().published:
                message = subscriber.recv(100)
                if message is not None and message.kind == "result":
                    received.append(message)
                elif message is None and done.is_set():
                    return

        done = threading.Event()
        reader = threading.Thread(target=read)
        reader.start()
        pipeline.start(warm_up=False)
        wait_until(lambda: pipeline.stats().published >= 30, "30 results")
        pipeline.stop()
        done.set()
        reader.join(10)
        published = pipeline.stats().published
        assert [m.header["seq"] for m in received] == list(range(published))
        assert all(m.frame is not None and m.frame.shape == (240, 320) for m in received)
        assert all(m.latency_ms > 0 for m in received)
    finally:
        subscriber.close()
        publisher.close()


def test_grading_goes_on_without_and_with_a_stalled_subscriber(grader, rng):
    """No subscriber, then a SUB that connects and never reads: results keep being published and the
    publish stage does not fall behind the grader (it would drop at its handoff if sending blocked)."""
    images = lesion_images(rng, shape=(480, 640))  # 300 kB frames fill socket buffers fast
    config = PipelineConfig(publish="tcp://127.0.0.1:*")
    context = zmq.Context()
    pipeline = Pipeline(grader, lambda: SyntheticLive(images, fps=60.0), config)
    try:
        pipeline.start(warm_up=False)
        wait_until(lambda: pipeline.stats().published >= 20, "20 results with no subscriber")
        stalled = context.socket(zmq.SUB)
        stalled.setsockopt(zmq.RCVHWM, 1)
        stalled.setsockopt(zmq.LINGER, 0)
        stalled.setsockopt(zmq.SUBSCRIBE, b"")
        stalled.connect(pipeline.publisher.endpoint)
        before = pipeline.stats().published
        wait_until(lambda: pipeline.stats().published >= before + 60, "60 more results with a stalled SUB")
        stats = pipeline.stats()
        assert stats.graded - stats.published <= stats.dropped["publish"] + 2
        assert stats.dropped["publish"] <= max(3, stats.published // 10)
        stalled.close(0)
    finally:
        pipeline.stop()
        context.term()
    assert pipeline.stats().stale_graded == 0


def test_source_drop_out_reports_reconnecting_and_resumes(grader, rng):
    """The card delivers 15 frames, is unplugged (fails to open for ~0.6 s), then comes back."""
    images = lesion_images(rng)
    opens: list[float] = []
    gone: dict[str, float] = {}

    def open_fn() -> SyntheticLive:
        opens.append(time.monotonic())
        if len(opens) == 1:
            return SyntheticLive(images, frames=15, disconnect=True, fps=60.0)
        gone.setdefault("since", time.monotonic())
        if time.monotonic() - gone["since"] < 0.6:
            raise SourceError("test: no signal on the capture card")
        return SyntheticLive(images, fps=60.0)

    publisher = Publisher(PublisherConfig(endpoint="tcp://127.0.0.1:*"))
    subscriber = Subscriber(publisher.endpoint, rcvhwm=10000)
    config = PipelineConfig(publish=None, status_interval_s=0.2, send_frames=False)
    pipeline = Pipeline(grader, open_fn, config, publisher=publisher)
    states: list[str] = []
    try:
        assert publisher.wait_for_subscriber(10)
        pipeline.start(warm_up=False)

        def watch() -> bool:
            state = pipeline.stats().source_state
            if not states or states[-1] != state:
                states.append(state)
            return "reconnecting" in states and state == "connected" and pipeline.stats().reconnects >= 1

        wait_until(watch, "a dropout and a reconnection", poll_s=0.005)
        resumed_at = pipeline.stats().published
        wait_until(lambda: pipeline.stats().published >= resumed_at + 15, "results after reconnecting")
    finally:
        pipeline.stop()
        messages = []
        while (message := subscriber.recv(200)) is not None:
            messages.append(message)
        subscriber.close()
        publisher.close()
    assert states[:1] in (["connecting"], ["connected"])
    assert "reconnecting" in states and states[-1] == "connected"
    stats = pipeline.stats()
    assert stats.stale_graded == 0 and stats.reconnects >= 1
    status_states = [m.header["source_state"] for m in messages if m.kind == "status"]
    assert "reconnecting" in status_states, "displays are told while no results arrive"
    assert any(m.header["last_error"] for m in messages if m.kind == "status"
               and m.header["source_state"] == "reconnecting")
    results = [m for m in messages if m.kind == "result"]
    indices = [m.header["frame_index"] for m in results]
    assert indices == sorted(indices) and len(set(indices)) == len(indices)
    assert len(results) == stats.published


def _near(picture: np.ndarray, x: int, y: int, colour: tuple[int, int, int], radius: int = 2) -> bool:
    patch = picture[max(0, y - radius):y + radius + 1, max(0, x - radius):x + radius + 1].astype(int)
    return bool((np.abs(patch - np.array(colour)).max(axis=2) <= 60).any())


def test_overlay_snapshot_from_published_messages_shows_the_contours(grader, rng, tmp_path):
    """Real messages over tcp: render the newest lesion result; the refined contour is red and the
    ROI-CNN contour blue where the paper's Fig. 5 draws them. Then the `overlay` command writes a
    snapshot from the same stream."""
    images = lesion_images(rng)
    publisher = Publisher(PublisherConfig(endpoint="tcp://127.0.0.1:*"))
    subscriber = Subscriber(publisher.endpoint, rcvhwm=100)
    pipeline = Pipeline(grader, lambda: SyntheticLive(images, fps=30.0), PipelineConfig(publish=None),
                        publisher=publisher)
    try:
        assert publisher.wait_for_subscriber(10)
        pipeline.start(warm_up=False)
        message = None
        end = time.monotonic() + DEADLINE_S
        while time.monotonic() < end:
            candidate = subscriber.recv(200)
            if (candidate is not None and candidate.kind == "result" and candidate.header["lesion_found"]
                    and candidate.frame is not None):
                message = candidate
                break
        assert message is not None, "no lesion result received"
        renderer = OverlayRenderer()
        picture = renderer.render(message, None, 30.0)
        h, w = message.frame.shape
        style = renderer.style
        scale = min(renderer.image_width / w, style.image_height / h)
        dx = (renderer.image_width - round(w * scale)) // 2
        dy = (style.image_height - round(h * scale)) // 2 + style.banner_height

        def to_canvas(points) -> np.ndarray:
            return np.rint(np.asarray(points, float) * scale + 0.5 * scale - 0.5 + (dx, dy)).astype(int)

        red = to_canvas(message.header["refined_contour"])
        blue = to_canvas(message.header["roi_contour"])
        assert np.mean([_near(picture, x, y, REFINED_RED) for x, y in red]) >= 0.9
        # The refined contour is drawn over the ROI one: check blue where the two are apart.
        apart = [p for p in blue if np.min(np.abs(red - p).sum(axis=1)) > 6]
        if apart:
            assert np.mean([_near(picture, x, y, ROI_BLUE) for x, y in apart]) >= 0.9
        else:
            blue_pixels = (np.abs(picture.astype(int) - np.array(ROI_BLUE)).max(axis=2) <= 60)
            assert blue_pixels[style.banner_height:, :renderer.image_width].sum() > 50
        assert (np.abs(picture[5, 5].astype(int) - (0, 190, 255)) <= 10).all(), "research-use banner"

        # The command: --frames 5 --snapshot, no window.
        snapshot = tmp_path / "overlay.png"
        args = argparse.Namespace(connect=publisher.endpoint, record=None, snapshot=snapshot, frames=5,
                                  seconds=DEADLINE_S, window=False)
        assert overlay_command.run(args) == 0
        image = cv2.imread(str(snapshot))
        assert image is not None and image.shape == picture.shape
        area = image[style.banner_height:, :renderer.image_width].astype(int)
        assert ((np.abs(area - np.array(REFINED_RED)).max(axis=2) <= 60).sum()) > 50
    finally:
        pipeline.stop()
        subscriber.close()
        publisher.close()


def test_run_command_with_the_phantom(models_dir, capsys):
    """`sonograde run` on the real phantom source, dev models, a free port, 15 results."""
    rc = cli_main(["run", "--models", str(models_dir), "--frames", "15", "--publish", "tcp://127.0.0.1:*",
                   "--quiet", "--precision", "auto"])
    err = capsys.readouterr().err
    assert rc == 0, err
    assert "RESEARCH USE ONLY" in err
    assert "stale graded 0" in err
    assert err.count("machine: ") == 2 and "load average" in err  # the start and the end summary


def test_run_command_clear_errors(models_dir, tmp_path, capsys):
    rc = cli_main(["run", "--models", str(tmp_path), "--frames", "1"])
    err = capsys.readouterr().err
    assert rc == 2 and "roi_cnn.onnx" in err and "not found" in err
    missing = str(tmp_path / "nope.mp4")
    rc = cli_main(["run", "--models", str(models_dir), "--source", missing, "--frames", "1"])
    assert rc == 2 and "nope.mp4" in capsys.readouterr().err
    with Publisher(PublisherConfig(endpoint="tcp://127.0.0.1:*")) as busy:
        rc = cli_main(["run", "--models", str(models_dir), "--publish", busy.endpoint, "--frames", "1"])
        assert rc == 2 and "cannot bind" in capsys.readouterr().err
    rc = cli_main(["run", "--models", str(models_dir), "--publish", "tcp://0.0.0.0:5555", "--frames", "1"])
    assert rc == 2 and "allow-remote" in capsys.readouterr().err


def test_bench_pipeline_reports_json_from_a_subscriber_process(models_dir, tmp_path, capsys):
    """`sonograde bench pipeline`, short: the subscriber runs in another process and receives every
    published result; the JSON has the documented keys; the plot is written."""
    plot = tmp_path / "latency.png"
    rc = cli_main(["bench", "pipeline", "--models", str(models_dir), "--seconds", "1.5", "--warmup", "0.5",
                   "--json", "--plot", str(plot)])
    out = capsys.readouterr().out
    assert rc == 0
    summary = json.loads(out.strip().splitlines()[-1])
    assert set(summary) >= {"seconds", "source_fps", "fps", "frames_published", "frames_received", "dropped",
                            "stale_graded", "e2e_ms", "stages_ms"}
    assert summary["frames_published"] > 0
    assert summary["frames_received"] == summary["frames_published"]
    assert summary["stale_graded"] == 0 and summary["missing_seq"] == 0
    assert set(summary["e2e_ms"]) == {"p50", "p95", "p99", "max"}
    assert summary["e2e_ms"]["p50"] > 0
    assert {"locate", "refine", "total"} <= set(summary["stages_ms"])
    assert plot.stat().st_size > 10_000


def test_geometry_profile_crops_and_gives_sizes_in_mm(grader, tmp_path):
    """`--geometry`: frames are cropped to the profile's image rectangle and areas come in mm²."""
    from capture.geometry import GeometryProfile
    from sonograde.pipeline import build_pipeline

    profile = GeometryProfile((16, 8, 320, 288), mm_per_pixel=0.15).save(tmp_path / "scanner.json")
    headers: list[dict] = []
    config = PipelineConfig(source="phantom", geometry=str(profile), publish=None, send_frames=False)
    pipeline = build_pipeline(config, grader=grader, on_result=lambda h, f: headers.append(h))
    with pipeline:
        pipeline.start(warm_up=False)
        wait_until(lambda: len(headers) >= 5, "5 results from the cropped phantom")
    assert all(h["image_size"] == [288, 320] and h["pixel_size_mm"] == pytest.approx(0.15) for h in headers)
    for h in headers:
        if h["lesion_found"]:
            assert h["area_mm2"] == pytest.approx(h["area_px"] * 0.15**2, rel=1e-3)
