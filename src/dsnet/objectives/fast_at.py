"""Fast adversarial training (Wong, Rice & Kolter, ICLR 2020, arXiv:2001.03994): one FGSM step from a random start
(reference: locuslab/fast_adversarial `CIFAR10/train_fgsm.py`)."""

from __future__ import annotations

from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn as nn
import torch.nn.functional as F

from dsnet.attacks.core import no_gradient_sync, sign_gradient_ascent
from dsnet.objectives.base import PAPER_EPS, Objective, ObjectiveOutput, ce_attack_loss, register_objective
from dsnet.validate import Problems

__all__ = ["FastAT"]


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


@register_objective
@dataclass(frozen=True)
class FastAT(Objective):
    """Fast AT (Wong et al. 2020): one FGSM step of size α = 1.25·ε from a uniform start, then mean CE.

    The trainer pairs it with `dsnet.training.collapse_guard.CollapseGuard` against catastrophic overfitting
    (`collapse_guard = True`).

    Attributes:
        eps: L-inf radius in pixel units.
        step_size: α; None means 1.25·eps (for larger ε a smaller α avoids collapse).
        attack_mode: "eval" (our convention: BN running statistics frozen during generation), "train" (Wong et al.:
            the FGSM forward uses batch statistics and updates the running statistics) or "batch" (batch statistics,
            running ones frozen, as the other objectives' `attack_mode="batch"`).
    """

    name: ClassVar[str] = "fast_at"
    collapse_guard: ClassVar[bool] = True  # FGSM training can collapse: the trainer watches a PGD probe
    eps: float = PAPER_EPS
    step_size: float | None = None
    attack_mode: str = "eval"

    def _validate(self, problems: Problems) -> None:
        problems.number("eps", self.eps)
        if self.step_size is not None:
            problems.number("step_size", self.step_size)
        problems.choice("attack_mode", self.attack_mode, ("eval", "train", "batch"))

    def _resolve(self) -> None:
        if self.step_size is None:
            object.__setattr__(self, "step_size", 1.25 * self.eps)

    def __call__(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, epoch: float, generator: torch.Generator
    ) -> ObjectiveOutput:
        attacked = _KeepTrainMode(model) if self.attack_mode == "train" else model
        x_adv = sign_gradient_ascent(
            attacked, x, ce_attack_loss(y), eps=self.eps, step_size=self.step_size,  # type: ignore[arg-type]
            steps=1, start="uniform", generator=generator, mode="batch" if self.attack_mode == "batch" else "eval",
        )
        logits = model(x_adv)
        return ObjectiveOutput(F.cross_entropy(logits, y), logits, y, {})
