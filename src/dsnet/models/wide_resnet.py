"""Wide residual networks for CIFAR: WRN-34-10, WRN-28-10 and SAT-WRN-34-10 (Swish instead of ReLU).

Paper: Zagoruyko & Komodakis, "Wide Residual Networks", BMVC 2016, arXiv:1605.07146. SAT: Xie et al.,
"Smooth Adversarial Training", arXiv:2006.14536.
Reference: the WideResNet of the TRADES and MART code (github.com/yaodongyu/TRADES `models/wideresnet.py`),
which the DS-Net authors copy; facts in `shared/reference/training_and_baselines.md` §3.2-3.3.

Layout: 3x3 stem conv 3→16; three groups of n = (depth − 4) / 6 pre-activation basic blocks with widths
16k/32k/64k (k = widen factor) and strides 1/2/2; final BN + ReLU; global average pool; linear. Block:
BN-act-3x3-BN-act-3x3; where in ≠ out channels the pre-activation act(BN(x)) feeds both the branch and a
1x1 strided shortcut conv. No conv biases. Init as the reference: conv N(0, 2/(k²·C_out)), BN 1/0, linear
bias 0. WRN-34-10: 46,160,474 parameters; WRN-28-10: 36,479,194 (10 classes).

What we changed and why:
- The TRADES/MART/DS-Net copies build a second copy of group 1 (`sub_block1`) that forward never uses:
  2,102,112 parameters that get no gradient, and the only reason those copies count 48.26 M. We leave it
  out (the paper's 46.16 M is the count without it); `legacy_sub_block1=True` builds it, unused, so that
  their checkpoints load with `strict=True` (48,262,586 parameters then).
- Module names follow the reference (`block1.layer.0.convShortcut`, `bn1`, `fc`), so TRADES, MART and
  RobustBench WRN-34-10 checkpoints load unchanged. `convShortcut` keeps its camelCase for that reason.
- Activations are modules from `act_layer` (SAT swaps all three sites), and the block and norm layer are
  arguments, so that IE-WRN (`ie_skip.py`) is this network with IE blocks and GroupNorm, not a copy of it. The head pools globally instead of with a
  fixed 8x8 window (the same for 32x32 inputs). Dropout (0 in every reference run) is left out.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn as nn

from dsnet.errors import ConfigError
from dsnet.models.base import ImageClassifier
from dsnet.models.layers import conv1x1, conv3x3
from dsnet.models.registry import ModelInfo, register_model

__all__ = ["WideBasicBlock", "WideGroup", "WideResNet", "wrn_init"]

_PAPER = "Zagoruyko & Komodakis, Wide Residual Networks, BMVC 2016"
_SAT_PAPER = "Xie et al., Smooth Adversarial Training, arXiv:2006.14536"

NormLayer = Callable[[int], nn.Module]


class WideBasicBlock(nn.Module):
    """Pre-activation basic block: shortcut + conv2(act(norm2(conv1(act(norm1(x)))))).

    Args:
        in_channels: input width.
        out_channels: output width.
        stride: stride of the first conv and of the shortcut conv.
        act_layer: activation class (nn.ReLU; nn.SiLU for SAT).
        norm_layer: builds the normalisation layer from a channel count (BatchNorm2d by default).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        stride: int = 1,
        act_layer: type[nn.Module] = nn.ReLU,
        norm_layer: NormLayer = nn.BatchNorm2d,
    ) -> None:
        super().__init__()
        self.bn1 = norm_layer(in_channels)
        self.relu1 = act_layer()
        self.conv1 = conv3x3(in_channels, out_channels, stride=stride, bias=False)
        self.bn2 = norm_layer(out_channels)
        self.relu2 = act_layer()
        self.conv2 = conv3x3(out_channels, out_channels, bias=False)
        self.convShortcut: nn.Module | None = None  # noqa: N815 (reference name, so checkpoints load)
        if stride != 1 or in_channels != out_channels:
            self.convShortcut = conv1x1(in_channels, out_channels, stride=stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pre = self.relu1(self.bn1(x))
        shortcut = x if self.convShortcut is None else self.convShortcut(pre)
        return shortcut + self.conv2(self.relu2(self.bn2(self.conv1(pre))))


class WideGroup(nn.Module):
    """A group of blocks, held in `.layer` as in the reference so that state-dict keys match.

    Args:
        blocks: the blocks, applied in order.
    """

    def __init__(self, blocks: list[nn.Module]) -> None:
        super().__init__()
        self.layer = nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x)


