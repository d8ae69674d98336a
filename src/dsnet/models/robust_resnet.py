"""RobustResNet and WRN-A: residual networks re-designed and compound-scaled for adversarial robustness.

Paper: Huang, Lu, Deb & Boddeti, "Revisiting Residual Networks for Adversarial Robustness", CVPR 2023,
arXiv:2212.11005.
Reference: `models/resnet.py` of github.com/zhichao-lu/robust-residual-network, and RobustBench's
`robust_resnet.py` (its WRN-A4 entry, Huang2022Revisiting_WRN-A4); facts in `shared/reference/`.

Layout: 3x3 stem conv 3→16; three stages of D1/D2/D3 pre-activation blocks at strides 1/2/2; BN + activation;
global average pool; linear `fc`. Stage widths follow the paper's compound scaling, channels (16, 16·W1, 32·W2,
64·W3). Two blocks:

- the robust residual block (`RobustResBlock`): a bottleneck with expansion 4. act(BN(x)) feeds a 1x1 strided
  projection shortcut where the shape changes; the raw x feeds a 1x1 conv to `scales` chunks of
  width = ⌊planes · base_width / 160⌋ · cardinality, then BN + act; each chunk but the last goes through a grouped
  3x3 conv (cardinality groups) + BN + act, at stride 1 with the previous chunk's output added (Res2Net's
  multi-scale split), at stride 2 independently, while the last chunk passes (average-pooled at stride 2); a 1x1 conv
  joins them to 4·planes; out = conv3 + shortcut + SE(BN(conv3)), with a squeeze-excitation gate (two bias-free
  linears, reduction `se_reduction`, ReLU inside). Published: scales 8, base width 10, cardinality 4, reduction 64.
- the pre-activation basic block (`PreActBasicBlock`): the WRN block, shortcut 1x1 of act(BN(x)) where the shape
  changes. WRN-A1..A4 are these blocks at the RobustResNet scalings.

Counts for 10 classes (published activation: SiLU): RobustResNet-A1 [14, 14, 7] / [5, 7, 3] 19,222,738;
A2 [17, 17, 8] / [7, 9, 4] 39,033,982; A3 [22, 22, 11] / [8, 11, 5] 75,856,698; A4 [27, 28, 13] / [10, 14, 6]
147,262,458; WRN-A4 147,291,738 (WRN-A1..A3 are `block="basic_block"` at the other scalings). Initialisation as the reference:
conv N(0, 2/(k²·C_out)), BN 1/0, linear bias 0.

What we chose and why:
- Activation: the reference's plain CIFAR-10 TRADES configs use ReLU, its "advanced" configs (generated data) and
  RobustBench's WRN-A4 SiLU, and the paper argues for smooth activations; SiLU is our default, `activation="relu"`
  the plain configs'.
- Block settings: the reference README and paper give scales 8, base width 10, cardinality 4, reduction 64, and
  the counts above (19.2 M for A1) are those; its YAML configs set none of them, so its training script would build
  the constructor defaults (scales 4, base width 64, cardinality 8, reduction 16: 144 M parameters for A1).
  We follow the paper.
- Input normalisation: none for RobustResNet (the reference trains on [0, 1] inputs); WRN-A4 normalises with the
  CIFAR-10 constants inside the model, as RobustBench's `pre_process=True` does. There they are persistent buffers
  `mu`/`sigma` that the published checkpoint lacks; here they are non-persistent, so that checkpoint loads strictly.
- The block runs act(bn1(x)) even where no projection shortcut uses it, as the reference does: bn1's running
  statistics then are the reference's, in the state dict as in the published checkpoints.
- The gate's hidden width is max(1, C // reduction): the same for every published size, and never an empty layer
  in the small copies our tests and DS-Net's atomic block build.
Module names are the reference's (`stem_conv`, `blocks.0.layer.0.conv2.3`, `se.fc.0`, `norm1`, `fc`).
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn

from dsnet.errors import ConfigError
from dsnet.models.atomic_blocks import OutputNormalized, register_block
from dsnet.models.base import ImageClassifier
from dsnet.models.layers import (
    InputStatistics,
    activation_layer,
    conv1x1,
    normalize_input,
    register_input_normalization,
)
from dsnet.models.registry import ModelInfo, register_model
from dsnet.models.wide_resnet import wrn_init

__all__ = ["ChannelGate", "RobustResBlock", "PreActBasicBlock", "RobustResNet", "BLOCK_TYPES"]

_PAPER = "Huang et al., Revisiting Residual Networks for Adversarial Robustness, CVPR 2023"


class ChannelGate(nn.Module):
    """Squeeze-excitation with bias-free linears: x · σ(W2 · ReLU(W1 · avgpool(x))), in `fc.0` / `fc.2` as the
    reference names them.

    Args:
        channels: channels of the gated tensor.
        reduction: hidden width = max(1, channels // reduction).
    """

    def __init__(self, channels: int, reduction: int = 64) -> None:
        super().__init__()
        hidden = max(1, channels // reduction)
        self.fc = nn.Sequential(nn.Linear(channels, hidden, bias=False), nn.ReLU(),
                                nn.Linear(hidden, channels, bias=False), nn.Sigmoid())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.fc(x.mean((2, 3)))[:, :, None, None]


class RobustResBlock(nn.Module):
    """The robust residual block (see the module docstring), `in_channels` → `out_channels` (default 4·planes).

    Args:
        in_channels: input width.
        planes: the bottleneck's nominal width; the chunk width and the default output width follow from it.
        stride: 1 or 2.
        act_layer: activation class.
        scales: number of chunks of the multi-scale split (1: a plain grouped bottleneck).
        base_width: chunk width per 160 planes, before the cardinality factor.
        cardinality: groups of each 3x3 conv (and the factor of the chunk width).
        se_reduction: reduction of the squeeze-excitation gate.
        out_channels: output width (4·planes in every published network; DS-Net's atomic block sets it to its
            input width).
    """

    expansion = 4

    def __init__(
        self,
        in_channels: int,
        planes: int,
        stride: int = 1,
        act_layer: type[nn.Module] = nn.SiLU,
        scales: int = 8,
        base_width: int = 10,
        cardinality: int = 4,
        se_reduction: int = 64,
        out_channels: int | None = None,
    ) -> None:
        super().__init__()
        if scales < 1 or cardinality < 1 or base_width < 1:
            raise ConfigError(f"RobustResBlock needs scales, base_width and cardinality >= 1, got {scales}, "
                              f"{base_width}, {cardinality}")
        out_channels = out_channels or planes * self.expansion
        width = max(1, math.floor(planes * (base_width / 160))) * cardinality
        self.stride = stride
        self.scales = scales
        self.act = act_layer()
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.conv1 = conv1x1(in_channels, width * scales)
        self.pool: nn.Module | None = nn.AvgPool2d(3, stride=stride, padding=1) if stride > 1 else None
        self.bn2 = nn.BatchNorm2d(width * scales)

        def grouped() -> nn.Conv2d:
            return nn.Conv2d(width, width, 3, stride=stride, padding=1, groups=cardinality, bias=False)

        if scales == 1:
            self.conv2: nn.Module = grouped()
            self.bn3: nn.Module = nn.BatchNorm2d(width)
        else:
            self.conv2 = nn.ModuleList(grouped() for _ in range(scales - 1))
            self.bn3 = nn.ModuleList(nn.BatchNorm2d(width) for _ in range(scales - 1))
        self.conv3 = conv1x1(width * scales, out_channels)
        self.se_bn = nn.BatchNorm2d(out_channels)
        self.se = ChannelGate(out_channels, se_reduction)
        self.shortcut: nn.Module | None = None
        if stride > 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(conv1x1(in_channels, out_channels, stride=stride))

    def _split(self, out: torch.Tensor) -> torch.Tensor:
        """The multi-scale part: chunks through grouped 3x3 convs, each added to the next at stride 1."""
        if self.scales == 1:
            return self.act(self.bn3(self.conv2(out)))
        chunks = torch.chunk(out, self.scales, 1)
        outputs: list[torch.Tensor] = []
        for s, (conv, bn) in enumerate(zip(self.conv2, self.bn3)):
            inp = chunks[s] if s == 0 or self.stride > 1 else chunks[s] + outputs[-1]
            outputs.append(self.act(bn(conv(inp))))
        outputs.append(chunks[-1] if self.pool is None else self.pool(chunks[-1]))
        return torch.cat(outputs, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pre = self.act(self.bn1(x))  # also where no shortcut uses it, so that bn1's statistics move as the reference's
        shortcut = x if self.shortcut is None else self.shortcut(pre)
        out = self.conv3(self._split(self.act(self.bn2(self.conv1(x)))))
        return out + shortcut + self.se(self.se_bn(out))


class PreActBasicBlock(nn.Module):
    """The WRN basic block with the reference's names: conv2(act(bn2(conv1(act(bn1(x)))))) + shortcut.

    Args:
        in_channels: input width.
        planes: output width.
        stride: stride of the first conv and of the shortcut.
        act_layer: activation class.
    """

    expansion = 1

    def __init__(self, in_channels: int, planes: int, stride: int = 1, act_layer: type[nn.Module] = nn.SiLU,
                 **_: object) -> None:
        super().__init__()
        self.act = act_layer()
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.conv1 = nn.Conv2d(in_channels, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.shortcut: nn.Module | None = None
        if stride != 1 or in_channels != planes:
            self.shortcut = nn.Sequential(conv1x1(in_channels, planes, stride=stride))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pre = self.act(self.bn1(x))
        shortcut = x if self.shortcut is None else self.shortcut(pre)
        return self.conv2(self.act(self.bn2(self.conv1(pre)))) + shortcut


@register_block("robust_residual", "RobustRes")
def robust_residual_block(channels: int) -> nn.Module:
    """DS-Net's atomic block from the robust residual block: C → C at stride 1 with the published settings (planes
    C/4, rounded up, so the bottleneck keeps its 4x expansion; at least one channel per group and scale), SiLU, then
    a BN on the output."""
    block = RobustResBlock(channels, planes=-(-channels // 4), stride=1, act_layer=nn.SiLU, out_channels=channels)
    return OutputNormalized(block, channels)


BLOCK_TYPES: dict[str, type[nn.Module]] = {"robust_res_block": RobustResBlock, "basic_block": PreActBasicBlock}
"""The block of each stage, by the reference's names."""


