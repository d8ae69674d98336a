"""Presets carry the numbers of SPEC.md §5; build_attacks builds them, applies overrides, and refuses typos.

The objectives a preset resolves a step for, and the attacks it covers, come from their registries, so a new
objective or attack cannot be left out of a table here."""

from __future__ import annotations

import json

import pytest

from dsnet.attacks import ATTACKS, FGSM, PGD, AutoAttack, CWInf, build_attack
from dsnet.errors import ConfigError, UnknownNameError
from dsnet.evaluation.config import suite_names
from dsnet.evaluation.threat_models import DEFAULT_ATTACKS, PRESETS, THREAT_MODELS, build_attacks, resolve_preset
from dsnet.objectives import OBJECTIVES

TRAINED_WITH = OBJECTIVES.names()


EVIDENCE = {"apgd", "fmn"}
"""Attacks no preset runs: the curves run them (`--curve`), and `--attacks` can."""


def test_registry_names():
    assert set(ATTACKS.names()) == {"fgsm", "fgsm_textbook", "pgd", "cw_inf", "cw_l2", "autoattack", *EVIDENCE}
    assert set(PRESETS) == {"paper", "standard"}
    linf = set(ATTACKS.names()) - {"cw_l2", *EVIDENCE}
    assert all(set(PRESETS.get(name)) == linf for name in PRESETS)
    assert DEFAULT_ATTACKS == ("fgsm", "pgd", "cw_inf", "autoattack")
    # every registered attack is run by some threat model's preset, and every preset's attack is registered
    covered = {name for key in THREAT_MODELS.names() for preset in THREAT_MODELS.get(key).presets.names()
               for name in THREAT_MODELS.get(key).presets.get(preset)}
    assert covered == set(ATTACKS.names()) - EVIDENCE
    assert suite_names() == ["Linf", "L2", "L1", "corruptions"]  # the threat models in order, then corruptions


@pytest.mark.parametrize("trained_with", ["at", "mart", "trades"])
def test_paper_preset_has_the_papers_numbers(trained_with):
    step = 0.003 if trained_with == "trades" else 0.031 / 4
    attacks = build_attacks("paper", trained_with, names=list(PRESETS.get("paper")))
    fgsm, textbook, pgd, cw, aa = (attacks[n] for n in ("fgsm", "fgsm_textbook", "pgd", "cw_inf", "autoattack"))
    assert isinstance(fgsm, FGSM) and fgsm.eps == 0.031 and fgsm.random_start
    assert fgsm.config()["step_size"] == 0.031 and fgsm.config()["steps"] == 1
    assert isinstance(textbook, FGSM) and textbook.eps == 0.031 and not textbook.random_start
    assert isinstance(pgd, PGD)
    assert (pgd.eps, pgd.steps, pgd.step_size, pgd.restarts, pgd.random_start) == (0.031, 20, step, 1, True)
    assert isinstance(cw, CWInf)
    assert (cw.eps, cw.steps, cw.step_size, cw.kappa, cw.random_start) == (0.031, 30, step, 50.0, True)
    assert isinstance(aa, AutoAttack) and (aa.eps, aa.version, aa.seed) == (0.031, "standard", 0)


@pytest.mark.parametrize("trained_with", TRAINED_WITH)
def test_standard_preset_is_robustbench_eps_with_quarter_eps_steps(trained_with):
    attacks = build_attacks("standard", trained_with)
    assert list(attacks) == list(DEFAULT_ATTACKS)
    assert all(attack.config()["eps"] == 8 / 255 for attack in attacks.values())
    assert attacks["pgd"].config()["steps"] == 20 and attacks["pgd"].config()["step_size"] == 2 / 255
    assert attacks["cw_inf"].config()["steps"] == 30 and attacks["cw_inf"].config()["step_size"] == 2 / 255
    assert attacks["autoattack"].config()["version"] == "standard"


def test_every_objective_has_an_explicit_paper_step():
    for name in ("pgd", "cw_inf"):
        steps = {objective: resolve_preset("paper", objective)[name]["step_size"] for objective in TRAINED_WITH}
        assert set(steps) == set(OBJECTIVES.names()) and {"standard", "at", "trades", "mart"} <= set(steps)
        assert steps["trades"] == 0.003
        assert all(value == 0.031 / 4 for key, value in steps.items() if key != "trades")
        assert steps == {objective: OBJECTIVES.get(objective).paper_eval_step for objective in TRAINED_WITH}


def test_configs_are_complete_and_json_ready():
    attacks = build_attacks("paper", "at", names=list(PRESETS.get("paper")))
    for name, attack in attacks.items():
        config = attack.config()
        assert config["name"] == name
        assert json.loads(json.dumps(config)) == config
        resolved = resolve_preset("paper", "at")[name]
        assert all(config[key] == value for key, value in resolved.items()), name
    stages = attacks["autoattack"].config()["stage_settings"]
    assert list(stages) == ["apgd-ce", "apgd-t", "fab-t", "square"]
    assert stages["apgd-ce"]["n_iter"] == 100 and stages["apgd-t"]["n_target_classes"] == 9
    assert stages["fab-t"]["n_target_classes"] == 9 and stages["square"]["n_queries"] == 5000


def test_overrides_replace_preset_values_and_none_is_ignored():
    attacks = build_attacks(
        "paper", "at", names=["pgd", "cw_inf"], overrides={"pgd": {"steps": 100, "restarts": None}}
    )
    assert attacks["pgd"].steps == 100 and attacks["pgd"].restarts == 1
    assert attacks["cw_inf"].steps == 30
    assert PRESETS.get("paper")["pgd"]["steps"] == 20  # the preset itself is never changed


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (lambda: build_attacks("papr", "at"), UnknownNameError, "did you mean 'paper'"),
        (lambda: build_attacks("paper", "trade"), UnknownNameError, "trades"),
        (lambda: build_attacks("paper", "at", names=["pgd20"]), UnknownNameError, "pgd"),
        (lambda: build_attacks("paper", "at", names=["pgd"], overrides={"cw_inf": {"steps": 3}}), ConfigError, "cw_"),
        (lambda: build_attacks("paper", "at", overrides={"pgd": {"stepz": 3}}), ConfigError, "stepz"),
        (lambda: build_attacks("paper", "at", overrides={"pgd": {"steps": -1}}), ConfigError, "steps"),
        (lambda: build_attack("autoattack", eps=0.031, version="fast"), ConfigError, "version"),
        (lambda: build_attack("autoattack", eps=0.0), ConfigError, "eps"),
        (lambda: build_attack("autoattack", eps=0.031, batch_size=0), ConfigError, "batch_size"),
        (lambda: build_attack("fgsm_textbook", eps=0.031, random_start=True), ConfigError, "random_start"),
    ],
)
def test_mistakes_get_clear_errors(call, error, match):
    with pytest.raises(error, match=match):
        call()
