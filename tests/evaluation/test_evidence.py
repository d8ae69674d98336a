"""The evidence behind a number, end to end through `dsnet eval` and `dsnet compare`: the security and convergence
curves, a randomised model found and attacked with EOT, query counts, and comparisons that refuse to mix points.

A tiny DS-Net is trained once for the module without attacks (about 3 s), so that it has points to lose.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
import torch.nn as nn
from dsnet_testing import LEARNING_RECIPE

from dsnet.cli import main
from dsnet.config import config_from_dict
from dsnet.errors import ConfigError
from dsnet.evaluation import EvalConfig, evaluate, load_model_for_evaluation
from dsnet.evaluation.compare import compare_reports
from dsnet.training.trainer import train

FAST = ["--batch-size", "16", "--no-progress"]


@pytest.fixture(scope="module")
def checkpoint(cifar10_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("run")
    train(config_from_dict(LEARNING_RECIPE), cifar10_dir, run)
    return run / "selected.pt"


@pytest.fixture(scope="module")
def curves(checkpoint: Path, cifar10_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("curves") / "eval"
    code = main(["eval", "--checkpoint", str(checkpoint), "--data-dir", str(cifar10_dir), "--n-examples", "24",
                 "--attacks", "fgsm", "pgd", "--curve", "eps", "--curve", "steps", "--curve-steps", "4", "8", "16",
                 "--curve-restarts", "2", "--out-dir", str(out), *FAST])
    assert code == 0
    return out


def _report(folder: Path) -> dict:
    return json.loads((folder / "report.json").read_text())


def test_the_security_curve_reaches_zero_and_is_not_above_the_fixed_eps_attacks(curves: Path) -> None:
    report = _report(curves)
    with open(curves / "curve_eps.csv", newline="") as handle:
        rows = [(float(r["eps"]), float(r["accuracy"])) for r in csv.DictReader(handle)]
    assert rows[0] == (0.0, pytest.approx(report["accuracy"]["clean"]))  # ε = 0: the clean accuracy
    assert [e for e, _ in rows] == sorted({e for e, _ in rows}) and rows[-1][1] == 0.0
    assert all(b <= a for (_, a), (_, b) in zip(rows, rows[1:]))
    curve = report["curves"]["eps"]
    assert curve["zero_eps"] == pytest.approx(rows[-1][0]) and curve["never_broken"] == 0
    assert curve["accuracy_at_eps"] <= report["accuracy"]["pgd"] + 0.01  # the check's tolerance
    checks = {c["name"]: c for c in report["sanity_checks"]}
    assert checks["security_curve"]["status"] == "passed"
    assert len(checks["security_curve"]["details"]["compared_with"]) >= 5  # FGSM, PGD-20 and the sweep
    assert (curves / "curve_eps.png").stat().st_size > 1000
    assert "## Security curve" in (curves / "report.md").read_text()


def test_the_convergence_curve_runs_pgd_and_apgd_on_the_same_points(curves: Path) -> None:
    report = _report(curves)
    points = report["curves"]["steps"]["points"]
    assert [(p["attack"], p["steps"], p["restarts"]) for p in points] == [
        ("pgd", 4, 1), ("pgd", 8, 1), ("pgd", 16, 1), ("apgd", 4, 1), ("apgd", 8, 1), ("apgd", 16, 1),
        ("pgd", 16, 2)]
    pgd = [p["accuracy"] for p in points if p["attack"] == "pgd" and p["restarts"] == 1]
    assert pgd[-1] <= pgd[0] and report["curves"]["steps"]["reference"]["label"] == "PGD-20"
    assert points[0]["queries"]["forward_per_point"] == 5 and points[0]["queries"]["backward_per_point"] == 4
    check = {c["name"]: c for c in report["sanity_checks"]}["convergence"]
    assert check["status"] in ("passed", "failed") and "PGD-16" in check["message"]
    with open(curves / "curve_steps.csv", newline="") as handle:
        assert next(csv.reader(handle)) == ["attack", "steps", "restarts", "accuracy"]


def test_every_attack_reports_its_queries_and_speed(curves: Path) -> None:
    attacks = _report(curves)["attacks"]
    assert attacks["clean"]["adversarial_stats"]["queries"]["forward_images"] == 24
    pgd = attacks["pgd"]["adversarial_stats"]
    assert (pgd["queries"]["forward_per_point"], pgd["queries"]["backward_per_point"]) == (21, 20)  # PGD-20
    assert pgd["queries"]["points"] == pgd["n_attacked"] and pgd["images_per_s"] > 0
    assert "| 21 / 20 |" in (curves / "report.md").read_text()


def test_a_rerun_reuses_the_curves(curves: Path, checkpoint: Path, cifar10_dir: Path) -> None:
    before = _report(curves)["curves"]
    code = main(["eval", "--checkpoint", str(checkpoint), "--data-dir", str(cifar10_dir), "--n-examples", "24",
                 "--attacks", "fgsm", "pgd", "--curve", "eps", "--curve", "steps", "--curve-steps", "4", "8", "16",
                 "--curve-restarts", "2", "--out-dir", str(curves), *FAST])
    assert code == 0
    after = _report(curves)["curves"]
    assert after == before  # runtimes included: nothing was recomputed
    state = json.loads((curves / "eval_state.json").read_text())
    assert {"curve_eps", "curve_steps:apgd-16x1", "curve_steps:pgd-16x2"} <= set(state["extras"])


class Noisy(nn.Module):
    """A randomised defence: Gaussian noise on the input of a trained model."""

    def __init__(self, model: nn.Module, std: float = 0.15) -> None:
        super().__init__()
        self.model, self.std = model, std

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x + self.std * torch.randn_like(x))


def test_a_randomised_model_is_flagged_seeded_and_attacked_with_eot(checkpoint: Path, cifar10_dir: Path,
                                                                   tmp_path: Path) -> None:
    network = load_model_for_evaluation(checkpoint).model
    options = dict(dataset="cifar10", data_dir=cifar10_dir, n_examples=24, attacks=["fgsm", "pgd"], batch_size=16,
                   progress=False, sanity=False)
    plain = evaluate(model=Noisy(network), out_dir=tmp_path / "plain", **options)
    again = evaluate(model=Noisy(network), out_dir=tmp_path / "again", **options)
    assert plain.accuracy == again.accuracy  # the model's noise is drawn from a seeded generator
    assert any("randomised" in warning and "--eot 20" in warning for warning in plain.warnings)
    check = {c.name: c for c in plain.sanity_checks}["randomness"]
    assert check.status == "failed" and "FGSM, PGD-20" in check.message and "--eot 20" in check.message
    spread = plain.evidence.randomness["clean_spread"]
    assert spread["passes"] == 10 and spread["min"] <= spread["mean"] <= spread["max"]
    assert "Clean accuracy over 10 passes of the randomised model" in (tmp_path / "plain" / "report.md").read_text()

    averaged = evaluate(model=Noisy(network), out_dir=tmp_path / "eot", eot=10, **options)
    assert {c.name: c for c in averaged.sanity_checks}["randomness"].status == "passed"
    pgd = averaged.outcome("pgd")
    assert pgd.label == "PGD-20 (EOT-10)" and pgd.config["eot"] == 10
    assert pgd.stats["queries"]["backward_per_point"] == 200

    deterministic = evaluate(model=network, out_dir=tmp_path / "plain-net", **options)
    assert {c.name: c for c in deterministic.sanity_checks}["randomness"].status == "passed"
    assert deterministic.evidence.randomness == {"randomized": False, "probe_difference": 0.0}


def test_autoattack_version_and_eot_reach_the_attacks() -> None:
    plan = EvalConfig(data_dir="data", autoattack_version="rand", eot=5).resolve()
    assert plan.attack_overrides["autoattack"]["version"] == "rand"
    assert {name: s.get("eot") for name, s in plan.attack_overrides.items()} == {
        "fgsm": 5, "pgd": 5, "cw_inf": 5, "autoattack": None}
    with pytest.raises(ConfigError, match="--curve-steps takes increasing"):
        EvalConfig(data_dir="data", curve_steps=(20, 10))
    with pytest.raises(ConfigError, match="--curve needs a threat model"):
        EvalConfig(data_dir="data", threat_model="corruptions", curves=("eps",))


def test_compare_puts_evaluations_of_the_same_points_side_by_side(curves: Path, checkpoint: Path, cifar10_dir: Path,
                                                                  tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    other = tmp_path / "other"
    assert main(["eval", "--checkpoint", str(checkpoint), "--data-dir", str(cifar10_dir), "--n-examples", "24",
                 "--attacks", "pgd", "--curve", "eps", "--fmn-steps", "50", "--out-dir", str(other), "--no-sanity",
                 *FAST]) == 0
    out = tmp_path / "compare"
    assert main(["compare", str(curves), str(other / "report.json"), "--out-dir", str(out),
                 "--labels", "FMN-100 run,FMN-50 run"]) == 0
    printed = capsys.readouterr().out
    assert "| FMN-100 run |" in printed and "| Model | Params (M) | Clean | FGSM | PGD-20 | Worst case |" in printed
    assert r"\toprule" in (out / "compare.tex").read_text()
    assert (out / "compare_curves.png").stat().st_size > 1000
    fewer = tmp_path / "fewer"
    assert main(["eval", "--checkpoint", str(checkpoint), "--data-dir", str(cifar10_dir), "--n-examples", "16",
                 "--attacks", "fgsm", "--out-dir", str(fewer), "--no-sanity", *FAST]) == 0
    with pytest.raises(ConfigError, match=r"n 16 \(vs 24\); other evaluated images or labels"):
        compare_reports([curves, fewer], tmp_path / "refused")
    assert not (tmp_path / "refused").exists()


def test_the_curve_checks_fail_for_what_they_promise() -> None:
    from dsnet.evaluation.curves import (
        ConvergenceCurve,
        ConvergencePoint,
        SecurityCurve,
        check_convergence,
        check_security_curve,
    )

    standing = SecurityCurve("Linf", 0.03, [0.0, 0.01, float("inf"), 0.05], {"steps": 10})
    check = check_security_curve(standing, [])
    assert check.status == "failed" and "never reaches 0: 1 point(s)" in check.message
    above = SecurityCurve("Linf", 0.03, [0.0, 0.01, 0.04, 0.05], {"steps": 10})
    fixed = [{"label": "PGD-20", "eps": 0.03, "accuracy": 0.25, "first": 4}]
    check = check_security_curve(above, fixed)
    assert check.status == "failed" and "50.00% at ε = 0.03 where PGD-20 leaves 25.00%" in check.message
    assert check_security_curve(above, [{**fixed[0], "accuracy": 0.5}]).status == "passed"

    def point(attack: str, steps: int, accuracy: float, restarts: int = 1) -> ConvergencePoint:
        return ConvergencePoint(attack, f"{attack.upper()}-{steps}", steps, restarts, accuracy, 0)

    moving = ConvergenceCurve([point("pgd", 10, 0.40), point("pgd", 20, 0.36), point("pgd", 40, 0.30)])
    check = check_convergence(moving)
    assert check.status == "failed" and "PGD-40 is 6.00% below PGD-20" in check.message
    settled = ConvergenceCurve([point("pgd", 20, 0.305), point("pgd", 40, 0.30), point("pgd", 40, 0.28, 5)])
    check = check_convergence(settled)
    assert check.status == "failed" and "PGD-40 is 2.00% below PGD-40" in check.message  # the restarts still bite
    done = ConvergenceCurve([point("pgd", 20, 0.305), point("pgd", 40, 0.30), point("pgd", 40, 0.30, 5)])
    assert check_convergence(done).status == "passed"
