"""TRADES (Zhang et al., ICML 2019, arXiv:1901.08573): the natural loss plus β times KL(p(x) ‖ p(x')).

The KL of TRADES (and MART) is KL(p(x) ‖ p(x')), the natural distribution first, averaged over the batch
("batchmean"), with gradient flowing through both arguments, as in the reference (yaodongyu/TRADES).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn as nn
import torch.nn.functional as F

from dsnet.attacks.core import LossFn
from dsnet.objectives.base import (
    CleanAndAdversarialObjective,
    check_label_smoothing,
    kl_attack_loss,
    register_objective,
)
from dsnet.validate import Problems

__all__ = ["TRADES", "trades_loss"]


def trades_loss(
    logits_nat: torch.Tensor, logits_adv: torch.Tensor, y: torch.Tensor, beta: float, label_smoothing: float = 0.0
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """TRADES outer loss CE_ls(f(x), y) + β·(1/B)·Σ_i KL(p(x_i) ‖ p(x'_i)).

    Args:
        logits_nat: (B, K) train-mode logits on the clean batch; not detached, so the natural branch gets
            gradient from both terms.
        logits_adv: (B, K) train-mode logits on the adversarial batch.
        y: (B,) labels.
        beta: weight of the KL term.
        label_smoothing: ε_ls of the natural term only, (1 − ε_ls)·CE + ε_ls·mean_k(−log p_k), as DM-Improves-AT
            smooths it (0.1 there); the KL term and the attack are not smoothed.

    Returns:
        The scalar loss and detached parts {"loss_natural", "loss_robust"}.
    """
    natural = F.cross_entropy(logits_nat, y, label_smoothing=label_smoothing)
    robust = F.kl_div(F.log_softmax(logits_adv, dim=1), F.softmax(logits_nat, dim=1), reduction="batchmean")
    return natural + beta * robust, {"loss_natural": natural.detach(), "loss_robust": robust.detach()}


@register_objective
@dataclass(frozen=True)
class TRADES(CleanAndAdversarialObjective):
    """TRADES: KL attack from x + 0.001·N(0, I), then CE(f(x), y) + β·KL(p(x) ‖ p(x')) (DS-Net reports β = 1
    and β = 6); `outer_order="clean_first"` is closer to the reference's clean, adversarial, clean.

    Attributes:
        label_smoothing: of the natural CE term (DM-Improves-AT: 0.1; 0 is plain TRADES).
    """

    name: ClassVar[str] = "trades"
    paper_eval_step: ClassVar[float] = 0.003  # the paper evaluates TRADES models with a smaller step
    paper_eval_step_note: ClassVar[str] = "0.003, the paper's step for TRADES-trained models"
    start: str = "normal"
    label_smoothing: float = 0.0

    def _validate(self, problems: Problems) -> None:
        super()._validate(problems)
        check_label_smoothing(problems, self.label_smoothing)

    def attack_loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> LossFn:
        return kl_attack_loss(model, x, self.attack_mode)

    def outer_loss(self, logits_nat: torch.Tensor, logits_adv: torch.Tensor,
                   y: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return trades_loss(logits_nat, logits_adv, y, self.beta, self.label_smoothing)
