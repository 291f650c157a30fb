"""Shapes, dtypes and structure of the paper's networks (edge and full width) and the G-CNN input."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from engine.augment import translate_frame
from engine.networks import (
    GCNN,
    GCNNConfig,
    GraderProbabilities,
    RoiCNN,
    RoiConfig,
    RoiProbability,
    build,
)
from engine.preprocess import grader_input, mask_bbox, roi_input, square_crop_box


def _convs(net: nn.Module) -> list[nn.Conv2d]:
    return [m for m in net.modules() if isinstance(m, nn.Conv2d)]


def test_roi_cnn_edge_shapes_and_probabilities() -> None:
    net = RoiProbability(RoiCNN(RoiConfig(width=0.25))).eval()
    x = torch.randn(2, 1, 288, 288)
    with torch.no_grad():
        prob = net(x)
    assert prob.shape == (2, 1, 288, 288)
    assert prob.dtype == torch.float32
    assert float(prob.min()) >= 0.0 and float(prob.max()) <= 1.0


def test_roi_cnn_structure_matches_paper_at_full_width() -> None:
    net = RoiCNN(RoiConfig(width=1.0))
    # VGG16's 13 convs, the atrous conv (dilation 2), the 1x1 transition with 512 filters, the score conv.
    convs = _convs(net)
    assert len(convs) == 16
    assert net.atrous[0].dilation == (2, 2) and net.atrous[0].kernel_size == (3, 3)
    assert net.transition[0].out_channels == 512 and net.transition[0].kernel_size == (1, 1)
    assert net.score.in_channels == 1024  # deep 512 + shallow conv4_3 512 concatenated
    with torch.no_grad():
        out = net.eval()(torch.randn(1, 1, 64, 64))  # fully convolutional: any multiple of 16
    assert out.shape == (1, 1, 64, 64)


@pytest.mark.parametrize("channels", [1, 2])
def test_gcnn_edge_shapes_softmax_and_18_convs(channels: int) -> None:
    net = GCNN(GCNNConfig(width=0.25, in_channels=channels, input_size=128))
    assert len(_convs(net)) == 18
    # BN at the top conv of each of the 9 blocks and after the first two FC layers.
    assert sum(isinstance(m, nn.BatchNorm2d) for m in net.modules()) == 9
    assert sum(isinstance(m, nn.BatchNorm1d) for m in net.modules()) == 2
    with torch.no_grad():
        probs = GraderProbabilities(net).eval()(torch.randn(3, channels, 128, 128))
    assert probs.shape == (3, 5) and probs.dtype == torch.float32
    assert torch.allclose(probs.sum(dim=1), torch.ones(3), atol=1e-5)


def test_gcnn_full_width_paper_head() -> None:
    net = GCNN(GCNNConfig(width=1.0, input_size=64, head="flatten", scale_fc=False, dropout=0.0))
    linear = [m for m in net.modules() if isinstance(m, nn.Linear)]
    assert [m.out_features for m in linear] == [4096, 1024, 5]
    with torch.no_grad():
        assert net.eval()(torch.randn(2, 1, 64, 64)).shape == (2, 5)


def test_gcnn_rejects_bad_config() -> None:
    with pytest.raises(ValueError, match="multiple of 16"):
        GCNN(GCNNConfig(input_size=100))
    with pytest.raises(ValueError, match="head"):
        GCNN(GCNNConfig(head="avg"))
    with pytest.raises(ValueError, match="unknown network kind"):
        build("unet", {})


def _image_with_box_lesion(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, int, int]:
    """A random-size noise image and the mask of a 50 x 30 px lesion at a random place (x0, y0)."""
    h, w = int(rng.integers(150, 400)), int(rng.integers(150, 400))
    image = rng.integers(0, 256, (h, w), dtype=np.uint8)
    mask = np.zeros((h, w), bool)
    y0, x0 = int(rng.integers(0, h - 40)), int(rng.integers(0, w - 60))
    mask[y0:y0 + 30, x0:x0 + 50] = True
    return image, mask, x0, y0


def test_grader_input_crop(rng: np.random.Generator) -> None:
    image, mask, x0, y0 = _image_with_box_lesion(rng)
    assert mask_bbox(mask) == (x0, y0, 50, 30)
    one = grader_input(image, mask, size=64, margin=0.25, mask_channel=False)
    assert one.shape == (1, 64, 64) and one.dtype == np.float32
    assert abs(float(one.mean())) < 1e-3  # standardized
    two = grader_input(image, mask, size=64, margin=0.25, mask_channel=True)
    assert two.shape == (2, 64, 64)
    assert set(np.unique(two[1])) <= {0.0, 1.0}
    # The lesion (50 x 30) fills 50 / 75 of the square crop's width: 2/3 of 64 columns.
    assert abs(int(two[1].any(axis=0).sum()) - 43) <= 2
    np.testing.assert_allclose(two[0], one[0])
    x, y, side = square_crop_box((x0, y0, 50, 30), 0.25)
    assert side == 75 and abs(x - (x0 - 12.5)) <= 0.5 and abs(y - (y0 + 15 - 37.5)) <= 0.5


def test_grader_input_pads_at_border_and_rejects_bad_masks() -> None:
    image = np.full((100, 100), 200, np.uint8)
    mask = np.zeros((100, 100), bool)
    mask[0:20, 0:20] = True  # the square crop extends past the top-left corner: black padding
    crop = grader_input(image, mask, size=32, margin=0.5, mask_channel=True)
    assert crop[0, 0, 0] < crop[0, 31, 31]
    with pytest.raises(ValueError, match="empty"):
        grader_input(image, np.zeros((100, 100), bool), size=32, margin=0.1, mask_channel=False)
    with pytest.raises(ValueError, match="shape"):
        grader_input(image, np.ones((50, 100), bool), size=32, margin=0.1, mask_channel=False)


def test_grader_input_frame_keeps_lesion_size_and_place(rng: np.random.Generator) -> None:
    image, mask, x0, y0 = _image_with_box_lesion(rng)
    h, w = image.shape
    frame = grader_input(image, mask, size=96, mask_channel=True, view="frame")
    assert frame.shape == (2, 96, 96) and frame.dtype == np.float32
    np.testing.assert_allclose(frame[0], roi_input(image, 96)[0])  # the frame exactly as the ROI-CNN's input
    ys, xs = np.nonzero(frame[1])
    # the lesion keeps its share of the field of view (a crop would scale it to fill the input)
    assert abs((xs.max() - xs.min() + 1) - 50 * 96 / w) <= 2
    assert abs((ys.max() - ys.min() + 1) - 30 * 96 / h) <= 2
    assert abs(xs.min() - x0 * 96 / w) <= 2 and abs(ys.min() - y0 * 96 / h) <= 2
    with pytest.raises(ValueError, match="empty"):
        grader_input(image, np.zeros_like(mask), size=96, mask_channel=True, view="frame")
    with pytest.raises(ValueError, match="unknown G-CNN view"):
        grader_input(image, mask, size=96, view="panorama")


def test_translate_frame_moves_image_and_mask_together_and_keeps_the_lesion(rng: np.random.Generator) -> None:
    image = rng.integers(1, 256, (120, 160), dtype=np.uint8)
    mask = np.zeros((120, 160), bool)
    mask[2:30, 140:158] = True  # near the top-right corner: most shifts would push it out
    for _ in range(20):
        moved, moved_mask = translate_frame(image, mask, rng)
        assert moved_mask.sum() == mask.sum()  # never cut off
        ys, xs = np.nonzero(moved_mask)
        dy, dx = int(ys.min()) - 2, int(xs.min()) - 140
        assert abs(dx) <= 16 and abs(dy) <= 12  # at most 10 % of each side
        np.testing.assert_array_equal(moved[max(dy, 0):120 + min(dy, 0), max(dx, 0):160 + min(dx, 0)],
                                      image[max(-dy, 0):120 - max(dy, 0), max(-dx, 0):160 - max(dx, 0)])


def test_grader_ensemble_averages_member_probabilities() -> None:
    from engine.networks import GraderEnsemble

    members = [GCNN(GCNNConfig(width=0.125, input_size=32)).eval() for _ in range(2)]
    x = torch.randn(3, 1, 32, 32)
    with torch.no_grad():
        want = (torch.softmax(members[0](x), 1) + torch.softmax(members[1](x), 1)) / 2
        got = GraderProbabilities(GraderEnsemble(members)).eval()(x)
    assert torch.allclose(got, want, atol=1e-6)
