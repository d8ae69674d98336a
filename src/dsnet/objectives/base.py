"""The objective interface: what the trainer calls per batch, and what it needs to know about an objective.

An objective is a frozen, validated settings object (`dsnet.validate.Settings`) registered under its name. The
trainer calls it once per batch and never branches on its name (STYLE rule 15):

    objective = build_objective("trades", beta=6.0)
    out = objective(model, x, y, epoch=epoch, generator=generator)
    out.loss.backward()

Besides the loss, an objective declares what the rest of dsnet needs to know about it:
- `threat_eps` and `validation_attack(steps)`: the ε it trains for and the PGD the trainer validates with;
- `collapse_guard`: whether the trainer watches for catastrophic overfitting (FGSM training);
- `paper_eval_step`: the PGD/CW∞ step the paper evaluates models trained with it (`dsnet eval --preset paper`).

Conventions (SPEC.md §1 and §4; formulas from reference/training_and_baselines.md §1):
- `model` arrives in train mode. Adversarial examples are generated in eval mode through
  `dsnet.attacks.core` (BN running statistics and parameter gradients are untouched); the outer forward
  passes run in train mode.
- Randomness (starts, per-step noise ω) comes from the trainer's `generator`, never from the global RNG.
- Defaults are the authors' DS-Net training code: ε = 0.031, α = 0.007, K = 10, ω = 0.001 for AT and
  TRADES, ω = 0 and a uniform start for MART, β = 6.

Adding an objective is one file in this package (`dsnet/objectives/<name>.py`, found on first use) or in your
own code: a frozen dataclass subclass of `Objective` (or `PGDObjective`) decorated with `@register_objective`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn as nn
import torch.nn.functional as F

from dsnet.attacks.core import ATTACK_MODES, LossFn, attack_context, gradient_ascent
from dsnet.registry import Registry
from dsnet.validate import Problems, Settings, build_settings

__all__ = [
    "OBJECTIVES",
    "ObjectiveOutput",
    "Objective",
    "PGDObjective",
    "CleanAndAdversarialObjective",
    "register_objective",
    "build_objective",
    "ce_attack_loss",
    "kl_attack_loss",
    "check_label_smoothing",
    "outer_forwards",
    "OUTER_ORDERS",
    "STARTS",
    "PAPER_EPS",
    "PAPER_EVAL_STEP",
]

STARTS = ("uniform", "normal", "none")
OUTER_ORDERS = ("adversarial_first", "clean_first")
"""The order of the two train-mode forwards of TRADES and MART. Losses and gradients do not depend on it; BN running
statistics do (the later batch weighs more). DS-Net's training script runs the adversarial batch first; the
TRADES reference (yaodongyu/TRADES `trades.py`) runs clean, adversarial, clean (the clean batch twice), the MART
reference (YisenWang/MART `mart.py`) clean, then adversarial."""

PAPER_EPS = 0.031
"""The DS-Net paper's ε (training and evaluation), in pixel units."""

PAPER_EVAL_STEP = 0.031 / 4
"""The paper's PGD/CW∞ evaluation step for AT- and MART-trained models (TRADES models: 0.003)."""


OBJECTIVES: Registry[type[Objective]] = Registry("objective", package="dsnet.objectives",
                                                 order=("standard", "at", "trades", "mart", "fat", "fast_at"))


def register_objective(cls: type[Objective]) -> type[Objective]:
    """Class decorator: registers an `Objective` subclass under its `name`."""
    OBJECTIVES.add(cls.name, cls)
    return cls


@dataclass
class ObjectiveOutput:
    """What an objective returns for one batch.

    Attributes:
        loss: scalar loss to backpropagate.
        logits: (B, num_classes) logits on the training batch the model learns from (the adversarial batch
            for adversarial objectives), from the train-mode forward; for the train accuracy.
        targets: (B,) labels aligned with `logits`.
        metrics: extra detached 0-dim tensors for the logs (no `.item()`, so no host sync).
        after_step: called by the trainer after the optimiser step (AWP takes its weight perturbation back).
    """

    loss: torch.Tensor
    logits: torch.Tensor
    targets: torch.Tensor
    metrics: dict[str, torch.Tensor]
    after_step: Callable[[], Any] | None = None


