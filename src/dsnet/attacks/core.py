"""The one projected sign-gradient ascent loop behind FGSM, PGD, CW-inf and training-time attacks.

Everything that perturbs an input in an L-inf ball goes through `sign_gradient_ascent`, so the rules of
SPEC.md §1 hold everywhere by construction:

- the model runs in eval mode during the attack and every submodule gets its own mode back afterwards;
- only the input gets a gradient (`torch.autograd.grad`), so parameter `.grad` fields, BN statistics and
  DS-Net's attention weights are untouched; the parameters' `requires_grad` is switched off meanwhile
  (`frozen_parameters`), so no backward pass, eager or compiled, computes weight gradients it would discard;
- under DDP the attack runs inside `no_sync()`, so its forward passes do not arm a gradient all-reduce;
- randomness comes from a `torch.Generator` passed in, never from the global RNG;
- every iterate is projected onto the ε-ball around `x` and clipped to the [0, 1] image box.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from typing import Literal

import torch
import torch.nn as nn

__all__ = [
    "eval_mode",
    "no_gradient_sync",
    "frozen_parameters",
    "random_start",
    "project",
    "sign_gradient_ascent",
    "LossFn",
    "StartKind",
]

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""loss_fn(logits, x_adv) -> per-example losses (B,) to be maximised."""

StartKind = Literal["uniform", "normal", "none"]


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


def project(x_adv: torch.Tensor, x: torch.Tensor, eps: float) -> torch.Tensor:
    """Projects onto {x' : ||x' - x||_inf <= eps} and then clips to [0, 1]."""
    return torch.minimum(torch.maximum(x_adv, x - eps), x + eps).clamp_(0.0, 1.0)


def random_start(
    x: torch.Tensor, eps: float, kind: StartKind, generator: torch.Generator, normal_std: float = 1e-3
) -> torch.Tensor:
    """The starting point of an attack.

    Args:
        x: (B, C, H, W) clean images in [0, 1].
        eps: L-inf radius.
        kind: "uniform" draws U(-eps, eps) and clips to [0, 1] (Madry; the paper's evaluation attacks);
            "normal" adds `normal_std` * N(0, I) without clipping (TRADES and MART reference code);
            "none" starts at `x` (textbook FGSM).
        generator: source of randomness on `x.device`.
        normal_std: standard deviation of the "normal" start.
    """
    if kind == "none":
        return x.clone()
    if kind == "uniform":
        noise = torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype).mul_(2 * eps).sub_(eps)
        return (x + noise).clamp_(0.0, 1.0)
    if kind == "normal":
        return x + normal_std * torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    raise ValueError(f"unknown random start {kind!r}; use 'uniform', 'normal' or 'none'")


def sign_gradient_ascent(
    model: nn.Module,
    x: torch.Tensor,
    loss_fn: LossFn,
    *,
    eps: float,
    step_size: float,
    steps: int,
    start: StartKind = "uniform",
    start_std: float = 1e-3,
    noise_std: float = 0.0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Maximises `loss_fn` over the ε-ball with steps x <- Π(x + α·sign(∇x) + ω·N(0, I)).

    Args:
        model: maps (B, C, H, W) images in [0, 1] to logits; run in eval mode for the whole attack.
        x: clean images in [0, 1].
        loss_fn: per-example loss of (logits, x_adv) to maximise; it is summed, so one example's
            gradient never depends on the batch size.
        eps: L-inf radius in pixel units (0.031 or 8/255).
        step_size: α, the size of each sign step.
        steps: number of steps; 0 returns the (projected) start.
        start: kind of random start, see `random_start`.
        start_std: standard deviation of a "normal" start.
        noise_std: ω, Gaussian noise added after each sign step (the authors' training attack uses 0.001;
            evaluation attacks use 0).
        generator: randomness for the start and the noise; a fixed-seed generator on `x.device` if None,
            so a call never touches the global RNG.

    Returns:
        Detached adversarial images with ||x_adv - x||_inf <= eps and values in [0, 1].
    """
    if eps < 0 or step_size < 0 or steps < 0:
        raise ValueError(f"eps, step_size and steps must be >= 0, got {eps}, {step_size}, {steps}")
    if generator is None:
        generator = torch.Generator(device=x.device).manual_seed(0)
    x = x.detach()
    x_adv = random_start(x, eps, start, generator, start_std).detach()
    if steps == 0:
        return project(x_adv, x, eps)
    with eval_mode(model), no_gradient_sync(model), frozen_parameters(model), torch.enable_grad():
        for _ in range(steps):
            x_adv.requires_grad_(True)
            loss = loss_fn(model(x_adv), x_adv).sum()
            (grad,) = torch.autograd.grad(loss, x_adv)
            x_adv = x_adv.detach() + step_size * grad.sign()
            if noise_std > 0:
                x_adv += noise_std * torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
            x_adv = project(x_adv, x, eps)
    return x_adv.detach()
