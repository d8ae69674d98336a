"""CIFAR ResNet with bottleneck blocks: ResNet-50, ResNet-62, and SAT-ResNet-50 (Swish instead of ReLU).

Papers: He, Zhang, Ren & Sun, "Deep Residual Learning for Image Recognition", CVPR 2016, arXiv:1512.03385.
Xie, Tan, Gong, Yuille & Le, "Smooth Adversarial Training", arXiv:2006.14536 (SAT: every ReLU becomes a
smooth activation; we use SiLU/Swish as the DS-Net paper's SAT baselines do).
Reference: the CIFAR ResNet the DS-Net authors use (github.com/d12306/dsnet `model/resnet.py`, itself the
widely copied kuangliu/pytorch-cifar definition; facts in `shared/reference/training_and_baselines.md` §3.1).

Layout: 3x3 stem conv 3→64 (no bias) + BN + act, no max-pool; four stages of bottleneck blocks with widths
64/128/256/512 (outputs ×4), the first block of stages 2-4 strided on its 3x3 conv; global average pool;
linear. Post-activation blocks: 1x1-BN-act, 3x3-BN-act, 1x1-BN, plus the shortcut (identity, or 1x1 strided
conv + BN where the shape changes), then act.

What we chose and why:
- Module names follow the reference (`conv1`, `bn1`, `layer1.0.shortcut.0`, `linear`), so checkpoints of
  that code load unchanged.
- The head pools globally instead of with a fixed 4x4 window: the same number for 32x32 inputs, and other
  input sizes still work.
- Activations are modules built from `act_layer`, so SAT swaps every one of them (stem, the two inner ones
  and the post-addition one) and a test can check that no ReLU is left.
- ResNet-62 (the DS-Net paper's Table 1) has no public definition. A bottleneck network has depth
  3·Σblocks + 2, so 62 layers means 20 blocks; we take [3, 4, 10, 3], growing the third stage as ResNet-101
  and ResNet-152 do ([3, 4, 23, 3], [3, 8, 36, 3]). 27,989,578 parameters for 10 classes.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn

from dsnet.models.base import ImageClassifier
from dsnet.models.layers import conv1x1, conv3x3
from dsnet.models.registry import ModelInfo, register_model

__all__ = ["Bottleneck", "ResNet"]

_PAPER = "He et al., Deep Residual Learning for Image Recognition, CVPR 2016"
_SAT_PAPER = "Xie et al., Smooth Adversarial Training, arXiv:2006.14536"


class Bottleneck(nn.Module):
    """Post-activation bottleneck: act(BN(1x1(act(BN(3x3(act(BN(1x1(x)))))))) + shortcut(x)).

    Args:
        in_channels: input width.
        planes: inner width; the output has `expansion * planes` channels.
        stride: stride of the 3x3 conv (and of the projection shortcut).
        act_layer: activation class (nn.ReLU, or nn.SiLU for SAT).
    """

    expansion = 4

    def __init__(self, in_channels: int, planes: int, stride: int = 1, act_layer: type[nn.Module] = nn.ReLU) -> None:
        super().__init__()
        out_channels = self.expansion * planes
        self.conv1 = conv1x1(in_channels, planes)
        self.bn1 = nn.BatchNorm2d(planes)
        self.act1 = act_layer()
        self.conv2 = conv3x3(planes, planes, stride=stride, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.act2 = act_layer()
        self.conv3 = conv1x1(planes, out_channels)
        self.bn3 = nn.BatchNorm2d(out_channels)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_channels != out_channels:
            projection = conv1x1(in_channels, out_channels, stride=stride)
            self.shortcut = nn.Sequential(projection, nn.BatchNorm2d(out_channels))
        self.act3 = act_layer()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.act1(self.bn1(self.conv1(x)))
        out = self.act2(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.act3(out + self.shortcut(x))


class ResNet(ImageClassifier):
    """Bottleneck ResNet for 32x32 inputs.

    Args:
        num_classes: classifier size.
        layers: blocks per stage ((3, 4, 6, 3) for ResNet-50).
        width: inner width of the first stage; stages use width·(1, 2, 4, 8) and the stem uses `width`.
        act_layer: activation class used everywhere (nn.ReLU; nn.SiLU for SAT).
        in_channels: input image channels.
    """

    head = "linear"

    def __init__(
        self,
        num_classes: int = 10,
        layers: Sequence[int] = (3, 4, 6, 3),
        width: int = 64,
        act_layer: type[nn.Module] = nn.ReLU,
        in_channels: int = 3,
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.conv1 = conv3x3(in_channels, width, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.act1 = act_layer()
        channels = width
        for index, num_blocks in enumerate(layers):
            planes = width * 2**index
            blocks = []
            for block_index in range(num_blocks):
                stride = 2 if index > 0 and block_index == 0 else 1
                blocks.append(Bottleneck(channels, planes, stride, act_layer))
                channels = planes * Bottleneck.expansion
            self.add_module(f"layer{index + 1}", nn.Sequential(*blocks))
        self.num_stages = len(layers)
        self.num_features = channels
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.linear = nn.Linear(channels, num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Maps (B, 3, H, W) images in [0, 1] to pooled (B, num_features) features."""
        out = self.act1(self.bn1(self.conv1(x)))
        for index in range(self.num_stages):
            out = getattr(self, f"layer{index + 1}")(out)
        return self.pool(out).flatten(1)


register_model("resnet50", ResNet, ModelInfo(family="resnet", paper=_PAPER, expected_params=23_520_842,
                                             note="bottleneck [3,4,6,3]", label="ResNet-50"), layers=(3, 4, 6, 3))
register_model("resnet62", ResNet, ModelInfo(family="resnet", paper=_PAPER, expected_params=27_989_578,
                                             note="our choice: bottleneck [3,4,10,3]", label="ResNet-62"),
               layers=(3, 4, 10, 3))
register_model("sat_resnet50", ResNet, ModelInfo(family="resnet", paper=_SAT_PAPER, expected_params=23_520_842,
                                                 note="ResNet-50, SiLU", label="SAT-ResNet-50"),
               layers=(3, 4, 6, 3), act_layer=nn.SiLU)
register_model("resnet_tiny", ResNet, ModelInfo(family="resnet", paper=_PAPER, note="tests: [1,1,1,1], width 4",
                                                tiny=True), layers=(1, 1, 1, 1), width=4)
