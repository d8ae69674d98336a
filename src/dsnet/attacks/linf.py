"""FGSM, PGD and CW-inf: L-inf attacks built on the one loop in `dsnet.attacks.core`.

What the DS-Net authors evaluate with (reference/dsnet_reference.md §5), and how it maps here:

- FGSM: a uniform random start in the ε-ball, then ONE sign step of size ε, projected
  (`FGSM(eps=0.031)`). The textbook FGSM has no start: x + ε·sign(∇) (`FGSM(eps=..., random_start=False)`,
  registered as `fgsm_textbook`).
- PGD-20: cross-entropy, uniform start, 20 steps of 0.031/4 (AT, MART) or 0.003 (TRADES).
- CW∞-30: the same loop for 30 steps on the Carlini–Wagner margin loss with κ = 50. This is PGD on a margin
  loss, not the original C&W optimisation attack and not an L2 attack.

With `restarts > 1`, PGD and CW∞ keep, per example, the first restart whose output fools the model (the
last one for points that are never fooled), so the result is the worst case per point.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn

from dsnet.attacks.base import Attack, check_int, check_number, register_attack
from dsnet.attacks.core import LossFn, sign_gradient_ascent
from dsnet.attacks.losses import cross_entropy_loss, cw_margin_loss
from dsnet.errors import ConfigError

__all__ = ["FGSM", "PGD", "CWInf", "fgsm_textbook"]


@register_attack("fgsm", "FGSM on CE; random_start=True is the paper's variant (uniform start, ε step)")
class FGSM(Attack):
    """Fast gradient sign method on cross-entropy.

    Args:
        eps: L-inf radius in pixel units (0.031 or 8/255).
        random_start: True for the paper's variant (uniform start in the ε-ball, then a full-ε step,
            projected); False for the textbook x + ε·sign(∇).
        seed: seed of the random start.
    """

    def __init__(self, *, eps: float, random_start: bool = True, seed: int = 0) -> None:
        super().__init__(seed=seed)
        self.eps = check_number("FGSM", "eps", eps)
        if not isinstance(random_start, bool):
            raise ConfigError(f"FGSM: random_start must be True or False, got {random_start!r}")
        self.random_start = random_start

    @property
    def name(self) -> str:  # type: ignore[override]
        return "fgsm" if self.random_start else "fgsm_textbook"

    @property
    def label(self) -> str:
        return "FGSM" if self.random_start else "FGSM (textbook)"

    def _settings(self) -> dict[str, Any]:
        return {"eps": self.eps, "step_size": self.eps, "steps": 1, "random_start": self.random_start}

    def _perturb(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator
    ) -> torch.Tensor:
        return sign_gradient_ascent(
            model,
            x,
            lambda logits, _: cross_entropy_loss(logits, y),
            eps=self.eps,
            step_size=self.eps,
            steps=1,
            start="uniform" if self.random_start else "none",
            generator=generator,
        )


@register_attack("fgsm_textbook", "textbook FGSM: x + ε·sign(∇), no random start")
def fgsm_textbook(*, eps: float, seed: int = 0) -> FGSM:
    """The textbook FGSM, x + ε·sign(∇), with no random start (registered as `fgsm_textbook`)."""
    return FGSM(eps=eps, random_start=False, seed=seed)


class _SignAscentAttack(Attack):
    """Shared part of PGD and CW∞: settings, restarts and the worst case over them."""

    def __init__(
        self, *, eps: float, step_size: float, steps: int, restarts: int, random_start: bool, seed: int
    ) -> None:
        super().__init__(seed=seed)
        owner = type(self).__name__
        self.eps = check_number(owner, "eps", eps)
        self.step_size = check_number(owner, "step_size", step_size)
        # steps = 0 is allowed on purpose: it returns the start (the clean input without a random start),
        # a useful sanity check of an evaluation pipeline.
        self.steps = check_int(owner, "steps", steps, minimum=0)
        self.restarts = check_int(owner, "restarts", restarts, minimum=1)
        if not isinstance(random_start, bool):
            raise ConfigError(f"{owner}: random_start must be True or False, got {random_start!r}")
        if self.restarts > 1 and not random_start:
            raise ConfigError(
                f"{owner}: restarts = {self.restarts} needs random_start=True (every restart would be the same)"
            )
        self.random_start = random_start

    def _settings(self) -> dict[str, Any]:
        return {
            "eps": self.eps,
            "step_size": self.step_size,
            "steps": self.steps,
            "restarts": self.restarts,
            "random_start": self.random_start,
        }

    def _loss(self, y: torch.Tensor) -> LossFn:
        raise NotImplementedError

    def _perturb(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator
    ) -> torch.Tensor:
        loss_fn = self._loss(y)

        def one_run() -> torch.Tensor:
            return sign_gradient_ascent(
                model,
                x,
                loss_fn,
                eps=self.eps,
                step_size=self.step_size,
                steps=self.steps,
                start="uniform" if self.random_start else "none",
                generator=generator,
            )

        best = one_run()
        if self.restarts == 1:
            return best
        with torch.no_grad():
            fooled = model(best).argmax(dim=1) != y
        for _ in range(self.restarts - 1):
            x_adv = one_run()
            # Points fooled by an earlier restart keep that first success; the others take this restart.
            best = torch.where(fooled.view(-1, *([1] * (x.dim() - 1))), best, x_adv)
            with torch.no_grad():
                fooled = fooled | (model(x_adv).argmax(dim=1) != y)
        return best


@register_attack("pgd", "PGD on CE, uniform start, worst case over restarts")
class PGD(_SignAscentAttack):
    """Projected gradient descent (Madry et al.) on cross-entropy, L-inf.

    Args:
        eps: L-inf radius in pixel units.
        step_size: size of each sign step (0.031/4 for AT/MART models, 0.003 for TRADES in the paper).
        steps: number of steps (20 in the paper); 0 returns the start.
        restarts: independent random starts; the worst case per point is kept.
        random_start: uniform start in the ε-ball (the paper's) or none.
        seed: seed of the random starts.
    """

    name = "pgd"

    def __init__(
        self,
        *,
        eps: float,
        step_size: float,
        steps: int,
        restarts: int = 1,
        random_start: bool = True,
        seed: int = 0,
    ) -> None:
        super().__init__(
            eps=eps, step_size=step_size, steps=steps, restarts=restarts, random_start=random_start, seed=seed
        )

    @property
    def label(self) -> str:
        return f"PGD-{self.steps}"

    def _loss(self, y: torch.Tensor) -> LossFn:
        return lambda logits, _: cross_entropy_loss(logits, y)


@register_attack("cw_inf", "PGD on the Carlini–Wagner margin loss (the paper's C&W∞)")
class CWInf(_SignAscentAttack):
    """PGD on the Carlini–Wagner margin loss (the paper's "C&W∞"), L-inf.

    Args:
        eps: L-inf radius in pixel units.
        step_size: size of each sign step (the paper uses PGD's).
        steps: number of steps (30 in the paper); 0 returns the start.
        kappa: confidence κ >= 0 of the margin loss (50 in the authors' code).
        restarts: independent random starts; the worst case per point is kept.
        random_start: uniform start in the ε-ball (the paper's) or none.
        seed: seed of the random starts.
    """

    name = "cw_inf"

    def __init__(
        self,
        *,
        eps: float,
        step_size: float,
        steps: int,
        kappa: float = 50.0,
        restarts: int = 1,
        random_start: bool = True,
        seed: int = 0,
    ) -> None:
        super().__init__(
            eps=eps, step_size=step_size, steps=steps, restarts=restarts, random_start=random_start, seed=seed
        )
        self.kappa = check_number("CWInf", "kappa", kappa)

    @property
    def label(self) -> str:
        return f"CW∞-{self.steps}"

    def _settings(self) -> dict[str, Any]:
        return {**super()._settings(), "kappa": self.kappa}

    def _loss(self, y: torch.Tensor) -> LossFn:
        kappa = self.kappa
        return lambda logits, _: cw_margin_loss(logits, y, kappa)
