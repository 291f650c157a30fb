"""The paper's comparison classifiers VGG16 and ResNet50 (Table 3 baselines), with the product's width rule.

Used only by the Table 3 experiment (``research.table3``); the product ships the ROI-CNN and the G-CNN of
``engine.networks``. Channels and FC widths scale with ``width`` exactly as the product's networks do
(``engine.networks._ch``, at least 4, multiples of 4), so that the comparison is at equal width.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as nnf

from engine.networks import _ch, _conv  # the product's width rule and conv block: baselines at equal width


class VGG16(nn.Module):
    """VGG16 classifier (13 convs in 5 blocks + FC 4096-4096-classes), BN optional, global pooling head
    option for small inputs. Channels and FC widths scale with ``width``."""

    def __init__(self, width: float = 1.0, in_channels: int = 1, num_classes: int = 5, *,
                 batch_norm: bool = True, head: str = "gap", input_size: int = 224) -> None:
        super().__init__()
        plan = [(64, 2), (128, 2), (256, 3), (512, 3), (512, 3)]
        layers: list[nn.Module] = []
        cin = in_channels
        for channels, repeats in plan:
            for _ in range(repeats):
                layers.append(_conv(cin, _ch(channels, width), bn=batch_norm))
                cin = _ch(channels, width)
            layers.append(nn.MaxPool2d(2, 2))
        self.features = nn.Sequential(*layers)
        self.head_kind = head
        fc = _ch(4096, width)
        features = cin if head == "gap" else cin * (input_size // 32) ** 2
        self.classifier = nn.Sequential(
            nn.Linear(features, fc), nn.ReLU(True), nn.Dropout(0.5),
            nn.Linear(fc, fc), nn.ReLU(True), nn.Dropout(0.5), nn.Linear(fc, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)
        x = x.mean(dim=(2, 3)) if self.head_kind == "gap" else torch.flatten(x, 1)
        return self.classifier(x)


class _Bottleneck(nn.Module):
    def __init__(self, cin: int, mid: int, cout: int, stride: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(cin, mid, 1, bias=False), nn.BatchNorm2d(mid), nn.ReLU(True),
            nn.Conv2d(mid, mid, 3, stride=stride, padding=1, bias=False), nn.BatchNorm2d(mid), nn.ReLU(True),
            nn.Conv2d(mid, cout, 1, bias=False), nn.BatchNorm2d(cout),
        )
        self.shortcut = (
            nn.Identity() if stride == 1 and cin == cout
            else nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout))
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nnf.relu(self.body(x) + self.shortcut(x))


class ResNet50(nn.Module):
    """ResNet50 (bottleneck blocks 3-4-6-3, stem 7x7/2 + max pool, global pooling, FC); channels scale
    with ``width``."""

    def __init__(self, width: float = 1.0, in_channels: int = 1, num_classes: int = 5) -> None:
        super().__init__()
        stem = _ch(64, width)
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, stem, 7, stride=2, padding=3, bias=False), nn.BatchNorm2d(stem),
            nn.ReLU(True), nn.MaxPool2d(3, stride=2, padding=1),
        )
        blocks: list[nn.Module] = []
        cin = stem
        for stage, (mid, repeats) in enumerate([(64, 3), (128, 4), (256, 6), (512, 3)]):
            m, out = _ch(mid, width), _ch(mid * 4, width)
            for index in range(repeats):
                blocks.append(_Bottleneck(cin, m, out, 2 if index == 0 and stage > 0 else 1))
                cin = out
        self.layers = nn.Sequential(*blocks)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.layers(self.stem(x)).mean(dim=(2, 3)))
