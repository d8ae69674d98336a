"""Threat models and their evaluation presets, as data, and the attacks they build.

A threat model (`THREAT_MODELS`, spelt as RobustBench spells its leaderboards) is data: a norm, the attacks
that run by default, its presets, the ε where the sanity sweep must reach 0, and the leaderboard ε per dataset.
One evaluator runs them all (`dsnet.evaluation.evaluator`).

- **Linf** (the paper's). Two presets (SPEC.md §5, reference/dsnet_reference.md §5):
  - `paper`: what the DS-Net authors evaluate with. ε = 0.031 (not 8/255); FGSM = uniform random start then one
    full-ε step; PGD-20 and CW∞-30 (κ = 50) with the step the paper pairs with the model's training objective
    (`Objective.paper_eval_step`: 0.031/4 for AT and MART models, 0.003 for TRADES models); AutoAttack standard
    at 0.031.
  - `standard`: the RobustBench threat model. ε = 8/255; the same attacks and step counts; step ε/4 = 2/255 for
    every model, whatever it was trained with; AutoAttack standard at 8/255.
- **L2**, preset `standard`: RobustBench's CIFAR L2 track, ε = 0.5. FGM (uniform start in the L2 ball, one
  normalised step of length ε), PGD-20 and CW-L2-30 (κ = 50) with step ε/4 = 0.125 (the L∞ preset's ratio), and
  the reference AutoAttack with `norm="L2"`.
- **L1**, preset `standard`: ε = 12 (Croce & Hein, ICML 2021, on CIFAR-10), the reference AutoAttack with
  `norm="L1"` (its own L1 settings: APGD with 5 restarts and its large-radius schedule). There is no
  first-order L1 attack of our own.
- **corruptions**, preset `standard`: CIFAR-10-C / CIFAR-100-C, the 15 benchmark corruptions at severities 1 to
  5, accuracy on each and the mean over all 75, as RobustBench computes it.

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
from dsnet.registry import Registry, suggest, unknown_name

__all__ = ["Preset", "PRESETS", "ThreatModel", "THREAT_MODELS", "get_threat_model", "PAIRED_STEP",
           "DEFAULT_ATTACKS", "trained_with_names", "resolve_preset", "build_attacks", "get_preset"]

PAIRED_STEP = "paired with the training objective"
"""Stands for the step the paper pairs with the model's training objective (`Objective.paper_eval_step`)."""

DEFAULT_ATTACKS = ("fgsm", "pgd", "cw_inf", "autoattack")
"""What `dsnet eval` runs by default under L∞: the paper's four attacks."""


@dataclass(frozen=True)
class Preset(Mapping[str, Mapping[str, Any]]):
    """A named set of attack settings: attack name -> constructor arguments (a mapping, read-only).

    Attributes:
        name: the preset's name (`--preset`).
        eps: the radius of every attack, in pixel units (nan for corruptions).
        description: one sentence for reports.
        attacks: attack name -> settings; a `step_size` of `PAIRED_STEP` is resolved per training objective.
        corruptions: for the corruptions threat model, the corruptions evaluated.
        severities: for the corruptions threat model, the severities evaluated.
    """

    name: str
    eps: float
    description: str
    attacks: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    corruptions: tuple[str, ...] = ()
    severities: tuple[int, ...] = ()

    def __getitem__(self, name: str) -> Mapping[str, Any]:
        return self.attacks[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self.attacks)

    def __len__(self) -> int:
        return len(self.attacks)


@dataclass(frozen=True)
class ThreatModel:
    """One threat model: what is perturbed, how far, and how it is evaluated.

    Attributes:
        name: as RobustBench spells it ("Linf", "L2", "L1", "corruptions").
        symbol: for reports ("L∞").
        norm: the ball's norm, None for corruptions.
        default_attacks: what runs when `--attacks` is not given (corruption names for corruptions).
        presets: the presets of this threat model.
        default_preset: the preset `dsnet eval` uses when none is given.
        sweep_large_eps: the large ε where PGD must leave about no point (None: no ε sweep).
        leaderboard_eps: dataset -> the RobustBench leaderboard's ε (exports are refused at any other ε).
        usual_eps: the largest ε the field usually evaluates at (a larger `--eps` is noted in the report).
        max_eps: the largest ε that means anything: the distance between the two farthest 32x32 RGB images in
            [0, 1] (a larger `--eps` is an error).
    """

    name: str
    symbol: str
    norm: str | None
    default_attacks: tuple[str, ...]
    presets: Registry[Preset]
    default_preset: str
    sweep_large_eps: float | None
    leaderboard_eps: Mapping[str, float] = field(default_factory=dict)
    usual_eps: float = float("nan")
    max_eps: float = float("nan")

    @property
    def key(self) -> str:
        """The registry name (lowercase)."""
        return self.name.lower()


