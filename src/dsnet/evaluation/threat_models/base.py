"""A threat model: an ε-ball of a norm, the attacks that search it, and how they are evaluated and checked.

A `ThreatModel` is data (a norm, its default attacks, its presets, the ε where the sanity sweep must reach 0, the
leaderboard's ε) plus what the evaluator and the report ask of a `Suite`. Each threat model registers itself in its
own file of this package (`linf.py`, `l2.py`, `l1.py`), so a new one is one file:

    register_threat_model(ThreatModel("Linf", "L∞", "Linf", DEFAULT_ATTACKS, presets, "paper", 0.5, ...))

A step that depends on the training objective is written `PAIRED_STEP` in a preset and resolved from the objective
registry by `resolve_preset(preset, trained_with)`, so a new objective declares its step in its own file and no
table here changes. Every value is explicit and comes back from each attack's `config()`.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from dsnet.attacks.base import ATTACKS, Attack, build_attack
from dsnet.errors import ConfigError
from dsnet.evaluation.suite import Metric, Preset, Suite
from dsnet.registry import Registry, suggest, unknown_name

__all__ = ["ThreatModel", "THREAT_MODELS", "register_threat_model", "get_threat_model", "PAIRED_STEP",
           "DEFAULT_ATTACKS", "METRIC_ORDER", "SWEEP_STEPS", "norm_preset", "resolve_preset", "build_attacks"]

PAIRED_STEP = "paired with the training objective"
"""Stands for the step the paper pairs with the model's training objective (`Objective.paper_eval_step`)."""

DEFAULT_ATTACKS = ("fgsm", "pgd", "cw_inf", "autoattack")
"""What `dsnet eval` runs by default under L∞: the paper's four attacks."""

METRIC_ORDER = ("clean", "fgsm", "fgsm_textbook", "pgd", "cw_inf", "cw_l2", "autoattack")
"""The paper's column order (Natural, FGSM, PGD-20, CW∞, AA); other attacks follow in the order given."""

SWEEP_STEPS = 20
"""PGD steps of the sanity sweep (step ε/4 at every ε)."""


def _pct(value: float) -> str:
    return f"{100 * value:.2f}"


