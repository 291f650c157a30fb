"""The explained assessment through the live pipeline: measured size and calipers, the grader's
descriptors when its model has them, and every missing part named with its reason (real grader with the
small dev ONNX models, real ZeroMQ)."""

from __future__ import annotations

import json
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


@pytest.fixture(scope="module")
def describing_grader(tmp_path_factory):
    """The dev grader with a real descriptor model (seeded random coefficients) in its models folder."""
    from assessment_samples import random_descriptor_model

    directory = tmp_path_factory.mktemp("dev_models_descriptors")
    make_roi_model(directory / "roi_cnn.onnx")
    make_grader_model(directory / "g_cnn.onnx")
    model = random_descriptor_model(np.random.default_rng(7))
    (directory / "descriptors.json").write_text(json.dumps(model))
    grader = TwoStageGrader.from_models_dir(directory)
    assert grader.descriptors is not None
    grader.warm_up()
    return grader


def test_the_graders_descriptors_reach_the_stream(describing_grader, rng):
    received = _receive_results(describing_grader, lesion_images(rng), 5)
    lesions = [m for m in received if m.header["lesion_found"]]
    assert lesions
    for message in lesions:
        assessment = message.assessment
        assert assessment["absent"] == {}
        descriptors = assessment["descriptors"]
        assert set(descriptors) == {"shape", "orientation", "margin", "echo_pattern", "posterior_features",
                                    "calcifications"}
        assert descriptors["shape"]["value"] in DESCRIPTORS["shape"]
        assert abs(sum(descriptors["shape"]["probabilities"].values()) - 1) < 1e-3
        assert isinstance(descriptors["orientation"]["angle_deg"], float)
        assert set(descriptors["margin"]["subtypes"]) == {"indistinct", "angular", "microlobulated",
                                                         "spiculated"}
        assert 0.0 <= assessment["malignancy_probability"] <= 1.0
        assert all(d["direction"] in ("up", "down") for d in assessment["drivers"])
        # the grader measured the size itself, in mm with the frame's pixel size from the source
        assert assessment["size"]["unit"] == "mm" and assessment["size"]["pixel_size_source"] == "caller"
        timings = message.header["timings_ms"]
        assert 0.0 < timings["classify_descriptors"] <= timings["classify"]
        assert message.header["model_ids"]["descriptors"] == "test-descriptors"


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
    """`sonograde bench pipeline` (short, dev models and a descriptor model): the stage line shows classify
    with the descriptor model's share, and the assessment's measure stage."""
    from assessment_samples import random_descriptor_model

    from sonograde.benchmarks.pipeline import format_stages
    from sonograde.cli import main as cli_main

    make_roi_model(tmp_path / "roi_cnn.onnx")
    make_grader_model(tmp_path / "g_cnn.onnx")
    (tmp_path / "descriptors.json").write_text(json.dumps(random_descriptor_model(np.random.default_rng(3))))
    argv = ["bench", "pipeline", "--models", str(tmp_path), "--seconds", "1.5", "--warmup", "0.5"]
    assert cli_main(argv) == 0
    captured = capsys.readouterr()
    summary = json.loads(captured.out.strip().splitlines()[-1])
    stages = summary["stages_ms"]
    assert "classify" in stages, "the dev ROI-CNN found no lesion on the phantom"
    assert {"measure", "classify_descriptors"} <= set(stages)
    assert stages["classify_descriptors"]["p50"] <= stages["classify"]["p50"]
    assert "stages p50/p99 ms:" in captured.err
    assert f"(descriptors {stages['classify_descriptors']['p50']}/" in captured.err
    assert f"measure {stages['measure']['p50']}/" in captured.err
    assert "descriptors p50 <= 3 ms" in captured.err
    without = format_stages({"classify": {"p50": 4.0, "p99": 9.0}})
    assert without == "stages p50/p99 ms: classify 4.0/9.0 (no descriptor models)"
