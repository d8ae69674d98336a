"""Implicit-Euler skip connections: IE-ResNet-50 and IE-WRN-34-10.

Paper: Li, He & Lin, "Implicit Euler Skip Connections: Enhancing Adversarial Robustness via Numerical
Stability", ICML 2020 (PMLR 119:5874-5883). No official code; the only public implementation is the DS-Net
authors' `model/cache/ie_skip.py` (`SIR_ResNet50`, github.com/d12306/dsnet), read for the layout and the
parameter count (`shared/reference/training_and_baselines.md` §3.4).

A residual block y = x + f(x) is one explicit Euler step. An IE block approximates the θ-method
y = x + (1 − θ)·f(x) + θ·f(y) (θ = 1: implicit Euler) by gradient descent on
r(y) = ‖y − x − (1 − θ)·f(x) − θ·f(y)‖², started at the explicit step:
    y_0 = x + f(x),   y_{k+1} = y_k − h·∇_y r(y_k),   k < iterations   (θ = 1, h = 0.1, 1 iteration).
f(y) inside r is evaluated by a weight-tied copy of the block's branch (`branch_tied`), which registers the
very same `nn.Parameter` objects: `named_parameters(remove_duplicate=False)` counts them twice, the way the
paper counts 22.41 M for IE-ResNet-50, while `parameters()`, optimisers and weight decay see them once.

The correction is a constant by default: ∇_y r is taken with `create_graph=False` (as in the reference), so
neither the weights nor the input get gradient through it. White-box attacks therefore differentiate only the
explicit part of each block, a BPDA-like approximation that can overstate robustness (the paper's IE-ResNet-50
falls further from PGD-20 to AutoAttack than ResNet-50 does). `differentiable_correction=True` back-propagates
through the correction (a different, stronger-gradient model; use it to check an evaluation). The correction
runs under `torch.no_grad()` and `torch.inference_mode()` too.

IE-ResNet-50 (as `SIR_ResNet50`): GroupNorm(1, C) everywhere, pre-activation order GN-ReLU-conv, no conv
biases; stem 3x3 3→32 + GN + ReLU; bottleneck stages with inner widths 32/64/128/256, outputs
128/256/512/2048 (the last stage expands ×8), 3/4/6/3 blocks. The first block of each stage is a plain
transition block (stride 1/2/2/2 on its 3x3 conv) whose shortcut is a pre-activated 3x3 strided conv with its
own GN; the other blocks are IE blocks. Final GN + ReLU, global average pool, linear.
22,414,762 parameters counting the tied copies, 17,480,618 unique (10 classes).

Where we differ from the reference code, and why:
- In the last stage the reference flips the sign of the θ·f(y) term inside r (+ instead of −); we use the
  paper's equation in every stage.
- The reference re-points only the first two convs and GNs of each copy to the main block (a loop written for
  two-conv basic blocks); the copies' third GN and last 1x1 conv keep their random initialisation and are
  never trained, so its correction uses a different f. We tie every layer, which is what the paper defines.
- Tying is by shared `nn.Parameter` objects instead of re-assigning `.data` on every forward pass.

IE-WRN-34-10 has no public code (the paper reports 48.24 M and nothing more). Our definition: WRN-34-10
(`wide_resnet.WideResNet` itself, given `block=ie_wide_block` and `norm_layer=GroupNorm(1, ·)`: same widths,
strides, shortcuts and initialisation) in which every non-transition basic block (4 of 5 per group) is an IE
block, with GroupNorm(1, C) in place of BatchNorm throughout, as in every
network of the reference IE code. GroupNorm keeps the correction per example: a BatchNorm inside the tied copy
would mix the batch into each image's correction and update running statistics a second time. GroupNorm(1, C)
has the same 2C parameters as BatchNorm, so the unique count is WRN-34-10's 46,160,474; counting the tied
copies gives 84,885,594. Neither is the paper's 48.24 M, which we could not reconstruct.
"""

