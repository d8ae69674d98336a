"""DeepMind's wide ResNet (DMWideResNet): the network behind most of RobustBench's CIFAR leaders since 2020.

Papers: Gowal et al., "Uncovering the Limits of Adversarial Training against Norm-Bounded Adversarial Examples",
arXiv:2010.03593 (2020); Rebuffi et al., "Data Augmentation Can Improve Robustness", NeurIPS 2021; Wang et al.,
"Better Diffusion Models Further Improve Adversarial Training", ICML 2023; Bartoldson et al., "Adversarial Robustness
Limits via Scaling-Law and Human-Alignment Studies", ICML 2024.
Reference: DeepMind's `adversarial_robustness/pytorch/model_zoo.py`, as RobustBench ships it
(`robustbench/model_zoo/architectures/dm_wide_resnet.py`); facts in `shared/reference/`.

Layout: normalise the [0, 1] input with in-model mean/std; 3x3 stem conv 3→16; three groups of (depth − 4) / 6
pre-activation blocks of widths 16k/32k/64k (k = width), strides 1/2/2; BN + activation; 8x8 average pool; linear
`logits`. Block: where the width changes, act(BN(x)) feeds both the branch and a 1x1 strided shortcut conv;
otherwise the branch starts from act(BN(x)) and the shortcut is x. The first 3x3 conv pads by hand as
TensorFlow's SAME does (1 on every side at stride 1; 0 before and 1 after at stride 2), which at stride 2 samples
other pixels than PyTorch's symmetric padding; the published weights depend on it. SiLU (Swish) by default, as
every published checkpoint uses; ReLU as an option.

What we chose and why: the inference definition RobustBench ships keeps PyTorch's BN momentum (0.1) and
initialisation, which do not matter for loading weights; the code that trained the models matters for training
them. DeepMind's models were trained in Haiku with BN decay 0.99, and Wang et al.'s PyTorch copy
(`wideresnetwithswish.py` of DM-Improves-AT) uses BN momentum 0.01 and initialises convs N(0, 2/(k²·C_out)), BN
1/0 and linear biases 0: so do we (`bn_momentum` changes the momentum).

Counts for 10 classes: 28-10 36,479,194 (the same as WRN-28-10: only the padding differs); 34-10 46,160,474;
34-20 184,531,674; 70-16 266,796,506; 82-8 79,125,466; 94-16 365,915,610; 106-16 415,475,162.

Module names are the reference's (`init_conv`, `layer.0.block.0.batchnorm_0`, `batchnorm`, `logits`), so the
published checkpoints load strictly; mean and std are non-persistent buffers, absent from those checkpoints.
`DMBlock` also takes the two additions of the robust-principles WRN (`ra_wide_resnet.py`): a squeeze-excitation
gate and a BN momentum.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from dsnet.errors import ConfigError
from dsnet.models.atomic_blocks import OutputNormalized, register_block
from dsnet.models.base import ImageClassifier
from dsnet.models.layers import InputStatistics, activation_layer, normalize_input, register_input_normalization
from dsnet.models.registry import ModelInfo, register_model
from dsnet.models.wide_resnet import wrn_init

__all__ = ["same_padding", "TorchvisionSqueezeExcitation", "DMBlock", "DMGroup", "DMNetwork", "DMWideResNet"]

_PAPER = "Gowal et al., Uncovering the Limits of Adversarial Training, arXiv:2010.03593"


def same_padding(x: torch.Tensor, stride: int) -> torch.Tensor:
    """TensorFlow's SAME padding for a 3x3 conv: 1 on every side at stride 1, 0 before and 1 after at stride 2."""
    if stride == 1:
        return F.pad(x, (1, 1, 1, 1))
    if stride == 2:
        return F.pad(x, (0, 1, 0, 1))
    raise ConfigError(f"DMBlock supports strides 1 and 2, got {stride}")


