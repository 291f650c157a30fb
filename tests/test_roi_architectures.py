"""ROI-CNN architectures and input sizes: the Lite0 encoder with the paper's head, and a model's input size
travelling from the network through the exported metadata to the grader and the evaluation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from engine import contract  # noqa: E402
from engine.backends.dev_models import make_grader_model, synthetic_frame  # noqa: E402
from engine.export import export_onnx  # noqa: E402
from engine.grader import TwoStageGrader  # noqa: E402
from engine.networks import RoiCNN, RoiConfig, RoiLite0, RoiProbability, build, build_roi  # noqa: E402


def test_lite0_keeps_the_input_size_and_the_paper_head() -> None:
    net = build_roi(RoiConfig(architecture="lite0", input_size=224)).eval()
    assert isinstance(net, RoiLite0)
    with torch.no_grad():
        prob = RoiProbability(net)(torch.randn(2, 1, 224, 224))
    assert prob.shape == (2, 1, 224, 224)
    assert float(prob.min()) >= 0.0 and float(prob.max()) <= 1.0
    assert net.atrous[0].dilation == (2, 2) and net.transition[0].kernel_size == (1, 1)
    # the transition balances the concatenation: as many channels as the stride-8 features
    assert net.transition[0].out_channels * 2 == net.score.in_channels


def test_architecture_and_size_are_checked() -> None:
    with pytest.raises(ValueError, match="multiple of 16"):
        build_roi(RoiConfig(input_size=200))
    with pytest.raises(ValueError, match="unknown ROI-CNN architecture"):
        build_roi(RoiConfig(architecture="resnet"))
    # checkpoints written before the architecture existed still build the paper's network at 288
    net = build("roi", {"width": 0.125, "in_channels": 1, "batch_norm": True})
    assert isinstance(net, RoiCNN) and net.config.input_size == 288


def test_imagenet_stem_is_summed_for_one_channel() -> None:
    state = {k: v.clone() for k, v in RoiLite0().state_dict().items()}
    rgb = torch.randn(32, 3, 3, 3)
    state = {k: v for k, v in state.items() if k.startswith(("_conv_stem", "_bn0", "_blocks."))}
    state["_conv_stem.weight"] = rgb
    net = RoiLite0()
    net.load_imagenet(state)
    torch.testing.assert_close(net._conv_stem.weight, rgb.sum(dim=1, keepdim=True))
    with pytest.raises(ValueError, match="lacks"):
        RoiLite0().load_imagenet({"_conv_stem.weight": rgb})


@pytest.fixture(scope="module")
def small_roi_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(3)
    net = build_roi(RoiConfig(width=0.125, input_size=96)).eval()
    path = tmp_path_factory.mktemp("roi") / "roi_cnn.onnx"
    export_onnx("roi", net, path, seed=0, check_batch=1)
    return path


def test_export_writes_size_and_architecture(small_roi_model: Path) -> None:
    metadata = contract.read_metadata(small_roi_model)
    assert metadata[contract.ARCHITECTURE] == "vgg16"
    assert contract.roi_input_size(metadata) == 96
    assert contract.roi_input_size({}) == 288  # models exported before the key existed


def test_grader_and_evaluation_take_the_size_from_the_model(small_roi_model: Path, tmp_path: Path,
                                                            rng: np.random.Generator) -> None:
    from engine.training.evaluate import _session, locate_and_refine

    models = small_roi_model.parent
    make_grader_model(models / "g_cnn.onnx", size=64, channels=2, margin=0.2)
    grader = TwoStageGrader.from_models_dir(models)
    image, _ = synthetic_frame(rng, 300, 400)
    roi = grader.locate(image)
    assert roi.prob.shape == (96, 96) and roi.raw_mask.shape == (96, 96)
    small, prob, raw, refined = locate_and_refine(_session(small_roi_model, threads=1), image[..., 0]
                                                  if image.ndim == 3 else image)
    assert small.shape == prob.shape == raw.shape == refined.mask_grid.shape == (96, 96)
    assert refined.mask.shape == image.shape[:2]  # the refined lesion also at the frame's own size
    np.testing.assert_allclose(prob, roi.prob, atol=1e-6)


def test_roi_model_replaces_the_folders(small_roi_model: Path, tmp_path: Path) -> None:
    from engine.backends import ModelLoadError
    from engine.backends.dev_models import make_roi_model

    make_roi_model(tmp_path / "roi_cnn.onnx", size=288)
    make_grader_model(tmp_path / "g_cnn.onnx", size=64, channels=2, margin=0.2)
    assert TwoStageGrader.from_models_dir(tmp_path).roi_size == 288
    chosen = TwoStageGrader.from_models_dir(tmp_path, roi_model=small_roi_model)
    assert chosen.roi_size == 96 and chosen.roi.path == small_roi_model
    with pytest.raises(ModelLoadError, match="ROI-CNN model not found"):
        TwoStageGrader.from_models_dir(tmp_path, roi_model=tmp_path / "absent.onnx")
