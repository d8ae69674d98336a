"""FGSM/FGM, PGD and the CW margin attack, in the L∞ or the L2 ball, built on the one loop in `dsnet.attacks.core`.

What the DS-Net authors evaluate with (reference/dsnet_reference.md §5), and how it maps here:

- FGSM: a uniform random start in the ε-ball, then ONE sign step of size ε, projected
  (`FGSM(eps=0.031)`). The textbook FGSM has no start: x + ε·sign(∇) (`FGSM(eps=..., random_start=False)`,
  registered as `fgsm_textbook`).
- PGD-20: cross-entropy, uniform start, 20 steps of 0.031/4 (AT, MART) or 0.003 (TRADES).
- CW∞-30: the same loop for 30 steps on the Carlini–Wagner margin loss with κ = 50. This is PGD on a margin
  loss, not the original C&W optimisation attack and not an L2 attack.

Every attack takes `norm` ("Linf", the default, or "L2"; `dsnet.attacks.norms`). Under L2, FGSM is the fast
gradient method (FGM: a uniform start in the L2 ball, then one step of length ε along ∇/‖∇‖₂, projected), PGD
takes normalised-gradient steps, and `cw_l2` is PGD on the same CW margin loss under the L2 projection (as
RobustBench's and AutoAttack's L2 evaluations use it), not the original C&W L2 optimisation attack.

With `restarts > 1`, PGD and the CW attacks keep, per example, the first restart whose output fools the model
(the last one for points that are never fooled), so the result is the worst case per point.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn

from dsnet.attacks.base import Attack, check_int, check_number, register_attack
from dsnet.attacks.core import LossFn, gradient_ascent
from dsnet.attacks.losses import cross_entropy_loss, cw_margin_loss
from dsnet.attacks.norms import LINF, Norm, get_norm
from dsnet.errors import ConfigError

__all__ = ["FGSM", "PGD", "CWInf", "CWL2", "fgsm_textbook"]


def _eot(samples: int) -> str:
    """" (EOT-10)" for an attack that averages its gradients over 10 passes; nothing for a plain one."""
    return f" (EOT-{samples})" if samples > 1 else ""


def _suffix(norm: Norm) -> str:
    """"" for L∞ (the paper's labels stay as they were), " (L2)" otherwise."""
    return "" if norm is LINF else f" ({norm.name})"


@register_attack("fgsm", "FGSM on CE (FGM under L2); random_start=True is the paper's variant (uniform start, ε step)")
class FGSM(Attack):
    """Fast gradient sign method on cross-entropy (under L2: the fast gradient method, a normalised-gradient step).

    Args:
        eps: radius in pixel units (L∞: 0.031 or 8/255; L2: 0.5).
        random_start: True for the paper's variant (uniform start in the ε-ball, then a full-ε step,
            projected); False for the textbook x + ε·sign(∇) (x + ε·∇/‖∇‖₂ under L2).
        seed: seed of the random start.
        norm: "Linf" or "L2".
    """

    def __init__(self, *, eps: float, random_start: bool = True, seed: int = 0, norm: str = "Linf",
                 eot: int = 1) -> None:
        super().__init__(seed=seed)
        self.eps = check_number("FGSM", "eps", eps)
        if not isinstance(random_start, bool):
            raise ConfigError(f"FGSM: random_start must be True or False, got {random_start!r}")
        self.random_start = random_start
        self.norm = get_norm(norm, "FGSM")
        self.eot = check_int("FGSM", "eot", eot, minimum=1)

    @property
    def name(self) -> str:  # type: ignore[override]
        return "fgsm" if self.random_start else "fgsm_textbook"

    @property
    def label(self) -> str:
        name = "FGSM" if self.norm is LINF else "FGM"
        return (name if self.random_start else f"{name} (textbook)") + _suffix(self.norm) + _eot(self.eot)

    def _settings(self) -> dict[str, Any]:
        return {"eps": self.eps, "norm": self.norm.name, "step_size": self.eps, "steps": 1,
                "random_start": self.random_start, **({"eot": self.eot} if self.eot > 1 else {})}

    def _perturb(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator
    ) -> torch.Tensor:
        return gradient_ascent(
            model,
            x,
            lambda logits, _: cross_entropy_loss(logits, y),
            eps=self.eps,
            step_size=self.eps,
            steps=1,
            norm=self.norm,
            start="uniform" if self.random_start else "none",
            generator=generator,
            eot=self.eot,
        )


@register_attack("fgsm_textbook", "textbook FGSM: x + ε·sign(∇) (x + ε·∇/‖∇‖₂ under L2), no random start")
def fgsm_textbook(*, eps: float, seed: int = 0, norm: str = "Linf", eot: int = 1) -> FGSM:
    """The textbook FGSM, x + ε·sign(∇), with no random start (registered as `fgsm_textbook`)."""
    return FGSM(eps=eps, random_start=False, seed=seed, norm=norm, eot=eot)


class _GradientAttack(Attack):
    """Shared part of PGD and the CW attacks: settings, restarts and the worst case over them."""

    def __init__(
        self, *, eps: float, step_size: float, steps: int, restarts: int, random_start: bool, seed: int,
        norm: str | Norm = "Linf", eot: int = 1,
    ) -> None:
        super().__init__(seed=seed)
        owner = type(self).__name__
        self.eot = check_int(owner, "eot", eot, minimum=1)
        self.norm = get_norm(norm, owner)
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
            "norm": self.norm.name,
            "step_size": self.step_size,
            "steps": self.steps,
            "restarts": self.restarts,
            "random_start": self.random_start,
            **({"eot": self.eot} if self.eot > 1 else {}),
        }

    def _loss(self, y: torch.Tensor) -> LossFn:
        raise NotImplementedError

    def _perturb(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator
    ) -> torch.Tensor:
        loss_fn = self._loss(y)

        def one_run() -> torch.Tensor:
            return gradient_ascent(
                model,
                x,
                loss_fn,
                eps=self.eps,
                step_size=self.step_size,
                steps=self.steps,
                norm=self.norm,
                start="uniform" if self.random_start else "none",
                generator=generator,
                eot=self.eot,
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


@register_attack("pgd", "PGD on CE (L∞ or L2), uniform start, worst case over restarts")
class PGD(_GradientAttack):
    """Projected gradient descent (Madry et al.) on cross-entropy, in the L∞ (default) or L2 ball.

    Args:
        eps: radius in pixel units.
        step_size: length of each step (L∞: 0.031/4 for AT/MART models, 0.003 for TRADES in the paper).
        steps: number of steps (20 in the paper); 0 returns the start.
        restarts: independent random starts; the worst case per point is kept.
        random_start: uniform start in the ε-ball (the paper's) or none.
        seed: seed of the random starts.
        norm: "Linf" or "L2".
        eot: gradients averaged over this many passes per step, for a randomised model (1: plain PGD).
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
        norm: str = "Linf",
        eot: int = 1,
    ) -> None:
        super().__init__(
            eps=eps, step_size=step_size, steps=steps, restarts=restarts, random_start=random_start, seed=seed,
            norm=norm, eot=eot,
        )

    @property
    def label(self) -> str:
        restarts = f"×{self.restarts}" if self.restarts > 1 else ""
        return f"PGD-{self.steps}{restarts}{_suffix(self.norm)}{_eot(self.eot)}"

    def _loss(self, y: torch.Tensor) -> LossFn:
        return lambda logits, _: cross_entropy_loss(logits, y)


@register_attack("cw_inf", "PGD on the Carlini–Wagner margin loss (the paper's C&W∞)")
class CWInf(_GradientAttack):
    """PGD on the Carlini–Wagner margin loss (the paper's "C&W∞"), L-inf.

    Args:
        eps: L-inf radius in pixel units.
        step_size: size of each sign step (the paper uses PGD's).
        steps: number of steps (30 in the paper); 0 returns the start.
        kappa: confidence κ >= 0 of the margin loss (50 in the authors' code).
        restarts: independent random starts; the worst case per point is kept.
        random_start: uniform start in the ε-ball (the paper's) or none.
        seed: seed of the random starts.
        eot: gradients averaged over this many passes per step, for a randomised model (1: plain).
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
        eot: int = 1,
    ) -> None:
        super().__init__(
            eps=eps, step_size=step_size, steps=steps, restarts=restarts, random_start=random_start, seed=seed,
            norm=self._norm, eot=eot,
        )
        self.kappa = check_number(type(self).__name__, "kappa", kappa)

    _norm = "Linf"

    @property
    def label(self) -> str:
        return f"CW∞-{self.steps}{_eot(self.eot)}"

    def _settings(self) -> dict[str, Any]:
        return {**super()._settings(), "kappa": self.kappa}

    def _loss(self, y: torch.Tensor) -> LossFn:
        kappa = self.kappa
        return lambda logits, _: cw_margin_loss(logits, y, kappa)


@register_attack("cw_l2", "PGD on the Carlini–Wagner margin loss under the L2 projection")
class CWL2(CWInf):
    """PGD on the Carlini–Wagner margin loss in the L2 ball (normalised-gradient steps, L2 projection).

    The same arguments as `CWInf`; ε and the step are L2 lengths in pixel units.
    """

    name = "cw_l2"
    _norm = "L2"

    @property
    def label(self) -> str:
        return f"CW-L2-{self.steps}{_eot(self.eot)}"
