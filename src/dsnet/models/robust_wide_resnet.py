"""WRN-34-R: the wide ResNet whose per-stage depth and width were searched for robustness.

Paper: Huang, Wang, Erfani, Gu, Bailey & Ma, "Exploring Architectural Ingredients of Adversarially Robust Deep
Neural Networks", NeurIPS 2021, arXiv:2110.03825.
Reference: RobustBench's `robust_wide_resnet.py` (`RobustWideResNet`, its entries Huang2021Exploring and
Huang2021Exploring_ema), built from the TRADES WideResNet blocks; facts in `shared/reference/`.

Layout: the TRADES wide ResNet (`wide_resnet.py`) with free per-stage settings: 3x3 stem conv 3→16, stages of
[5, 5, 5] pre-activation basic blocks with widths [320, 640, 512] at strides 1/2/2 (the paper's finding: a wider
second stage and a narrower last one than WRN-34-20's 320/640/1280), BN + ReLU, global average pool, linear `fc`.
No input normalisation (the published models take [0, 1] inputs). 68,116,698 parameters for 10 classes.

Module names are the reference's (`stem_conv`, `blocks.0.layer.0.convShortcut`, `bn1`, `fc`): the blocks are our
`WideBasicBlock`, which already carries the TRADES names.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from dsnet.errors import ConfigError
from dsnet.models.base import ImageClassifier
from dsnet.models.layers import InputStatistics, activation_layer, normalize_input, register_input_normalization
from dsnet.models.registry import ModelInfo, register_model
from dsnet.models.wide_resnet import WideBasicBlock, WideGroup, wrn_init

__all__ = ["RobustWideResNet"]

_PAPER = "Huang et al., Exploring Architectural Ingredients of Adversarially Robust Deep Neural Networks, NeurIPS 2021"


class RobustWideResNet(ImageClassifier):
    """A wide ResNet with a depth and a width per stage.

    Args:
        num_classes: classifier size.
        channels: stem width and the width of each stage.
        depths: blocks per stage.
        activation: "relu" (published) or "silu".
        normalize: in-model input normalisation (None as published; "auto", "cifar10", "cifar100" or a (mean, std)
            pair).
        in_channels: input image channels.
    """

    def __init__(
        self,
        num_classes: int = 10,
        channels: tuple[int, int, int, int] = (16, 320, 640, 512),
        depths: tuple[int, int, int] = (5, 5, 5),
        activation: str = "relu",
        normalize: InputStatistics = None,
        in_channels: int = 3,
    ) -> None:
        super().__init__()
        if len(channels) != len(depths) + 1 or min(depths) < 1:
            raise ConfigError(f"RobustWideResNet takes one more width than depths (stem and stages), each depth >= 1,"
                              f" got channels {channels} and depths {depths}")
        act_layer = activation_layer(activation)
        self.num_classes = num_classes
        self.num_features = channels[-1]
        register_input_normalization(self, normalize, in_channels, num_classes)
        self.stem_conv = nn.Conv2d(in_channels, channels[0], 3, padding=1, bias=False)
        self.blocks = nn.ModuleList(
            WideGroup([WideBasicBlock(channels[g] if i == 0 else channels[g + 1], channels[g + 1],
                                      (1 if g == 0 else 2) if i == 0 else 1, act_layer) for i in range(depth)])
            for g, depth in enumerate(depths))
        self.bn1 = nn.BatchNorm2d(channels[-1])
        self.relu = act_layer()
        self.fc = nn.Linear(channels[-1], num_classes)
        wrn_init(self)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Maps (B, 3, H, W) images in [0, 1] to pooled (B, num_features) features."""
        out = self.stem_conv(normalize_input(x, self.mean, self.std))
        for stage in self.blocks:
            out = stage(out)
        return self.relu(self.bn1(out)).mean((2, 3))


register_model("wrn34_r", RobustWideResNet, ModelInfo(family="robust_wide_resnet", paper=_PAPER,
                                                      expected_params=68_116_698, label="WRN-34-R"))
register_model("wrn_r_tiny", RobustWideResNet, ModelInfo(family="robust_wide_resnet", paper=_PAPER, tiny=True,
                                                         note="tests: one block per stage, widths 16/32/64"),
               channels=(16, 16, 32, 64), depths=(1, 1, 1))
