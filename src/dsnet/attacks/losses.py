"""Per-example losses that the L-inf attacks maximise."""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["cross_entropy_loss", "cw_margin_loss"]


def cross_entropy_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Cross-entropy per example, shape (B,).

    The authors average over the batch; the sum that `sign_gradient_ascent` takes has the same gradient
    signs, so the attack is the same.
    """
    return F.cross_entropy(logits, y, reduction="none")


def cw_margin_loss(logits: torch.Tensor, y: torch.Tensor, kappa: float = 50.0) -> torch.Tensor:
    """Carlini–Wagner margin loss per example, −max(z_y − max_{j≠y} z_j + κ, 0), shape (B,).

    Maximising it pushes the best wrong logit above the true one until the gap reaches κ. The true class is
    removed from the max by filling it with −inf. Multiplying by a one-hot mask instead (as some libraries
    do) turns the true logit into 0, which wins the max whenever every other logit is negative.

    Args:
        logits: (B, K) logits, K >= 2.
        y: (B,) true labels.
        kappa: confidence κ >= 0; the authors' code uses 50.
    """
    true_class = F.one_hot(y, num_classes=logits.shape[1]).bool()
    real = logits.gather(1, y[:, None]).squeeze(1)
    other = logits.masked_fill(true_class, float("-inf")).amax(dim=1)
    return -(real - other + kappa).clamp(min=0)
