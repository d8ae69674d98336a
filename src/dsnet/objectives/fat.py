"""Friendly adversarial training (Zhang et al., ICML 2020, arXiv:2002.11242): early-stopped PGD, then the outer
loss of AT, TRADES or MART (references: zjfheart/Friendly-Adversarial-Training `earlystop.py`, `FAT*.py`)."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
import torch.nn as nn
import torch.nn.functional as F

from dsnet.attacks.core import LossFn, attack_context, frozen_parameters, no_gradient_sync, project, random_start
from dsnet.errors import ConfigError
from dsnet.objectives.base import (
    OUTER_ORDERS,
    ObjectiveOutput,
    PGDObjective,
    ce_attack_loss,
    kl_attack_loss,
    outer_forwards,
    register_objective,
)
from dsnet.objectives.mart import mart_loss
from dsnet.objectives.trades import trades_loss
from dsnet.validate import Problems

__all__ = ["FAT", "TAU_SCHEDULES", "tau_at", "early_stopped_pgd"]

TAU_SCHEDULES: dict[str, tuple[tuple[tuple[int, int], ...], int]] = {
    "fat": (((50, 0), (90, 1)), 2),
    "fat_trades": (((30, 0), (50, 1), (70, 2)), 3),
    "fat_mart": (((20, 0), (40, 1), (60, 2), (80, 3)), 4),
}
"""Friendly-AT's dynamic τ: ((last 1-based epoch, τ), ...) and the τ used after the last listed epoch."""

OuterLoss = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, float], tuple[torch.Tensor, dict[str, torch.Tensor]]]
OUTER_LOSSES: dict[str, OuterLoss] = {"trades": trades_loss, "mart": mart_loss}


def tau_at(schedule: str, epoch: float) -> int:
    """τ of a Friendly-AT schedule at the 1-based fractional `epoch` (epoch e covers [e, e + 1)).

    Raises:
        ConfigError: `schedule` is not in `TAU_SCHEDULES`.
    """
    if schedule not in TAU_SCHEDULES:
        raise ConfigError(f"unknown tau_schedule {schedule!r}; valid: {', '.join(TAU_SCHEDULES)}")
    steps, final = TAU_SCHEDULES[schedule]
    whole_epoch = math.floor(epoch)
    for last_epoch, tau in steps:
        if whole_epoch <= last_epoch:
            return tau
    return final


