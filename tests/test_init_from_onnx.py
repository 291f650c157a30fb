"""Fine-tuning starts from a shipped ONNX ROI-CNN (``--init-from model.onnx``): the folded weights go back
into a torch network that computes what the file computes, and wrong files get clear errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from engine.export import export_onnx  # noqa: E402
from engine.networks import RoiCNN, RoiConfig  # noqa: E402
from engine.training.common import TrainConfig, TrainingError  # noqa: E402
from engine.training.from_onnx import init_roi_from_onnx, onnx_agreement, read_onnx_roi  # noqa: E402


@pytest.fixture(scope="module")
def trained_like_onnx(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, RoiCNN]:
    """A width-0.125 ROI-CNN whose batch norms hold non-trivial statistics (as after training), exported."""
    torch.manual_seed(3)
    net = RoiCNN(RoiConfig(width=0.125))
    generator = torch.Generator().manual_seed(4)
    with torch.no_grad():
        for module in net.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                n = module.num_features
                module.running_mean.copy_(torch.randn(n, generator=generator) * 0.5)
                module.running_var.copy_(torch.rand(n, generator=generator) * 2 + 0.1)
                module.weight.copy_(torch.randn(n, generator=generator))
                module.bias.copy_(torch.randn(n, generator=generator) * 0.3)
    path = tmp_path_factory.mktemp("onnx") / "roi.onnx"
    export_onnx("roi", net.eval(), path, check_batch=1)
    return path, net


def _images(seed: int, n: int = 4) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(seed).standard_normal((n, 1, 288, 288)).astype(np.float32))


def test_weights_from_onnx_reproduce_the_network(trained_like_onnx: tuple[Path, RoiCNN]) -> None:
    path, original = trained_like_onnx
    fresh = RoiCNN(RoiConfig(width=0.125))
    init_roi_from_onnx(fresh, path, _images(10))
    fresh.eval()
    test = _images(11, 2)  # images the batch norms were not re-expressed on
    with torch.no_grad():
        want = torch.sigmoid(original.eval()(test))
        got = torch.sigmoid(fresh(test))
    assert float((got - want).abs().max()) < 1e-4
    assert onnx_agreement(fresh, path, test) < 1e-4
    # Training mode normalizes with batch statistics: close to the file on the calibration images.
    fresh.train()
    with torch.no_grad():
        train_mode = torch.sigmoid(fresh(_images(10)))
        fresh.eval()
        eval_mode = torch.sigmoid(fresh(_images(10)))
    assert float((train_mode - eval_mode).abs().max()) < 1e-3


def test_the_shipped_roi_cnn_reads_back(tmp_path: Path) -> None:
    models = Path(__file__).resolve().parents[1] / "models"
    shipped = models / "roi_cnn_vgg16.onnx"  # the paper's network
    config, _ = read_onnx_roi(shipped)
    net = RoiCNN(config)
    difference = init_roi_from_onnx(net, shipped, _images(12, 4))
    assert difference < 1e-4
    # the Lite0-encoder default is refused with what to do instead
    with pytest.raises(TrainingError, match=r"lite0 ROI-CNN; only the paper's \(vgg16\) network"):
        read_onnx_roi(models / "roi_cnn.onnx")


def test_wrong_files_get_clear_errors(tmp_path: Path, trained_like_onnx: tuple[Path, RoiCNN]) -> None:
    from engine.backends.dev_models import make_grader_model, make_roi_model

    path, _ = trained_like_onnx
    with pytest.raises(TrainingError, match=r"give --width 0\.125"):
        init_roi_from_onnx(RoiCNN(RoiConfig(width=0.25)), path, _images(1, 2))
    with pytest.raises(TrainingError, match=r"only a ROI-CNN starts from an ONNX file"):
        read_onnx_roi(make_grader_model(tmp_path / "g.onnx"))
    with pytest.raises(TrainingError, match="none of the ROI-CNN's weights"):
        read_onnx_roi(make_roi_model(tmp_path / "dev_roi.onnx"))
    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(path.read_bytes()[:500])
    with pytest.raises(TrainingError, match="not a readable ONNX file"):
        read_onnx_roi(corrupt)
    with pytest.raises(TrainingError, match="no such file"):
        read_onnx_roi(tmp_path / "missing.onnx")


def test_a_grader_run_refuses_an_onnx_start(tmp_path: Path, trained_like_onnx: tuple[Path, RoiCNN]) -> None:
    from engine.networks import GCNN
    from engine.training.common import initial_weights

    config = TrainConfig(kind="grader", init_from=str(trained_like_onnx[0]))
    with pytest.raises(TrainingError, match=r"\.pt checkpoint"):
        initial_weights(config, GCNN())


@pytest.mark.slow
def test_train_roi_starts_from_the_onnx_file(tmp_path: Path, trained_like_onnx: tuple[Path, RoiCNN],
                                             capsys: pytest.CaptureFixture[str]) -> None:
    from sonograde.cli import main

    code = main(["train", "roi", "--phantom", "8", "--out", str(tmp_path / "run"), "--width", "0.125",
                 "--init-from", str(trained_like_onnx[0]), "--max-steps", "1", "--epochs", "1",
                 "--threads", "1", "--no-progress"])
    assert code == 0
    err = capsys.readouterr().err
    assert "started from" in err and "max abs difference to the ONNX file" in err
    assert (tmp_path / "run" / "last.pt").is_file()
