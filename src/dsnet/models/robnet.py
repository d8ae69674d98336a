"""RobNet-large-v2: a robust architecture found by sampling DARTS-style cells under adversarial training.

Paper: Guo, Yang, Chen, Yan & Lin, "When NAS Meets Robustness: In Search of Robust Architectures against
Adversarial Attacks", CVPR 2020, arXiv:1911.10695. Official code: github.com/gmh14/RobNets (`models/
basic_model.py`, `models/basic_operations.py`, `architecture_code.py`), which the DS-Net authors copy
unchanged; facts in `shared/reference/training_and_baselines.md` §3.6.

A cell takes s0 (output of cell k−2) and s1 (output of cell k−1), preprocesses each to C channels
(ReLU-1x1 conv-BN; a factorized reduce on s0 when cell k−1 halved the resolution), and builds 4 nodes; node i
sums one operation on each of its 2 + i predecessors (s0, s1, node 0, ...). The cell outputs the
concatenation of its 4 nodes (4C channels). Each edge carries a two-bit code:
- '00' zero (no parameters), '01' separable conv, '10' identity (a factorized reduce on stride-2 edges),
  '11' residual separable conv (separable conv + identity / factorized reduce).
- Separable conv: ReLU, depthwise 3x3 (stride s), 1x1, BN, ReLU, depthwise 3x3, 1x1, BN; no biases.
- Factorized reduce: ReLU, then two stride-2 1x1 convs to C/2 channels each, the second on the input shifted
  by one pixel, concatenated, BN.
RobNet-large-v2 shares one genotype across all 33 cells (`ROBNET_LARGE_V2` below, in edge order:
node 0 ← s0:11 s1:11; node 1 ← s0:11 s1:11 n0:11; node 2 ← s0:01 s1:11 n0:01 n1:10; node 3 ← s0:11 s1:01 n0:01
n1:01 n2:11). Network: stem 3x3 conv 3→3C + BN (the only affine BN: every BN inside a cell is
`affine=False`), 33 cells with C = 64, cells 11 and 22 (⌊L/3⌋, ⌊2L/3⌋) reduce: C doubles and the edges from
s0/s1 take stride 2; global average pool; Linear(4·256 = 1024). 33,326,666 parameters for 10 classes, as the
reference code builds it; the paper's 33.42 M could not be reproduced (affine cell BNs would give 33.61 M).

What we chose: our own module names (reference checkpoints need a key map); a zero edge is skipped in the
sum instead of multiplying its input by 0 (the same output, except that it cannot turn an inf into a NaN);
one genotype shared by every cell (per-cell genotypes, as in RobNet-free, are not needed here).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn

from dsnet.errors import ConfigError
from dsnet.models.base import ImageClassifier
from dsnet.models.layers import conv1x1, conv3x3
from dsnet.models.registry import ModelInfo, register_model

__all__ = ["ROBNET_LARGE_V2", "SepConv", "FactorizedReduce", "ResSepConv", "RobNetCell", "RobNet"]

_PAPER = "Guo et al., When NAS Meets Robustness: In Search of Robust Architectures, CVPR 2020"

ROBNET_LARGE_V2 = ("11", "11", "11", "11", "11", "01", "11", "01", "10", "11", "01", "01", "01", "11")
OPERATION_CODES = ("00", "01", "10", "11")


class SepConv(nn.Module):
    """ReLU, dw3x3 (stride), 1x1, BN, ReLU, dw3x3, 1x1, BN; no biases, non-affine BNs.

    Args:
        channels: in and out width.
        stride: stride of the first depthwise conv.
    """

    def __init__(self, channels: int, stride: int = 1) -> None:
        super().__init__()
        self.op = nn.Sequential(
            nn.ReLU(),
            nn.Conv2d(channels, channels, 3, stride=stride, padding=1, groups=channels, bias=False),
            conv1x1(channels, channels),
            nn.BatchNorm2d(channels, affine=False),
            nn.ReLU(),
            nn.Conv2d(channels, channels, 3, padding=1, groups=channels, bias=False),
            conv1x1(channels, channels),
            nn.BatchNorm2d(channels, affine=False),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x)


class FactorizedReduce(nn.Module):
    """Halves the resolution: ReLU, concat(1x1_s2(x), 1x1_s2(x shifted by one pixel)), non-affine BN.

    Args:
        in_channels: input width.
        out_channels: output width (even).
    """

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        if out_channels % 2:
            raise ConfigError(f"FactorizedReduce needs an even output width, got {out_channels}")
        self.act = nn.ReLU()
        self.conv_1 = conv1x1(in_channels, out_channels // 2, stride=2)
        self.conv_2 = conv1x1(in_channels, out_channels // 2, stride=2)
        self.bn = nn.BatchNorm2d(out_channels, affine=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(x)
        return self.bn(torch.cat([self.conv_1(x), self.conv_2(x[:, :, 1:, 1:])], dim=1))


class ResSepConv(nn.Module):
    """Separable conv plus its shortcut: identity, or a factorized reduce on stride-2 edges.

    Args:
        channels: in and out width.
        stride: 1 or 2.
    """

    def __init__(self, channels: int, stride: int = 1) -> None:
        super().__init__()
        self.conv = SepConv(channels, stride)
        self.res: nn.Module = nn.Identity() if stride == 1 else FactorizedReduce(channels, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x) + self.res(x)


def _operation(code: str, channels: int, stride: int) -> nn.Module | None:
    """The module for one edge code; None for '00' (zero), whose edge is left out of the node's sum."""
    if code == "00":
        return None
    if code == "01":
        return SepConv(channels, stride)
    if code == "10":
        return nn.Identity() if stride == 1 else FactorizedReduce(channels, channels)
    return ResSepConv(channels, stride)


