"""Natural (standard) training: cross-entropy on the clean batch, no attack."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn as nn
import torch.nn.functional as F

from dsnet.objectives.base import Objective, ObjectiveOutput, register_objective

__all__ = ["Standard"]


@register_objective
@dataclass(frozen=True)
class Standard(Objective):
    """Natural training: mean cross-entropy on the clean batch. Validation still measures PGD at the paper's ε."""

    name: ClassVar[str] = "standard"
    adversarial: ClassVar[bool] = False

    def __call__(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, epoch: float, generator: torch.Generator
    ) -> ObjectiveOutput:
        logits = model(x)
        return ObjectiveOutput(F.cross_entropy(logits, y), logits, y, {})
