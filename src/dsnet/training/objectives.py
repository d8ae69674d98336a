"""Training objectives: standard, PGD-AT, TRADES, MART, Friendly-AT and Fast-AT, as registered callables.

An objective is a frozen, validated config object. The trainer calls it once per batch and never branches on
its name (STYLE rule 15):

    objective = build_objective("trades", beta=6.0)
    out = objective(model, x, y, epoch=epoch, generator=generator)
    out.loss.backward()

Conventions (SPEC.md §1 and §4; formulas from reference/training_and_baselines.md §1):

- `model` arrives in train mode. Adversarial examples are generated in eval mode through
  `dsnet.attacks.core` (BN running statistics and parameter gradients are untouched); the outer forward
  passes run in train mode.
- Randomness (starts, per-step noise ω) comes from the trainer's `generator`, never from the global RNG.
- Defaults are the authors' DS-Net training code: ε = 0.031, α = 0.007, K = 10, ω = 0.001 for AT and
  TRADES, ω = 0 and a uniform start for MART, β = 6.
- The KL of TRADES and MART is KL(p(x) ‖ p(x')), the natural distribution first, averaged over the batch
  ("batchmean"), with gradient flowing through both arguments.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, fields
from typing import Any, ClassVar, Literal

import torch
import torch.nn as nn
import torch.nn.functional as F

from dsnet.attacks.core import (
    LossFn,
    eval_mode,
    frozen_parameters,
    no_gradient_sync,
    project,
    random_start,
    sign_gradient_ascent,
)
from dsnet.errors import ConfigError
from dsnet.registry import Registry

__all__ = [
    "OBJECTIVES",
    "OUTER_ORDERS",
    "outer_forwards",
    "ObjectiveOutput",
    "Objective",
    "Standard",
    "PGDAT",
    "TRADES",
    "MART",
    "FAT",
    "FastAT",
    "TAU_SCHEDULES",
    "build_objective",
    "trades_loss",
    "mart_loss",
    "ce_attack_loss",
    "kl_attack_loss",
    "early_stopped_pgd",
    "tau_at",
]

OBJECTIVES: Registry[type[Objective]] = Registry("objective")

_STARTS = ("uniform", "normal", "none")
OUTER_ORDERS = ("adversarial_first", "clean_first")
"""The order of the two train-mode forwards of TRADES and MART. Losses and gradients do not depend on it; BN running
statistics do (the later batch weighs more). DS-Net's training script runs the adversarial batch first; the
TRADES reference (yaodongyu/TRADES `trades.py`) runs clean, adversarial, clean (the clean batch twice), the MART
reference (YisenWang/MART `mart.py`) clean, then adversarial."""

TAU_SCHEDULES: dict[str, tuple[tuple[tuple[int, int], ...], int]] = {
    "fat": (((50, 0), (90, 1)), 2),
    "fat_trades": (((30, 0), (50, 1), (70, 2)), 3),
    "fat_mart": (((20, 0), (40, 1), (60, 2), (80, 3)), 4),
}
"""Friendly-AT's dynamic τ: ((last 1-based epoch, τ), ...) and the τ used after the last listed epoch."""


@dataclass
class ObjectiveOutput:
    """What an objective returns for one batch.

    Attributes:
        loss: scalar loss to backpropagate.
        logits: (B, num_classes) logits on the training batch the model learns from (the adversarial batch
            for adversarial objectives), from the train-mode forward; for the train accuracy.
        targets: (B,) labels aligned with `logits`.
        metrics: extra detached 0-dim tensors for the logs (no `.item()`, so no host sync).
    """

    loss: torch.Tensor
    logits: torch.Tensor
    targets: torch.Tensor
    metrics: dict[str, torch.Tensor]


# ----------------------------------------------------------------------------------------------------------
# Loss functions shared by the objectives


def ce_attack_loss(y: torch.Tensor) -> LossFn:
    """Per-example cross-entropy against `y`, the attack loss of PGD-AT, MART and Fast-AT."""

    def loss_fn(logits: torch.Tensor, x_adv: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits, y, reduction="none")

    return loss_fn


def kl_attack_loss(model: nn.Module, x: torch.Tensor) -> LossFn:
    """Per-example KL(p(x) ‖ p(x')), the TRADES attack loss, with p(x) from an eval-mode, no-grad forward.

    The reference recomputes p(x) at every step; in eval mode it is the same tensor each time, so it is
    computed once here.
    """
    with eval_mode(model), torch.no_grad():
        p_nat = F.softmax(model(x), dim=1)

    def loss_fn(logits: torch.Tensor, x_adv: torch.Tensor) -> torch.Tensor:
        return F.kl_div(F.log_softmax(logits, dim=1), p_nat, reduction="none").sum(dim=1)

    return loss_fn


