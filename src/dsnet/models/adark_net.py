"""AdaRK-Net-62: a network built from Runge-Kutta-inspired residual blocks.

Paper: Kim et al., "Robust Neural Networks inspired by Strong Stability Preserving
Runge-Kutta methods", ECCV 2020, arXiv:2010.10047. Official code: github.com/matbambbang/sspnet; the DS-Net
authors copy it with an extra output BN per block (github.com/d12306/dsnet `model/cifar10.py`,
`model/block.py`); facts in `shared/reference/training_and_baselines.md` §3.5.

Layout (`CIFAR10Module_ARK`, C = 80, 9 blocks per stage): stem conv3x3 3→C (with bias); stage 1 = 9 adaptive
RK blocks at C; a pre-activation reduction block C→2C (stride 2); stage 2 = 9 residual blocks at 2C; a
reduction block 2C→4C; stage 3 = 9 SSP2 blocks at 4C; global average pool; linear. Depth
1 + 27·2 + 2·3 + 1 = 62. Every block ends in a BN (the DS-Net copy's `n3`), so there is no BN/ReLU before the
pool. 23,614,908 parameters for 10 classes, the paper's 23.61 M.

The blocks are DS-Net's atomic blocks (`atomic_blocks.py`), which follow that same code: `AdaRKBlock` (two
learnable scalars a21, b10; a21 cancels algebraically and gets no gradient, kept for the count),
`ResidualBlock` y = BN(F(x) + x), and `ReductionBlock`. SSP2 (Eq. 9 of the paper) applies one residual block B
twice with shared weights: x1 = B(x), y = ½x + ½B(x1).

What we chose: PyTorch's default initialisation instead of the reference's (kaiming-uniform with a = √5·layers,
BN weights U(0, 1)), as DS-Net retrains this baseline with its own recipe; and no input normalisation (the SSP
code normalises with an unusual blue-channel mean, which DS-Net does not use).
"""

from __future__ import annotations

import torch
import torch.nn as nn

from dsnet.errors import ConfigError
from dsnet.models.atomic_blocks import AdaRKBlock, ReductionBlock, ResidualBlock, set_bn_updates
from dsnet.models.base import ImageClassifier
from dsnet.models.layers import conv3x3
from dsnet.models.registry import ModelInfo, register_model

__all__ = ["SSP2Block", "AdaRKNet"]

_PAPER = "Kim et al., Robust Neural Networks inspired by Strong Stability Preserving Runge-Kutta methods, ECCV 2020"


class SSP2Block(nn.Module):
    """Two-stage strong-stability-preserving RK block: x1 = B(x), y = ½x + ½B(x1), one residual block B.

    Args:
        channels: in and out width.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.block = ResidualBlock(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 0.5 * x + 0.5 * self.block(self.block(x))


class AdaRKNet(ImageClassifier):
    """AdaRK-Net for 32x32 inputs: Ada-RK, residual and SSP2 stages at widths C, 2C, 4C.

    Args:
        num_classes: classifier size.
        width: C, channels of the stem and the first stage (80).
        blocks_per_stage: blocks in each of the three stages (9).
        in_channels: input image channels.
        bn_updates: "authors" or "once", how the Ada-RK and reduction blocks update BN statistics in training
            (`dsnet.models.atomic_blocks`).
    """

    def __init__(self, num_classes: int = 10, width: int = 80, blocks_per_stage: int = 9, in_channels: int = 3,
                 bn_updates: str = "authors") -> None:
        super().__init__()
        if width < 1 or blocks_per_stage < 1:
            raise ConfigError(f"AdaRK-Net width and blocks_per_stage must be >= 1, got {width}, {blocks_per_stage}")
        self.num_classes = num_classes
        self.stem = conv3x3(in_channels, width)
        self.stage1 = nn.Sequential(*(AdaRKBlock(width) for _ in range(blocks_per_stage)))
        self.reduction1 = ReductionBlock(width, 2 * width)
        self.stage2 = nn.Sequential(*(ResidualBlock(2 * width) for _ in range(blocks_per_stage)))
        self.reduction2 = ReductionBlock(2 * width, 4 * width)
        self.stage3 = nn.Sequential(*(SSP2Block(4 * width) for _ in range(blocks_per_stage)))
        self.num_features = 4 * width
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(4 * width, num_classes)
        set_bn_updates(self, bn_updates)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Maps (B, 3, H, W) images in [0, 1] to pooled (B, num_features) features."""
        out = self.stage1(self.stem(x))
        out = self.stage2(self.reduction1(out))
        out = self.stage3(self.reduction2(out))
        return self.pool(out).flatten(1)


register_model("adark_net", AdaRKNet, ModelInfo(family="adark_net", paper=_PAPER, expected_params=23_614_908,
                                                note="C=80, 9 blocks/stage", label="AdaRK-Net"),
               width=80, blocks_per_stage=9)
register_model("adark_net_tiny", AdaRKNet, ModelInfo(family="adark_net", paper=_PAPER, note="tests: C=4, 1 block/stage",
                                                     tiny=True), width=4, blocks_per_stage=1)