from __future__ import annotations

import copy
import functools
from collections import OrderedDict
from collections.abc import Callable, Sequence

import torch
import torch.nn as nn

from dsnet.errors import ConfigError
from dsnet.models.base import ImageClassifier
from dsnet.models.layers import conv1x1, conv3x3
from dsnet.models.registry import ModelInfo, register_model
from dsnet.models.wide_resnet import WideResNet

__all__ = ["tied_copy", "ImplicitEulerBlock", "IETransition", "IEResNet", "ie_wide_block", "ie_wide_resnet"]

_PAPER = "Li, He & Lin, Implicit Euler Skip Connections, ICML 2020"


def _group_norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(1, channels)


def tied_copy(module: nn.Module) -> nn.Module:
    """A structural copy of `module` whose parameters are the same `nn.Parameter` objects as the original's.

    Raises:
        ConfigError: `module` holds buffers (e.g. BatchNorm statistics); shared buffers would not survive
            `.to(device)`, so weight-tied copies are limited to buffer-free layers such as GroupNorm.
    """
    if any(True for _ in module.buffers()):
        raise ConfigError("a weight-tied copy needs a module without buffers; use GroupNorm instead of BatchNorm")
    twin = copy.deepcopy(module)
    for source, target in zip(module.modules(), twin.modules()):
        for name, parameter in source.named_parameters(recurse=False):
            setattr(target, name, parameter)
    return twin


class ImplicitEulerBlock(nn.Module):
    """y = x + f(x), refined by `iterations` gradient steps on r(y) = ‖y − x − (1 − θ)f(x) − θf(y)‖².

    Args:
        branch: the residual function f; must keep the shape of its input and hold no buffers.
        theta: θ of the θ-method (1: implicit Euler, 0: the plain residual block).
        step: h, the gradient step size.
        iterations: number of gradient steps.
        differentiable_correction: back-propagate through the correction (`create_graph=True`) instead of
            treating it as a constant as the reference does.
    """

    def __init__(
        self,
        branch: nn.Module,
        theta: float = 1.0,
        step: float = 0.1,
        iterations: int = 1,
        differentiable_correction: bool = False,
    ) -> None:
        super().__init__()
        if iterations < 0 or step < 0:
            raise ConfigError(f"IE iterations and step must be >= 0, got {iterations} and {step}")
        self.branch = branch
        self.branch_tied = tied_copy(branch)
        self.theta = theta
        self.step = step
        self.iterations = iterations
        self.differentiable_correction = differentiable_correction

    def _residual_gradient(self, y: torch.Tensor, anchor: torch.Tensor, differentiable: bool) -> torch.Tensor:
        # Autograd must run even under no_grad / inference_mode (evaluation); an inference tensor is cloned
        # into a normal one first, since autograd cannot record operations on it.
        with torch.inference_mode(False), torch.enable_grad():
            if differentiable:
                point = y
            else:
                point = (y.clone() if y.is_inference() else y.detach()).requires_grad_(True)
                anchor = anchor.clone() if anchor.is_inference() else anchor
            # The copy sees a non-leaf view of `point`: module hooks that track gradients (FlopCounterMode's
            # module tracker) cannot handle a leaf tensor inside autograd.grad.
            residual = point - anchor - self.theta * self.branch_tied(point.view_as(point))
            (gradient,) = torch.autograd.grad(residual.pow(2).sum(), point, create_graph=differentiable)
        return gradient

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        fx = self.branch(x)
        y = x + fx
        differentiable = self.differentiable_correction and y.requires_grad
        anchor = x + (1.0 - self.theta) * fx
        if not differentiable:
            anchor = anchor.detach()
        for _ in range(self.iterations):
            y = y - self.step * self._residual_gradient(y, anchor, differentiable)
        return y