def trades_loss(
    logits_nat: torch.Tensor, logits_adv: torch.Tensor, y: torch.Tensor, beta: float
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """TRADES outer loss CE(f(x), y) + β·(1/B)·Σ_i KL(p(x_i) ‖ p(x'_i)).

    Args:
        logits_nat: (B, K) train-mode logits on the clean batch; not detached, so the natural branch gets
            gradient from both terms.
        logits_adv: (B, K) train-mode logits on the adversarial batch.
        y: (B,) labels.
        beta: weight of the KL term.

    Returns:
        The scalar loss and detached parts {"loss_natural", "loss_robust"}.
    """
    natural = F.cross_entropy(logits_nat, y)
    robust = F.kl_div(F.log_softmax(logits_adv, dim=1), F.softmax(logits_nat, dim=1), reduction="batchmean")
    return natural + beta * robust, {"loss_natural": natural.detach(), "loss_robust": robust.detach()}


def mart_loss(
    logits_nat: torch.Tensor, logits_adv: torch.Tensor, y: torch.Tensor, beta: float
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """MART outer loss BCE(p', y) + β·(1/B)·Σ_i KL(q_i ‖ p'_i)·(1.0000001 − q_{i, y_i}).

    p' = softmax f(x'), q = softmax f(x). The boosted CE adds −log(1.0001 − p'_{y'} + 1e-12), where y' is
    the most probable class of p' other than y (the second of the top two when the first is y). Constants
    are the reference's; q is not detached, so gradient flows through the misclassification weight too.

    Args:
        logits_nat: (B, K) train-mode logits on the clean batch.
        logits_adv: (B, K) train-mode logits on the adversarial batch.
        y: (B,) labels.
        beta: weight of the weighted KL term.

    Returns:
        The scalar loss and detached parts {"loss_bce", "loss_kl"}.
    """
    p_adv = F.softmax(logits_adv, dim=1)
    top2 = p_adv.topk(2, dim=1).indices
    y_wrong = torch.where(top2[:, 0] == y, top2[:, 1], top2[:, 0])
    bce = F.cross_entropy(logits_adv, y) + F.nll_loss(torch.log(1.0001 - p_adv + 1e-12), y_wrong)
    q_nat = F.softmax(logits_nat, dim=1)
    q_true = q_nat.gather(1, y.unsqueeze(1)).squeeze(1)
    kl = F.kl_div(torch.log(p_adv + 1e-12), q_nat, reduction="none").sum(dim=1)
    weighted_kl = (kl * (1.0000001 - q_true)).mean()
    return bce + beta * weighted_kl, {"loss_bce": bce.detach(), "loss_kl": weighted_kl.detach()}


_OuterLoss = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, float], tuple[torch.Tensor, dict[str, torch.Tensor]]]
_OUTER_LOSSES: dict[str, _OuterLoss] = {"trades": trades_loss, "mart": mart_loss}


def outer_forwards(model: nn.Module, x: torch.Tensor, x_adv: torch.Tensor,
                   order: str = "adversarial_first") -> tuple[torch.Tensor, torch.Tensor]:
    """The train-mode logits (clean, adversarial) of TRADES and MART, computed in `order` (`OUTER_ORDERS`)."""
    if order == "clean_first":
        logits_nat = model(x)
        return logits_nat, model(x_adv)
    logits_adv = model(x_adv)
    return model(x), logits_adv


