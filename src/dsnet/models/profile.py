"""Parameter and FLOP counts, as `dsnet models` prints them."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode

from dsnet.models.registry import create_model

__all__ = ["ModelProfile", "count_parameters", "count_flops", "profile_model"]


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(raw, unique) parameter counts, attention weights excluded as in the paper.

    Raw counts every registered parameter, tied copies included (how the paper counts IE-ResNet-50); unique
    counts each tensor once.
    """
    named = [(n, p) for n, p in model.named_parameters(remove_duplicate=False) if n.split(".")[-1] != "attention"]
    raw = sum(p.numel() for _, p in named)
    unique = sum({id(p): p.numel() for _, p in named}.values())
    return raw, unique


def count_flops(model: nn.Module, input_size: tuple[int, int, int] = (3, 32, 32)) -> int:
    """Forward FLOPs for one image, counted by `torch.utils.flop_counter` in eval mode (a multiply-add is 2).

    Works on a model built on the meta device, where the count needs no arithmetic at all.
    """
    was_training = model.training
    model.eval()
    try:
        device = next(model.parameters()).device
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            model(torch.zeros(1, *input_size, device=device))
        return int(counter.get_total_flops())
    finally:
        model.train(was_training)


@dataclass(frozen=True)
class ModelProfile:
    """One row of `dsnet models`."""

    name: str
    params: int
    unique_params: int
    gflops: float | None


def profile_model(name: str, num_classes: int = 10, flops: bool = True) -> ModelProfile:
    """Counts a registered model on the meta device (no memory, no arithmetic).

    A model whose forward pass cannot run on meta tensors is built for real to count its FLOPs.
    """
    with torch.device("meta"):
        model = create_model(name, num_classes=num_classes)
    raw, unique = count_parameters(model)
    gflops: float | None = None
    if flops:
        try:
            with torch.device("meta"):
                gflops = count_flops(model) / 1e9
        except (RuntimeError, NotImplementedError):
            gflops = count_flops(create_model(name, num_classes=num_classes)) / 1e9
    return ModelProfile(name, raw, unique, gflops)
