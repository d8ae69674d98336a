"""The attack registry and the evaluation presets, as data.

Two presets (SPEC.md §5, reference/dsnet_reference.md §5):

- `paper`: what the DS-Net authors evaluate with. ε = 0.031 (not 8/255); FGSM = uniform random start then
  one full-ε step; PGD-20 and CW∞-30 (κ = 50) with step 0.031/4 for AT and MART models and 0.003 for
  TRADES models; AutoAttack standard at 0.031.
- `standard`: the RobustBench threat model. ε = 8/255; the same attacks and step counts; step ε/4 = 2/255
  for every model, whatever it was trained with (the common PGD-20 convention; the paper's smaller TRADES
  step is a detail of the authors' code, not of the threat model); AutoAttack standard at 8/255.

A step size that depends on the training objective is written as a dict keyed by objective name and is
resolved by `resolve_preset(preset, trained_with)`. Objectives the paper did not evaluate (standard, fat,
fast_at) take the AT step. Every value is explicit here and comes back from each attack's `config()`.
"""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from dsnet.attacks.autoattack import AutoAttack
from dsnet.attacks.base import Attack
from dsnet.attacks.linf import FGSM, PGD, CWInf, fgsm_textbook
from dsnet.errors import ConfigError, UnknownNameError
from dsnet.registry import Registry

__all__ = [
    "ATTACKS",
    "PRESETS",
    "TRAINED_WITH",
    "DEFAULT_ATTACKS",
    "resolve_preset",
    "build_attack",
    "build_attacks",
]

ATTACKS: Registry[Callable[..., Attack]] = Registry("attack", hint="see dsnet.attacks.ATTACKS.names()")
ATTACKS.add("fgsm", FGSM, meta="FGSM on CE; random_start=True is the paper's variant (uniform start, ε step)")
ATTACKS.add("fgsm_textbook", fgsm_textbook, meta="textbook FGSM: x + ε·sign(∇), no random start")
ATTACKS.add("pgd", PGD, meta="PGD on CE, uniform start, worst case over restarts")
ATTACKS.add("cw_inf", CWInf, meta="PGD on the Carlini–Wagner margin loss (the paper's C&W∞)")
ATTACKS.add("autoattack", AutoAttack, meta="AutoAttack through the reference code (pyautoattack)")

TRAINED_WITH = ("standard", "at", "trades", "mart", "fat", "fast_at")
"""Training objectives a preset can resolve a step size for (the names of `dsnet.training`'s objectives)."""

DEFAULT_ATTACKS = ("fgsm", "pgd", "cw_inf", "autoattack")
"""What `dsnet eval` runs by default: the paper's four attacks."""

_PAPER_EPS = 0.031
_PAPER_STEP = {
    "standard": 0.031 / 4,
    "at": 0.031 / 4,
    "trades": 0.003,
    "mart": 0.031 / 4,
    "fat": 0.031 / 4,
    "fast_at": 0.031 / 4,
}
_STANDARD_EPS = 8 / 255
_STANDARD_STEP = 2 / 255  # ε/4 for every objective

PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    "paper": {
        "fgsm": {"eps": _PAPER_EPS, "random_start": True, "seed": 0},
        "fgsm_textbook": {"eps": _PAPER_EPS, "seed": 0},
        "pgd": {"eps": _PAPER_EPS, "step_size": _PAPER_STEP, "steps": 20, "restarts": 1, "random_start": True,
                "seed": 0},
        "cw_inf": {"eps": _PAPER_EPS, "step_size": _PAPER_STEP, "steps": 30, "kappa": 50.0, "restarts": 1,
                   "random_start": True, "seed": 0},
        "autoattack": {"eps": _PAPER_EPS, "version": "standard", "seed": 0},
    },
    "standard": {
        "fgsm": {"eps": _STANDARD_EPS, "random_start": True, "seed": 0},
        "fgsm_textbook": {"eps": _STANDARD_EPS, "seed": 0},
        "pgd": {"eps": _STANDARD_EPS, "step_size": _STANDARD_STEP, "steps": 20, "restarts": 1,
                "random_start": True, "seed": 0},
        "cw_inf": {"eps": _STANDARD_EPS, "step_size": _STANDARD_STEP, "steps": 30, "kappa": 50.0, "restarts": 1,
                   "random_start": True, "seed": 0},
        "autoattack": {"eps": _STANDARD_EPS, "version": "standard", "seed": 0},
    },
}
"""preset -> attack name -> constructor arguments; a dict value is keyed by the training objective."""


def _unknown(kind: str, name: object, valid: Iterable[str]) -> UnknownNameError:
    valid = list(valid)
    close = difflib.get_close_matches(str(name), valid, n=3, cutoff=0.5)
    hint = f"did you mean {', '.join(map(repr, close))}?" if close else f"valid: {', '.join(valid)}"
    return UnknownNameError(f"unknown {kind} {name!r}; {hint}")


def resolve_preset(preset: str, trained_with: str) -> dict[str, dict[str, Any]]:
    """The settings of every attack of `preset` for a model trained with `trained_with`.

    Args:
        preset: "paper" or "standard".
        trained_with: the model's training objective, one of `TRAINED_WITH` (decides the paper's step size).

    Returns:
        attack name -> constructor arguments, all plain values (a fresh copy).

    Raises:
        UnknownNameError: for an unknown preset or objective.
    """
    if preset not in PRESETS:
        raise _unknown("attack preset", preset, PRESETS)
    if trained_with not in TRAINED_WITH:
        raise _unknown("training objective", trained_with, TRAINED_WITH)
    return {
        name: {key: value[trained_with] if isinstance(value, Mapping) else value for key, value in settings.items()}
        for name, settings in PRESETS[preset].items()
    }


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


def build_attacks(
    preset: str,
    trained_with: str,
    names: Iterable[str] | None = None,
    overrides: Mapping[str, Mapping[str, Any]] | None = None,
) -> dict[str, Attack]:
    """Builds the attacks of a preset.

    Args:
        preset: "paper" or "standard" (see `PRESETS`).
        trained_with: the model's training objective (see `TRAINED_WITH`).
        names: attacks to build, in order; default `DEFAULT_ATTACKS`.
        overrides: attack name -> settings that replace the preset's (e.g. {"pgd": {"steps": 100}});
            None values are ignored, so unset command-line flags change nothing.

    Returns:
        name -> attack, in the order of `names`; each attack's `config()` has every setting for the report.

    Raises:
        UnknownNameError: for an unknown preset, objective or attack.
        ConfigError: for an override of an attack not built, an unknown setting or a bad value.
    """
    settings = resolve_preset(preset, trained_with)
    names = list(DEFAULT_ATTACKS if names is None else names)
    for name in names:
        if name not in settings:
            raise _unknown("attack", name, settings)
    overrides = dict(overrides or {})
    stray = sorted(set(overrides) - set(names))
    if stray:
        raise ConfigError(
            f"overrides for {', '.join(map(repr, stray))}, which are not among the attacks built ({', '.join(names)})"
        )
    attacks: dict[str, Attack] = {}
    for name in names:
        changes = {key: value for key, value in overrides.get(name, {}).items() if value is not None}
        attacks[name] = build_attack(name, **{**settings[name], **changes})
    return attacks
