"""Clean and robust accuracy over a tensor of images, in batches, in fp32.

`robust_flags` attacks only the points that the model still classifies correctly (as AutoAttack does): a
point that is wrong already is not robust, and attacking it would only cost time. Everything runs in fp32
with autocast off, whatever context the caller is in, because low-precision logits can mask gradients.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn as nn

from dsnet.attacks.base import check_inputs, check_int
from dsnet.attacks.core import eval_mode

__all__ = ["AttackFn", "correct_flags", "accuracy", "robust_flags"]

AttackFn = Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]
"""attack(model, x, y) -> x_adv; every `dsnet.attacks.Attack` is one."""


def correct_flags(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """Which points the model classifies correctly.

    Args:
        model: maps (B, C, H, W) images in [0, 1] to logits; run in eval mode, its modes restored after.
        x: (N, C, H, W) images in [0, 1].
        y: (N,) labels on x's device.
        batch_size: images per forward pass.

    Returns:
        (N,) bool tensor on x's device.
    """
    check_inputs("correct_flags", x, y)
    batch_size = check_int("correct_flags", "batch_size", batch_size, minimum=1)
    flags = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
    with eval_mode(model), torch.no_grad(), torch.autocast(device_type=x.device.type, enabled=False):
        for start in range(0, x.shape[0], batch_size):
            stop = start + batch_size
            logits = model(x[start:stop].float())
            flags[start:stop] = logits.argmax(dim=1) == y[start:stop]
    return flags


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 256) -> float:
    """Clean accuracy in [0, 1] (see `correct_flags`); nan for an empty set."""
    flags = correct_flags(model, x, y, batch_size)
    return flags.float().mean().item() if flags.numel() else float("nan")


def robust_flags(
    model: nn.Module, attack: AttackFn, x: torch.Tensor, y: torch.Tensor, batch_size: int = 256
) -> torch.Tensor:
    """Which points stay correctly classified under `attack`.

    Only the points classified correctly on the clean input are attacked, `batch_size` at a time; the
    others are not robust by definition. For AutoAttack, `AutoAttack.run` on the whole set is the call that
    matches the reference exactly (it regroups the surviving points between its attacks); through this
    function each batch is a separate AutoAttack run.

    Args:
        model: maps (B, C, H, W) images in [0, 1] to logits; run in eval mode, its modes restored after.
        attack: called as `attack(model, x_batch, y_batch) -> x_adv_batch`.
        x: (N, C, H, W) images in [0, 1].
        y: (N,) labels on x's device.
        batch_size: images per attack call.

    Returns:
        (N,) bool tensor on x's device: True where the clean and the adversarial input are both classified
        correctly.
    """
    flags = correct_flags(model, x, y, batch_size)
    todo = flags.nonzero().squeeze(1)
    with eval_mode(model), torch.autocast(device_type=x.device.type, enabled=False):
        for start in range(0, todo.numel(), batch_size):
            index = todo[start : start + batch_size]
            x_batch, y_batch = x[index].float(), y[index]
            x_adv = attack(model, x_batch, y_batch)
            with torch.no_grad():
                flags[index] = model(x_adv).argmax(dim=1) == y_batch
    return flags