@dataclass(frozen=True)
class Objective(Settings):
    """Base of the training objectives: a frozen config that maps a batch to a loss.

    Attributes:
        name: the registered name ("at", "trades", ...).
        adversarial: whether the objective generates adversarial examples (False only for "standard").
        collapse_guard: whether FGSM-style training can collapse, so that the trainer should watch a PGD probe
            after every epoch and stop on a drop (`dsnet.training.collapse_guard`).
        paper_eval_step: the PGD and CW∞ step of the `paper` evaluation preset for models trained with it.
        paper_eval_step_note: that step in words, for reports.
    """

    kind: ClassVar[str] = "objective"
    adversarial: ClassVar[bool] = True
    collapse_guard: ClassVar[bool] = False
    paper_eval_step: ClassVar[float] = PAPER_EVAL_STEP
    paper_eval_step_note: ClassVar[str] = "0.031/4, the paper's step for AT/MART-trained models"

    @property
    def threat_eps(self) -> float:
        """The radius this objective trains against, in its norm (the paper's ε for objectives without an attack)."""
        return float(getattr(self, "eps", PAPER_EPS))

    @property
    def threat_norm(self) -> str:
        """The norm of the ball it trains against: "Linf" (the paper's) or "L2"."""
        return str(getattr(self, "norm", "Linf"))

    def validation_attack(self, steps: int) -> Any:
        """The PGD (step ε/4, uniform start, in the objective's norm) that training measures robustness with after
        every epoch."""
        from dsnet.attacks.gradient import PGD

        eps = self.threat_eps
        return PGD(eps=eps, step_size=eps / 4, steps=steps, norm=self.threat_norm)

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


@dataclass(frozen=True)
class PGDObjective(Objective):
    """An objective that trains on PGD adversarial examples: the attack, then `outer` on the result.

    A subclass gives `attack_loss` (what the attack maximises) and `outer` (the loss the weights minimise); this
    class runs the attack in `norm` and, when `awp_gamma` > 0, adversarial weight perturbation around the outer
    loss (`dsnet.objectives.awp`). An objective with its own attack schedule overrides `__call__` and lists the
    norms and options it supports in `norms` and `supports_awp`.

    Attributes:
        eps: radius of the ball, in pixel units of `norm` (L∞ 0.031 or 8/255; L2 0.5 on CIFAR-10).
        step_size: α of each step (α·sign(∇) in L∞, α·∇/‖∇‖₂ in L2).
        steps: K, the number of attack steps.
        start: random start: "uniform" (in the ε-ball of `norm`), "normal" (x + start_std·N(0, I), not clipped
            before the first forward) or "none".
        start_std: standard deviation of a "normal" start.
        noise_std: ω, Gaussian noise added after each step (a leftover of the FAT code base that DS-Net keeps).
        norm: "Linf" (the paper's) or "L2" (adversarial training in the L2 ball, e.g. ε = 0.5, α = ε/4 or 2.5ε/K).
        awp_gamma: γ of adversarial weight perturbation (Wu et al. 2020; 0.01 for AT and 0.005 for TRADES in the
            reference); 0 (the default) switches AWP off and leaves training exactly as without it.
        awp_warmup: epochs trained without AWP before it starts (the reference AT script: 0; its TRADES script,
            whose `epoch >= 10` counts from 1: 9).
        attack_mode: the mode the attack runs the model in: "eval" (BatchNorm with its running statistics: the
            DS-Net, TRADES and MART code) or "batch" (train mode with frozen running statistics: DM-Improves-AT, whose
            recipe trained today's leading CIFAR models, and the robust-residual-network's advanced recipe).
    """

    eps: float = PAPER_EPS
    step_size: float = 0.007
    steps: int = 10
    start: str = "uniform"
    start_std: float = 1e-3
    noise_std: float = 1e-3
    norm: str = "Linf"
    awp_gamma: float = 0.0
    awp_warmup: int = 0
    attack_mode: str = "eval"

    norms: ClassVar[tuple[str, ...]] = ("Linf", "L2")
    """The norms the objective can train in."""
    supports_awp: ClassVar[bool] = True
    """Whether `awp_gamma` > 0 is allowed (False for objectives that run their own step, such as FAT)."""

    _resolved_later: ClassVar[tuple[str, ...]] = ()
    """Fields that may be None at validation time because `_resolve` fills them in."""

    def _validate(self, problems: Problems) -> None:
        problems.number("eps", self.eps)
        problems.number("step_size", self.step_size)
        problems.integer("steps", self.steps, minimum=1)
        if not (self.start is None and "start" in self._resolved_later):
            problems.choice("start", self.start, STARTS)
        problems.number("start_std", self.start_std)
        if not (self.noise_std is None and "noise_std" in self._resolved_later):
            problems.number("noise_std", self.noise_std)
        problems.choice("norm", self.norm, self.norms)
        problems.number("awp_gamma", self.awp_gamma)
        problems.integer("awp_warmup", self.awp_warmup, minimum=0)
        problems.choice("attack_mode", self.attack_mode, ATTACK_MODES)
        if not self.supports_awp and isinstance(self.awp_gamma, (int, float)) and self.awp_gamma > 0:
            problems.add(f"awp_gamma: {self.name} runs its own training step and has no AWP; use at, trades or "
                            "mart with AWP")

    def _attack(self, model: nn.Module, x: torch.Tensor, loss_fn: LossFn, generator: torch.Generator) -> torch.Tensor:
        return gradient_ascent(
            model, x, loss_fn, eps=self.eps, step_size=self.step_size, steps=self.steps, norm=self.norm,
            start=self.start,  # type: ignore[arg-type]
            start_std=self.start_std, noise_std=self.noise_std, generator=generator, mode=self.attack_mode,
        )

    def attack_loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> LossFn:
        """The per-example loss the attack maximises."""
        raise NotImplementedError

    def outer(self, model: nn.Module, x: torch.Tensor, x_adv: torch.Tensor, y: torch.Tensor) -> ObjectiveOutput:
        """The loss the weights minimise, from train-mode forwards of `model` on the batch and its attack."""
        raise NotImplementedError

    def awp_active(self, epoch: float) -> bool:
        """Whether AWP perturbs the weights at 1-based fractional `epoch` (after `awp_warmup` finished epochs)."""
        return self.awp_gamma > 0 and math.floor(epoch) - 1 >= self.awp_warmup

    def __call__(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, epoch: float, generator: torch.Generator
    ) -> ObjectiveOutput:
        x_adv = self._attack(model, x, self.attack_loss(model, x, y), generator)
        restore = None
        if self.awp_active(epoch):
            from dsnet.objectives.awp import perturb_for_step

            restore = perturb_for_step(model, lambda proxy: self.outer(proxy, x, x_adv, y).loss, self.awp_gamma)
        out = self.outer(model, x, x_adv, y)
        out.after_step = restore
        return out


