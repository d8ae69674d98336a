"""FMN, the fast minimum-norm attack: each point's smallest adversarial perturbation, in L∞, L2 or L1.

Paper: Pintor, Roli, Brendel & Biggio, "Fast Minimum-norm Adversarial Attacks through Adaptive Norm Constraints",
NeurIPS 2021, arXiv:2102.12827. References read: `fmn` of jeromerony/adversarial-library and pralab's
Fast-Minimum-Norm-FMN-Attack (the same algorithm and defaults).

A fixed-ε attack answers "is this point robust at ε"; a minimum-norm attack answers "how far is its nearest
adversarial point", so one run gives the whole security curve, accuracy against ε (`dsnet eval --curve eps`). FMN
walks δ along the L2-normalised gradient of the logit margin (the true class's logit minus the best other), with a
step α annealed from `step_size` to `final_step_size` by a cosine, and projects δ onto a ball whose radius ε it
adapts every step: while the point is adversarial ε shrinks by a factor (1 − γ) (never above the smallest
adversarial norm found), while it is not ε grows by (1 + γ) once an adversarial point was found, and before that it
is set to ‖δ‖ plus the linear estimate of the distance to the boundary, |margin| / ‖∇margin‖_dual; γ is annealed
from `gamma` to `final_gamma`. One change from the references: that first estimate is enlarged by the current γ, so
the iterate crosses a flat boundary instead of landing exactly on it, where rounding decides its side (on a linear
model the references can stall there for the whole run; the shrinking steps that follow remove the excess). The smallest adversarial δ seen is the result. It uses the ball geometry of
`dsnet.attacks.norms` and runs the model as every attack does (eval mode, parameters frozen, outside DDP's
gradient sync, fp32).

As a fixed-ε attack (`--attacks fmn`) it returns the smallest adversarial point when that lies within ε, and the
clean point otherwise, so its flags mean what every attack's flags mean.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn as nn

from dsnet.attacks.base import Attack, check_int, check_number, register_attack
from dsnet.attacks.core import frozen_parameters, no_gradient_sync
from dsnet.attacks.metrics import _as_float, _batches, _device, check_finite_batch, world
from dsnet.attacks.norms import DUAL_NORMS, L1, L2, LINF, Norm, perturbation_size
from dsnet.errors import ConfigError
from dsnet.registry import suggest
from dsnet.runtime.distributed import all_reduce, shard_positions

__all__ = ["FMN", "MINIMUM_NORMS", "minimum_norm_search", "minimum_norms"]

MINIMUM_NORMS: dict[str, Norm] = {"Linf": LINF, "L2": L2, "L1": L1}
"""The norms FMN minimises."""

_TINY = 1e-12


def _margin(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """(B,) true-class logit minus the largest other logit: negative exactly where the point is misclassified."""
    true = logits.gather(1, y.unsqueeze(1)).squeeze(1)
    others = logits.scatter(1, y.unsqueeze(1), float("-inf")).amax(dim=1)
    return true - others


def _cosine(start: float, end: float, step: int, steps: int) -> float:
    return end + (start - end) * (1 + math.cos(math.pi * step / steps)) / 2


def minimum_norm_search(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, norm: Norm, steps: int,
                        step_size: float, final_step_size: float, gamma: float,
                        final_gamma: float) -> tuple[torch.Tensor, torch.Tensor]:
    """FMN on one batch (the model in eval mode already).

    Returns:
        (best adversarial points, their perturbation sizes in `norm`): a point for which no adversarial input was
        found keeps its clean image and the size inf; a point misclassified already has size 0.
    """
    batch = x.shape[0]
    view = (batch,) + (1,) * (x.dim() - 1)
    dual = DUAL_NORMS[norm.name]
    worst = perturbation_size(torch.maximum(x, 1 - x), norm.name)  # no point of the box is farther
    radius = torch.full((batch,), math.inf, device=x.device, dtype=x.dtype)
    best_size = torch.full((batch,), math.inf, device=x.device, dtype=x.dtype)
    best = x.clone()
    found = torch.zeros(batch, dtype=torch.bool, device=x.device)
    delta = torch.zeros_like(x)
    with no_gradient_sync(model), frozen_parameters(model), torch.enable_grad():
        for step in range(steps):
            alpha = _cosine(step_size, final_step_size, step, steps)
            gamma_now = _cosine(gamma, final_gamma, step, steps)
            delta.requires_grad_(True)
            adversarial = x + delta
            logits = model(adversarial)
            loss = -_margin(logits, y)  # ascent on the best other class's lead
            grad = torch.autograd.grad(loss.sum(), delta)[0]
            with torch.no_grad():
                size = perturbation_size(delta, norm.name)
                is_adv = logits.argmax(dim=1) != y
                better = is_adv & (size < best_size)
                found |= is_adv
                best_size = torch.where(better, size, best_size)
                best = torch.where(better.view(view), adversarial, best)
                to_boundary = loss.abs() / perturbation_size(grad, dual).clamp_min(_TINY)
                # Before any adversarial point, the linear estimate of the boundary (enlarged by γ: an estimate that
                # lands exactly on a flat boundary leaves the side to rounding, and the search can stall there).
                radius = torch.where(is_adv, torch.minimum(radius * (1 - gamma_now), best_size),
                                     torch.where(found, radius * (1 + gamma_now),
                                                 (size + to_boundary) * (1 + gamma_now)))
                radius = torch.minimum(radius, worst)
                direction = grad / grad.flatten(1).norm(dim=1).clamp_min(_TINY).view(view)
                delta = norm.project(x + delta + alpha * direction, x, radius) - x
    return best.detach(), best_size


@register_attack("fmn", "FMN minimum-norm attack (L∞, L2, L1); within ε, the smallest adversarial point it finds")
class FMN(Attack):
    """The fast minimum-norm attack; see the module docstring.

    Args:
        eps: as a fixed-ε attack, the radius its result must lie within; None for none (the curve's search,
            `minimum_norms`, needs none).
        norm: "Linf", "L2" or "L1".
        steps: iterations (the paper evaluates with 1,000; 100 converges for most CIFAR points).
        step_size: α at the first step (the references' 1.0).
        final_step_size: α at the last step (default step_size / 100, the references').
        gamma: the initial factor of the radius update (0.05).
        final_gamma: the final factor (0.001).
        seed: unused (FMN starts at the clean point), kept for the attack interface.
    """

    name = "fmn"

    def __init__(self, *, eps: float | None = None, norm: str = "Linf", steps: int = 100, step_size: float = 1.0,
                 final_step_size: float | None = None, gamma: float = 0.05, final_gamma: float = 0.001,
                 seed: int = 0) -> None:
        super().__init__(seed=seed)
        if norm not in MINIMUM_NORMS:
            raise ConfigError(f"FMN: unknown norm {norm!r}; {suggest(norm, MINIMUM_NORMS)}")
        self.norm = MINIMUM_NORMS[norm]
        self.eps = None if eps is None else check_number("FMN", "eps", eps)
        self.steps = check_int("FMN", "steps", steps, minimum=1)
        self.step_size = check_number("FMN", "step_size", step_size, strict=True)
        self.final_step_size = (self.step_size / 100 if final_step_size is None
                                else check_number("FMN", "final_step_size", final_step_size))
        self.gamma = check_number("FMN", "gamma", gamma)
        self.final_gamma = check_number("FMN", "final_gamma", final_gamma)
        if not self.gamma < 1:
            raise ConfigError(f"FMN: gamma must be below 1, got {gamma}")

    @property
    def label(self) -> str:
        return f"FMN-{self.steps}" + ("" if self.norm is LINF else f" ({self.norm.name})")

    def _settings(self) -> dict[str, Any]:
        return {"eps": self.eps, "norm": self.norm.name, "steps": self.steps, "step_size": self.step_size,
                "final_step_size": self.final_step_size, "gamma": self.gamma, "final_gamma": self.final_gamma}

    def search(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(smallest adversarial points, their sizes) of one batch; see `minimum_norm_search`."""
        return minimum_norm_search(model, x, y, norm=self.norm, steps=self.steps, step_size=self.step_size,
                                   final_step_size=self.final_step_size, gamma=self.gamma,
                                   final_gamma=self.final_gamma)

    def _perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator
                 ) -> torch.Tensor:
        best, size = self.search(model, x, y)
        if self.eps is None:
            return best
        within = (size <= self.eps).view(-1, *([1] * (x.dim() - 1)))
        return torch.where(within, best, x)


def minimum_norms(model: nn.Module, attack: FMN, images: torch.Tensor, labels: torch.Tensor, *, clean: torch.Tensor,
                  batch_size: int = 256, progress: str | None = None) -> tuple[torch.Tensor, int]:
    """Each point's smallest adversarial perturbation size found by `attack`, over all processes.

    The still-correct points are attacked in batches, sharded as `dsnet.attacks.metrics.attack_run` shards them.
    Every point found is classified once more: one that the model now gets right (a randomised model, or a point so
    close to the boundary that another summation order flips it) is not counted as found, so the curve never rests
    on an adversarial point that cannot be shown again.

    Args:
        model: maps (B, C, H, W) images in [0, 1] to logits.
        attack: the FMN settings.
        images: (n, C, H, W) uint8 images or float images in [0, 1].
        labels: (n,) labels.
        clean: (n,) bool, the points classified correctly without attack (the others get size 0).
        batch_size: points per batch.
        progress: the label of a progress bar (rank 0, on a terminal).

    Returns:
        (n,) float64 on the CPU: 0 for a point misclassified already, inf where no adversarial point was found; and
        how many points found were not confirmed.
    """
    from dsnet.attacks.core import eval_mode

    n = images.shape[0]
    device = _device(model, images.device)
    rank, size = world()
    todo = clean.to("cpu").bool().nonzero().squeeze(1)
    positions = shard_positions(todo.numel(), rank, size, batch_size)
    found = torch.zeros(n, dtype=torch.float64, device=device)
    unconfirmed = torch.zeros(1, dtype=torch.int64, device=device)
    with eval_mode(model), torch.autocast(device_type=device.type, enabled=False):
        for number, (start, batch) in enumerate(_batches(positions, batch_size, progress)):
            points = todo[batch]
            index = points.to(images.device)
            x, y = _as_float(images[index].to(device)), labels[index].to(device)
            best, sizes = attack.search(model, x, y)
            check_finite_batch("minimum-norm points", best, number, points)
            with torch.no_grad():
                lost = torch.isfinite(sizes) & (model(best).argmax(dim=1) == y)
            unconfirmed += lost.sum()
            found[points.to(device)] = torch.where(lost, math.inf, sizes.double())
    all_reduce(found, "sum")  # each attacked point has one owner; the others hold 0
    all_reduce(unconfirmed, "sum")
    sizes = found.cpu()
    sizes[~clean.to("cpu").bool()] = 0.0
    return sizes, int(unconfirmed)
