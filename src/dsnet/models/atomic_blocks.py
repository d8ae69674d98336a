"""DS-Net's atomic blocks and the registry that lets users add their own.

Every atomic block maps (B, C, H, W) to (B, C, H, W): a robust module sums the outputs of its blocks, so
in and out widths must agree. Each block is built by calling its registered constructor with the channel
count: `BLOCKS.get("residual")(channels)`. A user block only needs that signature:

    from dsnet.models.atomic_blocks import register_block

    @register_block("my_block")
    class MyBlock(nn.Module):
        def __init__(self, channels: int) -> None: ...

Besides the paper's five blocks, the blocks of today's robust architectures are registered by their families'
files: `robust_residual` (RobustResNet's, `robust_resnet.py`), `dm_preact` (DeepMind's pre-activation SiLU block,
`dm_wide_resnet.py`) and `ra_block` (the robust-principles block, `ra_wide_resnet.py`). Each is the published
block at C → C and stride 1 with a BN on its output (`OutputNormalized`), as the authors made the residual block
atomic: BN(F(x) + x).

The definitions follow the authors' code (Du et al., ICML 2021, github.com/d12306/dsnet; see
`shared/reference/dsnet_reference.md` §2-3): pre-activation conv units with conv biases, and a BN on the
output of every block. Two deliberate changes of computation, neither of which changes a number: Ada-RK computes
F(x) once for its output and gradient (the authors compute it twice), and the dense block sums instead of
stacking before it averages.

BatchNorm running statistics are another matter: they are what an eval-mode model normalises with, so how often
and on what each BN is updated in training decides the trained model. In the authors' code Ada-RK's branch F
runs on x, x, x1 (in that order) per training forward, and the reduction block applies its first BN to x twice.
`bn_updates="authors"` (the default) reproduces those updates exactly, with extra no-grad, train-mode passes that
add no gradient path (an Ada-RK training forward costs one more conv-unit pass, about a third of the block);
`bn_updates="once"` updates every BN once per forward (x, x1 for Ada-RK's branch), a cheaper and different
model. Outputs and gradients of a forward are the same either way; only the running statistics differ.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from dsnet.models.layers import SqueezeExcite, conv1x1, conv3x3, drop_connect
from dsnet.registry import Registry

__all__ = [
    "BLOCKS",
    "BN_UPDATES",
    "register_block",
    "block_label",
    "set_bn_updates",
    "ConvUnit",
    "ResidualBlock",
    "MBConvBlock",
    "DenseBlock",
    "AdaRKBlock",
    "ReductionBlock",
    "OutputNormalized",
]

BLOCKS: Registry[Callable[[int], nn.Module]] = Registry(
    "atomic block", hint="see dsnet.models.atomic_blocks.BLOCKS.names()", package="dsnet.models",
    order=("residual", "mbconv", "dense", "ada_rk", "conv"))

BN_UPDATES = ("authors", "once")
"""How often BN running statistics are updated per training forward (see the module docstring)."""


def set_bn_updates(model: nn.Module, mode: str) -> None:
    """Sets the BN-statistics update mode of every block in `model` that has one (Ada-RK, reduction blocks).

    Raises:
        ConfigError: `mode` is not in `BN_UPDATES`.
    """
    from dsnet.errors import ConfigError

    if mode not in BN_UPDATES:
        raise ConfigError(f"bn_updates must be one of {', '.join(BN_UPDATES)}, got {mode!r}")
    for module in model.modules():
        if hasattr(module, "bn_updates"):
            module.bn_updates = mode


def register_block(name: str, label: str | None = None) -> Callable[[Callable[[int], nn.Module]], Callable[[int], nn.Module]]:
    """Registers a block constructor `cls(channels)` under `name` so DS-Net can use it by name; `label` is how
    tables and plots name it (default: the name)."""
    return BLOCKS.register(name, meta=label or name)


def block_label(name: str) -> str:
    """The display name of a registered block ("Ada-RK" for `ada_rk`); an unknown name is shown as it is."""
    return BLOCKS.meta(name) if name in BLOCKS else name


class ConvUnit(nn.Module):
    """F(x) = conv3x3(ReLU(BN(conv3x3(ReLU(BN(x)))))): the pre-activation residual branch ("conv block").

    Registered as the plain `conv` block (no shortcut). Parameters: 18C² + 6C.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv1 = conv3x3(channels, channels)
        self.bn2 = nn.BatchNorm2d(channels)
        self.conv2 = conv3x3(channels, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(F.relu(self.bn1(x)))
        return self.conv2(F.relu(self.bn2(out)))


register_block("conv", "Conv")(ConvUnit)


@register_block("residual", "Residual")
class ResidualBlock(nn.Module):
    """y = BN(F(x) + x): a pre-activation residual block with an extra BN on the sum. Params 18C² + 8C."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.branch = ConvUnit(channels)
        self.bn_out = nn.BatchNorm2d(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn_out(self.branch(x) + x)


@register_block("mbconv", "MBConv")
class MBConvBlock(nn.Module):
    """Mobile inverted bottleneck with squeeze-excitation and Swish (EfficientNet), the "search-based" block.

    Branch G: 1x1 expand C→eC, BN, Swish; depthwise 3x3, BN, Swish; SE gate of width max(1, ⌊C/4⌋)
    (from the input width, EfficientNet style); 1x1 project eC→C, BN. Output BN(x + DropConnect(G(x))),
    drop-connect only in training. Params 4C² + 4C·r + r + 32C for expansion 2.

    Args:
        channels: C, in and out width.
        expansion: hidden width factor e (the authors use 2; EfficientNet uses 6).
        se_ratio: SE width as a fraction of C.
        drop_connect_rate: probability of dropping the branch per example in training.
    """

    def __init__(
        self, channels: int, expansion: int = 2, se_ratio: float = 0.25, drop_connect_rate: float = 0.2
    ) -> None:
        super().__init__()
        hidden = channels * expansion
        self.drop_connect_rate = drop_connect_rate
        self.expand = nn.Sequential(conv1x1(channels, hidden), nn.BatchNorm2d(hidden), nn.SiLU())
        self.depthwise = nn.Sequential(
            nn.Conv2d(hidden, hidden, 3, padding=1, groups=hidden, bias=False), nn.BatchNorm2d(hidden), nn.SiLU()
        )
        self.se = SqueezeExcite(hidden, max(1, int(channels * se_ratio)))
        self.project = nn.Sequential(conv1x1(hidden, channels), nn.BatchNorm2d(channels))
        self.bn_out = nn.BatchNorm2d(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branch = self.project(self.se(self.depthwise(self.expand(x))))
        return self.bn_out(x + drop_connect(branch, self.drop_connect_rate, self.training))


class _DenseLayer(nn.Module):
    """BN, ReLU, 1x1 conv to bottleneck width, BN, ReLU, 3x3 conv to the growth rate (no biases)."""

    def __init__(self, in_channels: int, bottleneck: int, growth: int) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.conv1 = conv1x1(in_channels, bottleneck)
        self.bn2 = nn.BatchNorm2d(bottleneck)
        self.conv2 = conv3x3(bottleneck, growth, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(F.relu(self.bn2(self.conv1(F.relu(self.bn1(x))))))


@register_block("dense", "Dense")
class DenseBlock(nn.Module):
    """DenseNet-BC block whose output averages its features instead of concatenating them.

    Layer ℓ sees concat[x, f1, ..., f_{ℓ-1}] and adds C channels (growth rate = C, bottleneck 4C). The
    output BN((x + f1 + ... + fL) / (L + 1)) keeps C channels. The authors stack the tensors and take the
    mean; a running sum is the same number with less memory. Params 84C² + 24C for two layers.
    """

    def __init__(self, channels: int, num_layers: int = 2, bottleneck_factor: int = 4) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            _DenseLayer(channels * (i + 1), bottleneck_factor * channels, channels) for i in range(num_layers)
        )
        self.bn_out = nn.BatchNorm2d(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = [x]
        total = x
        for layer in self.layers:
            new = layer(torch.cat(features, 1))
            features.append(new)
            total = total + new
        return self.bn_out(total / len(features))


@register_block("ada_rk", "Ada-RK")
class AdaRKBlock(nn.Module):
    """Adaptive two-stage Runge–Kutta block (Kim et al., ECCV 2020) with learnable coefficients.

    With c = σ(b10), α = σ(a21) and one conv unit F:
        x1  = x + c·F(x)
        out = (1 - α)·x + (1 - 1/(2c) - α·c)·F(x) + α·x1 + (1/(2c))·F(x1),   y = BN(out).
    α cancels algebraically (out = x + (1 - 1/(2c))·F(x) + F(x1)/(2c)), so `a21` receives a zero gradient;
    we keep it so that parameter counts and checkpoints match the authors'. F(x) is computed once for the output.
    Params 18C² + 8C + 2.

    Attributes:
        bn_updates: "authors" (default): in training, F's BNs are updated on x, x, x1 as in the authors' code,
            which evaluates F(x) twice; the second F(x) is a no-grad pass that only updates statistics (in
            train mode BN normalises with the batch's own statistics, so its output equals the first).
            "once": x, x1.
    """

    def __init__(self, channels: int, a21: float = 0.25, b10: float = 1.0) -> None:
        super().__init__()
        self.branch = ConvUnit(channels)
        self.a21 = nn.Parameter(torch.tensor(float(a21)))
        self.b10 = nn.Parameter(torch.tensor(float(b10)))
        self.bn_out = nn.BatchNorm2d(channels)
        self.bn_updates = "authors"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        alpha = torch.sigmoid(self.a21)
        c = torch.sigmoid(self.b10)
        fx = self.branch(x)
        if self.training and self.bn_updates == "authors":
            with torch.no_grad():
                self.branch(x)  # the authors' second F(x): BN statistics only, in their order x, x, x1
        x1 = x + c * fx
        half_inv_c = 0.5 / c
        out = (1 - alpha) * x + (1 - half_inv_c - alpha * c) * fx + alpha * x1 + half_inv_c * self.branch(x1)
        return self.bn_out(out)


class ReductionBlock(nn.Module):
    """Pre-activation residual block that changes width and halves the resolution (not an atomic block).

    shortcut = BN(conv1x1_s2(ReLU(BN1(x)))), branch = conv3x3(ReLU(BN2(conv3x3_s2(ReLU(BN1(x)))))),
    y = BN(branch + shortcut). BN1 feeds both paths. Params 10·Cin·Cout + 9·Cout² + 2·Cin + 8·Cout.

    Attributes:
        bn_updates: "authors" (default): in training, BN1 is updated twice per forward, as the authors' code
            applies it once per path (a no-grad pass adds the second update); "once": one update.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 2) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.conv1 = conv3x3(in_channels, out_channels, stride=stride)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.conv2 = conv3x3(out_channels, out_channels)
        self.shortcut = nn.Sequential(conv1x1(in_channels, out_channels, stride=stride), nn.BatchNorm2d(out_channels))
        self.bn_out = nn.BatchNorm2d(out_channels)
        self.bn_updates = "authors"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pre = F.relu(self.bn1(x))
        if self.training and self.bn_updates == "authors":
            with torch.no_grad():
                self.bn1(x)  # the authors apply BN1 once per path: a second statistics update on the same x
        branch = self.conv2(F.relu(self.bn2(self.conv1(pre))))
        return self.bn_out(branch + self.shortcut(pre))


class OutputNormalized(nn.Module):
    """y = BN(block(x)): a published C → C block made atomic the way the authors made the residual block.

    Args:
        block: the block, mapping (B, C, H, W) to (B, C, H, W).
        channels: C.
        momentum: the output BN's momentum (the block's own, for blocks trained with another than PyTorch's 0.1).
    """

    def __init__(self, block: nn.Module, channels: int, momentum: float = 0.1) -> None:
        super().__init__()
        self.block = block
        self.bn_out = nn.BatchNorm2d(channels, momentum=momentum)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn_out(self.block(x))