# ----------------------------------------------------------------------------------------------------------
# Friendly-AT's early-stopped PGD


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

    Returns:
        Detached adversarial images (B, C, H, W) in the ε-ball and [0, 1], and the number of steps each
        example took, (B,) int64.
    """
    x = x.detach()
    x_adv = project(random_start(x, eps, start, generator, start_std), x, eps).detach()
    budget = torch.full(y.shape, tau, dtype=torch.long, device=x.device)
    active = torch.ones(y.shape, dtype=torch.bool, device=x.device)
    steps_taken = torch.zeros(y.shape, dtype=torch.long, device=x.device)
    with eval_mode(model), no_gradient_sync(model), frozen_parameters(model), torch.enable_grad():
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


# ----------------------------------------------------------------------------------------------------------
# Validation helpers: each appends a message naming the parameter, so one ConfigError lists every problem.


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _check_number(problems: list[str], name: str, value: object, *, positive: bool = False) -> None:
    if not _is_number(value) or value < 0 or (positive and value == 0):  # type: ignore[operator]
        bound = "> 0" if positive else ">= 0"
        problems.append(f"{name} must be a finite number {bound}, got {value!r}")


def _check_int(problems: list[str], name: str, value: object, low: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        problems.append(f"{name} must be an integer >= {low}, got {value!r}")


def _check_choice(problems: list[str], name: str, value: object, choices: tuple[str, ...]) -> None:
    if value not in choices:
        problems.append(f"{name} must be one of {', '.join(repr(c) for c in choices)}, got {value!r}")


# ----------------------------------------------------------------------------------------------------------
# Objectives


def _register(cls: type[Objective]) -> type[Objective]:
    OBJECTIVES.add(cls.name, cls)
    return cls


@dataclass(frozen=True)
class Objective:
    """Base of the training objectives: a frozen config that maps a batch to a loss.

    Subclasses are frozen dataclasses whose fields are the objective's parameters; `__post_init__`
    validates them (one `ConfigError` listing every problem) and fills in resolved defaults.

    Attributes:
        name: the registered name ("at", "trades", ...).
        adversarial: whether the objective generates adversarial examples (False only for "standard").
    """

    name: ClassVar[str] = ""
    adversarial: ClassVar[bool] = True

    def __post_init__(self) -> None:
        problems: list[str] = []
        self._validate(problems)
        if problems:
            raise ConfigError(f"objective {self.name!r}: " + "; ".join(problems))
        for f in fields(self):  # ints given for float parameters become floats, so config() is uniform
            value = getattr(self, f.name)
            if f.type in ("float", "float | None") and isinstance(value, int):
                object.__setattr__(self, f.name, float(value))
        self._resolve()

    def _validate(self, problems: list[str]) -> None:
        """Appends a message for each invalid parameter."""

    def _resolve(self) -> None:
        """Replaces parameters left at None by their resolved values."""

    def config(self) -> dict[str, Any]:
        """The objective's name and resolved parameters, for logs and checkpoints."""
        return {"name": self.name, **{f.name: getattr(self, f.name) for f in fields(self)}}

    def __call__(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, epoch: float, generator: torch.Generator
    ) -> ObjectiveOutput:
        """Computes the loss on one batch.

        Args:
            model: in train mode; maps (B, C, H, W) images in [0, 1] to logits.
            x: (B, C, H, W) clean images in [0, 1].
            y: (B,) integer labels.
            epoch: the 1-based fractional epoch (1.0 at the start of epoch 1), for epoch-dependent settings.
            generator: the trainer's RNG on `x.device` for random starts and noise.

        Returns:
            The loss, the train-mode logits of the batch the model learns from, aligned targets and metrics.
        """
        raise NotImplementedError


@_register
@dataclass(frozen=True)
class Standard(Objective):
    """Natural training: mean cross-entropy on the clean batch."""

    name: ClassVar[str] = "standard"
    adversarial: ClassVar[bool] = False

    def __call__(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, epoch: float, generator: torch.Generator
    ) -> ObjectiveOutput:
        logits = model(x)
        return ObjectiveOutput(F.cross_entropy(logits, y), logits, y, {})


@dataclass(frozen=True)
class _PGDObjective(Objective):
    """Shared attack settings of the PGD-based objectives.

    Attributes:
        eps: L-inf radius in pixel units.
        step_size: α of each sign step.
        steps: K, the number of attack steps.
        start: random start: "uniform" (clipped U(-ε, ε)), "normal" (x + start_std·N(0, I), not clipped before
            the first forward) or "none".
        start_std: standard deviation of a "normal" start.
        noise_std: ω, Gaussian noise added after each step (a leftover of the FAT code base that DS-Net keeps).
    """

    eps: float = 0.031
    step_size: float = 0.007
    steps: int = 10
    start: str = "uniform"
    start_std: float = 1e-3
    noise_std: float = 1e-3

    _resolved_later: ClassVar[tuple[str, ...]] = ()
    """Fields that may be None at validation time because `_resolve` fills them in."""

    def _validate(self, problems: list[str]) -> None:
        _check_number(problems, "eps", self.eps)
        _check_number(problems, "step_size", self.step_size)
        _check_int(problems, "steps", self.steps, 1)
        if not (self.start is None and "start" in self._resolved_later):
            _check_choice(problems, "start", self.start, _STARTS)
        _check_number(problems, "start_std", self.start_std)
        if not (self.noise_std is None and "noise_std" in self._resolved_later):
            _check_number(problems, "noise_std", self.noise_std)

    def _attack(self, model: nn.Module, x: torch.Tensor, loss_fn: LossFn, generator: torch.Generator) -> torch.Tensor:
        return sign_gradient_ascent(
            model, x, loss_fn, eps=self.eps, step_size=self.step_size, steps=self.steps,
            start=self.start,  # type: ignore[arg-type]
            start_std=self.start_std, noise_std=self.noise_std, generator=generator,
        )