def early_stopped_pgd(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    loss_fn: LossFn,
    *,
    eps: float,
    step_size: float,
    steps: int,
    tau: int,
    start: Literal["uniform", "normal", "none"] = "uniform",
    start_std: float = 1e-3,
    noise_std: float = 0.0,
    generator: torch.Generator,
    mode: str = "eval",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Friendly-AT's PGD-K-τ: each example stops once it has been misclassified more than τ times.

    Every example starts with a budget τ. At each of at most `steps` iterations the current iterate is
    classified: a misclassified example with budget 0 is frozen at that iterate; a misclassified example
    with budget > 0 spends one unit and keeps going; a correct one keeps going. Frozen examples are masked
    in place, so `x`, the output and `y` stay aligned (no reordering, unlike the reference). With τ >= K
    nothing is ever frozen and the result is exactly `sign_gradient_ascent` with the same settings and
    generator (for starts that need no clipping; a "normal" start is clipped to [0, 1] here, as in FAT).

    Args:
        model: maps images in [0, 1] to logits; run in eval mode for the whole attack.
        x: (B, C, H, W) clean images in [0, 1].
        y: (B,) labels, used for the early-stopping test.
        loss_fn: per-example attack loss (B,) to maximise.
        eps: L-inf radius.
        step_size: α of each sign step.
        steps: K, the most steps any example takes.
        tau: the per-example budget τ >= 0.
        start: kind of random start (see `dsnet.attacks.core.random_start`).
        start_std: standard deviation of a "normal" start.
        noise_std: ω, Gaussian noise added after each step.
        generator: source of randomness on `x.device`.
        mode: "eval" or "batch" (`dsnet.attacks.core.ATTACK_MODES`).

    Returns:
        Detached adversarial images (B, C, H, W) in the ε-ball and [0, 1], and the number of steps each
        example took, (B,) int64.
    """
    x = x.detach()
    x_adv = project(random_start(x, eps, start, generator, start_std), x, eps).detach()
    budget = torch.full(y.shape, tau, dtype=torch.long, device=x.device)
    active = torch.ones(y.shape, dtype=torch.bool, device=x.device)
    steps_taken = torch.zeros(y.shape, dtype=torch.long, device=x.device)
    with attack_context(model, mode), no_gradient_sync(model), frozen_parameters(model), torch.enable_grad():
        for _ in range(steps):
            x_adv.requires_grad_(True)
            logits = model(x_adv)
            wrong = active & (logits.argmax(dim=1) != y)
            active = active & ~(wrong & (budget == 0))
            budget = budget - (wrong & (budget > 0)).long()
            # One host sync per step, to skip the remaining forward/backward passes once the batch has stopped.
            if not bool(active.any()):
                break
            (grad,) = torch.autograd.grad(loss_fn(logits, x_adv).sum(), x_adv)
            stepped = x_adv.detach() + step_size * grad.sign()
            if noise_std > 0:
                stepped += noise_std * torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
            stepped = project(stepped, x, eps)
            x_adv = torch.where(active.view(-1, *([1] * (x.dim() - 1))), stepped, x_adv.detach())
            steps_taken += active.long()
    return x_adv.detach(), steps_taken


# Friendly-AT's per-base defaults (FAT.py, FAT_for_TRADES.py, FAT_for_MART.py): start, ω, τ schedule.
_FAT_BASES: dict[str, tuple[str, float, str]] = {
    "at": ("uniform", 1e-3, "fat"),
    "trades": ("normal", 0.0, "fat_trades"),
    "mart": ("normal", 0.0, "fat_mart"),
}


@register_objective
@dataclass(frozen=True)
class FAT(PGDObjective):
    """Friendly adversarial training (Zhang et al. 2020): early-stopped PGD, then the outer loss of `base`.

    Attributes:
        base: outer loss: "at" (mean CE on x'), "trades" or "mart" (the same functions as those objectives).
            The attack loss is KL for "trades" and CE otherwise.
        beta: β of the TRADES/MART outer loss (default 6); must be left unset for base "at".
        tau: a constant budget τ; exclusive with `tau_schedule`.
        tau_schedule: a name from `TAU_SCHEDULES`, τ as a function of the epoch; default: FAT's schedule
            for `base` ("fat", "fat_trades", "fat_mart") unless `tau` is given.
        outer_order: for base "trades" and "mart", the order of the two train-mode forwards (`OUTER_ORDERS`).
        start, noise_std: default to FAT's choice for `base`: uniform with ω = 0.001 for "at", normal with
            ω = 0 for "trades" and "mart". A normal start is clipped to [0, 1] as in FAT.
    """

    name: ClassVar[str] = "fat"
    start: str | None = None  # type: ignore[assignment]
    noise_std: float | None = None  # type: ignore[assignment]
    base: str = "at"
    beta: float | None = None
    tau: int | None = None
    tau_schedule: str | None = None
    outer_order: str = "adversarial_first"

    _resolved_later: ClassVar[tuple[str, ...]] = ("start", "noise_std")
    norms: ClassVar[tuple[str, ...]] = ("Linf",)  # its early-stopped attack is FAT's L∞ one
    supports_awp: ClassVar[bool] = False

    def _validate(self, problems: Problems) -> None:
        super()._validate(problems)
        problems.choice("base", self.base, _FAT_BASES)
        if self.beta is not None:
            if self.base == "at":
                problems.add("beta applies only to base 'trades' or 'mart'; leave it unset for base 'at'")
            else:
                problems.number("beta", self.beta)
        if self.tau is not None and self.tau_schedule is not None:
            problems.add(f"give tau or tau_schedule, not both (got tau={self.tau!r}, "
                         f"tau_schedule={self.tau_schedule!r})")
        if self.tau is not None:
            problems.integer("tau", self.tau, minimum=0)
        if self.tau_schedule is not None:
            problems.choice("tau_schedule", self.tau_schedule, TAU_SCHEDULES)
        problems.choice("outer_order", self.outer_order, OUTER_ORDERS)

    def _resolve(self) -> None:
        start, noise, schedule = _FAT_BASES[self.base]
        if self.start is None:
            object.__setattr__(self, "start", start)
        if self.noise_std is None:
            object.__setattr__(self, "noise_std", noise)
        if self.base != "at" and self.beta is None:
            object.__setattr__(self, "beta", 6.0)
        if self.tau is None and self.tau_schedule is None:
            object.__setattr__(self, "tau_schedule", schedule)

    def tau_for(self, epoch: float) -> int:
        """τ used at the 1-based fractional `epoch`."""
        return self.tau if self.tau is not None else tau_at(self.tau_schedule, epoch)  # type: ignore[arg-type]

    def __call__(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, epoch: float, generator: torch.Generator
    ) -> ObjectiveOutput:
        tau = self.tau_for(epoch)
        loss_fn = kl_attack_loss(model, x, self.attack_mode) if self.base == "trades" else ce_attack_loss(y)
        x_adv, steps_taken = early_stopped_pgd(
            model, x, y, loss_fn, eps=self.eps, step_size=self.step_size, steps=self.steps, tau=tau,
            start=self.start,  # type: ignore[arg-type]
            start_std=self.start_std, noise_std=self.noise_std, generator=generator,  # type: ignore[arg-type]
            mode=self.attack_mode,
        )
        metrics = {"tau": torch.tensor(float(tau), device=x.device), "fat_steps": steps_taken.float().mean()}
        if self.base == "at":
            logits = model(x_adv)
            return ObjectiveOutput(F.cross_entropy(logits, y), logits, y, metrics)
        logits_nat, logits_adv = outer_forwards(model, x, x_adv, self.outer_order)
        loss, parts = OUTER_LOSSES[self.base](logits_nat, logits_adv, y, self.beta)  # type: ignore[arg-type]
        return ObjectiveOutput(loss, logits_adv, y, {**metrics, **parts})
