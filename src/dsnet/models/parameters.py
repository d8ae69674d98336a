"""Which parameters are what: the network weights and the attention weights, normalisation parameters, and
parameters a forward pass leaves without gradient."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn as nn

__all__ = ["split_parameters", "normalization_parameters", "parameters_without_gradient"]

NORMALIZATION_LAYERS = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)
"""Layers whose weights and biases `optim.norm_weight_decay: false` exempts from weight decay."""


def split_parameters(model: nn.Module) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """(network, attention) trainable parameters of any model.

    Models with attention weights (DS-Net) expose `attention_parameters()`; every other model has none. The
    split is by identity, never by parameter-name substrings, so wrappers (DDP, compile) do not break it.
    """
    attention_fn = getattr(model, "attention_parameters", None)
    attention = [p for p in attention_fn() if p.requires_grad] if callable(attention_fn) else []
    attention_ids = {id(p) for p in attention}
    network = [p for p in model.parameters() if p.requires_grad and id(p) not in attention_ids]
    return network, attention


def normalization_parameters(model: nn.Module) -> set[int]:
    """The ids of the parameters that belong to normalisation layers (BatchNorm, GroupNorm, LayerNorm and their
    synchronised forms), by module type, not by name."""
    return {id(p) for m in model.modules() if isinstance(m, NORMALIZATION_LAYERS) for p in m.parameters(recurse=False)}


def parameters_without_gradient(build: Callable[[], nn.Module], input_size: tuple[int, ...] = (3, 32, 32)) -> list[str]:
    """The names of the trainable parameters that a train-mode forward and backward leave without a gradient.

    The model is built by `build` on the meta device, so the check costs no memory and no arithmetic. RobustResNet
    has such parameters by design (the first BN of a block without a projection shortcut normalises nothing that
    reaches the output, as in the reference), and DistributedDataParallel must be told, or its gradient reduction
    waits for them forever.
    """
    with torch.device("meta"):
        model = build()
    model.train()
    model(torch.zeros(2, *input_size, device="meta")).sum().backward()
    return [name for name, p in model.named_parameters() if p.requires_grad and p.grad is None]
