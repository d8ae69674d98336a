"""MobileNetV2 for CIFAR (the DS-Net paper's Table 1).

Paper: Sandler, Howard, Zhu, Zhmoginov & Chen, "MobileNetV2: Inverted Residuals and Linear Bottlenecks",
CVPR 2018, arXiv:1801.04381.
Reference: the CIFAR MobileNetV2 of kuangliu/pytorch-cifar, the collection the DS-Net authors' other CIFAR
baselines (ResNet-50, DenseNet-121) come from; their repository has no MobileNetV2 of its own.

Layout: 3x3 stem conv 3→32 with stride 1 (ImageNet: 2); inverted-residual stages (expansion t, output c,
blocks n, stride s) = (1,16,1,1), (6,24,2,1), (6,32,3,2), (6,64,4,2), (6,96,3,1), (6,160,3,2), (6,320,1,1) -- the
second stage's stride is 1 instead of 2, so a 32x32 input ends at 4x4; then 1x1 conv 320→1280 + BN + ReLU,
global average pool, linear. Block: 1x1 expand (t·C_in) BN ReLU, depthwise 3x3 (stride) BN ReLU, 1x1 project
BN (linear bottleneck); stride-1 blocks add a shortcut, a 1x1 conv + BN where the width changes. No conv
biases. 2,296,922 parameters for 10 classes.

What we chose and why: the reference's CIFAR definition throughout, which departs from the paper in three
ways: stride 1 in the stem and the second stage (CIFAR images are 7x smaller than ImageNet crops), ReLU rather
than ReLU6, and a projection shortcut on stride-1 blocks that change width (the paper has no shortcut there;
it adds 59,152 parameters). The expansion-1 block keeps its 1x1 expand conv, as the reference does.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from dsnet.models.base import ImageClassifier
from dsnet.models.layers import conv1x1, conv3x3
from dsnet.models.registry import ModelInfo, register_model

__all__ = ["CIFAR_STAGES", "InvertedResidual", "MobileNetV2"]

_PAPER = "Sandler et al., MobileNetV2: Inverted Residuals and Linear Bottlenecks, CVPR 2018"

# (expansion, out_channels, num_blocks, stride) per stage; stride 1 in stage 2 for 32x32 inputs.
CIFAR_STAGES = (
    (1, 16, 1, 1), (6, 24, 2, 1), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)
)


class InvertedResidual(nn.Module):
    """1x1 expand-BN-ReLU, dw3x3-BN-ReLU, 1x1 project-BN, plus a shortcut when the stride is 1.

    Args:
        in_channels: input width.
        out_channels: output width.
        expansion: t; the hidden width is t·in_channels.
        stride: stride of the depthwise conv.
    """

    def __init__(self, in_channels: int, out_channels: int, expansion: int, stride: int) -> None:
        super().__init__()
        hidden = expansion * in_channels
        self.stride = stride
        self.conv1 = conv1x1(in_channels, hidden)
        self.bn1 = nn.BatchNorm2d(hidden)
        self.conv2 = nn.Conv2d(hidden, hidden, 3, stride=stride, padding=1, groups=hidden, bias=False)
        self.bn2 = nn.BatchNorm2d(hidden)
        self.conv3 = conv1x1(hidden, out_channels)
        self.bn3 = nn.BatchNorm2d(out_channels)
        self.shortcut = nn.Sequential()
        if stride == 1 and in_channels != out_channels:
            self.shortcut = nn.Sequential(conv1x1(in_channels, out_channels), nn.BatchNorm2d(out_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return out + self.shortcut(x) if self.stride == 1 else out


class MobileNetV2(ImageClassifier):
    """MobileNetV2 for 32x32 inputs.

    Args:
        num_classes: classifier size.
        stages: (expansion, out_channels, num_blocks, stride) per stage.
        stem_width: channels of the stem conv.
        head_width: channels of the last 1x1 conv.
        in_channels: input image channels.
    """

    head = "linear"

    def __init__(
        self,
        num_classes: int = 10,
        stages: Sequence[tuple[int, int, int, int]] = CIFAR_STAGES,
        stem_width: int = 32,
        head_width: int = 1280,
        in_channels: int = 3,
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.conv1 = conv3x3(in_channels, stem_width, bias=False)
        self.bn1 = nn.BatchNorm2d(stem_width)
        blocks = []
        channels = stem_width
        for expansion, out_channels, num_blocks, stride in stages:
            for index in range(num_blocks):
                blocks.append(InvertedResidual(channels, out_channels, expansion, stride if index == 0 else 1))
                channels = out_channels
        self.layers = nn.Sequential(*blocks)
        self.conv2 = conv1x1(channels, head_width)
        self.bn2 = nn.BatchNorm2d(head_width)
        self.num_features = head_width
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.linear = nn.Linear(head_width, num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Maps (B, 3, H, W) images in [0, 1] to pooled (B, num_features) features."""
        out = self.layers(F.relu(self.bn1(self.conv1(x))))
        return self.pool(F.relu(self.bn2(self.conv2(out)))).flatten(1)


register_model("mobilenetv2", MobileNetV2, ModelInfo(family="mobilenetv2", paper=_PAPER, expected_params=2_296_922,
                                                     note="CIFAR strides", label="MobileNetV2"), stages=CIFAR_STAGES)
register_model("mobilenetv2_tiny", MobileNetV2, ModelInfo(family="mobilenetv2", paper=_PAPER, tiny=True,
                                                          note="tests: 3 small stages"),
               stages=((1, 4, 1, 1), (2, 8, 2, 2), (2, 8, 1, 1)), stem_width=4, head_width=16)
