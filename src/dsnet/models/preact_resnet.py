"""Pre-activation ResNet-18 for CIFAR: the field's standard quick baseline.

Paper: He, Zhang, Ren & Sun, "Identity Mappings in Deep Residual Networks", ECCV 2016, arXiv:1603.05027.
Reference: the PreActResNet-18 of Rice, Wong & Kolter's robust-overfitting code (github.com/locuslab/
robust_overfitting `preactresnet.py`) and Wong et al.'s fast_adversarial, the usual PGD-AT and Fast-AT baseline.

Layout: 3x3 stem conv 3→64 (no bias); four stages of two pre-activation basic blocks with widths
64/128/256/512, the first block of stages 2-4 strided; a final BN + ReLU; global average pool; linear.
Block: out = conv(ReLU(BN(conv(ReLU(BN(x)))))) + shortcut, where a changing shape takes a 1x1 strided conv
(no BN) of the shared pre-activation ReLU(BN(x)). 11,172,170 parameters for 10 classes; the often quoted
11,173,962 is the post-activation ResNet-18, whose projection shortcuts carry a BN (both round to 11.17 M).

What we chose and why: the final BN + ReLU before pooling (as in robust_overfitting; the original
kuangliu/pytorch-cifar copy pools the raw sum) so the head sees normalised features; module names follow
robust_overfitting (`layer1.0.bn1`, `shortcut.0`, `bn`, `linear`) so its checkpoints load.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn

from dsnet.models.base import ImageClassifier
from dsnet.models.layers import conv1x1, conv3x3
from dsnet.models.registry import ModelInfo, register_model

__all__ = ["PreActBlock", "PreActResNet"]

_PAPER = "He et al., Identity Mappings in Deep Residual Networks, ECCV 2016"


class PreActBlock(nn.Module):
    """Pre-activation basic block with a 1x1 projection of the pre-activation where the shape changes.

    Args:
        in_channels: input width.
        out_channels: output width.
        stride: stride of the first 3x3 conv and of the projection.
        act_layer: activation class.
    """

    def __init__(
        self, in_channels: int, out_channels: int, stride: int = 1, act_layer: type[nn.Module] = nn.ReLU
    ) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.act1 = act_layer()
        self.conv1 = conv3x3(in_channels, out_channels, stride=stride, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.act2 = act_layer()
        self.conv2 = conv3x3(out_channels, out_channels, bias=False)
        self.shortcut: nn.Module | None = None
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(conv1x1(in_channels, out_channels, stride=stride))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pre = self.act1(self.bn1(x))
        shortcut = x if self.shortcut is None else self.shortcut(pre)
        out = self.conv2(self.act2(self.bn2(self.conv1(pre))))
        return out + shortcut


class PreActResNet(ImageClassifier):
    """Pre-activation ResNet with basic blocks for 32x32 inputs.

    Args:
        num_classes: classifier size.
        layers: blocks per stage ((2, 2, 2, 2) for ResNet-18).
        width: width of the stem and first stage; stages use width·(1, 2, 4, 8).
        act_layer: activation class.
        in_channels: input image channels.
    """

    head = "linear"

    def __init__(
        self,
        num_classes: int = 10,
        layers: Sequence[int] = (2, 2, 2, 2),
        width: int = 64,
        act_layer: type[nn.Module] = nn.ReLU,
        in_channels: int = 3,
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.conv1 = conv3x3(in_channels, width, bias=False)
        channels = width
        for index, num_blocks in enumerate(layers):
            out_channels = width * 2**index
            blocks = []
            for block_index in range(num_blocks):
                stride = 2 if index > 0 and block_index == 0 else 1
                blocks.append(PreActBlock(channels, out_channels, stride, act_layer))
                channels = out_channels
            self.add_module(f"layer{index + 1}", nn.Sequential(*blocks))
        self.num_stages = len(layers)
        self.bn = nn.BatchNorm2d(channels)
        self.act = act_layer()
        self.num_features = channels
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.linear = nn.Linear(channels, num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Maps (B, 3, H, W) images in [0, 1] to pooled (B, num_features) features."""
        out = self.conv1(x)
        for index in range(self.num_stages):
            out = getattr(self, f"layer{index + 1}")(out)
        return self.pool(self.act(self.bn(out))).flatten(1)


register_model("preact_resnet18", PreActResNet, ModelInfo(family="preact_resnet", paper=_PAPER,
                                                          expected_params=11_172_170, note="[2,2,2,2]",
                                                          label="PreActResNet-18"), layers=(2, 2, 2, 2))
register_model("preact_resnet_tiny", PreActResNet, ModelInfo(family="preact_resnet", paper=_PAPER, tiny=True,
                                                             note="tests: [1,1,1,1], width 4"),
               layers=(1, 1, 1, 1), width=4)
