"""The network's optimiser: SGD with its parameter groups, the schedule applied per step, and the first step's BN
momentum.

Three settings of the published recipes live here, so that the trainer's loop stays one line per step:
- `optim.norm_weight_decay: false` puts the weights and biases of normalisation layers in a group without weight
  decay (DM-Improves-AT exempts every BN; the layers are found by type, `dsnet.models.normalization_parameters`);
- a schedule that also cycles the momentum (`onecycle`) sets it in every group with the LR (`apply_schedule`);
- `train.bn_warm_start` runs a run's first step with BN momentum 1.0 (`batchnorm_momentum`), so the running
  statistics start as that batch's, as DM-Improves-AT does to match Haiku's initialisation.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn as nn

from dsnet.config import OptimConfig
from dsnet.models.parameters import normalization_parameters
from dsnet.schedules import Schedule

__all__ = ["build_sgd", "apply_schedule", "batchnorm_momentum"]


def build_sgd(model: nn.Module, network: list[nn.Parameter], optim: OptimConfig) -> torch.optim.SGD:
    """SGD over `network` (the model's weights without DS-Net's attention), with normalisation parameters in a
    group of their own, without weight decay, when `optim.norm_weight_decay` is false."""
    groups: list[dict] = [{"params": network}]
    if not optim.norm_weight_decay:
        norm_ids = normalization_parameters(model)
        groups = [{"params": [p for p in network if id(p) not in norm_ids]},
                  {"params": [p for p in network if id(p) in norm_ids], "weight_decay": 0.0}]
        groups = [g for g in groups if g["params"]]
    return torch.optim.SGD(groups, lr=optim.lr, momentum=optim.momentum, weight_decay=optim.weight_decay,
                           nesterov=optim.nesterov)


def apply_schedule(optimizer: torch.optim.Optimizer, schedule: Schedule, epoch: float) -> float:
    """Sets the LR of every group (and the momentum, where the schedule cycles it) at the 1-based fractional
    `epoch`; returns the LR."""
    lr = schedule(epoch)
    momentum = schedule.momentum_at(epoch)
    for group in optimizer.param_groups:
        group["lr"] = lr
        if momentum is not None:
            group["momentum"] = momentum
    return lr


@contextmanager
def batchnorm_momentum(model: nn.Module, momentum: float | None) -> Iterator[None]:
    """Every BatchNorm layer of `model` with `momentum` inside the block (None: unchanged), its own afterwards."""
    if momentum is None:
        yield
        return
    layers = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [m.momentum for m in layers]
    for layer in layers:
        layer.momentum = momentum
    try:
        yield
    finally:
        for layer, value in zip(layers, saved):
            layer.momentum = value