def _preact_bottleneck(
    in_channels: int, mid_channels: int, out_channels: int, stride: int, act_layer: type[nn.Module]
) -> nn.Sequential:
    """GN-act-1x1, GN-act-3x3 (stride), GN-act-1x1, no biases."""
    return nn.Sequential(
        OrderedDict(
            norm1=_group_norm(in_channels),
            act1=act_layer(),
            conv1=conv1x1(in_channels, mid_channels),
            norm2=_group_norm(mid_channels),
            act2=act_layer(),
            conv2=conv3x3(mid_channels, mid_channels, stride=stride, bias=False),
            norm3=_group_norm(mid_channels),
            act3=act_layer(),
            conv3=conv1x1(mid_channels, out_channels),
        )
    )


def _preact_basic(channels: int, act_layer: type[nn.Module],
                  norm_layer: Callable[[int], nn.Module] = _group_norm) -> nn.Sequential:
    """norm-act-3x3, norm-act-3x3, no biases (the WRN branch; GroupNorm in IE-WRN)."""
    return nn.Sequential(
        OrderedDict(
            norm1=norm_layer(channels),
            act1=act_layer(),
            conv1=conv3x3(channels, channels, bias=False),
            norm2=norm_layer(channels),
            act2=act_layer(),
            conv2=conv3x3(channels, channels, bias=False),
        )
    )