def _norm_preset(name: str, eps: float, step: float | str, norm: str, description: str) -> Preset:
    base = {} if norm == "Linf" else {"norm": norm}
    cw = "cw_inf" if norm == "Linf" else "cw_l2"
    return Preset(name, eps, description, {
        "fgsm": {"eps": eps, "random_start": True, "seed": 0, **base},
        "fgsm_textbook": {"eps": eps, "seed": 0, **base},
        "pgd": {"eps": eps, "step_size": step, "steps": 20, "restarts": 1, "random_start": True, "seed": 0, **base},
        cw: {"eps": eps, "step_size": step, "steps": 30, "kappa": 50.0, "restarts": 1, "random_start": True,
             "seed": 0},
        "autoattack": {"eps": eps, "version": "standard", "seed": 0, **base},
    })


PRESETS: Registry[Preset] = Registry("attack preset", hint="--preset paper or standard")
"""The L∞ presets (`paper`, `standard`); the other threat models' are `THREAT_MODELS.get(name).presets`."""
PRESETS.add("paper", _norm_preset(
    "paper", 0.031, PAIRED_STEP, "Linf",
    "the DS-Net authors' evaluation: ε = 0.031 (not 8/255); FGSM = uniform random start then one ε step; "
    "PGD-20 and CW∞-30 (κ = 50), uniform start, step 0.031/4 for AT/MART-trained models and 0.003 for "
    "TRADES-trained models; AutoAttack version 'standard' through the reference code"))
PRESETS.add("standard", _norm_preset(
    "standard", 8 / 255, 2 / 255, "Linf",
    "the RobustBench threat model: ε = 8/255; FGSM = uniform random start then one ε step; PGD-20 and "
    "CW∞-30 (κ = 50), uniform start, step 2/255 (ε/4) for every model; AutoAttack version 'standard' "
    "through the reference code"))

_L2_PRESETS: Registry[Preset] = Registry("L2 attack preset", hint="--preset standard")
_L2_PRESETS.add("standard", _norm_preset(
    "standard", 0.5, 0.125, "L2",
    "RobustBench's L2 threat model: ε = 0.5; FGM = uniform start in the L2 ball then one normalised step of "
    "length ε; PGD-20 and CW-L2-30 (κ = 50), uniform start, normalised-gradient steps of 0.125 (ε/4); AutoAttack "
    "version 'standard' with norm L2 through the reference code"))

_L1_PRESETS: Registry[Preset] = Registry("L1 attack preset", hint="--preset standard")
_L1_PRESETS.add("standard", Preset(
    "standard", 12.0,
    "ε = 12 in L1 (Croce & Hein 2021 on CIFAR-10); AutoAttack version 'standard' with norm L1 through the "
    "reference code (APGD-CE with 5 restarts and APGD-T, both with the large-radius schedule, then FAB-T and "
    "Square)",
    {"autoattack": {"eps": 12.0, "version": "standard", "seed": 0, "norm": "L1"}}))


def _corruption_presets() -> Registry[Preset]:
    from dsnet.data.corruptions import CORRUPTIONS, SEVERITIES

    presets: Registry[Preset] = Registry("corruption preset", hint="--preset standard")
    presets.add("standard", Preset(
        "standard", float("nan"),
        "the common corruptions of Hendrycks & Dietterich (ICLR 2019): CIFAR-10-C / CIFAR-100-C, 15 corruptions "
        "at severities 1 to 5, accuracy on each and the mean over all 75 (RobustBench's corruptions track)",
        corruptions=CORRUPTIONS, severities=SEVERITIES))
    return presets


THREAT_MODELS: Registry[ThreatModel] = Registry("threat model", hint="--threat-model Linf, L2, L1 or corruptions")
_PIXELS = 3 * 32 * 32
THREAT_MODELS.add("linf", ThreatModel("Linf", "L∞", "Linf", DEFAULT_ATTACKS, PRESETS, "paper", 0.5,
                                      {"cifar10": 8 / 255, "cifar100": 8 / 255}, usual_eps=16 / 255, max_eps=1.0))
THREAT_MODELS.add("l2", ThreatModel("L2", "L2", "L2", ("fgsm", "pgd", "cw_l2", "autoattack"), _L2_PRESETS,
                                    "standard", 8.0, {"cifar10": 0.5}, usual_eps=2.0, max_eps=_PIXELS ** 0.5))
THREAT_MODELS.add("l1", ThreatModel("L1", "L1", "L1", ("autoattack",), _L1_PRESETS, "standard", None,
                                    usual_eps=24.0, max_eps=float(_PIXELS)))
THREAT_MODELS.add("corruptions", ThreatModel("corruptions", "common corruptions", None, (), _corruption_presets(),
                                             "standard", None, {"cifar10": float("nan"), "cifar100": float("nan")}))


def get_threat_model(name: str | ThreatModel) -> ThreatModel:
    """The threat model called `name`, in any case ("Linf", "linf", "L2", "corruptions").

    Raises:
        UnknownNameError: for another name, with the valid ones.
    """
    if isinstance(name, ThreatModel):
        return name
    key = str(name).lower()
    if key in ("inf", "l_inf"):
        key = "linf"
    if key not in THREAT_MODELS:
        raise unknown_name("threat model", name, [THREAT_MODELS.get(n).name for n in THREAT_MODELS.names()])
    return THREAT_MODELS.get(key)


