"""Guard against catastrophic overfitting in FGSM training (Wong et al. 2020, `train_fgsm.py --early-stop`).

FGSM-based training can "collapse": within an epoch, robustness to multi-step PGD drops to near zero while
FGSM accuracy soars. Wong et al. detect it by measuring PGD accuracy on a fixed training batch after each
epoch and stopping when it falls by more than 0.2 against the previous epoch; the trainer then keeps the
weights from before the drop.

    guard = CollapseGuard(x_probe, y_probe, eps=0.031)
    for epoch in ...:
        train_one_epoch(...)
        if guard.check(model).collapsed:
            ...  # stop, and keep the previous checkpoint
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn

from dsnet.attacks.gradient import PGD
from dsnet.attacks.metrics import robust_flags
from dsnet.validate import Problems, is_number

__all__ = ["CollapseCheck", "CollapseGuard"]


@dataclass(frozen=True)
class CollapseCheck:
    """The outcome of one check.

    Attributes:
        robust_acc: PGD accuracy on the probe batch, a fraction in [0, 1].
        reference_acc: the accuracy it was compared with (None at the first check).
        collapsed: True when `reference_acc - robust_acc > threshold`.
    """

    robust_acc: float
    reference_acc: float | None
    collapsed: bool


class CollapseGuard:
    """Measures PGD accuracy on a fixed probe batch after each epoch and flags a sudden drop.

    The attack is PGD with `steps` steps of size `step_size` (default eps / 4, i.e. 2/255 at ε = 8/255 as in
    Wong et al.), one restart from a uniform start, CE loss, model in eval mode. The start is drawn from a
    generator re-seeded with `seed` at every check, so each epoch is measured with the same start and the
    measurement depends only on the weights (and resumes need no RNG state).

    The reference accuracy is the last measurement that did not collapse, so a run that continues after a
    collapse keeps being flagged until it recovers.

    Args:
        x_probe: (B, C, H, W) fixed probe images in [0, 1] (Wong et al. use the first training batch), on
            the model's device.
        y_probe: (B,) their labels.
        eps: L-inf radius of the probe attack in pixel units.
        steps: number of PGD steps (5).
        step_size: α; None means eps / 4.
        threshold: the absolute drop in accuracy (fraction) that counts as a collapse (0.2).
        seed: seed of the start's generator.

    Raises:
        ConfigError: a parameter is out of range or the probe batch is malformed.
    """

    def __init__(
        self,
        x_probe: torch.Tensor,
        y_probe: torch.Tensor,
        *,
        eps: float,
        steps: int = 5,
        step_size: float | None = None,
        threshold: float = 0.2,
        seed: int = 0,
    ) -> None:
        problems = Problems("collapse guard")
        problems.number("eps", eps)
        problems.integer("steps", steps, minimum=1)
        if step_size is not None:
            problems.number("step_size", step_size, strict=True)
        if not is_number(threshold) or not 0 < threshold <= 1:
            problems.add(f"threshold must be a fraction in (0, 1], got {threshold!r}")
        if x_probe.dim() < 2 or y_probe.shape != x_probe.shape[:1] or x_probe.shape[0] == 0:
            problems.add(f"probe batch must be (B, ...) images with (B,) labels, B >= 1, got "
                         f"{tuple(x_probe.shape)} and {tuple(y_probe.shape)}")
        problems.raise_if_any()
        self.x_probe = x_probe.detach()
        self.y_probe = y_probe.detach()
        self.eps = float(eps)
        self.steps = steps
        self.step_size = float(step_size) if step_size is not None else self.eps / 4
        self.threshold = float(threshold)
        self.seed = seed
        self.reference_acc: float | None = None
        self.history: list[float] = []

    def robust_accuracy(self, model: nn.Module) -> float:
        """PGD robust accuracy of `model` on the probe batch (a fraction), through the one robust-flags loop."""
        attack = PGD(eps=self.eps, step_size=self.step_size, steps=self.steps, seed=self.seed)
        flags = robust_flags(model, attack, self.x_probe, self.y_probe, batch_size=self.x_probe.shape[0])
        return float(flags.float().mean())

    def check(self, model: nn.Module) -> CollapseCheck:
        """Measures the probe accuracy after an epoch and compares it with the reference.

        Args:
            model: the model being trained; its mode and parameters are left as they are.

        Returns:
            The accuracy, the reference it was compared with, and whether training collapsed.
        """
        acc = self.robust_accuracy(model)
        reference = self.reference_acc
        collapsed = reference is not None and reference - acc > self.threshold
        self.history.append(acc)
        if not collapsed:
            self.reference_acc = acc
        return CollapseCheck(acc, reference, collapsed)

    def state_dict(self) -> dict[str, Any]:
        """Plain Python state for checkpoints (loads with `torch.load(..., weights_only=True)`)."""
        return {"reference_acc": self.reference_acc, "history": list(self.history)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restores the state saved by `state_dict`."""
        self.reference_acc = state["reference_acc"]
        self.history = list(state["history"])
