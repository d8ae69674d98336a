"""DenseNet-121 for CIFAR (the DS-Net paper's Table 1).

Paper: Huang, Liu, van der Maaten & Weinberger, "Densely Connected Convolutional Networks", CVPR 2017,
arXiv:1608.06993.
Reference: the CIFAR DenseNet of kuangliu/pytorch-cifar, which the DS-Net authors' `model/densenet.py` started
from before they changed its dense block for DS-Net (that copy no longer builds DenseNet-121,
`shared/reference/dsnet_reference.md` §7), so we build the unmodified network.

Layout (DenseNet-BC): 3x3 stem conv 3→2k (k = growth rate 32, no max-pool); four dense blocks of 6/12/24/16
bottleneck layers (BN-ReLU-1x1 conv to 4k, BN-ReLU-3x3 conv to k, output concatenated to the input); between
blocks a transition BN-ReLU-1x1 conv with compression 0.5, then 2x2 average pool; final BN + ReLU, global
average pool, linear. No conv biases. 6,956,298 parameters for 10 classes.

What we chose: the head pools globally instead of with a fixed 4x4 window (the same for 32x32 inputs);
module names follow the reference (`dense1.0.conv1`, `trans1.conv`, `bn`, `linear`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from dsnet.models.base import ImageClassifier
from dsnet.models.layers import conv1x1, conv3x3
from dsnet.models.registry import ModelInfo, register_model

__all__ = ["DenseLayer", "Transition", "DenseNet"]

_PAPER = "Huang et al., Densely Connected Convolutional Networks, CVPR 2017"


class DenseLayer(nn.Module):
    """BN-ReLU-1x1 conv (4k), BN-ReLU-3x3 conv (k); returns concat(new features, x).

    Args:
        in_channels: input width.
        growth_rate: k, the channels this layer adds.
    """

    def __init__(self, in_channels: int, growth_rate: int) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.conv1 = conv1x1(in_channels, 4 * growth_rate)
        self.bn2 = nn.BatchNorm2d(4 * growth_rate)
        self.conv2 = conv3x3(4 * growth_rate, growth_rate, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(F.relu(self.bn1(x)))
        out = self.conv2(F.relu(self.bn2(out)))
        return torch.cat([out, x], dim=1)


class Transition(nn.Module):
    """BN-ReLU-1x1 conv, then 2x2 average pool.

    Args:
        in_channels: input width.
        out_channels: output width.
    """

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.bn = nn.BatchNorm2d(in_channels)
        self.conv = conv1x1(in_channels, out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(self.conv(F.relu(self.bn(x))), 2)


class DenseNet(ImageClassifier):
    """DenseNet-BC for 32x32 inputs.

    Args:
        num_classes: classifier size.
        layers: dense layers per block ((6, 12, 24, 16) for DenseNet-121).
        growth_rate: k.
        compression: transition output width as a fraction of its input width.
        in_channels: input image channels.
    """

    head = "linear"

    def __init__(
        self,
        num_classes: int = 10,
        layers: Sequence[int] = (6, 12, 24, 16),
        growth_rate: int = 32,
        compression: float = 0.5,
        in_channels: int = 3,
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.num_blocks = len(layers)
        channels = 2 * growth_rate
        self.conv1 = conv3x3(in_channels, channels, bias=False)
        for index, num_layers in enumerate(layers):
            dense = []
            for _ in range(num_layers):
                dense.append(DenseLayer(channels, growth_rate))
                channels += growth_rate
            self.add_module(f"dense{index + 1}", nn.Sequential(*dense))
            if index < len(layers) - 1:
                out_channels = int(math.floor(channels * compression))
                self.add_module(f"trans{index + 1}", Transition(channels, out_channels))
                channels = out_channels
        self.bn = nn.BatchNorm2d(channels)
        self.num_features = channels
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.linear = nn.Linear(channels, num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Maps (B, 3, H, W) images in [0, 1] to pooled (B, num_features) features."""
        out = self.conv1(x)
        for index in range(self.num_blocks):
            out = getattr(self, f"dense{index + 1}")(out)
            if index < self.num_blocks - 1:
                out = getattr(self, f"trans{index + 1}")(out)
        return self.pool(F.relu(self.bn(out))).flatten(1)


register_model("densenet121", DenseNet, ModelInfo(family="densenet", paper=_PAPER, expected_params=6_956_298,
                                                  note="k=32, 6/12/24/16", label="DenseNet-121"),
               layers=(6, 12, 24, 16), growth_rate=32)
register_model("densenet_tiny", DenseNet, ModelInfo(family="densenet", paper=_PAPER, note="tests: k=4, 1 layer/block",
                                                    tiny=True), layers=(1, 1, 1, 1), growth_rate=4)