def wrn_init(model: nn.Module) -> None:
    """The reference initialisation: conv N(0, 2/(k²·C_out)), norm weight 1 / bias 0, linear bias 0."""
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            fan_out = module.kernel_size[0] * module.kernel_size[1] * module.out_channels
            nn.init.normal_(module.weight, 0.0, math.sqrt(2.0 / fan_out))
        elif isinstance(module, (nn.BatchNorm2d, nn.GroupNorm)) and module.weight is not None:
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)


class WideResNet(ImageClassifier):
    """Pre-activation wide ResNet for 32x32 inputs.

    Variants are arguments: SAT swaps `act_layer`, IE-WRN (`ie_skip.py`) swaps `block` and `norm_layer`.

    Args:
        num_classes: classifier size.
        depth: 6n + 4 layers (34 or 28).
        widen_factor: k; group widths 16k, 32k, 64k.
        act_layer: activation class (nn.ReLU; nn.SiLU for SAT).
        legacy_sub_block1: also build the unused second copy of group 1 of the TRADES/MART code, only so that
            their checkpoints load; it never runs and gets no gradient.
        in_channels: input image channels.
        block: builds the blocks after the first of each group, called as
            `block(in_channels, out_channels, stride, act_layer, norm_layer)` (in = out, stride 1); the first
            block of a group, which changes the width or the resolution, is always a `WideBasicBlock`.
        norm_layer: builds every normalisation layer from a channel count (BatchNorm2d by default).
    """

    def __init__(
        self,
        num_classes: int = 10,
        depth: int = 34,
        widen_factor: int = 10,
        act_layer: type[nn.Module] = nn.ReLU,
        legacy_sub_block1: bool = False,
        in_channels: int = 3,
        block: Callable[..., nn.Module] = WideBasicBlock,
        norm_layer: NormLayer = nn.BatchNorm2d,
    ) -> None:
        super().__init__()
        if depth < 10 or (depth - 4) % 6:
            raise ConfigError(f"WideResNet depth must be 6n + 4 with n >= 1 (e.g. 28, 34), got {depth}")
        blocks_per_group = (depth - 4) // 6
        widths = (16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor)
        self.num_classes = num_classes
        self.conv1 = conv3x3(in_channels, widths[0], bias=False)

        def group(c_in: int, c_out: int, stride: int) -> WideGroup:
            first = WideBasicBlock(c_in, c_out, stride, act_layer, norm_layer)
            return WideGroup([first] + [block(c_out, c_out, 1, act_layer, norm_layer)
                                        for _ in range(blocks_per_group - 1)])

        self.block1 = group(widths[0], widths[1], 1)
        if legacy_sub_block1:
            self.sub_block1 = group(widths[0], widths[1], 1)
        self.block2 = group(widths[1], widths[2], 2)
        self.block3 = group(widths[2], widths[3], 2)
        self.bn1 = norm_layer(widths[3])
        self.relu = act_layer()
        self.num_features = widths[3]
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(widths[3], num_classes)
        wrn_init(self)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Maps (B, 3, H, W) images in [0, 1] to pooled (B, num_features) features."""
        out = self.block3(self.block2(self.block1(self.conv1(x))))
        return self.pool(self.relu(self.bn1(out))).flatten(1)


register_model("wrn34_10", WideResNet, ModelInfo(family="wide_resnet", paper=_PAPER, expected_params=46_160_474,
                                                 note="no sub_block1", label="WRN-34-10"), depth=34, widen_factor=10)
register_model("wrn28_10", WideResNet, ModelInfo(family="wide_resnet", paper=_PAPER, expected_params=36_479_194,
                                                 note="no sub_block1", label="WRN-28-10"), depth=28, widen_factor=10)
register_model("sat_wrn34_10", WideResNet, ModelInfo(family="wide_resnet", paper=_SAT_PAPER, expected_params=46_160_474,
                                                     note="WRN-34-10, SiLU", label="SAT-WRN-34-10"),
               depth=34, widen_factor=10, act_layer=nn.SiLU)
register_model("wrn_tiny", WideResNet, ModelInfo(family="wide_resnet", paper=_PAPER, note="tests: WRN-10-1", tiny=True),
               depth=10, widen_factor=1)
