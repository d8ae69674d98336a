"""The `Attack` base class: configured once, called as `attack(model, x, y) -> x_adv`.

An attack holds only its settings. A call takes its device and dtype from `x`, runs the model in eval mode
(each submodule gets its own mode back afterwards), draws randomness from a `torch.Generator` the attack
owns and reseeds from `seed` at every call, and never touches the global RNG. So a call is a pure function
of (model, x, y, settings): the same batch gives the same `x_adv` whatever ran before, which is what makes
sharded and resumed evaluations exact.

Settings are checked when the attack is built; a bad value raises `ConfigError` naming the argument.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from numbers import Integral, Real
from typing import Any

import torch
import torch.nn as nn

from dsnet.attacks.core import eval_mode
from dsnet.errors import ConfigError

__all__ = ["Attack", "check_inputs", "check_real", "check_int"]


def check_real(owner: str, name: str, value: Any, *, minimum: float = 0.0, strict: bool = False) -> float:
    """Returns `value` as a float after checking that it is a finite real number >= (or >) `minimum`.

    Raises:
        ConfigError: naming `owner` and the argument `name`.
    """
    bound = f"> {minimum:g}" if strict else f">= {minimum:g}"
    if isinstance(value, bool) or not isinstance(value, Real) or not math.isfinite(float(value)):
        raise ConfigError(f"{owner}: {name} must be a finite number {bound}, got {value!r}")
    value = float(value)
    if value < minimum or (strict and value == minimum):
        raise ConfigError(f"{owner}: {name} must be {bound}, got {value:g}")
    return value


def check_int(owner: str, name: str, value: Any, *, minimum: int) -> int:
    """Returns `value` as an int after checking that it is an integer >= `minimum`.

    Raises:
        ConfigError: naming `owner` and the argument `name`.
    """
    if isinstance(value, bool) or not isinstance(value, Integral) or value < minimum:
        raise ConfigError(f"{owner}: {name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def check_inputs(owner: str, x: torch.Tensor, y: torch.Tensor) -> None:
    """Checks shapes and types of a batch: x (B, C, H, W) floating point, y (B,) integer labels.

    Values are not checked against [0, 1]: that would cost a device sync per batch.

    Raises:
        ValueError: when a shape, dtype or device does not fit.
    """
    if not isinstance(x, torch.Tensor) or x.dim() != 4 or not x.is_floating_point():
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(
            f"{owner}: x must be a float tensor (B, C, H, W) of images in [0, 1], got {shape}"
            + (f" of {x.dtype}; convert uint8 images with x.float() / 255" if isinstance(x, torch.Tensor) else "")
        )
    if not isinstance(y, torch.Tensor) or y.dim() != 1 or y.shape[0] != x.shape[0] or y.is_floating_point():
        shape = tuple(y.shape) if isinstance(y, torch.Tensor) else type(y).__name__
        raise ValueError(f"{owner}: y must be an integer tensor (B,) with B = {x.shape[0]}, got {shape}")
    if y.device != x.device:
        raise ValueError(f"{owner}: x is on {x.device} but y is on {y.device}; put both on one device")


class Attack(ABC):
    """Base of every attack.

    Subclasses set `name` (the registry name), implement `_perturb` and `_settings`, and call
    `super().__init__(seed=seed)`.

    Args:
        seed: seed of the attack's own generator; reseeded at every call, so the same batch always gets the
            same random start.
    """

    name: str = "attack"

    def __init__(self, *, seed: int = 0) -> None:
        self.seed = check_int(type(self).__name__, "seed", seed, minimum=0)
        self._generators: dict[torch.device, torch.Generator] = {}

    @property
    def label(self) -> str:
        """A short human name for reports, e.g. "PGD-20"."""
        return self.name

    def config(self) -> dict[str, Any]:
        """Every setting of the attack, with its registry name under "name", for reports and checkpoints."""
        return {"name": self.name, **self._settings(), "seed": self.seed}

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Attacks a batch.

        Args:
            model: maps (B, C, H, W) images in [0, 1] to logits.
            x: (B, C, H, W) clean images in [0, 1]; sets the device and dtype of the attack.
            y: (B,) true labels on the same device.

        Returns:
            Detached adversarial images of the same shape, dtype and device, within the ε-ball and [0, 1].
        """
        check_inputs(type(self).__name__, x, y)
        with eval_mode(model):
            return self._perturb(model, x.detach(), y.detach(), self._generator(x.device))

    def _generator(self, device: torch.device) -> torch.Generator:
        """The attack's generator on `device`, reseeded so every call starts from the same state."""
        generator = self._generators.get(device)
        if generator is None:
            generator = self._generators[device] = torch.Generator(device=device)
        return generator.manual_seed(self.seed)

    @abstractmethod
    def _perturb(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator
    ) -> torch.Tensor:
        """The attack itself; the model is in eval mode already."""

    @abstractmethod
    def _settings(self) -> dict[str, Any]:
        """The attack's settings (without name and seed)."""

    def __repr__(self) -> str:
        settings = ", ".join(f"{key}={value!r}" for key, value in self.config().items() if key != "name")
        return f"{type(self).__name__}({settings})"
