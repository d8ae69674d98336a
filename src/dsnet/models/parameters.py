"""Splitting a model's parameters into the network weights and the attention weights."""

from __future__ import annotations

import torch.nn as nn

__all__ = ["split_parameters"]


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