class IETransition(nn.Module):
    """The explicit first block of an IE-ResNet stage: f(x) + conv3x3_s(act(GN(x))), a 3x3 strided shortcut.

    Args:
        in_channels: input width.
        mid_channels: bottleneck width.
        out_channels: output width.
        stride: stride of the branch's 3x3 conv and of the shortcut.
        act_layer: activation class.
    """

    def __init__(
        self, in_channels: int, mid_channels: int, out_channels: int, stride: int, act_layer: type[nn.Module]
    ) -> None:
        super().__init__()
        self.branch = _preact_bottleneck(in_channels, mid_channels, out_channels, stride, act_layer)
        self.shortcut = nn.Sequential(
            OrderedDict(
                norm=_group_norm(in_channels),
                act=act_layer(),
                conv=conv3x3(in_channels, out_channels, stride=stride, bias=False),
            )
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.branch(x) + self.shortcut(x)


class IEResNet(ImageClassifier):
    """Bottleneck ResNet with implicit-Euler skips and GroupNorm, for 32x32 inputs.

    Args:
        num_classes: classifier size.
        layers: blocks per stage; the first of each is a transition block, the rest IE blocks.
        widths: bottleneck (inner) width per stage.
        out_channels: output width per stage.
        stem_width: channels of the stem conv.
        theta: θ of every IE block.
        step: h of every IE block.
        iterations: gradient steps per IE block.
        differentiable_correction: back-propagate through the IE correction (see the module docstring).
        act_layer: activation class.
        in_channels: input image channels.
    """

    def __init__(
        self,
        num_classes: int = 10,
        layers: Sequence[int] = (3, 4, 6, 3),
        widths: Sequence[int] = (32, 64, 128, 256),
        out_channels: Sequence[int] = (128, 256, 512, 2048),
        stem_width: int = 32,
        theta: float = 1.0,
        step: float = 0.1,
        iterations: int = 1,
        differentiable_correction: bool = False,
        act_layer: type[nn.Module] = nn.ReLU,
        in_channels: int = 3,
    ) -> None:
        super().__init__()
        if not len(layers) == len(widths) == len(out_channels) or min(layers, default=0) < 1:
            raise ConfigError("IEResNet needs layers, widths and out_channels of equal length, >= 1 block per stage")
        self.num_classes = num_classes
        self.stem = nn.Sequential(
            OrderedDict(
                conv=conv3x3(in_channels, stem_width, bias=False), norm=_group_norm(stem_width), act=act_layer()
            )
        )
        channels = stem_width
        stages = []
        for index, (num_blocks, mid, out) in enumerate(zip(layers, widths, out_channels)):
            blocks: list[nn.Module] = [IETransition(channels, mid, out, 1 if index == 0 else 2, act_layer)]
            for _ in range(num_blocks - 1):
                branch = _preact_bottleneck(out, mid, out, 1, act_layer)
                blocks.append(ImplicitEulerBlock(branch, theta, step, iterations, differentiable_correction))
            stages.append(nn.Sequential(*blocks))
            channels = out
        self.stages = nn.Sequential(*stages)
        self.norm = _group_norm(channels)
        self.act = act_layer()
        self.num_features = channels
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(channels, num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Maps (B, 3, H, W) images in [0, 1] to pooled (B, num_features) features."""
        return self.pool(self.act(self.norm(self.stages(self.stem(x))))).flatten(1)


def ie_wide_block(
    in_channels: int,
    out_channels: int,
    stride: int,
    act_layer: type[nn.Module],
    norm_layer: Callable[[int], nn.Module],
    *,
    theta: float = 1.0,
    step: float = 0.1,
    iterations: int = 1,
    differentiable_correction: bool = False,
) -> ImplicitEulerBlock:
    """An implicit-Euler block around the WRN branch norm-act-3x3-norm-act-3x3 (in = out channels, stride 1);
    the `block` that `WideResNet` gets for IE-WRN."""
    if stride != 1 or in_channels != out_channels:
        raise ConfigError(f"an IE block keeps its shape; got {in_channels} -> {out_channels} channels, stride {stride}")
    return ImplicitEulerBlock(_preact_basic(out_channels, act_layer, norm_layer), theta, step, iterations,
                              differentiable_correction)


def ie_wide_resnet(
    num_classes: int = 10,
    depth: int = 34,
    widen_factor: int = 10,
    theta: float = 1.0,
    step: float = 0.1,
    iterations: int = 1,
    differentiable_correction: bool = False,
    act_layer: type[nn.Module] = nn.ReLU,
    in_channels: int = 3,
) -> WideResNet:
    """IE-WRN (our definition): a `WideResNet` with GroupNorm whose blocks after each group's first are IE blocks.

    Args:
        num_classes: classifier size.
        depth: 6n + 4 layers (34).
        widen_factor: k; group widths 16k, 32k, 64k.
        theta: θ of every IE block.
        step: h of every IE block.
        iterations: gradient steps per IE block.
        differentiable_correction: back-propagate through the IE correction (see the module docstring).
        act_layer: activation class.
        in_channels: input image channels.
    """
    block = functools.partial(ie_wide_block, theta=theta, step=step, iterations=iterations,
                              differentiable_correction=differentiable_correction)
    return WideResNet(num_classes, depth, widen_factor, act_layer, in_channels=in_channels, block=block,
                      norm_layer=_group_norm)


register_model("ie_resnet50", IEResNet, ModelInfo(family="ie_skip", paper=_PAPER, expected_params=22_414_762,
                                                 note="tied copies incl.; 17,480,618 unique", label="IE-ResNet-50"),
               layers=(3, 4, 6, 3))
register_model("ie_wrn34_10", ie_wide_resnet, ModelInfo(family="ie_skip", paper=_PAPER, expected_params=84_885_594,
                                                        note="our definition; 46,160,474 unique", label="IE-WRN-34-10"),
               depth=34, widen_factor=10)
register_model("ie_resnet_tiny", IEResNet, ModelInfo(family="ie_skip", paper=_PAPER, tiny=True,
                                                     note="tests: 2 blocks per stage, widths 4/8"),
               layers=(2, 2, 2, 2), widths=(4, 4, 8, 8), out_channels=(8, 8, 16, 16), stem_width=4)
register_model("ie_wrn_tiny", ie_wide_resnet, ModelInfo(family="ie_skip", paper=_PAPER, note="tests: IE-WRN-16-1",
                                                        tiny=True), depth=16, widen_factor=1)