class TorchvisionSqueezeExcitation(nn.Module):
    """x · σ(fc2(act(fc1(avgpool(x))))), with 1x1 convs named as torchvision's `SqueezeExcitation` names them
    (`fc1`, `fc2`, with biases), which the robust-principles checkpoints use.

    Args:
        channels: channels of the gated tensor.
        squeeze_channels: hidden width of the gate.
        act_layer: activation between the two convolutions (ReLU in the robust-principles WRN).
    """

    def __init__(self, channels: int, squeeze_channels: int, act_layer: type[nn.Module] = nn.ReLU) -> None:
        super().__init__()
        self.fc1 = nn.Conv2d(channels, squeeze_channels, 1)
        self.activation = act_layer()
        self.fc2 = nn.Conv2d(squeeze_channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = self.fc2(self.activation(self.fc1(x.mean((2, 3), keepdim=True))))
        return torch.sigmoid(scale) * x


class DMBlock(nn.Module):
    """DeepMind's pre-activation block; with `se_ratio`, the robust-principles block.

    Args:
        in_channels: input width.
        out_channels: output width; where it differs from the input, a 1x1 strided conv of act(BN(x)) is the
            shortcut.
        stride: 1 or 2, of the first 3x3 conv (SAME-padded by hand) and of the shortcut.
        act_layer: activation class.
        bn_momentum: momentum of both BNs (PyTorch's 0.1; the robust-principles WRN uses 0.01).
        se_ratio: with a value, a squeeze-excitation gate of width round(se_ratio · out) after the second conv.
        se_act_layer: activation inside the gate.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        stride: int = 1,
        act_layer: type[nn.Module] = nn.SiLU,
        bn_momentum: float = 0.1,
        se_ratio: float | None = None,
        se_act_layer: type[nn.Module] = nn.ReLU,
    ) -> None:
        super().__init__()
        if stride not in (1, 2):
            raise ConfigError(f"DMBlock supports strides 1 and 2, got {stride}")
        self.stride = stride
        self.batchnorm_0 = nn.BatchNorm2d(in_channels, momentum=bn_momentum)
        self.relu_0 = act_layer()
        self.conv_0 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=0, bias=False)
        self.batchnorm_1 = nn.BatchNorm2d(out_channels, momentum=bn_momentum)
        self.relu_1 = act_layer()
        self.conv_1 = nn.Conv2d(out_channels, out_channels, 3, stride=1, padding=1, bias=False)
        self.shortcut: nn.Module | None = None
        if in_channels != out_channels:
            self.shortcut = nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False)
        self.se: nn.Module | None = None
        if se_ratio:
            self.se = TorchvisionSqueezeExcitation(out_channels, int(round(se_ratio * out_channels)), se_act_layer)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pre = self.relu_0(self.batchnorm_0(x))
        out = self.conv_0(same_padding(pre, self.stride))
        out = self.conv_1(self.relu_1(self.batchnorm_1(out)))
        if self.se is not None:
            out = self.se(out)
        return (x if self.shortcut is None else self.shortcut(pre)) + out


class DMGroup(nn.Module):
    """A group of blocks, held in `.block` as in the reference so that state-dict keys match.

    Args:
        blocks: the blocks, applied in order.
    """

    def __init__(self, blocks: Sequence[nn.Module]) -> None:
        super().__init__()
        self.block = nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(x)


class DMNetwork(ImageClassifier):
    """The network of DeepMind's WRN and of the robust-principles WRN: in-model normalisation, a 3x3 stem, three
    stages of `DMBlock`s at strides 1/2/2, BN + activation, 8x8 average pooling, `logits`.

    Args:
        num_classes: classifier size.
        stem_width: width of the stem conv.
        depths: blocks per stage.
        widths: output width of each stage.
        act_layer: activation class.
        bn_momentum: momentum of every BN.
        se_ratio: a squeeze-excitation gate in every block (None: none).
        normalize: in-model input normalisation (`dsnet.models.layers.InputStatistics`).
        in_channels: input image channels.
    """

    head = "logits"

    def __init__(self, num_classes: int, stem_width: int, depths: Sequence[int], widths: Sequence[int],
                 act_layer: type[nn.Module], bn_momentum: float, se_ratio: float | None, normalize: InputStatistics,
                 in_channels: int) -> None:
        super().__init__()
        if len(depths) != 3 or len(widths) != 3 or min(depths) < 1:
            raise ConfigError(f"{type(self).__name__} takes three stage depths >= 1 and three widths, got "
                              f"{tuple(depths)} and {tuple(widths)}")
        channels = (stem_width, *widths)
        self.num_classes = num_classes
        self.num_features = channels[3]
        register_input_normalization(self, normalize, in_channels, num_classes)
        self.init_conv = nn.Conv2d(in_channels, stem_width, 3, padding=1, bias=False)
        self.layer = nn.Sequential(*(
            DMGroup([DMBlock(channels[g] if i == 0 else channels[g + 1], channels[g + 1], stride if i == 0 else 1,
                             act_layer, bn_momentum=bn_momentum, se_ratio=se_ratio) for i in range(depths[g])])
            for g, stride in enumerate((1, 2, 2))))
        self.batchnorm = nn.BatchNorm2d(channels[3], momentum=bn_momentum)
        self.relu = act_layer()
        self.logits = nn.Linear(channels[3], num_classes)
        wrn_init(self)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Maps (B, 3, 32, 32) images in [0, 1] to pooled (B, num_features) features."""
        out = self.layer(self.init_conv(normalize_input(x, self.mean, self.std)))
        return F.avg_pool2d(self.relu(self.batchnorm(out)), 8).flatten(1)


class DMWideResNet(DMNetwork):
    """DeepMind's wide ResNet for 32x32 inputs, normalising its own input.

    Args:
        num_classes: classifier size.
        depth: 6n + 4 layers (28, 34, 70, 82, 94, 106).
        width: k; group widths 16k, 32k, 64k.
        activation: "silu" (= "swish", every published model) or "relu" (the constructor default of DeepMind's
            code, which no published model uses).
        normalize: in-model input normalisation: "auto" (the CIFAR-100 constants for 100 classes, else CIFAR-10's, as
            every published model), "cifar10", "cifar100", a (mean, std) pair, or "none".
        bn_momentum: momentum of every BN (0.01, as the models were trained; PyTorch's default is 0.1).
        in_channels: input image channels.
    """

    def __init__(
        self,
        num_classes: int = 10,
        depth: int = 28,
        width: int = 10,
        activation: str = "silu",
        normalize: InputStatistics = "auto",
        bn_momentum: float = 0.01,
        in_channels: int = 3,
    ) -> None:
        if depth < 10 or (depth - 4) % 6:
            raise ConfigError(f"DMWideResNet depth must be 6n + 4 with n >= 1 (28, 34, 70, ...), got {depth}")
        blocks = (depth - 4) // 6
        super().__init__(num_classes, 16, (blocks,) * 3, (16 * width, 32 * width, 64 * width),
                         activation_layer(activation), bn_momentum, None, normalize, in_channels)


@register_block("dm_preact", "DM-PreAct")
def dm_preact_block(channels: int) -> nn.Module:
    """DS-Net's atomic block from DeepMind's: the pre-activation SiLU block C → C at stride 1 (BN momentum 0.01, as
    trained), then a BN on the output."""
    return OutputNormalized(DMBlock(channels, channels, 1, nn.SiLU, bn_momentum=0.01), channels, momentum=0.01)


def _variant(name: str, depth: int, width: int, params: int, paper: str = _PAPER) -> None:
    register_model(name, DMWideResNet, ModelInfo(family="dm_wide_resnet", paper=paper, expected_params=params,
                                                 label=f"DM-WRN-{depth}-{width}"), depth=depth, width=width)


_variant("dm_wrn28_10", 28, 10, 36_479_194)
_variant("dm_wrn34_10", 34, 10, 46_160_474)
_variant("dm_wrn34_20", 34, 20, 184_531_674)
_variant("dm_wrn70_16", 70, 16, 266_796_506)
_variant("dm_wrn82_8", 82, 8, 79_125_466, "Bartoldson et al., Adversarial Robustness Limits, ICML 2024")
_variant("dm_wrn94_16", 94, 16, 365_915_610, "Bartoldson et al., Adversarial Robustness Limits, ICML 2024")
_variant("dm_wrn106_16", 106, 16, 415_475_162, "Rebuffi et al., Data Augmentation Can Improve Robustness, NeurIPS 2021")
register_model("dm_wrn_tiny", DMWideResNet, ModelInfo(family="dm_wide_resnet", paper=_PAPER,
                                                      note="tests: DM-WRN-10-1", tiny=True), depth=10, width=1)
