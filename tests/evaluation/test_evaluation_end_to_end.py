"""`dsnet eval` and `dsnet export` end to end on a tiny DS-Net trained once for this module.

AutoAttack runs the reference code with its budgets shrunk for the test (5 iterations, 2 target classes,
50 Square queries); everything else runs as a user would run it. The module trains in ~3 s and evaluates in
~10 s on one CPU thread.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from dsnet_testing import LEARNING_RECIPE, small_autoattack

from dsnet.attacks import FGSM, PGD, CWInf
from dsnet.cli import main
from dsnet.config import config_from_dict
from dsnet.errors import CheckpointError, ConfigError
from dsnet.evaluation import evaluate, export_model, load_exported, load_model_for_evaluation, robustbench_claim
from dsnet.models import create_model
from dsnet.training.trainer import train

RECIPE = LEARNING_RECIPE
FAST = ["--n-examples", "16", "--batch-size", "16", "--no-progress"]


@pytest.fixture(scope="module")
def checkpoint(cifar10_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("run")
    train(config_from_dict(RECIPE), cifar10_dir, run)
    return run / "selected.pt"


@pytest.fixture(scope="module")
def full_eval(checkpoint: Path, cifar10_dir: Path) -> Path:
    """The default evaluation (all five metrics, sanity sweep on 4 points) through the command line."""
    with small_autoattack():
        code = main(["eval", "--checkpoint", str(checkpoint), "--data-dir", str(cifar10_dir), *FAST,
                     "--sanity-n", "4"])
    assert code == 0
    return checkpoint.parent / "eval-paper"


def _report(folder: Path) -> dict[str, Any]:
    return json.loads((folder / "report.json").read_text())


def test_eval_writes_reports_with_the_five_metrics_in_the_papers_order(full_eval: Path) -> None:
    report = _report(full_eval)
    accuracy = report["accuracy"]
    assert list(accuracy) == ["clean", "fgsm", "pgd", "cw_inf", "autoattack", "worst_case"]
    assert accuracy["clean"] > 0.3  # the model learned something, so the attacks had work
    assert accuracy["autoattack"] <= accuracy["pgd"] <= accuracy["fgsm"] <= accuracy["clean"]
    assert accuracy["cw_inf"] <= accuracy["clean"]

    flags = report["points"]["robust_flags"]
    assert report["points"]["indices"] == list(range(16)) and report["n"] == 16
    worst = "".join("1" if all(f[i] == "1" for f in flags.values()) else "0" for i in range(16))
    assert report["points"]["worst_case_flags"] == worst and accuracy["worst_case"] == worst.count("1") / 16

    threat = report["threat_model"]
    assert threat["eps"] == 0.031 and threat["eps_255"] == "7.905/255" and threat["preset"] == "paper"
    assert "0.031/4" in threat["step_note"] and "standard" in threat["step_note"]  # trained with `standard`
    pgd = report["attacks"]["pgd"]["settings"]
    assert (pgd["steps"], pgd["step_size"], pgd["random_start"]) == (20, 0.031 / 4, True)
    assert report["attacks"]["cw_inf"]["settings"]["kappa"] == 50.0
    assert report["attacks"]["fgsm"]["settings"]["random_start"] is True
    assert report["attacks"]["autoattack"]["settings"]["version"] == "standard"
    assert "first 16" in report["selection"]["description"]
    assert set(report["versions"]) == {"dsnet", "torch", "pyautoattack", "python"}
    assert set(report["runtime_s"]) >= {"total", "clean", "fgsm", "pgd", "cw_inf", "autoattack"}

    aa = report["autoattack"]
    assert list(aa["stage_accuracy"]) == ["clean", "apgd-ce", "apgd-t", "fab-t", "square"]
    assert aa["stage_accuracy"]["square"] == accuracy["autoattack"] and isinstance(aa["warnings"], list)
    checks = {c["name"]: c for c in report["sanity_checks"]}
    assert set(checks) == {"ordering", "eps_sweep", "square", "perturbation_bounds", "pgd_vs_margin", "randomness"}
    assert checks["ordering"]["status"] == "passed" and checks["perturbation_bounds"]["status"] == "passed"
    assert all(c["status"] in ("passed", "failed", "skipped") and c["message"] for c in checks.values())
    assert [p["eps"] for p in report["eps_sweep"]["points"]] == pytest.approx([0.0155, 0.031, 0.062, 0.124, 0.5])

    markdown = (full_eval / "report.md").read_text()
    header = next(line for line in markdown.splitlines() if line.startswith("| Natural"))
    assert header == "| Natural | FGSM | PGD-20 | CW∞-30 | AA | Worst case |"
    assert "7.905/255" in markdown and "Sanity checks" in markdown and "APGD-CE" in markdown


def test_report_names_the_epoch_of_the_weights_the_math_mode_and_the_autoattack_batch(full_eval: Path) -> None:
    report = _report(full_eval)
    assert report["model"]["epoch"] == 3  # selected one epoch after the decay at 3, capped at the last epoch
    assert "(epoch 3)" in (full_eval / "report.md").read_text()
    math = report["device"]["math"]
    assert math["cudnn.conv"] == math["cuda.matmul"] == math["mkldnn.matmul"] == "ieee", math
    assert report["attacks"]["autoattack"]["settings"]["batch_size"] == 250  # the reference's, not --batch-size


class _MathProbe(torch.nn.Module):
    """A tiny classifier that records the fp32 math settings in force whenever it runs."""

    seen: list[dict[str, Any]] = []

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.fc = torch.nn.Linear(3 * 32 * 32, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        from dsnet.runtime.precision import math_mode

        self.seen.append({**math_mode(), "autocast": torch.is_autocast_enabled("cpu")})
        return self.fc(x.flatten(1))


def test_evaluation_runs_in_true_fp32_and_restores_the_callers_settings(cifar10_dir: Path, tmp_path: Path) -> None:
    from dsnet.models import MODELS, ModelInfo, register_model
    from dsnet.runtime.precision import math_mode

    if "math_probe_tiny" not in MODELS:
        register_model("math_probe_tiny", _MathProbe, ModelInfo(family="test", tiny=True))
    weights = tmp_path / "probe.pt"
    torch.save(_MathProbe().state_dict(), weights)
    conv, matmul = torch.backends.cudnn.conv, torch.backends.mkldnn.matmul
    saved = (conv.fp32_precision, matmul.fp32_precision)
    conv.fp32_precision, matmul.fp32_precision = "tf32", "bf16"  # what a user (or a GPU default) may have set
    try:
        before = math_mode()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            evaluate(weights, cifar10_dir, model_name="math_probe_tiny", dataset="cifar10", attacks=["clean", "fgsm"],
                     n_examples=8, sanity=False, progress=False, out_dir=tmp_path / "eval")
        after = math_mode()
    finally:
        conv.fp32_precision, matmul.fp32_precision = saved
    assert _MathProbe.seen, "the probe never ran"
    for seen in _MathProbe.seen:
        assert not seen.pop("autocast") and all(v == "ieee" for v in seen.values()), seen
    assert after == before and before["cudnn.conv"] == "tf32" and before["mkldnn.matmul"] == "bf16"


def test_math_tf32_is_asked_for_recorded_and_not_mixed_with_fp32_results(
        cifar10_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`--math tf32` lets cuBLAS and cuDNN use TF32 (CPU math stays IEEE); the report and its Markdown say so, and
    an interrupted fp32 evaluation is not completed in TF32 (nor the reverse)."""
    from dsnet.models import MODELS, ModelInfo, register_model

    if "math_probe_tiny" not in MODELS:
        register_model("math_probe_tiny", _MathProbe, ModelInfo(family="test", tiny=True))
    weights = tmp_path / "probe.pt"
    torch.save(_MathProbe().state_dict(), weights)
    _MathProbe.seen.clear()
    args = ["eval", "--checkpoint", str(weights), "--model", "math_probe_tiny", "--dataset", "cifar10", "--data-dir",
            str(cifar10_dir), "--out-dir", str(tmp_path / "eval"), "--attacks", "clean", "fgsm", "--no-sanity", *FAST]
    assert main([*args, "--math", "tf32"]) == 0
    seen = [s for s in _MathProbe.seen if not s.pop("autocast")]
    attacked = seen[seen.index(next(s for s in seen if s["cudnn.conv"] == "tf32")):]  # after the loading probe (fp32)
    assert len(attacked) >= 3  # clean, FGSM's gradient and its check
    assert all(s["cudnn.conv"] == s["cuda.matmul"] == "tf32" and s["mkldnn.conv"] == "ieee" for s in attacked)
    report = _report(tmp_path / "eval")
    assert report["device"]["math_setting"] == "tf32" and report["device"]["math"]["cudnn.conv"] == "tf32"
    assert "TF32 (--math tf32)" in (tmp_path / "eval" / "report.md").read_text()
    capsys.readouterr()
    assert main(args) == 1  # the default, fp32, on top of TF32 results
    assert "--math" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        main([*args, "--math", "fp16"])
    assert exit_info.value.code == 2  # a usage error: argparse's choices


