"""The robust-principles wide ResNet (RaWideResNet, "RaWRN"): DeepMind's WRN rebuilt by three design principles.

Paper: Peng, Xu, Cornelius, Hull, Li, Duggal, Phute, Martin & Chau, "Robust Principles: Architectural Design
Principles for Adversarially Robust CNNs", BMVC 2023, arXiv:2308.16258.
Reference: `robustarch_wide_resnet.py` of RobustBench (`NormalizedWideResNet`, built by `get_model("ra_wrn70_16")`),
adapted there from github.com/poloclub/robust-principles; facts in `shared/reference/`.

Layout: DeepMind's WRN (`dm_wide_resnet.DMNetwork`, the network both are) with the paper's changes: a wider stem (96), stage depths [30, 31, 10]
and widths [216, 432, 864] instead of 22/22/22 and 256/512/1024 (depth and width redistributed at about the same
parameter budget), a squeeze-excitation gate of width round(0.25 · out) with ReLU inside after each block's second
conv, SiLU elsewhere, and BN momentum 0.01 everywhere. Initialisation as the reference: conv N(0, 2/(k²·C_out)),
BN 1/0, linear bias 0. RaWRN-70-16: 267,240,802 parameters for 10 classes.

Module names are the reference's (`init_conv`, `layer.0.block.0.se.fc1`, `batchnorm`, `logits`), so the published
checkpoint (RobustBench's Peng2023Robust) loads strictly. The reference keeps mean and std as plain tensors, outside
the state dict; here they are non-persistent buffers, which moves them with the model and keeps them out as well.
"""

from __future__ import annotations

import torch.nn as nn

from dsnet.models.atomic_blocks import OutputNormalized, register_block
from dsnet.models.dm_wide_resnet import DMBlock, DMNetwork
from dsnet.models.layers import InputStatistics, activation_layer
from dsnet.models.registry import ModelInfo, register_model

__all__ = ["RaWideResNet"]

_PAPER = "Peng et al., Robust Principles: Architectural Design Principles for Adversarially Robust CNNs, BMVC 2023"


class RaWideResNet(DMNetwork):
    """The robust-principles WRN for 32x32 inputs, normalising its own input.

    Args:
        num_classes: classifier size.
        depths: blocks per stage.
        widths: output width of each stage.
        stem_width: width of the stem conv.
        activation: "silu" (published) or "relu".
        se_ratio: squeeze-excitation width as a fraction of the stage width (None: no gate).
        bn_momentum: momentum of every BN.
        normalize: in-model input normalisation ("auto": CIFAR-100's constants for 100 classes, else CIFAR-10's;
            "cifar10", "cifar100", a (mean, std) pair, or "none").
        in_channels: input image channels.
    """

    def __init__(
        self,
        num_classes: int = 10,
        depths: tuple[int, int, int] = (30, 31, 10),
        widths: tuple[int, int, int] = (216, 432, 864),
        stem_width: int = 96,
        activation: str = "silu",
        se_ratio: float | None = 0.25,
        bn_momentum: float = 0.01,
        normalize: InputStatistics = "auto",
        in_channels: int = 3,
    ) -> None:
        super().__init__(num_classes, stem_width, depths, widths, activation_layer(activation), bn_momentum, se_ratio,
                         normalize, in_channels)


@register_block("ra_block", "RaWRN")
def ra_block(channels: int) -> nn.Module:
    """DS-Net's atomic block from the robust-principles WRN: DeepMind's block with SiLU, a squeeze-excitation gate of
    width round(C/4) after the second conv and BN momentum 0.01, C → C at stride 1, then a BN on the output."""
    block = DMBlock(channels, channels, 1, nn.SiLU, bn_momentum=0.01, se_ratio=0.25)
    return OutputNormalized(block, channels, momentum=0.01)


register_model("ra_wrn70_16", RaWideResNet, ModelInfo(family="ra_wide_resnet", paper=_PAPER,
                                                      expected_params=267_240_802, label="RaWRN-70-16"))
register_model("ra_wrn_tiny", RaWideResNet, ModelInfo(family="ra_wide_resnet", paper=_PAPER, tiny=True,
                                                      note="tests: stem 16, one block per stage, widths 16/32/64"),
               depths=(1, 1, 1), widths=(16, 32, 64), stem_width=16)
