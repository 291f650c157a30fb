"""The Table 3 baselines (research.baselines): shapes and the paper's convolution counts."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from torch import nn  # noqa: E402

from research.baselines import VGG16, ResNet50  # noqa: E402


def _convs(net: nn.Module) -> list[nn.Conv2d]:
    return [m for m in net.modules() if isinstance(m, nn.Conv2d)]


def test_comparison_classifiers() -> None:
    x = torch.randn(2, 1, 64, 64)
    with torch.no_grad():
        assert VGG16(width=0.125).eval()(x).shape == (2, 5)
        assert ResNet50(width=0.125).eval()(x).shape == (2, 5)
    assert len(_convs(VGG16(width=0.125))) == 13
    # ResNet50: stem + 16 bottlenecks x 3 convs + 4 projection shortcuts = 53 convs
    assert len(_convs(ResNet50(width=0.125))) == 53
