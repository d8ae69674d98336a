"""The one projected gradient-ascent loop behind FGSM/FGM, PGD, the CW margin attacks and training-time attacks.

Everything that perturbs an input in an L∞ or L2 ball goes through `gradient_ascent` (`sign_gradient_ascent` is
its L∞ form), so the rules of SPEC.md §1 hold everywhere by construction:

- the model runs in eval mode during the attack and every submodule gets its own mode back afterwards;
- only the input gets a gradient (`torch.autograd.grad`), so parameter `.grad` fields, BN statistics and
  DS-Net's attention weights are untouched; the parameters' `requires_grad` is switched off meanwhile
  (`frozen_parameters`), so no backward pass, eager or compiled, computes weight gradients it would discard;
- under DDP the attack runs inside `no_sync()`, so its forward passes do not arm a gradient all-reduce;
- randomness comes from a `torch.Generator` passed in, never from the global RNG;
- every iterate is projected onto the ε-ball around `x` and clipped to the [0, 1] image box.

How a ball starts, steps and projects is its `dsnet.attacks.norms.Norm`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from typing import Literal

import torch
import torch.nn as nn

from dsnet.attacks.norms import LINF, Norm, get_norm

__all__ = [
    "check_inputs",
    "eval_mode",
    "batch_statistics_mode",
    "attack_context",
    "ATTACK_MODES",
    "no_gradient_sync",
    "frozen_parameters",
    "random_start",
    "project",
    "gradient_ascent",
    "input_gradient",
    "sign_gradient_ascent",
    "LossFn",
    "StartKind",
]

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""loss_fn(logits, x_adv) -> per-example losses (B,) to be maximised."""

StartKind = Literal["uniform", "normal", "none"]


def check_inputs(owner: str, x: torch.Tensor, y: torch.Tensor) -> None:
    """Checks shapes and types of a batch: x (B, C, H, W) floating point, y (B,) integer labels.

    Values are not checked against [0, 1]: that would cost a device sync per batch.

    Raises:
        ValueError: when a shape, dtype or device does not fit.
    """
    if not isinstance(x, torch.Tensor) or x.dim() != 4 or not x.is_floating_point():
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(
            f"{owner}: x must be a float tensor (B, C, H, W) of images in [0, 1], got {shape}"
            + (f" of {x.dtype}; convert uint8 images with x.float() / 255" if isinstance(x, torch.Tensor) else "")
        )
    if not isinstance(y, torch.Tensor) or y.dim() != 1 or y.shape[0] != x.shape[0] or y.is_floating_point():
        shape = tuple(y.shape) if isinstance(y, torch.Tensor) else type(y).__name__
        raise ValueError(f"{owner}: y must be an integer tensor (B,) with B = {x.shape[0]}, got {shape}")
    if y.device != x.device:
        raise ValueError(f"{owner}: x is on {x.device} but y is on {y.device}; put both on one device")


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Puts `model` in eval mode and restores each submodule's own training flag afterwards."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for module, training in modes:
            module.training = training


@contextmanager
def batch_statistics_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Keeps `model` in train mode but freezes its BatchNorm running statistics: each forward normalises with the
    batch's own statistics and updates nothing (the training attack of DM-Improves-AT and of the robust-residual-
    network's advanced recipe, which switch `track_running_stats` off the same way). Restored afterwards."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    tracked = [m.track_running_stats for m in norms]
    for module in norms:
        module.track_running_stats = False
    try:
        yield model
    finally:
        for module, flag in zip(norms, tracked):
            module.track_running_stats = flag


ATTACK_MODES = ("eval", "batch")
"""The mode a training attack runs the model in: "eval" (BatchNorm with its running statistics, as the TRADES, MART and
DS-Net code attack) or "batch" (train mode with frozen running statistics, `batch_statistics_mode`)."""


def attack_context(model: nn.Module, mode: str = "eval"):  # noqa: ANN201 - a context manager
    """The context a training attack runs the model in: `eval_mode` or `batch_statistics_mode` (`ATTACK_MODES`)."""
    if mode not in ATTACK_MODES:
        raise ValueError(f"mode must be one of {', '.join(ATTACK_MODES)}, got {mode!r}")
    return eval_mode(model) if mode == "eval" else batch_statistics_mode(model)


def no_gradient_sync(model: nn.Module):  # noqa: ANN201 - a context manager
    """Under DDP, attack passes must not arm the gradient all-reduce (they differentiate the input only)."""
    no_sync = getattr(model, "no_sync", None)
    return no_sync() if callable(no_sync) else nullcontext()


