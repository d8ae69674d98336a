"""The gradient-masking sanity checks and the report helpers: pure functions on numbers."""

from __future__ import annotations

import json

import torch

from dsnet.evaluation import check_eps_sweep, check_ordering, check_perturbations, check_square, eps_fraction
from dsnet.evaluation.report import claim_eps
from dsnet.evaluation.report import dumps_json, flags_from_string, flags_to_string

LABELS = {"clean": "Natural", "fgsm": "FGSM", "pgd": "PGD-20", "cw_inf": "CW∞-30", "autoattack": "AA"}


def test_ordering_passes_when_stronger_attacks_leave_fewer_points() -> None:
    check = check_ordering({"clean": 0.8, "fgsm": 0.5, "pgd": 0.45, "cw_inf": 0.46, "autoattack": 0.44}, LABELS)
    assert check.status == "passed"
    assert "Natural 80.00% ≥ FGSM 50.00% ≥ PGD-20 45.00% ≥ AA 44.00%" in check.message


def test_ordering_flags_pgd_above_fgsm_and_an_attack_above_clean() -> None:
    check = check_ordering({"clean": 0.8, "fgsm": 0.4, "pgd": 0.5, "cw_inf": 0.9}, LABELS)
    assert check.status == "failed"
    assert "PGD-20 50.00% > FGSM 40.00%" in check.message and "CW∞-30 90.00% > Natural" in check.message
    assert check_ordering({"clean": 0.8}, LABELS).status == "skipped"


def test_eps_sweep_wants_falling_accuracy_that_reaches_zero() -> None:
    good = [(0.0155, 0.6), (0.031, 0.45), (0.062, 0.2), (0.124, 0.02), (0.5, 0.0)]
    assert check_eps_sweep(good, 100).status == "passed"
    plateau = [(0.0155, 0.6), (0.031, 0.5), (0.062, 0.5), (0.124, 0.5), (0.5, 0.5)]
    failed = check_eps_sweep(plateau, 100)
    assert failed.status == "failed" and "survive ε=0.5" in failed.message
    rising = [(0.0155, 0.3), (0.031, 0.5), (0.062, 0.1), (0.124, 0.0), (0.5, 0.0)]
    assert "rises" in check_eps_sweep(rising, 100).message
    skipped = check_eps_sweep(None, 0, reason_skipped="skipped (--no-sanity).")
    assert skipped.status == "skipped" and "--no-sanity" in skipped.message


def test_square_beating_white_box_attacks_is_flagged() -> None:
    stages = {"clean": 0.8, "apgd-ce": 0.5, "apgd-t": 0.48, "fab-t": 0.48, "square": 0.47}
    run = list(stages)[1:]
    assert check_square(stages, run).status == "failed"
    assert check_square({**stages, "square": 0.479}, run).status == "passed"  # 0.1 % <= 0.2 %
    assert check_square({**stages, "square": 0.0, "fab-t": 0.0, "apgd-t": 0.0}, run[:1]).status == "skipped"
    assert check_square(None, None).status == "skipped"


def test_perturbation_bounds() -> None:
    ok = {"pgd": {"max_linf": 0.031, "min_value": 0.0, "max_value": 1.0, "nan_count": 0, "n_attacked": 5,
                  "eps": 0.031}}
    assert check_perturbations(ok, LABELS, 0.031).status == "passed"
    bad = {"pgd": {**ok["pgd"], "max_linf": 0.05, "nan_count": 2}}
    check = check_perturbations(bad, LABELS, 0.031)
    assert check.status == "failed" and "NaN" in check.message and "0.050000 > ε" in check.message


def test_eps_strings_and_flag_strings() -> None:
    assert eps_fraction(8 / 255) == "8/255" and eps_fraction(0.031) == "7.905/255"
    assert claim_eps(8 / 255) == "8/255" and claim_eps(0.031) == "0.031"
    flags = torch.tensor([True, False, True, True])
    assert flags_to_string(flags) == "1011" and torch.equal(flags_from_string("1011"), flags)
    text = dumps_json({"indices": [0, 1, 2], "nested": {"x": [0.5, 1e-3]}, "names": ["a", "b"]})
    assert '"indices": [0, 1, 2]' in text and json.loads(text)["nested"]["x"] == [0.5, 1e-3]
