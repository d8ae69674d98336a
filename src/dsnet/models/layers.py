"""Small layers shared by several model families."""

from __future__ import annotations

import torch
import torch.nn as nn

__all__ = ["conv3x3", "conv1x1", "SqueezeExcite", "drop_connect"]


def conv3x3(in_channels: int, out_channels: int, stride: int = 1, bias: bool = True) -> nn.Conv2d:
    """3x3 convolution with padding 1. Biases are on by default, as in the DS-Net and AdaRK code."""
    return nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=bias)


def conv1x1(in_channels: int, out_channels: int, stride: int = 1, bias: bool = False) -> nn.Conv2d:
    """1x1 convolution, no bias by default (it is followed by BN everywhere we use it)."""
    return nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=bias)


class SqueezeExcite(nn.Module):
    """Squeeze-and-excitation gate: x * sigmoid(W2 · act(W1 · avgpool(x))), both 1x1 convs with bias.

    Args:
        channels: channels of the gated tensor.
        squeeze_channels: hidden width of the gate.
        act_layer: activation between the two convolutions (Swish in MBConv).
    """

    def __init__(self, channels: int, squeeze_channels: int, act_layer: type[nn.Module] = nn.SiLU) -> None:
        super().__init__()
        self.reduce = nn.Conv2d(channels, squeeze_channels, 1, bias=True)
        self.act = act_layer()
        self.expand = nn.Conv2d(squeeze_channels, channels, 1, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate = self.expand(self.act(self.reduce(x.mean((2, 3), keepdim=True))))
        return x * torch.sigmoid(gate)


def drop_connect(x: torch.Tensor, drop_rate: float, training: bool) -> torch.Tensor:
    """Per-example stochastic depth: zero a whole branch with probability `drop_rate`, rescale the rest.

    Only active in training mode, so eval mode stays deterministic (SPEC §1).
    """
    if not training or drop_rate <= 0.0:
        return x
    keep = 1.0 - drop_rate
    mask = torch.rand((x.shape[0],) + (1,) * (x.dim() - 1), device=x.device, dtype=x.dtype) < keep
    return x * mask.to(x.dtype) / keep