@contextmanager
def frozen_parameters(model: nn.Module) -> Iterator[nn.Module]:
    """Switches `requires_grad` off for the parameters that have it and back on afterwards.

    An attack needs the gradient w.r.t. its input only. With the parameters frozen, autograd records no
    weight-gradient work, and a compiled model's backward graph (which otherwise computes the gradient of every
    input that requires one) skips the weight gradients. Measured on DS-Net-4 (one CPU thread, batch 8): a
    compiled attack pass takes 0.57 s instead of 1.0 s, an eager one 0.70 s instead of 0.79 s.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    for p in params:
        p.requires_grad_(False)
    try:
        yield model
    finally:
        for p in params:
            p.requires_grad_(True)


def project(x_adv: torch.Tensor, x: torch.Tensor, eps: float, norm: str | Norm = LINF) -> torch.Tensor:
    """Projects onto {x' : ||x' - x|| <= eps} in `norm` (default L∞) and then clips to [0, 1]."""
    return get_norm(norm).project(x_adv, x, eps)


def random_start(
    x: torch.Tensor, eps: float, kind: StartKind, generator: torch.Generator, normal_std: float = 1e-3,
    norm: str | Norm = LINF,
) -> torch.Tensor:
    """The starting point of an attack.

    Args:
        x: (B, C, H, W) clean images in [0, 1].
        eps: radius of the ball.
        kind: "uniform" draws a point uniformly from the ε-ball of `norm` and clips to [0, 1] (Madry; the
            paper's evaluation attacks); "normal" adds `normal_std` * N(0, I) without clipping (TRADES and MART
            reference code); "none" starts at `x` (textbook FGSM).
        generator: source of randomness on `x.device`.
        normal_std: standard deviation of the "normal" start.
        norm: the ball of a "uniform" start.
    """
    if kind == "none":
        return x.clone()
    if kind == "uniform":
        return get_norm(norm).uniform_start(x, eps, generator)
    if kind == "normal":
        return x + normal_std * torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    raise ValueError(f"unknown random start {kind!r}; use 'uniform', 'normal' or 'none'")


def gradient_ascent(
    model: nn.Module,
    x: torch.Tensor,
    loss_fn: LossFn,
    *,
    eps: float,
    step_size: float,
    steps: int,
    norm: str | Norm = LINF,
    start: StartKind = "uniform",
    start_std: float = 1e-3,
    noise_std: float = 0.0,
    generator: torch.Generator | None = None,
    mode: str = "eval",
    eot: int = 1,
) -> torch.Tensor:
    """Maximises `loss_fn` over the ε-ball of `norm` with steps x <- Π(x + step(∇x) + ω·N(0, I)).

    Args:
        model: maps (B, C, H, W) images in [0, 1] to logits; run in eval mode for the whole attack (or, with
            `mode="batch"`, in train mode with frozen BatchNorm statistics).
        x: clean images in [0, 1].
        loss_fn: per-example loss of (logits, x_adv) to maximise; it is summed, so one example's
            gradient never depends on the batch size.
        eps: radius in pixel units (L∞: 0.031 or 8/255; L2: 0.5 on RobustBench's CIFAR-10 track).
        step_size: α, the length of each step in `norm` (α·sign(∇) for L∞, α·∇/‖∇‖₂ for L2).
        steps: number of steps; 0 returns the (projected) start.
        norm: "Linf" or "L2" (see `dsnet.attacks.norms`).
        start: kind of random start, see `random_start`.
        start_std: standard deviation of a "normal" start.
        noise_std: ω, Gaussian noise added after each step (the authors' training attack uses 0.001;
            evaluation attacks use 0).
        generator: randomness for the start and the noise; a fixed-seed generator on `x.device` if None,
            so a call never touches the global RNG.
        mode: "eval" or "batch" (`ATTACK_MODES`); training attacks only, evaluation always runs in eval mode.
        eot: expectation over transformation (Athalye et al. 2018): each step follows the gradient averaged over
            `eot` forward and backward passes at the same point, for a model whose output is random; 1 for a
            deterministic model.

    Returns:
        Detached adversarial images with ||x_adv - x|| <= eps in `norm` and values in [0, 1].
    """
    if eps < 0 or step_size < 0 or steps < 0:
        raise ValueError(f"eps, step_size and steps must be >= 0, got {eps}, {step_size}, {steps}")
    ball = get_norm(norm)
    if generator is None:
        generator = torch.Generator(device=x.device).manual_seed(0)
    x = x.detach()
    x_adv = random_start(x, eps, start, generator, start_std, ball).detach()
    if steps == 0:
        return ball.project(x_adv, x, eps)
    with attack_context(model, mode), no_gradient_sync(model), frozen_parameters(model), torch.enable_grad():
        for _ in range(steps):
            x_adv.requires_grad_(True)
            grad = input_gradient(model, x_adv, loss_fn, eot)
            x_adv = x_adv.detach() + ball.step(grad, step_size)
            if noise_std > 0:
                x_adv += noise_std * torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
            x_adv = ball.project(x_adv, x, eps)
    return x_adv.detach()


def input_gradient(model: nn.Module, x: torch.Tensor, loss_fn: LossFn, eot: int = 1) -> torch.Tensor:
    """∇x of the summed `loss_fn(model(x), x)`, averaged over `eot` passes (`x` requires grad; call it with the
    parameters frozen). A model whose output ignores its input gives no direction: a zero gradient (the report
    warns about such a model)."""
    total: torch.Tensor | None = None
    for _ in range(eot):
        loss = loss_fn(model(x), x).sum()
        grad = torch.autograd.grad(loss, x, allow_unused=True)[0] if loss.requires_grad else None
        if grad is not None:
            total = grad if total is None else total + grad
    if total is None:
        return torch.zeros_like(x)
    return total / eot if eot > 1 else total


def sign_gradient_ascent(model: nn.Module, x: torch.Tensor, loss_fn: LossFn, **settings: object) -> torch.Tensor:
    """`gradient_ascent` in the L∞ ball: steps x <- Π(x + α·sign(∇x) + ω·N(0, I)) (the same arguments)."""
    return gradient_ascent(model, x, loss_fn, **{"norm": LINF, **settings})  # type: ignore[arg-type]