@dataclass(frozen=True)
class ThreatModel(Suite):
    """One threat model: what is perturbed, how far, and how it is evaluated.

    Attributes:
        name: as RobustBench spells it ("Linf", "L2", "L1").
        symbol: for reports ("L∞").
        norm_name: the ball's norm.
        default_attacks: what runs when `--attacks` is not given.
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
    norm_name: str
    default_attacks: tuple[str, ...]
    presets: Registry[Preset]
    default_preset: str
    sweep_large_eps: float | None
    leaderboard_eps: Mapping[str, float] = field(default_factory=dict)
    usual_eps: float = float("nan")
    max_eps: float = float("nan")

    @property
    def norm(self) -> str:
        return self.norm_name

    def out_dir_name(self, preset: str) -> str:
        """`eval-<preset>` under L∞ (the paper's threat model), `eval-<name>-<preset>` otherwise."""
        return f"eval-{preset}" if self.key == "linf" else f"eval-{self.name}-{preset}"

    # --------------------------------------------------------------------------------------------- settings
    def metric_names(self, requested: Iterable[str] | None, preset: Preset) -> tuple[str, ...]:
        """The attacks to run, in the paper's order: this threat model's, and registered attacks that no threat model
        claims (yours); comma-separated items are split; "clean" is always computed and left out here."""
        claimed = {name for key in THREAT_MODELS.names() for p in THREAT_MODELS.get(key).presets.names()
                   for name in THREAT_MODELS.get(key).presets.get(p)}
        ours = {name for p in self.presets.names() for name in self.presets.get(p)}
        valid = ["clean", *(n for n in ATTACKS.names() if n in ours or n not in claimed)]
        unique = self.requested_names(requested, self.default_attacks, valid, "attack")
        order = {name: i for i, name in enumerate(METRIC_ORDER)}
        return tuple(sorted(unique, key=lambda name: (order.get(name, len(order)), unique.index(name))))

    def validate(self, config: Any, preset: Preset, problems: Any) -> None:
        if config.eps is not None and problems.number("--eps", config.eps, strict=True) and config.eps > self.max_eps:
            unit = " (ε is in pixel units of images in [0, 1]: 8/255 ≈ 0.031, not 8)" if self.norm == "Linf" else ""
            problems.add(f"--eps {config.eps:g} is outside (0, {self.max_eps:.4g}], the largest distance between two "
                         f"images under {self.name}{unit}")
        if config.severities is not None:
            problems.add(f"--severities applies to the corruptions, not to {self.name}")

    def radius(self, preset: Preset, eps: float | None) -> float:
        return float(eps if eps is not None else preset.eps)

    # --------------------------------------------------------------------------------------------- evaluation
    def metrics(self, evaluation: Any) -> list[Metric]:
        """One metric per attack, through its `evaluate` (the one robust-flags loop; AutoAttack runs the reference
        on the whole set and keeps its per-stage accuracies and check warnings)."""
        plan, model = evaluation.plan, evaluation.loaded
        overrides = plan.attack_overrides
        stray = sorted(set(overrides) - set(plan.metric_names))
        if stray:
            raise ConfigError(f"overrides for {', '.join(stray)}, which this evaluation does not run "
                              f"({', '.join(plan.metric_names) or 'no attack'})")
        if not plan.metric_names:
            return []
        settings = {name: {"seed": plan.config.seed, **overrides.get(name, {})} for name in plan.metric_names}
        attacks = build_attacks(plan.preset.name, model.trained_with, plan.metric_names, settings, threat_model=self,
                                eps=plan.config.eps)
        return [Metric(name, attack.label, attack.resume_key(evaluation.ctx.world_size),
                       lambda a=attack: a.evaluate(model.model, evaluation.images, evaluation.labels,
                                                   clean=evaluation.clean, batch_size=plan.config.batch_size,
                                                   progress=evaluation.bar(a.label), state_dir=evaluation.out),
                       lambda a=attack: a.discard_state(evaluation.out))
                for name, attack in attacks.items()]

    def sweep(self, evaluation: Any, state: Any, clean: Any) -> list[tuple[float, float]] | None:
        """PGD accuracy at ε × (0.5, 1, 2, 4) and at a large ε, in this norm, on the first `sanity_n` points (stored
        for resume); None without a sweep."""
        import logging

        from dsnet.attacks.gradient import PGD
        from dsnet.evaluation.sanity import SWEEP_EPS_FACTORS

        config, eps = evaluation.plan.config, evaluation.plan.eps
        if not config.sanity or self.sweep_large_eps is None:
            return None
        n = min(config.sanity_n, evaluation.selection.n)
        levels = [factor * eps for factor in SWEEP_EPS_FACTORS]
        if self.sweep_large_eps > levels[-1]:
            levels.append(self.sweep_large_eps)
        settings = {"n": n, "eps": levels, "steps": SWEEP_STEPS, "step_size": "eps/4", "seed": config.seed}
        if self.norm != "Linf":
            settings["norm"] = self.norm
        if state.sweep is not None and state.sweep.get("config") == settings:
            return [(float(e), float(a)) for e, a in state.sweep["accuracy"]]
        results = []
        for level in levels:
            attack = PGD(eps=level, step_size=level / 4, steps=SWEEP_STEPS, seed=config.seed, norm=self.norm)
            run = attack.evaluate(evaluation.loaded.model, evaluation.images[:n], evaluation.labels[:n],
                                  clean=clean[:n], batch_size=config.batch_size,
                                  progress=evaluation.bar(f"sweep ε={level:.4g}"))
            results.append((level, int(run.flags.sum()) / max(n, 1)))
        state.record_sweep({"config": settings, "accuracy": [[e, a] for e, a in results]})
        if evaluation.ctx.is_main:
            logging.getLogger("dsnet.evaluation.evaluator").info(
                "ε sweep (PGD-%d %s on %d points): %s", SWEEP_STEPS, self.name, n,
                ", ".join(f"{100 * a:.1f}% at {e:.4g}" for e, a in results))
        return results

    def checks(self, evaluation: Any, sweep: list[tuple[float, float]] | None) -> list[Any]:
        from dsnet.evaluation.sanity import (
            check_eps_sweep,
            check_ordering,
            check_perturbations,
            check_pgd_vs_margin,
            check_square,
        )

        config, outcomes = evaluation.plan.config, evaluation.outcomes
        by_name = {o.name: o for o in outcomes}
        labels = {o.name: o.short_label for o in outcomes}
        aa = by_name["autoattack"].extra if "autoattack" in by_name else None
        if not config.sanity:
            why = "skipped (--no-sanity)."
        elif self.sweep_large_eps is None:
            why = f"skipped: the {self.name} presets have no PGD of their own to sweep."
        else:
            why = ""
        return [
            check_ordering({o.name: o.accuracy for o in outcomes}, labels),
            check_eps_sweep(sweep, min(config.sanity_n, evaluation.selection.n), reason_skipped=why),
            check_square(aa.get("stage_accuracy") if aa else None, aa.get("stages_run") if aa else None),
            check_perturbations({o.name: o.stats for o in outcomes if o.name != "clean"}, labels,
                                evaluation.plan.eps, norm=self.norm),
            check_pgd_vs_margin({o.name: o.flags for o in outcomes}, labels),
        ]

    def step_note(self, evaluation: Any) -> str:
        from dsnet.objectives import OBJECTIVES

        plan, loaded = evaluation.plan, evaluation.loaded
        trained_with, source = loaded.trained_with, loaded.trained_with_source
        resolved = resolve_preset(plan.preset.name, trained_with, self, plan.config.eps)
        if "pgd" not in resolved:
            return (f"no PGD in the {self.name} {plan.preset.name} preset; the model was trained with "
                    f"'{trained_with}' ({source})")
        step = resolved["pgd"]["step_size"]
        cw = "CW∞" if self.norm == "Linf" else f"CW-{self.name}"
        scaled = " scaled with --eps" if plan.config.eps is not None else ""
        if self.key == "linf" and plan.preset.name == "paper":
            why = OBJECTIVES.get(trained_with).paper_eval_step_note
            return (f"PGD and {cw} step {step:.5g} ({why}{scaled}); the model was trained with '{trained_with}' "
                    f"({source})")
        return (f"PGD and {cw} step {step:.5g} (ε/4 for every model under the {self.name} {plan.preset.name} "
                f"preset{scaled}); the model was trained with '{trained_with}' ({source})")

    def warnings(self, evaluation: Any) -> list[str]:
        eps = evaluation.plan.eps
        if eps > self.usual_eps:
            return [f"ε = {eps:.4g} is beyond the {self.usual_eps:.4g} that {self.name} evaluations usually go up "
                    "to; numbers at this radius are not comparable with published ones"]
        return []

    # ------------------------------------------------------------------------------------------------- report
    def threat_line(self, report: Any) -> str:
        from dsnet.evaluation.report import eps_fraction

        radius = f"ε = {report.eps:g}" + (f" ({eps_fraction(report.eps)})" if self.norm == "Linf" else "")
        custom = [part for part in ("custom overrides" if report.overrides else "",
                                    "ε given by --eps" if report.eps_override is not None else "") if part]
        return f"- threat model: {self.symbol}, {radius}, preset **{report.preset}**" + (
            f" with {' and '.join(custom)}" if custom else "")

    def headline(self, report: Any) -> str:
        return f"worst case {_pct(report.worst_case_accuracy)}%"

    def summary(self, report: Any) -> list[str]:
        header = [o.short_label for o in report.outcomes] + ["Worst case"]
        values = [_pct(o.accuracy) for o in report.outcomes] + [_pct(report.worst_case_accuracy)]
        widths = [max(len(h), len(v)) for h, v in zip(header, values)]
        failed = report.failed_checks
        checks = f"{len(failed)} sanity check(s) failed" if failed else "sanity checks passed or skipped"
        return ["  ".join(h.rjust(w) for h, w in zip(header, widths)),
                "  ".join(v.rjust(w) for v, w in zip(values, widths)),
                f"n = {report.n}, {self.name} eps = {report.eps:g}; {checks}; report: {report.out_dir / 'report.md'}"]

    def leaderboard_numbers(self, report: Mapping[str, Any]) -> dict[str, Any]:
        import math

        from dsnet.evaluation.report import claim_eps

        accuracy = report.get("accuracy") or {}
        threat = report.get("threat_model") or {}
        if "autoattack" not in accuracy:
            raise ConfigError("the report has no AutoAttack result; run `dsnet eval` with autoattack (the default) "
                              "before writing a RobustBench claim")
        dataset = report.get("dataset", "")
        eps, board = float(threat["eps"]), self.leaderboard_eps[dataset]
        if not math.isclose(eps, board, rel_tol=1e-6) or threat.get("custom_overrides"):
            why = "custom attack settings" if math.isclose(eps, board, rel_tol=1e-6) else f"ε = {claim_eps(eps)}"
            raise ConfigError(f"the report was made with {why}, but RobustBench's {self.name} {dataset} leaderboard is "
                              f"at ε = {claim_eps(board)} with the standard attacks; evaluate again with "
                              f"`dsnet eval --threat-model {self.name} --preset standard` for a claim")
        aa = _pct(accuracy["autoattack"])
        return {"eps": claim_eps(eps), "clean_acc": _pct(accuracy["clean"]), "reported": aa, "autoattack_acc": aa}


THREAT_MODELS: Registry[ThreatModel] = Registry("threat model", hint="--threat-model Linf, L2 or L1",
                                                package="dsnet.evaluation.threat_models",
                                                order=("linf", "l2", "l1"))
"""Every norm-ball threat model, registered by `register_threat_model` in its own file of this package."""


def register_threat_model(threat: ThreatModel) -> ThreatModel:
    """Registers a threat model under its lowercase name (in the file that defines it) and returns it."""
    THREAT_MODELS.add(threat.key, threat)
    return threat


def get_threat_model(name: str | ThreatModel) -> ThreatModel:
    """The threat model called `name`, in any case ("Linf", "linf", "L2").

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


def norm_preset(name: str, eps: float, step: float | str, norm: str, description: str) -> Preset:
    """The preset of a threat model whose attacks are ours (FGSM, PGD-20, CW-30, AutoAttack) at `eps`."""
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
    chosen = threat.preset(preset)
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
    settings = resolve_preset(preset, trained_with, threat, eps)
    chosen = threat.preset(preset)
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
