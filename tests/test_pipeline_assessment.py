"""The explained assessment through the live pipeline: measured size and calipers, the grader's
descriptors when its model has them, and every missing part named with its reason (real grader with the
small dev ONNX models, real ZeroMQ)."""

from __future__ import annotations

import dataclasses
import threading
import time

import numpy as np
import pytest
from test_pipeline import DEADLINE_S, SyntheticLive, lesion_images

from engine.backends.dev_models import make_grader_model, make_roi_model
from engine.grader import TwoStageGrader
from engine.lexicon import DESCRIPTORS
from refine.measure import caliper_endpoints, lesion_size
from sonograde.assessment import NO_DESCRIPTOR_MODEL, NO_LESION, frame_assessment
from sonograde.messages import ASSESSMENT_PARTS
from sonograde.pipeline import Pipeline, PipelineConfig
from sonograde.publisher import Publisher, PublisherConfig
from sonograde.subscriber import Subscriber


@pytest.fixture(scope="module")
def grader(tmp_path_factory):
    directory = tmp_path_factory.mktemp("dev_models")
    make_roi_model(directory / "roi_cnn.onnx")
    make_grader_model(directory / "g_cnn.onnx")
    grader = TwoStageGrader.from_models_dir(directory)
    grader.warm_up()
    return grader


def _receive_results(grader, images, count: int) -> list:
    publisher = Publisher(PublisherConfig(endpoint="tcp://127.0.0.1:*"))
    subscriber = Subscriber(publisher.endpoint, rcvhwm=1000)
    source = SyntheticLive(images, fps=60.0)
    pipeline = Pipeline(grader, lambda: source, PipelineConfig(publish=None), publisher=publisher)
    received: list = []
    try:
        assert publisher.wait_for_subscriber(10)
        pipeline.start(warm_up=False)
        end = time.monotonic() + DEADLINE_S
        while len(received) < count and time.monotonic() < end:
            message = subscriber.recv(200)
            if message is not None and message.kind == "result":
                received.append(message)
    finally:
        pipeline.stop()
        subscriber.close()
        publisher.close()
    assert len(received) >= count, f"only {len(received)} results"
    return received


def test_published_results_carry_size_calipers_and_say_why_descriptors_are_absent(grader, rng):
    images = lesion_images(rng)
    received = _receive_results(grader, images, 8)
    lesions = [m for m in received if m.header["lesion_found"]]
    assert lesions, "the dev ROI-CNN found no lesion in the synthetic frames"
    for message in lesions:
        assessment = message.assessment
        assert message.header["schema_version"] == 2
        size = assessment["size"]
        # SyntheticLive frames have a 0.2 mm pixel from the source itself.
        assert size["unit"] == "mm" and size["pixel_size_mm"] == 0.2 and size["pixel_size_source"] == "caller"
        x, y, w, h = message.header["bbox"]
        assert abs(size["width"] - w * 0.2) < 1e-6 and abs(size["height"] - h * 0.2) < 1e-6
        (x0, yw), (x1, _) = assessment["calipers"]["width"]
        (xh, y0), (_, y1) = assessment["calipers"]["height"]
        assert (x0, x1, y0, y1) == (x - 0.5, x + w - 0.5, y - 0.5, y + h - 0.5)
        assert y <= yw < y + h and x <= xh < x + w
        # The dev G-CNN has no descriptor heads: those parts are absent with the reason.
        for part in ("descriptors", "malignancy_probability", "drivers"):
            assert assessment["absent"][part] == NO_DESCRIPTOR_MODEL
        assert "measure" in message.header["timings_ms"]


def test_no_lesion_gives_every_part_absent_with_the_reason(grader):
    blank = np.full((240, 320), 128, np.uint8)
    roi = grader.locate(blank)
    refined = grader.refine(blank, roi)
    classified = grader.classify(blank, refined)
    assert not refined.lesion_found
    assessment = frame_assessment(refined, classified, 0.1, "geometry")
    assert assessment == {"absent": dict.fromkeys(ASSESSMENT_PARTS, NO_LESION)}


@dataclasses.dataclass(frozen=True)
class _Described:
    """The G-CNN stage's result plus what a grader with descriptor heads adds."""

    probabilities: np.ndarray | None
    category: str | None
    categories: tuple
    ms: float
    descriptors: dict
    malignancy_probability: float
    drivers: list
    descriptor_ms: float


class _DescribingGrader:
    """The real dev grader, its classify result extended the way a descriptor model extends it."""

    def __init__(self, inner) -> None:
        self.inner = inner
        self.categories, self.model_ids = inner.categories, inner.model_ids
        self.calls = 0
        self.lock = threading.Lock()

    def locate(self, image):
        return self.inner.locate(image)

    def refine(self, image, roi):
        return self.inner.refine(image, roi)

    def classify(self, image, refined):
        c = self.inner.classify(image, refined)
        descriptors = {name: {"value": values[0], "probabilities": {v: 1.0 / len(values) for v in values}}
                       for name, values in DESCRIPTORS.items()}
        descriptors["orientation"]["angle_deg"] = np.float64(4.25)
        drivers = [{"descriptor": "shape", "value": "oval", "direction": "down", "weight": -0.4}]
        return _Described(c.probabilities, c.category, c.categories, c.ms, descriptors, np.float32(0.25),
                          drivers, 0.7)


def test_the_graders_descriptors_reach_the_stream(grader, rng):
    received = _receive_results(_DescribingGrader(grader), lesion_images(rng), 5)
    lesions = [m for m in received if m.header["lesion_found"]]
    assert lesions
    for message in lesions:
        assessment = message.assessment
        assert assessment["absent"] == {}
        assert assessment["descriptors"]["orientation"]["angle_deg"] == 4.25
        assert assessment["malignancy_probability"] == 0.25
        assert assessment["drivers"][0]["descriptor"] == "shape"
        assert message.header["timings_ms"]["classify_descriptors"] == 0.7


def test_frame_without_pixel_size_is_measured_in_px(grader, rng):
    image = lesion_images(rng, 1)[0]
    roi = grader.locate(image)
    refined = grader.refine(image, roi)
    classified = grader.classify(image, refined)
    assert refined.lesion_found
    assessment = frame_assessment(refined, classified, None, None)
    assert assessment["size"] == lesion_size(refined.refined_mask)
    assert assessment["size"]["unit"] == "px" and assessment["size"]["pixel_size_mm"] is None
    assert assessment["calipers"] == caliper_endpoints(refined.refined_mask)


def test_bench_pipeline_shows_the_measure_stage_and_the_descriptor_share(tmp_path, capsys):
    """`sonograde bench pipeline` (short, dev models): the stage line names classify with its descriptor
    share (none for a grader without descriptor models) and the measure stage of the assessment."""
    import json

    from engine.backends.dev_models import make_grader_model, make_roi_model
    from sonograde.cli import main as cli_main

    make_roi_model(tmp_path / "roi_cnn.onnx")
    make_grader_model(tmp_path / "g_cnn.onnx")
    argv = ["bench", "pipeline", "--models", str(tmp_path), "--seconds", "1.5", "--warmup", "0.5"]
    assert cli_main(argv) == 0
    captured = capsys.readouterr()
    summary = json.loads(captured.out.strip().splitlines()[-1])
    stages = summary["stages_ms"]
    assert "classify" in stages, "the dev ROI-CNN found no lesion on the phantom"
    assert "measure" in stages and "classify_descriptors" not in stages
    assert "stages p50/p99 ms:" in captured.err and "(no descriptor models)" in captured.err
    assert f"measure {stages['measure']['p50']}/" in captured.err
