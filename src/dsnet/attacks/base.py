"""The `Attack` base class: configured once, called as `attack(model, x, y) -> x_adv`.

An attack holds only its settings. A call takes its device and dtype from `x`, runs the model in eval mode
(each submodule gets its own mode back afterwards), draws randomness from a `torch.Generator` the attack
owns and reseeds from `seed` at every call, and never touches the global RNG. So a call is a pure function
of (model, x, y, settings): the same batch gives the same `x_adv` whatever ran before, which is what makes
sharded and resumed evaluations exact.

Settings are checked when the attack is built; a bad value raises `ConfigError` naming the argument.
"""

from __future__ import annotations

import inspect
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any

import torch
import torch.nn as nn

from dsnet.attacks.core import check_inputs, eval_mode
from dsnet.errors import ConfigError
from dsnet.registry import Registry
from dsnet.validate import check_int, check_number

__all__ = ["Attack", "ATTACKS", "register_attack", "build_attack", "check_inputs", "check_number", "check_int"]


ATTACKS: Registry[Callable[..., Attack]] = Registry("attack", hint="see dsnet.attacks.ATTACKS.names()",
                                                    package="dsnet.attacks")
"""Attack name -> constructor (keyword arguments only); the metadata is a one-line description."""


def register_attack(name: str, description: str) -> Callable[[Callable[..., Attack]], Callable[..., Attack]]:
    """Registers an attack constructor (a class or a function returning an `Attack`) under `name`."""
    return ATTACKS.register(name, meta=description)


def build_attack(name: str, **kwargs: Any) -> Attack:
    """Builds the registered attack `name` with constructor arguments `kwargs`.

    Raises:
        UnknownNameError: for an unknown attack name.
        ConfigError: for an argument the attack does not take, or a bad value.
    """
    factory = ATTACKS.get(name)
    parameters = inspect.signature(factory).parameters
    unknown = sorted(set(kwargs) - set(parameters))
    if unknown:
        raise ConfigError(
            f"attack {name!r} has no setting {', '.join(map(repr, unknown))}; its settings are "
            f"{', '.join(parameters)}"
        )
    return factory(**kwargs)


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

    def evaluate(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor, *, clean: torch.Tensor,
                 batch_size: int = 256, progress: str | None = None, state_dir: Any = None) -> Any:
        """This attack's per-point robust flags on a whole set of points, sharded across processes.

        The default is the one robust-flags loop (`dsnet.attacks.metrics.attack_run`): the still-correct points,
        `batch_size` at a time. An attack that must see all points at once (AutoAttack regroups the survivors
        between its stages) overrides this.

        Args:
            model: maps (B, C, H, W) images in [0, 1] to logits.
            images: (n, C, H, W) uint8 images or float images in [0, 1].
            labels: (n,) labels.
            clean: (n,) bool, the points classified correctly without attack.
            batch_size: points per batch and per block of the sharding.
            progress: label of a progress bar (rank 0, on a terminal), or None.
            state_dir: a folder where an attack that can resume keeps its state (unused here).

        Returns:
            An `AttackRun`: (n,) flags on the CPU, statistics of the adversarial points, attack-specific extras.
        """
        from dsnet.attacks.metrics import attack_run

        return attack_run(model, self, images, labels, clean=clean, batch_size=batch_size, progress=progress)

    def resume_key(self, world_size: int) -> dict[str, Any]:
        """What a stored result must have been made with to be reused: the settings (`config()`), and for an
        attack whose results depend on the sharding, the number of processes."""
        return self.config()

    def discard_state(self, state_dir: Any) -> None:
        """Deletes the resume state `evaluate` kept in `state_dir` (nothing for attacks without one)."""

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
