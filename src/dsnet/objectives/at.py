"""PGD adversarial training (Madry et al., ICLR 2018, arXiv:1706.06083), as DS-Net trains with it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn as nn
import torch.nn.functional as F

from dsnet.attacks.core import LossFn
from dsnet.objectives.base import (
    ObjectiveOutput,
    PGDObjective,
    ce_attack_loss,
    check_label_smoothing,
    register_objective,
)
from dsnet.validate import Problems

__all__ = ["PGDAT"]


@register_objective
@dataclass(frozen=True)
class PGDAT(PGDObjective):
    """Madry et al.'s PGD adversarial training as in DS-Net: CE attack from a uniform start with ω = 0.001,
    then mean CE on the adversarial batch.

    Attributes:
        label_smoothing: of the outer CE (0: plain AT); the attack maximises the plain CE.
    """

    name: ClassVar[str] = "at"
    label_smoothing: float = 0.0

    def _validate(self, problems: Problems) -> None:
        super()._validate(problems)
        check_label_smoothing(problems, self.label_smoothing)

    def attack_loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> LossFn:
        return ce_attack_loss(y)

    def outer(self, model: nn.Module, x: torch.Tensor, x_adv: torch.Tensor, y: torch.Tensor) -> ObjectiveOutput:
        logits = model(x_adv)
        return ObjectiveOutput(F.cross_entropy(logits, y, label_smoothing=self.label_smoothing), logits, y, {})
