"""The evaluation presets, as data, and the attacks they build.

Two presets (SPEC.md §5, reference/dsnet_reference.md §5):

- `paper`: what the DS-Net authors evaluate with. ε = 0.031 (not 8/255); FGSM = uniform random start then
  one full-ε step; PGD-20 and CW∞-30 (κ = 50) with the step the paper pairs with the model's training objective
  (`Objective.paper_eval_step`: 0.031/4 for AT and MART models, 0.003 for TRADES models); AutoAttack standard
  at 0.031.
- `standard`: the RobustBench threat model. ε = 8/255; the same attacks and step counts; step ε/4 = 2/255
  for every model, whatever it was trained with (the common PGD-20 convention; the paper's smaller TRADES
  step is a detail of the authors' code, not of the threat model); AutoAttack standard at 8/255.

A step that depends on the training objective is written `PAIRED_STEP` and resolved from the objective registry
by `resolve_preset(preset, trained_with)`, so a new objective declares its step in its own file and no table here
changes. Every value is explicit and comes back from each attack's `config()`.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from dsnet.attacks.base import ATTACKS, Attack, build_attack
from dsnet.errors import ConfigError
from dsnet.registry import Registry, unknown_name

__all__ = ["Preset", "PRESETS", "PAIRED_STEP", "DEFAULT_ATTACKS", "trained_with_names", "resolve_preset",
           "build_attacks"]

PAIRED_STEP = "paired with the training objective"
"""Stands for the step the paper pairs with the model's training objective (`Objective.paper_eval_step`)."""

DEFAULT_ATTACKS = ("fgsm", "pgd", "cw_inf", "autoattack")
"""What `dsnet eval` runs by default: the paper's four attacks."""


@dataclass(frozen=True)
class Preset(Mapping[str, Mapping[str, Any]]):
    """A named set of attack settings: attack name -> constructor arguments (a mapping, read-only).

    Attributes:
        name: the preset's name (`--preset`).
        eps: the radius of every attack, in pixel units.
        description: one sentence for reports.
        attacks: attack name -> settings; a `step_size` of `PAIRED_STEP` is resolved per training objective.
    """

    name: str
    eps: float
    description: str
    attacks: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)

    def __getitem__(self, name: str) -> Mapping[str, Any]:
        return self.attacks[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self.attacks)

    def __len__(self) -> int:
        return len(self.attacks)


def _linf_preset(name: str, eps: float, step: float | str, description: str) -> Preset:
    return Preset(name, eps, description, {
        "fgsm": {"eps": eps, "random_start": True, "seed": 0},
        "fgsm_textbook": {"eps": eps, "seed": 0},
        "pgd": {"eps": eps, "step_size": step, "steps": 20, "restarts": 1, "random_start": True, "seed": 0},
        "cw_inf": {"eps": eps, "step_size": step, "steps": 30, "kappa": 50.0, "restarts": 1, "random_start": True,
                   "seed": 0},
        "autoattack": {"eps": eps, "version": "standard", "seed": 0},
    })


PRESETS: Registry[Preset] = Registry("attack preset", hint="--preset paper or standard")
PRESETS.add("paper", _linf_preset(
    "paper", 0.031, PAIRED_STEP,
    "the DS-Net authors' evaluation: ε = 0.031 (not 8/255); FGSM = uniform random start then one ε step; "
    "PGD-20 and CW∞-30 (κ = 50), uniform start, step 0.031/4 for AT/MART-trained models and 0.003 for "
    "TRADES-trained models; AutoAttack version 'standard' through the reference code"))
PRESETS.add("standard", _linf_preset(
    "standard", 8 / 255, 2 / 255,
    "the RobustBench threat model: ε = 8/255; FGSM = uniform random start then one ε step; PGD-20 and "
    "CW∞-30 (κ = 50), uniform start, step 2/255 (ε/4) for every model; AutoAttack version 'standard' "
    "through the reference code"))


def trained_with_names() -> list[str]:
    """The training objectives a preset can resolve a step for: every registered objective."""
    from dsnet.objectives import OBJECTIVES

    return OBJECTIVES.names()


def resolve_preset(preset: str, trained_with: str) -> dict[str, dict[str, Any]]:
    """The settings of every attack of `preset` for a model trained with `trained_with`.

    Args:
        preset: "paper" or "standard".
        trained_with: the model's training objective (a registered objective name; decides the paper's step).

    Returns:
        attack name -> constructor arguments, all plain values (a fresh copy).

    Raises:
        UnknownNameError: for an unknown preset or objective.
    """
    from dsnet.objectives import OBJECTIVES

    chosen = PRESETS.get(preset)
    if trained_with not in OBJECTIVES:
        raise unknown_name("training objective", trained_with, OBJECTIVES.names())
    paired = OBJECTIVES.get(trained_with).paper_eval_step
    return {name: {key: paired if value == PAIRED_STEP else value for key, value in settings.items()}
            for name, settings in chosen.items()}


def build_attacks(
    preset: str,
    trained_with: str,
    names: Iterable[str] | None = None,
    overrides: Mapping[str, Mapping[str, Any]] | None = None,
) -> dict[str, Attack]:
    """Builds the attacks of a preset.

    Args:
        preset: "paper" or "standard" (see `PRESETS`).
        trained_with: the model's training objective.
        names: attacks to build, in order; default `DEFAULT_ATTACKS`. A registered attack that the preset does not
            list gets the preset's ε (and seed 0) and its own defaults for everything else.
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
        if name not in settings:  # a registered attack the preset does not list: the preset's ε, its own defaults
            accepted = inspect.signature(ATTACKS.get(name)).parameters
            settings[name] = {key: value for key, value in (("eps", PRESETS.get(preset).eps), ("seed", 0))
                              if key in accepted}
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