class _Stage(nn.Module):
    """The blocks of one stage, in `.layer` as the reference's `NetworkBlock` holds them."""

    def __init__(self, blocks: list[nn.Module]) -> None:
        super().__init__()
        self.layer = nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x)


class RobustResNet(ImageClassifier):
    """RobustResNet (robust residual blocks) or WRN-A (basic blocks) for 32x32 inputs.

    Args:
        num_classes: classifier size.
        depths: blocks per stage (D1, D2, D3).
        width_multipliers: (W1, W2, W3); stage widths 16·W1, 32·W2, 64·W3 (×4 at the output of a robust block).
        block: "robust_res_block" or "basic_block".
        activation: "silu" (the paper's and RobustBench's) or "relu" (the reference's plain CIFAR-10 configs).
        scales: chunks of the robust block's multi-scale split.
        base_width: the robust block's chunk width per 160 planes.
        cardinality: groups of the robust block's 3x3 convs.
        se_reduction: reduction of the robust block's gate.
        normalize: in-model input normalisation (None: none; "auto": CIFAR-100's constants for 100 classes,
            else CIFAR-10's; "cifar10", "cifar100", or a (mean, std) pair).
        in_channels: input image channels.
    """

    def __init__(
        self,
        num_classes: int = 10,
        depths: tuple[int, int, int] = (14, 14, 7),
        width_multipliers: tuple[int, int, int] = (5, 7, 3),
        block: str = "robust_res_block",
        activation: str = "silu",
        scales: int = 8,
        base_width: int = 10,
        cardinality: int = 4,
        se_reduction: int = 64,
        normalize: InputStatistics = None,
        in_channels: int = 3,
    ) -> None:
        super().__init__()
        if block not in BLOCK_TYPES:
            raise ConfigError(f"block must be one of {', '.join(BLOCK_TYPES)}, got {block!r}")
        if len(depths) != 3 or len(width_multipliers) != 3 or min(depths) < 1 or min(width_multipliers) < 1:
            raise ConfigError(f"RobustResNet takes three depths and three width multipliers >= 1, got {depths} and "
                              f"{width_multipliers}")
        act_layer = activation_layer(activation)
        block_class = BLOCK_TYPES[block]
        options = dict(scales=scales, base_width=base_width, cardinality=cardinality, se_reduction=se_reduction)
        planes = [16 * width_multipliers[0], 32 * width_multipliers[1], 64 * width_multipliers[2]]
        self.num_classes = num_classes
        register_input_normalization(self, normalize, in_channels, num_classes)
        self.stem_conv = nn.Conv2d(in_channels, 16, 3, padding=1, bias=False)
        width = 16
        stages = []
        for depth, plane, stride in zip(depths, planes, (1, 2, 2)):
            blocks = []
            for i in range(depth):
                blocks.append(block_class(width, plane, stride if i == 0 else 1, act_layer, **options))
                width = plane * block_class.expansion
            stages.append(_Stage(blocks))
        self.blocks = nn.ModuleList(stages)
        self.norm1 = nn.BatchNorm2d(width)
        self.act1 = act_layer()
        self.num_features = width
        self.fc = nn.Linear(width, num_classes)
        wrn_init(self)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Maps (B, 3, H, W) images in [0, 1] to pooled (B, num_features) features."""
        out = self.stem_conv(normalize_input(x, self.mean, self.std))
        for stage in self.blocks:
            out = stage(out)
        return self.act1(self.norm1(out)).mean((2, 3))


_SCALINGS = {"a1": ((14, 14, 7), (5, 7, 3)), "a2": ((17, 17, 8), (7, 9, 4)),
             "a3": ((22, 22, 11), (8, 11, 5)), "a4": ((27, 28, 13), (10, 14, 6))}
_RRN_PARAMS = {"a1": 19_222_738, "a2": 39_033_982, "a3": 75_856_698, "a4": 147_262_458}

for _key, (_depths, _widths) in _SCALINGS.items():
    register_model(f"rrn_{_key}", RobustResNet,
                   ModelInfo(family="robust_resnet", paper=_PAPER, expected_params=_RRN_PARAMS[_key],
                             label=f"RobustResNet-{_key.upper()}"),
                   depths=_depths, width_multipliers=_widths)
register_model("wrn_a4", RobustResNet,
               ModelInfo(family="robust_resnet", paper=_PAPER, expected_params=147_291_738, label="WRN-A4",
                         note="basic blocks at the A4 scaling; CIFAR-10 input normalisation inside, as RobustBench's"),
               depths=_SCALINGS["a4"][0], width_multipliers=_SCALINGS["a4"][1], block="basic_block",
               normalize="auto")
register_model("rrn_tiny", RobustResNet, ModelInfo(family="robust_resnet", paper=_PAPER, tiny=True,
                                                   note="tests: depths 2/1/1, multipliers 1, reduction 16"),
               depths=(2, 1, 1), width_multipliers=(1, 1, 1), se_reduction=16)