def get_preset(threat_model: str | ThreatModel, preset: str | None) -> Preset:
    """The preset called `preset` of a threat model; None for the threat model's default.

    Raises:
        UnknownNameError: for an unknown threat model or preset, with the valid ones.
    """
    threat = get_threat_model(threat_model)
    name = threat.default_preset if preset is None else preset
    if name not in threat.presets:
        raise unknown_name(f"{threat.name} preset", name, threat.presets.names())
    return threat.presets.get(name)


def trained_with_names() -> list[str]:
    """The training objectives a preset can resolve a step for: every registered objective."""
    from dsnet.objectives import OBJECTIVES

    return OBJECTIVES.names()


def resolve_preset(preset: str | None, trained_with: str, threat_model: str | ThreatModel = "Linf",
                   eps: float | None = None) -> dict[str, dict[str, Any]]:
    """The settings of every attack of `preset` for a model trained with `trained_with`.

    Args:
        preset: a preset of the threat model ("paper" or "standard" under L∞); None for its default.
        trained_with: the model's training objective (a registered objective name; decides the paper's step).
        threat_model: "Linf", "L2", "L1" (case does not matter).
        eps: a radius that replaces the preset's; every step size is scaled with it, so the preset's ratio of
            step to ε is kept.

    Returns:
        attack name -> constructor arguments, all plain values (a fresh copy).

    Raises:
        UnknownNameError: for an unknown threat model, preset or objective.
    """
    from dsnet.objectives import OBJECTIVES

    threat = get_threat_model(threat_model)
    chosen = get_preset(threat, preset)
    if trained_with not in OBJECTIVES:
        raise unknown_name("training objective", trained_with, OBJECTIVES.names())
    paired = OBJECTIVES.get(trained_with).paper_eval_step
    resolved = {name: {key: paired if value == PAIRED_STEP else value for key, value in settings.items()}
                for name, settings in chosen.items()}
    if eps is not None:
        scale = eps / chosen.eps
        for settings in resolved.values():
            settings["eps"] = eps
            if "step_size" in settings:
                settings["step_size"] = settings["step_size"] * scale
    return resolved


def build_attacks(
    preset: str | None,
    trained_with: str,
    names: Iterable[str] | None = None,
    overrides: Mapping[str, Mapping[str, Any]] | None = None,
    *,
    threat_model: str | ThreatModel = "Linf",
    eps: float | None = None,
) -> dict[str, Attack]:
    """Builds the attacks of a preset.

    Args:
        preset: a preset of the threat model (see `THREAT_MODELS`); None for its default.
        trained_with: the model's training objective.
        names: attacks to build, in order; default the threat model's default attacks. A registered attack that
            the preset does not list gets the preset's ε, its norm and seed 0 (where it takes them) and its own
            defaults for everything else.
        overrides: attack name -> settings that replace the preset's (e.g. {"pgd": {"steps": 100}});
            None values are ignored, so unset command-line flags change nothing.
        threat_model: "Linf", "L2" or "L1".
        eps: a radius replacing the preset's (steps scale with it, see `resolve_preset`).

    Returns:
        name -> attack, in the order of `names`; each attack's `config()` has every setting for the report.

    Raises:
        UnknownNameError: for an unknown threat model, preset, objective or attack.
        ConfigError: for an override of an attack not built, an unknown setting or a bad value, or an attack
            whose norm is not the threat model's (`cw_inf` under L2).
    """
    threat = get_threat_model(threat_model)
    if threat.norm is None:
        raise ConfigError(f"the {threat.name} threat model runs no attacks")
    settings = resolve_preset(preset, trained_with, threat, eps)
    chosen = get_preset(threat, preset)
    names = list(threat.default_attacks if names is None else names)
    for name in names:
        if name not in settings:  # a registered attack the preset does not list
            accepted = inspect.signature(ATTACKS.get(name)).parameters
            defaults = (("eps", chosen.eps if eps is None else eps), ("seed", 0), ("norm", threat.norm))
            settings[name] = {key: value for key, value in defaults if key in accepted
                              and not (key == "norm" and value == "Linf")}
    overrides = dict(overrides or {})
    stray = sorted(set(overrides) - set(names))
    if stray:
        raise ConfigError(
            f"overrides for {', '.join(map(repr, stray))}, which are not among the attacks built ({', '.join(names)})"
        )
    attacks: dict[str, Attack] = {}
    for name in names:
        changes = {key: value for key, value in overrides.get(name, {}).items() if value is not None}
        attack = build_attack(name, **{**settings[name], **changes})
        norm = attack.config().get("norm", "Linf")
        if norm != threat.norm:
            same = [n for n in threat.presets.get(threat.default_preset) if n not in ("fgsm", "fgsm_textbook", "pgd")]
            raise ConfigError(f"attack {name!r} perturbs in {norm}, not in the {threat.name} threat model; "
                              f"{suggest(name, same)}")
        attacks[name] = attack
    return attacks
