"""Small layers shared by several model families, and the names recipes use for activations and input statistics."""

from __future__ import annotations

import torch
import torch.nn as nn

__all__ = ["conv3x3", "conv1x1", "SqueezeExcite", "drop_connect", "ACTIVATIONS", "activation_layer",
           "INPUT_STATISTICS", "InputStatistics", "register_input_normalization", "normalize_input"]

ACTIVATIONS: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "silu": nn.SiLU, "swish": nn.SiLU}
"""Activations by the name a recipe gives. Swish is SiLU: DeepMind's code computes x·σ(x) with a hand-written
autograd function whose gradient is SiLU's, so one class serves both names."""

INPUT_STATISTICS: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2471, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
}
"""Per-channel (mean, std) that the published robust models normalise their [0, 1] input with, inside the model
(the constants of DeepMind's, RobustBench's and the robust-principles code)."""

InputStatistics = str | tuple[tuple[float, ...], tuple[float, ...]] | None
"""A model's in-model input normalisation: "auto" (by the class count), a name in `INPUT_STATISTICS`, a (mean, std)
pair, or "none" (or None, where a constructor is called directly) for none."""


def activation_layer(name: str) -> type[nn.Module]:
    """The activation class a recipe names ("relu", "silu" or "swish", any case).

    Raises:
        ConfigError: an unknown name; the message lists the known ones.
    """
    from dsnet.errors import ConfigError

    if not isinstance(name, str) or name.lower() not in ACTIVATIONS:
        raise ConfigError(f"activation must be one of {', '.join(ACTIVATIONS)}, got {name!r}")
    return ACTIVATIONS[name.lower()]


def register_input_normalization(module: nn.Module, statistics: InputStatistics, in_channels: int = 3,
                                 num_classes: int | None = None) -> None:
    """Gives `module` the buffers `mean` and `std` (C, 1, 1) of `statistics`, or None for both.

    The buffers are not persistent, as in DeepMind's code: they are constants of the architecture, not weights, so
    they stay out of the state dict and the published checkpoints (which lack them) load strictly. "auto" picks the
    CIFAR-100 constants for a 100-class model and the CIFAR-10 ones otherwise, as every published model of these
    families does, so that `--model dm_wrn28_10 --dataset cifar100` normalises as the CIFAR-100 checkpoints expect.

    Raises:
        ConfigError: an unknown name, or a pair whose lengths do not match the channels, or a std that is not
            positive.
    """
    from dsnet.errors import ConfigError

    if statistics is None or statistics == "none":
        module.mean = module.std = None
        return
    if statistics == "auto":
        statistics = "cifar100" if num_classes == 100 else "cifar10"
    if isinstance(statistics, str):
        if statistics.lower() not in INPUT_STATISTICS:
            raise ConfigError(f"normalize must be auto, {', '.join(INPUT_STATISTICS)}, none or a [mean, std] "
                              f"pair, got {statistics!r}")
        mean, std = INPUT_STATISTICS[statistics.lower()]
    else:
        try:
            mean, std = (tuple(float(v) for v in part) for part in statistics)
        except (TypeError, ValueError):
            raise ConfigError(f"normalize must be a dataset name or a [mean, std] pair of {in_channels} numbers "
                              f"each, got {statistics!r}") from None
    if len(mean) != in_channels or len(std) != in_channels or min(std) <= 0:
        raise ConfigError(f"normalize needs {in_channels} means and {in_channels} positive stds, got {statistics!r}")
    module.register_buffer("mean", torch.tensor(mean).view(in_channels, 1, 1), persistent=False)
    module.register_buffer("std", torch.tensor(std).view(in_channels, 1, 1), persistent=False)


def normalize_input(x: torch.Tensor, mean: torch.Tensor | None, std: torch.Tensor | None) -> torch.Tensor:
    """(x - mean) / std, or x where the model has no in-model normalisation."""
    return x if mean is None else (x - mean) / std


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
