"""An exponential moving average of the weights (Gowal et al. 2020; Rebuffi et al. 2021), as Wang et al. 2023
(wzekai99/DM-Improves-AT, `ema_update` and `update_bn`) and Gowal et al.'s weight-averaging trainer compute it.

After optimiser step t (1-based, counted over the whole run) every parameter of the average moves towards the
model's:

    θ̄ <- d_t · θ̄ + (1 − d_t) · θ,   d_t = 0 for t < W, else min(τ, (1 + t − W) / (10 + t − W))

τ is `train.ema_decay` (0.995 in Wang et al., 0.999 in Rebuffi et al.). The warm-up W (`train.ema_warmup`, a
fraction of all training steps: 2.5 % in the reference) keeps the average equal to the model at first, and the
dynamic decay (1 + δ)/(10 + δ) lets it forget the early weights quickly before τ takes over. Every parameter is
averaged, DS-Net's attention weights included. BatchNorm running statistics are not averaged: as in the
reference, the average takes the model's buffers (running mean, variance, batch count) before it is validated
or saved, i.e. at the end of every epoch.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
import torch.nn as nn

__all__ = ["WeightAverage", "ema_decay_at"]


def ema_decay_at(step: int, decay: float, warmup_steps: float) -> float:
    """d_t of the reference's `ema_update(..., dynamic_decay=True)` after optimiser step `step` (1-based)."""
    if step < warmup_steps:
        return 0.0
    delta = step - warmup_steps
    return min(decay, (1.0 + delta) / (10.0 + delta))


class WeightAverage:
    """The averaged copy of a model, updated after every optimiser step.

    Args:
        model: the (unwrapped) model being trained; the average starts as a copy of it.
        decay: τ, in (0, 1).
        warmup_steps: W, the optimiser steps before averaging starts.
    """

    def __init__(self, model: nn.Module, decay: float, warmup_steps: float) -> None:
        self.decay = float(decay)
        self.warmup_steps = float(warmup_steps)
        self.model = copy.deepcopy(model).eval()
        self.model.requires_grad_(False)
        self._averaged = list(self.model.parameters())
        self._current = [p.detach() for p in model.parameters()]  # views: they follow the optimiser's in-place steps

    @torch.no_grad()
    def update(self, step: int) -> None:
        """θ̄ <- d·θ̄ + (1 − d)·θ after optimiser step `step` (1-based over the run)."""
        d = ema_decay_at(step, self.decay, self.warmup_steps)
        torch._foreach_mul_(self._averaged, d)
        torch._foreach_add_(self._averaged, self._current, alpha=1.0 - d)

    @torch.no_grad()
    def take_buffers(self, model: nn.Module) -> None:
        """Gives the average the model's buffers (BN running statistics), as the reference's `update_bn` does."""
        for mine, theirs in zip(self.model.buffers(), model.buffers()):
            mine.copy_(theirs)

    def state_dict(self) -> dict[str, Any]:
        return {"model": self.model.state_dict(), "decay": self.decay, "warmup_steps": self.warmup_steps}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.warmup_steps = float(state["warmup_steps"])