@dataclass(frozen=True)
class CleanAndAdversarialObjective(PGDObjective):
    """A PGD objective whose loss needs the train-mode logits of both the clean and the adversarial batch
    (TRADES, MART): the attack, the two outer forwards in `outer_order`, then `outer_loss`.

    Attributes:
        beta: weight β of the robust term.
        outer_order: "adversarial_first" (DS-Net's script) or "clean_first" (see `OUTER_ORDERS`).
    """

    beta: float = 6.0
    outer_order: str = "adversarial_first"

    def _validate(self, problems: Problems) -> None:
        super()._validate(problems)
        problems.number("beta", self.beta)
        problems.choice("outer_order", self.outer_order, OUTER_ORDERS)

    def outer_loss(self, logits_nat: torch.Tensor, logits_adv: torch.Tensor,
                   y: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The scalar loss and its detached parts, from the clean and adversarial train-mode logits."""
        raise NotImplementedError

    def outer(self, model: nn.Module, x: torch.Tensor, x_adv: torch.Tensor, y: torch.Tensor) -> ObjectiveOutput:
        logits_nat, logits_adv = outer_forwards(model, x, x_adv, self.outer_order)
        loss, parts = self.outer_loss(logits_nat, logits_adv, y)
        return ObjectiveOutput(loss, logits_adv, y, parts)


def check_label_smoothing(problems: Problems, value: object) -> None:
    """label_smoothing is a number in [0, 1)."""
    if problems.number("label_smoothing", value):
        problems.require(0 <= value < 1, f"label_smoothing must be in [0, 1), got {value}")  # type: ignore[operator]


def ce_attack_loss(y: torch.Tensor) -> LossFn:
    """Per-example cross-entropy against `y`, the attack loss of PGD-AT, MART and Fast-AT."""

    def loss_fn(logits: torch.Tensor, x_adv: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits, y, reduction="none")

    return loss_fn


def kl_attack_loss(model: nn.Module, x: torch.Tensor, mode: str = "eval") -> LossFn:
    """Per-example KL(p(x) ‖ p(x')), the TRADES attack loss, with p(x) from a no-grad forward in the attack's mode
    (`mode`: "eval", or "batch" statistics with the running ones frozen, as `gradient_ascent` runs the attack).

    The reference recomputes p(x) at every step; in either mode it is the same tensor each time, so it is
    computed once here.
    """
    with attack_context(model, mode), torch.no_grad():
        p_nat = F.softmax(model(x), dim=1)

    def loss_fn(logits: torch.Tensor, x_adv: torch.Tensor) -> torch.Tensor:
        return F.kl_div(F.log_softmax(logits, dim=1), p_nat, reduction="none").sum(dim=1)

    return loss_fn


def outer_forwards(model: nn.Module, x: torch.Tensor, x_adv: torch.Tensor,
                   order: str = "adversarial_first") -> tuple[torch.Tensor, torch.Tensor]:
    """The train-mode logits (clean, adversarial) of TRADES and MART, computed in `order` (`OUTER_ORDERS`)."""
    if order == "clean_first":
        logits_nat = model(x)
        return logits_nat, model(x_adv)
    logits_adv = model(x_adv)
    return model(x), logits_adv


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
    return build_settings(OBJECTIVES, name, **params)