@_register
@dataclass(frozen=True)
class PGDAT(_PGDObjective):
    """Madry et al.'s PGD adversarial training as in DS-Net: CE attack from a uniform start with ω = 0.001,
    then mean CE on the adversarial batch."""

    name: ClassVar[str] = "at"

    def __call__(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, epoch: float, generator: torch.Generator
    ) -> ObjectiveOutput:
        x_adv = self._attack(model, x, ce_attack_loss(y), generator)
        logits = model(x_adv)
        return ObjectiveOutput(F.cross_entropy(logits, y), logits, y, {})


def _check_beta(problems: list[str], beta: object) -> None:
    _check_number(problems, "beta", beta)


@_register
@dataclass(frozen=True)
class TRADES(_PGDObjective):
    """TRADES (Zhang et al. 2019): KL attack from x + 0.001·N(0, I), then CE(f(x), y) + β·KL(p(x) ‖ p(x')).

    Attributes:
        beta: weight β of the KL term (DS-Net reports β = 1 and β = 6).
        outer_order: "adversarial_first" (DS-Net's script) or "clean_first" (see `OUTER_ORDERS`).
    """

    name: ClassVar[str] = "trades"
    start: str = "normal"
    beta: float = 6.0
    outer_order: str = "adversarial_first"

    def _validate(self, problems: list[str]) -> None:
        super()._validate(problems)
        _check_beta(problems, self.beta)
        _check_choice(problems, "outer_order", self.outer_order, OUTER_ORDERS)

    def __call__(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, epoch: float, generator: torch.Generator
    ) -> ObjectiveOutput:
        x_adv = self._attack(model, x, kl_attack_loss(model, x), generator)
        logits_nat, logits_adv = outer_forwards(model, x, x_adv, self.outer_order)
        loss, parts = trades_loss(logits_nat, logits_adv, y, self.beta)
        return ObjectiveOutput(loss, logits_adv, y, parts)


@_register
@dataclass(frozen=True)
class MART(_PGDObjective):
    """MART (Wang et al. 2020) as DS-Net trains it: CE attack from a uniform start with ω = 0, then
    boosted CE + β·misclassification-weighted KL. `start="normal"` gives the reference MART attack.

    Attributes:
        beta: weight β of the weighted KL term.
        outer_order: "adversarial_first" (DS-Net's script) or "clean_first" (the MART reference's order).
    """

    name: ClassVar[str] = "mart"
    noise_std: float = 0.0
    beta: float = 6.0
    outer_order: str = "adversarial_first"

    def _validate(self, problems: list[str]) -> None:
        super()._validate(problems)
        _check_beta(problems, self.beta)
        _check_choice(problems, "outer_order", self.outer_order, OUTER_ORDERS)

    def __call__(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, epoch: float, generator: torch.Generator
    ) -> ObjectiveOutput:
        x_adv = self._attack(model, x, ce_attack_loss(y), generator)
        logits_nat, logits_adv = outer_forwards(model, x, x_adv, self.outer_order)
        loss, parts = mart_loss(logits_nat, logits_adv, y, self.beta)
        return ObjectiveOutput(loss, logits_adv, y, parts)


# Friendly-AT's per-base defaults (FAT.py, FAT_for_TRADES.py, FAT_for_MART.py): start, ω, τ schedule.
_FAT_BASES: dict[str, tuple[str, float, str]] = {
    "at": ("uniform", 1e-3, "fat"),
    "trades": ("normal", 0.0, "fat_trades"),
    "mart": ("normal", 0.0, "fat_mart"),
}


