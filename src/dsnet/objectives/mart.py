"""MART (Wang et al., ICLR 2020): boosted cross-entropy plus a misclassification-weighted KL."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn as nn
import torch.nn.functional as F

from dsnet.attacks.core import LossFn
from dsnet.objectives.base import CleanAndAdversarialObjective, ce_attack_loss, register_objective

__all__ = ["MART", "mart_loss"]


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


@register_objective
@dataclass(frozen=True)
class MART(CleanAndAdversarialObjective):
    """MART as DS-Net trains it: CE attack from a uniform start with ω = 0, then boosted CE + β·weighted KL.
    `start="normal"` gives the reference MART attack; `outer_order="clean_first"` the reference's order."""

    name: ClassVar[str] = "mart"
    noise_std: float = 0.0

    def attack_loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> LossFn:
        return ce_attack_loss(y)

    def outer_loss(self, logits_nat: torch.Tensor, logits_adv: torch.Tensor,
                   y: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return mart_loss(logits_nat, logits_adv, y, self.beta)