class _ReLUConvBN(nn.Sequential):
    """ReLU, 1x1 conv, non-affine BN: the preprocessing of a cell input."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(nn.ReLU(), conv1x1(in_channels, out_channels), nn.BatchNorm2d(out_channels, affine=False))


class RobNetCell(nn.Module):
    """A DARTS-style cell with `steps` nodes, one operation per edge, output = concat of the nodes.

    Args:
        genotype: one code per edge, in the order node 0 (2 edges), node 1 (3 edges), ...
        prev_prev_channels: width of s0.
        prev_channels: width of s1.
        channels: C, the width of every node.
        reduction: halve the resolution (stride 2 on the edges from s0 and s1).
        reduction_prev: the previous cell halved it, so s0 is reduced on the way in.
        steps: number of nodes.
    """

    def __init__(
        self,
        genotype: Sequence[str],
        prev_prev_channels: int,
        prev_channels: int,
        channels: int,
        reduction: bool,
        reduction_prev: bool,
        steps: int = 4,
    ) -> None:
        super().__init__()
        self.steps = steps
        self.preprocess0: nn.Module = (
            FactorizedReduce(prev_prev_channels, channels)
            if reduction_prev
            else _ReLUConvBN(prev_prev_channels, channels)
        )
        self.preprocess1 = _ReLUConvBN(prev_channels, channels)
        self.edges = nn.ModuleDict()
        self.inputs: list[list[int]] = []
        offset = 0
        for node in range(steps):
            used = []
            for source in range(2 + node):
                stride = 2 if reduction and source < 2 else 1
                operation = _operation(genotype[offset + source], channels, stride)
                if operation is not None:
                    self.edges[f"{node}_{source}"] = operation
                    used.append(source)
            if not used:
                raise ConfigError(f"node {node} of the cell has only zero edges; its output would have no shape")
            self.inputs.append(used)
            offset += 2 + node

    def forward(self, s0: torch.Tensor, s1: torch.Tensor) -> torch.Tensor:
        states = [self.preprocess0(s0), self.preprocess1(s1)]
        for node, sources in enumerate(self.inputs):
            total = self.edges[f"{node}_{sources[0]}"](states[sources[0]])
            for source in sources[1:]:
                total = total + self.edges[f"{node}_{source}"](states[source])
            states.append(total)
        return torch.cat(states[-self.steps :], dim=1)


class RobNet(ImageClassifier):
    """RobNet for 32x32 inputs: stem, `num_cells` cells sharing one genotype, global pool, linear.

    Args:
        num_classes: classifier size.
        genotype: 14 edge codes shared by all cells (for 4 nodes).
        width: C of the first cells (doubled at each reduction cell).
        num_cells: number of cells; cells ⌊L/3⌋ and ⌊2L/3⌋ are reduction cells.
        steps: nodes per cell.
        stem_multiplier: the stem outputs stem_multiplier·C channels.
        in_channels: input image channels.
    """

    head = "classifier"

    def __init__(
        self,
        num_classes: int = 10,
        genotype: Sequence[str] = ROBNET_LARGE_V2,
        width: int = 64,
        num_cells: int = 33,
        steps: int = 4,
        stem_multiplier: int = 3,
        in_channels: int = 3,
    ) -> None:
        super().__init__()
        num_edges = steps * (steps + 3) // 2
        if len(genotype) != num_edges or any(code not in OPERATION_CODES for code in genotype):
            raise ConfigError(
                f"a RobNet genotype for {steps} nodes needs {num_edges} codes from {OPERATION_CODES}, got {genotype}"
            )
        if num_cells < 3:
            raise ConfigError(f"RobNet needs at least 3 cells (two of them reduce), got {num_cells}")
        self.num_classes = num_classes
        self.genotype = tuple(genotype)
        stem_channels = stem_multiplier * width
        self.stem = nn.Sequential(conv3x3(in_channels, stem_channels, bias=False), nn.BatchNorm2d(stem_channels))
        prev_prev, prev, channels = stem_channels, stem_channels, width
        reduction_prev = False
        self.reduction_cells = (num_cells // 3, 2 * num_cells // 3)
        cells = []
        for index in range(num_cells):
            reduction = index in self.reduction_cells
            if reduction:
                channels *= 2
            cells.append(RobNetCell(genotype, prev_prev, prev, channels, reduction, reduction_prev, steps))
            reduction_prev = reduction
            prev_prev, prev = prev, steps * channels
        self.cells = nn.ModuleList(cells)
        self.num_features = prev
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(prev, num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Maps (B, 3, H, W) images in [0, 1] to pooled (B, num_features) features."""
        s0 = s1 = self.stem(x)
        for cell in self.cells:
            s0, s1 = s1, cell(s0, s1)
        return self.pool(s1).flatten(1)


register_model("robnet_large_v2", RobNet, ModelInfo(family="robnet", paper=_PAPER, expected_params=33_326_666,
                                                    note="C=64, 33 cells", label="RobNet-large-v2"),
               genotype=ROBNET_LARGE_V2, width=64, num_cells=33)
register_model("robnet_tiny", RobNet, ModelInfo(family="robnet", paper=_PAPER, note="tests: C=4, 3 cells", tiny=True),
               genotype=ROBNET_LARGE_V2, width=4, num_cells=3)