@_register
@dataclass(frozen=True)
class FAT(_PGDObjective):
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

    def _validate(self, problems: list[str]) -> None:
        super()._validate(problems)
        _check_choice(problems, "base", self.base, tuple(_FAT_BASES))
        if self.beta is not None:
            if self.base == "at":
                problems.append("beta applies only to base 'trades' or 'mart'; leave it unset for base 'at'")
            else:
                _check_beta(problems, self.beta)
        if self.tau is not None and self.tau_schedule is not None:
            problems.append(f"give tau or tau_schedule, not both (got tau={self.tau!r}, "
                            f"tau_schedule={self.tau_schedule!r})")
        if self.tau is not None:
            _check_int(problems, "tau", self.tau, 0)
        if self.tau_schedule is not None:
            _check_choice(problems, "tau_schedule", self.tau_schedule, tuple(TAU_SCHEDULES))
        _check_choice(problems, "outer_order", self.outer_order, OUTER_ORDERS)

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
        loss_fn = kl_attack_loss(model, x) if self.base == "trades" else ce_attack_loss(y)
        x_adv, steps_taken = early_stopped_pgd(
            model, x, y, loss_fn, eps=self.eps, step_size=self.step_size, steps=self.steps, tau=tau,
            start=self.start,  # type: ignore[arg-type]
            start_std=self.start_std, noise_std=self.noise_std, generator=generator,  # type: ignore[arg-type]
        )
        metrics = {"tau": torch.tensor(float(tau), device=x.device), "fat_steps": steps_taken.float().mean()}
        if self.base == "at":
            logits = model(x_adv)
            return ObjectiveOutput(F.cross_entropy(logits, y), logits, y, metrics)
        logits_nat, logits_adv = outer_forwards(model, x, x_adv, self.outer_order)
        loss, parts = _OUTER_LOSSES[self.base](logits_nat, logits_adv, y, self.beta)  # type: ignore[arg-type]
        return ObjectiveOutput(loss, logits_adv, y, {**metrics, **parts})


class _KeepTrainMode(nn.Module):
    """Wraps a model so that `eval()` leaves it in train mode: Wong et al.'s FGSM uses BN batch statistics
    (and updates the running ones) while generating."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def train(self, mode: bool = True) -> _KeepTrainMode:
        return self

    def no_sync(self) -> AbstractContextManager[None]:
        """The wrapped model's DDP `no_sync`, so the attack passes do not arm a gradient all-reduce."""
        return no_gradient_sync(self.model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


@_register
@dataclass(frozen=True)
class FastAT(Objective):
    """Fast AT (Wong et al. 2020): one FGSM step of size α = 1.25·ε from a uniform start, then mean CE.

    Pair it with `dsnet.training.collapse_guard.CollapseGuard` against catastrophic overfitting.

    Attributes:
        eps: L-inf radius in pixel units.
        step_size: α; None means 1.25·eps (for larger ε a smaller α avoids collapse).
        attack_mode: "eval" (our convention: BN running statistics frozen during generation) or "train"
            (Wong et al.: the FGSM forward uses batch statistics and updates the running statistics).
    """

    name: ClassVar[str] = "fast_at"
    eps: float = 0.031
    step_size: float | None = None
    attack_mode: str = "eval"

    def _validate(self, problems: list[str]) -> None:
        _check_number(problems, "eps", self.eps)
        if self.step_size is not None:
            _check_number(problems, "step_size", self.step_size)
        _check_choice(problems, "attack_mode", self.attack_mode, ("eval", "train"))

    def _resolve(self) -> None:
        if self.step_size is None:
            object.__setattr__(self, "step_size", 1.25 * self.eps)

    def __call__(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, epoch: float, generator: torch.Generator
    ) -> ObjectiveOutput:
        attacked = _KeepTrainMode(model) if self.attack_mode == "train" else model
        x_adv = sign_gradient_ascent(
            attacked, x, ce_attack_loss(y), eps=self.eps, step_size=self.step_size,  # type: ignore[arg-type]
            steps=1, start="uniform", generator=generator,
        )
        logits = model(x_adv)
        return ObjectiveOutput(F.cross_entropy(logits, y), logits, y, {})


def build_objective(name: str, **params: Any) -> Objective:
    """Builds a registered objective from its name and parameters.

    Args:
        name: one of `OBJECTIVES.names()`: "standard", "at", "trades", "mart", "fat", "fast_at".
        **params: the objective's parameters (see its class); None values are dropped, so a command-line
            default of None keeps the objective's own default.

    Returns:
        The validated, frozen objective.

    Raises:
        UnknownNameError: `name` is not registered.
        ConfigError: a parameter is unknown or out of range (the message names each one).
    """
    cls = OBJECTIVES.get(name)
    params = {k: v for k, v in params.items() if v is not None}
    valid = [f.name for f in fields(cls)]
    unknown = [k for k in params if k not in valid]
    if unknown:
        hints = []
        for key in unknown:
            close = difflib.get_close_matches(key, valid, n=1)
            hints.append(f"{key!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
        raise ConfigError(
            f"objective {name!r} has no parameter {', '.join(hints)}; valid: {', '.join(valid) or '(none)'}"
        )
    return cls(**params)