def test_interrupted_evaluation_resumes_without_recomputing_finished_attacks(
    checkpoint: Path, cifar10_dir: Path, full_eval: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: Counter[str] = Counter()

    def counting(original: Callable[..., torch.Tensor], name: str) -> Callable[..., torch.Tensor]:
        def perturb(self: Any, *args: Any) -> torch.Tensor:
            calls[name] += 1
            return original(self, *args)

        return perturb

    def interrupted(self: Any, *args: Any) -> torch.Tensor:
        raise KeyboardInterrupt

    monkeypatch.setattr(FGSM, "_perturb", counting(FGSM._perturb, "fgsm"))
    monkeypatch.setattr(PGD, "_perturb", counting(PGD._perturb, "pgd"))
    original_cw = CWInf._perturb
    monkeypatch.setattr(CWInf, "_perturb", interrupted)
    options = dict(out_dir=tmp_path, attacks=["fgsm", "pgd", "cw_inf"], n_examples=16, batch_size=16, sanity=False,
                   progress=False)
    with pytest.raises(KeyboardInterrupt):
        evaluate(checkpoint, cifar10_dir, **options)
    state = json.loads((tmp_path / "eval_state.json").read_text())
    assert list(state["results"]) == ["clean", "fgsm", "pgd"] and not (tmp_path / "report.json").exists()
    assert calls["fgsm"] > 0 and calls["pgd"] > 0

    calls.clear()
    monkeypatch.setattr(CWInf, "_perturb", counting(original_cw, "cw_inf"))
    report = evaluate(checkpoint, cifar10_dir, **options)
    assert calls == Counter({"cw_inf": calls["cw_inf"]}) and calls["cw_inf"] > 0  # only CW∞ ran again
    assert [o.resumed for o in report.outcomes] == [True, True, True, False]

    # Same flags and accuracies as the uninterrupted evaluation with the same settings.
    resumed, uninterrupted = _report(tmp_path), _report(full_eval)
    for name in ("clean", "fgsm", "pgd", "cw_inf"):
        assert resumed["points"]["robust_flags"][name] == uninterrupted["points"]["robust_flags"][name]
        assert resumed["attacks"][name]["settings"] == uninterrupted["attacks"][name]["settings"]
        assert resumed["accuracy"][name] == uninterrupted["accuracy"][name]


def test_other_settings_on_resume_are_refused_unless_restarted(
    checkpoint: Path, cifar10_dir: Path, full_eval: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before = (full_eval / "eval_state.json").read_text()
    args = ["eval", "--checkpoint", str(checkpoint), "--data-dir", str(cifar10_dir), "--out-dir", str(full_eval)]
    assert main([*args, *FAST, "--preset", "standard"]) == 1
    error = capsys.readouterr().err.strip()
    assert "preset: saved 'paper', now 'standard'" in error and "--restart" in error and "\n" not in error
    assert main([*args, "--n-examples", "12", "--batch-size", "16"]) == 1
    assert "other settings" in capsys.readouterr().err
    assert (full_eval / "eval_state.json").read_text() == before  # nothing was touched

    folder = tmp_path / "restart"
    args = ["eval", "--checkpoint", str(checkpoint), "--data-dir", str(cifar10_dir), "--out-dir", str(folder),
            "--attacks", "clean", "fgsm", "--no-sanity", *FAST]
    assert main(args) == 0
    assert main([*args[:-6], "--preset", "standard", *args[-6:]]) == 1
    assert main([*args[:-6], "--preset", "standard", "--restart", *args[-6:]]) == 0
    assert _report(folder)["threat_model"]["eps_255"] == "8/255"


def test_unknown_attack_and_conflicting_options_are_usage_errors(
    checkpoint: Path, cifar10_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["eval", "--checkpoint", str(checkpoint), "--data-dir", str(cifar10_dir), "--out-dir", str(tmp_path)]
    assert main([*args, "--attacks", "pgd", "autoatack"]) == 1
    error = capsys.readouterr().err.strip()
    assert error.count("\n") == 0 and "unknown attack 'autoatack'" in error and "did you mean 'autoattack'" in error
    assert "clean, fgsm, fgsm_textbook, pgd, cw_inf, autoattack" in error
    with pytest.raises(SystemExit) as exit_info:
        main([*args, "--n-examples", "4", "--subset", "0.5"])
    assert exit_info.value.code == 2
    assert not list(tmp_path.iterdir())


def test_checkpoint_of_another_architecture_names_both(
    checkpoint: Path, cifar10_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["eval", "--checkpoint", str(checkpoint), "--data-dir", str(cifar10_dir), "--out-dir", str(tmp_path)]
    assert main([*args, "--model", "preact_resnet_tiny"]) == 1
    error = capsys.readouterr().err
    assert "dsnet_tiny" in error and "preact_resnet_tiny" in error

    bare = tmp_path / "bare.pt"
    torch.save({"state_dict": torch.load(checkpoint, weights_only=True)["model"]}, bare)
    with pytest.raises(ConfigError, match="--model"):
        load_model_for_evaluation(bare)
    with pytest.raises(CheckpointError, match="preact_resnet_tiny"):
        load_model_for_evaluation(bare, model_name="preact_resnet_tiny", dataset="cifar10")
    loaded = load_model_for_evaluation(bare, model_name="dsnet_tiny", dataset="cifar10")
    assert loaded.trained_with == "at" and "assumed" in loaded.trained_with_source
    assert not loaded.model.training and next(loaded.model.parameters()).dtype == torch.float32


def test_trades_models_get_the_papers_smaller_step(checkpoint: Path, cifar10_dir: Path, tmp_path: Path) -> None:
    state = torch.load(checkpoint, weights_only=True)
    state["config"]["objective"] = {"name": "trades", "beta": 6.0}
    trades = tmp_path / "trades.pt"
    torch.save(state, trades)
    report = evaluate(trades, cifar10_dir, attacks=["pgd"], n_examples=4, sanity=False, progress=False)
    assert report.outcome("pgd").config["step_size"] == 0.003
    assert "0.003" in report.step_note and "TRADES" in report.step_note
    assert (tmp_path / "eval-paper" / "report.md").is_file()
    standard = evaluate(trades, cifar10_dir, attacks=["pgd"], n_examples=4, sanity=False, progress=False,
                        preset="standard")
    assert standard.outcome("pgd").config["step_size"] == pytest.approx(2 / 255) and standard.eps == 8 / 255


def test_two_ranks_give_the_flags_of_one_process(checkpoint: Path, cifar10_dir: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    from dsnet.attacks import metrics
    from dsnet.data import load_dataset

    loaded = load_model_for_evaluation(checkpoint)
    data = load_dataset("cifar10", cifar10_dir, "test", download=False)
    images, labels = data.images[:11], data.labels[:11]
    attack = PGD(eps=0.031, step_size=0.031 / 4, steps=3)

    def flags(rank: int, world: int) -> torch.Tensor:
        # Without a process group the gather only places this rank's flags; summing the ranks is the all-reduce.
        monkeypatch.setattr(metrics, "world", lambda: (rank, world))
        return attack.evaluate(loaded.model, images, labels, clean=torch.ones(11, dtype=torch.bool),
                               batch_size=3).flags

    single = flags(0, 1)
    assert torch.equal(flags(0, 2) | flags(1, 2), single)
    assert not (flags(0, 2) & flags(1, 2)).any()


def test_export_round_trip_and_robustbench_claim(checkpoint: Path, full_eval: Path, tmp_path: Path,
                                                 cifar10_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # the paper's ε = 0.031 is not the leaderboard's 8/255: the claim is refused before anything is written
    refused = tmp_path / "refused"
    assert main(["export", "--checkpoint", str(checkpoint), "--out-dir", str(refused), "--report",
                 str(full_eval / "report.json"), "--name", "Test2021Tiny_DSNet"]) == 1
    error = capsys.readouterr().err
    assert "ε = 0.031" in error and "8/255" in error and "--preset standard" in error
    assert not refused.exists() or not any(refused.rglob("*.*"))

    with small_autoattack():
        evaluate(checkpoint, cifar10_dir, out_dir=tmp_path / "standard", preset="standard", attacks=["autoattack"],
                 n_examples=16, batch_size=16, sanity=False, progress=False)
    standard = tmp_path / "standard" / "report.json"
    out = tmp_path / "export"
    assert main(["export", "--checkpoint", str(checkpoint), "--out-dir", str(out), "--report", str(standard),
                 "--name", "Test2021Tiny_DSNet"]) == 0
    payload = torch.load(out / "Test2021Tiny_DSNet.pt", weights_only=True)
    assert list(payload) == ["state_dict"]
    keys = list(payload["state_dict"])
    assert keys == list(create_model("dsnet_tiny").state_dict())  # the architecture's own keys, no prefixes
    assert not any(k.startswith(("module.", "_orig_mod.")) for k in keys)

    model = load_exported(out)
    reference = load_model_for_evaluation(checkpoint).model
    x = torch.rand(6, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(model(x), reference(x))
    assert not model.training

    spec = json.loads((out / "Test2021Tiny_DSNet.architecture.json").read_text())
    assert (spec["model_name"], spec["model_kwargs"], spec["num_classes"]) == ("dsnet_tiny", {}, 10)
    assert spec["input"]["range"] == [0.0, 1.0]

    claim = json.loads((out / "model_info" / "cifar10" / "Linf" / "Test2021Tiny_DSNet.json").read_text())
    report = json.loads(standard.read_text())
    assert list(claim)[:12] == ["link", "name", "authors", "additional_data", "number_forward_passes", "dataset",
                                "venue", "architecture", "eps", "clean_acc", "reported", "autoattack_acc"]
    assert claim["link"] == claim["name"] == claim["authors"] == claim["venue"] == ""
    assert (claim["dataset"], claim["eps"], claim["architecture"]) == ("cifar10", "8/255", "dsnet_tiny")
    assert claim["clean_acc"] == f"{100 * report['accuracy']['clean']:.2f}"
    assert claim["autoattack_acc"] == claim["reported"] == f"{100 * report['accuracy']['autoattack']:.2f}"
    assert claim["additional_data"] is False and claim["number_forward_passes"] == 1
    assert "16 of 40" in claim["footnote"]  # not the full test set
    assert claim["evaluation_math"] == "fp32"  # which fp32 math the attacks ran in (`--math`), from the report
    tf32 = {**report, "device": {**report["device"], "math_setting": "tf32"}}
    assert robustbench_claim(tf32, architecture="dsnet_tiny")["evaluation_math"] == "tf32"

    other = tmp_path / "other.pt"
    state = torch.load(checkpoint, weights_only=True)
    state["model"]["stem.bias"] = state["model"]["stem.bias"] + 1
    torch.save(state, other)
    with pytest.raises(ConfigError, match="other weights"):
        export_model(other, tmp_path / "other", report=standard)


def test_a_registered_attack_outside_the_presets_runs_through_the_same_loop(
        checkpoint: Path, cifar10_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`@register_attack` is all a new attack needs: it gets the preset's ε and is evaluated like the others."""
    from dsnet.attacks import ATTACKS, register_attack

    monkeypatch.setattr(ATTACKS, "_entries", dict(ATTACKS._entries))
    monkeypatch.setattr(ATTACKS, "_meta", dict(ATTACKS._meta))

    @register_attack("pgd_one_step", "PGD with one full-ε step from a uniform start")
    def pgd_one_step(*, eps: float, seed: int = 0) -> PGD:
        return PGD(eps=eps, step_size=eps, steps=1, seed=seed)

    report = evaluate(checkpoint, cifar10_dir, out_dir=tmp_path / "eval", attacks=["pgd_one_step", "pgd"],
                      n_examples=16, batch_size=16, preset="standard", sanity=False, progress=False)
    outcome = report.outcome("pgd_one_step")
    assert outcome.config["eps"] == 8 / 255 and outcome.config["steps"] == 1
    assert outcome.accuracy <= report.outcome("clean").accuracy
    assert "pgd_one_step" in (tmp_path / "eval" / "report.md").read_text()
