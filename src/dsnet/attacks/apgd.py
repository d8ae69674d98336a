"""APGD on its own (Croce & Hein, ICML 2020), through the reference code: the first attack of AutoAttack, with its
iteration count, restarts, loss and EOT as settings.

`dsnet eval --curve steps` runs it at 10 to 200 iterations beside PGD: APGD's step size adapts to the budget of
iterations it is given, so its accuracy against iterations is the convergence evidence reviewers ask for. The
reference `APGDAttack` of pyautoattack is created per call and run inside `torch.random.fork_rng`, because it
reseeds torch's global generator (as the AutoAttack adapter does, `dsnet.attacks.autoattack`).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn

from dsnet.attacks.autoattack import AUTOATTACK_NORMS, _reference, _rng_devices
from dsnet.attacks.base import Attack, check_int, check_number, register_attack
from dsnet.errors import ConfigError

__all__ = ["APGD", "APGD_LOSSES"]

APGD_LOSSES = ("ce", "dlr")


@register_attack("apgd", "APGD-CE (or -DLR) of the reference AutoAttack code, alone, with its iterations as a setting")
class APGD(Attack):
    """Auto-PGD from the reference implementation.

    Args:
        eps: radius in pixel units.
        steps: iterations (AutoAttack's standard version: 100).
        restarts: random restarts (standard: 1).
        loss: "ce" (APGD-CE) or "dlr" (the difference-of-logits ratio).
        norm: "Linf", "L2" or "L1".
        eot: gradients averaged over this many passes per iteration, for a randomised model (the rand version: 20).
        seed: the reference's seed.
    """

    name = "apgd"

    def __init__(self, *, eps: float, steps: int = 100, restarts: int = 1, loss: str = "ce", norm: str = "Linf",
                 eot: int = 1, seed: int = 0) -> None:
        super().__init__(seed=seed)
        self.eps = check_number("APGD", "eps", eps)
        self.steps = check_int("APGD", "steps", steps, minimum=1)
        self.restarts = check_int("APGD", "restarts", restarts, minimum=1)
        self.eot = check_int("APGD", "eot", eot, minimum=1)
        if loss not in APGD_LOSSES:
            raise ConfigError(f"APGD: loss must be one of {', '.join(APGD_LOSSES)}, got {loss!r}")
        if norm not in AUTOATTACK_NORMS:
            raise ConfigError(f"APGD: norm must be one of {', '.join(AUTOATTACK_NORMS)}, got {norm!r}")
        self.loss, self.norm = loss, norm

    @property
    def label(self) -> str:
        restarts = f"×{self.restarts}" if self.restarts > 1 else ""
        eot = f" (EOT-{self.eot})" if self.eot > 1 else ""
        norm = "" if self.norm == "Linf" else f" ({self.norm})"
        return f"APGD-{self.loss.upper()}-{self.steps}{restarts}{norm}{eot}"

    def _settings(self) -> dict[str, Any]:
        return {"eps": self.eps, "norm": self.norm, "steps": self.steps, "restarts": self.restarts, "loss": self.loss,
                **({"eot": self.eot} if self.eot > 1 else {})}

    def _perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator
                 ) -> torch.Tensor:
        reference = _reference()
        from pyautoattack.autopgd_base import APGDAttack

        del reference  # imported for its one-line error when the package is missing
        attack = APGDAttack(model, n_iter=self.steps, norm=self.norm, n_restarts=self.restarts, eps=self.eps,
                            seed=self.seed, loss=self.loss, eot_iter=self.eot, device=x.device)
        with torch.random.fork_rng(devices=_rng_devices(x.device)):
            return attack.perturb(x, y).detach()
