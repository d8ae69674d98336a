"""One pipeline for every threat model: L2 attacks through `dsnet eval`, common corruptions against a hand count,
and a model of the user's own (a file outside the package, a module from Python), with exports per threat model.

A tiny DS-Net is trained once for the module (about 3 s); AutoAttack runs the reference with small budgets.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
from dsnet_testing import LEARNING_RECIPE, small_autoattack

from dsnet.cli import main
from dsnet.config import config_from_dict
from dsnet.data import load_dataset
from dsnet.data.corruptions import CORRUPTIONS, SEVERITIES
from dsnet.errors import CheckpointError, ConfigError, DataError
from dsnet.evaluation import evaluate, load_model_for_evaluation
from dsnet.evaluation.export import export_model
from dsnet.training.trainer import train

FAST = {"n_examples": 16, "batch_size": 16, "progress": False}


@pytest.fixture(scope="module")
def checkpoint(cifar10_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("run")
    train(config_from_dict(LEARNING_RECIPE), cifar10_dir, run)
    return run / "selected.pt"


# ------------------------------------------------------------------------------------------------------- L2
def test_l2_attacks_lower_accuracy_and_reach_zero_at_a_large_eps(checkpoint: Path, cifar10_dir: Path) -> None:
    with small_autoattack():
        report = evaluate(checkpoint, cifar10_dir, threat_model="L2", eps=1.0, sanity_n=16, **FAST)
    assert report.out_dir == checkpoint.parent / "eval-L2-standard"
    assert [o.name for o in report.outcomes] == ["clean", "fgsm", "pgd", "cw_l2", "autoattack"]
    assert [o.label for o in report.outcomes] == ["Natural", "FGM (L2)", "PGD-20 (L2)", "CW-L2-30", "AutoAttack (L2)"]
    clean = report.outcome("clean").accuracy
    assert report.outcome("pgd").accuracy < clean and report.outcome("autoattack").accuracy < clean
    for name in ("pgd", "cw_l2", "fgsm"):
        config = report.outcome(name).config
        assert config["norm"] == "L2" and config["eps"] == 1.0
        assert report.outcome(name).stats["max_l2"] <= 1.0 + 1e-5
    assert report.outcome("pgd").config["step_size"] == pytest.approx(0.25)  # the preset's ε/4, scaled with --eps
    assert report.outcome("autoattack").config["norm"] == "L2"
    checks = {c.name: c for c in report.sanity_checks}
    assert checks["perturbation_bounds"].status == "passed" and "||δ||₂" in checks["perturbation_bounds"].message
    assert checks["eps_sweep"].status == "passed"  # the L2 sweep reaches ~0 at ε = 8
    assert report.eps_sweep[-1] == (8.0, 0.0)
    data = json.loads((report.out_dir / "report.json").read_text())
    assert data["threat_model"]["name"] == "L2" and data["threat_model"]["eps_override"] == 1.0
    assert "threat model: L2, ε = 1, preset **standard** with ε given by --eps" in (
        report.out_dir / "report.md").read_text()

    with small_autoattack():  # a large ε breaks every point, for PGD and AutoAttack alike
        large = evaluate(checkpoint, cifar10_dir, threat_model="L2", eps=8.0, attacks=["pgd", "autoattack"],
                         sanity=False, out_dir=report.out_dir.parent / "l2-large", **FAST)
    assert large.outcome("pgd").accuracy == 0.0 and large.outcome("autoattack").accuracy == 0.0


def test_an_attack_of_another_norm_is_refused(checkpoint: Path, cifar10_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(Exception, match="unknown attack 'cw_inf'.*cw_l2") as error:
        evaluate(checkpoint, cifar10_dir, threat_model="L2", attacks=["cw_inf"], out_dir=tmp_path, **FAST)
    assert type(error.value).__name__ == "UnknownNameError"
    with pytest.raises(ConfigError, match="--eps does not apply to the corruptions threat model"):
        evaluate(checkpoint, cifar10_dir, threat_model="corruptions", eps=0.5, out_dir=tmp_path, **FAST)
    with pytest.raises(Exception, match="unknown L2 preset 'paper'"):
        evaluate(checkpoint, cifar10_dir, threat_model="L2", preset="paper", out_dir=tmp_path, **FAST)


def test_l1_runs_the_reference_autoattack_through_the_same_pipeline(checkpoint: Path, cifar10_dir: Path,
                                                                   tmp_path: Path) -> None:
    with small_autoattack():
        report = evaluate(checkpoint, cifar10_dir, threat_model="L1", out_dir=tmp_path, **{**FAST, "n_examples": 8})
    assert [o.name for o in report.outcomes] == ["clean", "autoattack"]
    aa = report.outcome("autoattack")
    assert aa.config["norm"] == "L1" and aa.config["eps"] == 12.0 and aa.stats["max_l1"] <= 12.0 * (1 + 1e-5)
    assert {c.name: c.status for c in report.sanity_checks}["eps_sweep"] == "skipped"
    with pytest.raises(ConfigError, match="no L1 leaderboard"):
        export_model(checkpoint, tmp_path / "export", report=tmp_path / "report.json")


# ---------------------------------------------------------------------------------------------- corruptions
def _corrupt(images: np.ndarray, number: int, severity: int) -> np.ndarray:
    """A deterministic corruption per (corruption, severity): seeded noise that grows with the severity."""
    rng = np.random.default_rng(100 * number + severity)
    noise = rng.normal(0, 25 * severity, size=images.shape)
    return np.clip(images.astype(np.float64) + noise, 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def corrupted_dir(cifar10_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data folder with the clean CIFAR-10 files and a CIFAR-10-C folder in the official layout for them."""
    root = tmp_path_factory.mktemp("with_c")
    (root / "cifar-10-batches-py").symlink_to(cifar10_dir / "cifar-10-batches-py")
    test = load_dataset("cifar10", cifar10_dir, "test", download=False)
    hwc = test.images.permute(0, 2, 3, 1).numpy()
    folder = root / "CIFAR-10-C"
    folder.mkdir()
    np.save(folder / "labels.npy", np.tile(test.labels.numpy().astype(np.uint8), len(SEVERITIES)))
    for number, corruption in enumerate(CORRUPTIONS):
        np.save(folder / f"{corruption}.npy", np.concatenate([_corrupt(hwc, number, s) for s in SEVERITIES]))
    return root


def test_corruption_report_matches_a_hand_count(checkpoint: Path, corrupted_dir: Path, tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "corruptions"
    assert main(["eval", "--checkpoint", str(checkpoint), "--data-dir", str(corrupted_dir), "--threat-model",
                 "corruptions", "--out-dir", str(out), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    data = json.loads((out / "report.json").read_text())

    model = load_model_for_evaluation(checkpoint).model
    test = load_dataset("cifar10", corrupted_dir, "test", download=False)
    hwc = test.images.permute(0, 2, 3, 1).numpy()
    expected = {}
    for number, corruption in enumerate(CORRUPTIONS):
        for severity in SEVERITIES:
            x = torch.from_numpy(_corrupt(hwc, number, severity)).permute(0, 3, 1, 2).float() / 255
            with torch.no_grad():
                expected[corruption, severity] = (model(x).argmax(1) == test.labels).float().mean().item()
    table = data["corruptions"]["accuracy"]
    assert list(table) == list(CORRUPTIONS) and all(list(row) == ["1", "2", "3", "4", "5"] for row in table.values())
    for (corruption, severity), accuracy in expected.items():
        assert table[corruption][str(severity)] == pytest.approx(accuracy)
    mean = sum(expected.values()) / len(expected)
    assert data["corruptions"]["mean"] == pytest.approx(mean)
    assert len({round(v, 6) for v in expected.values()}) > 3  # the severities really differ
    assert data["threat_model"]["name"] == "corruptions" and data["n"] == 40 and data["sanity_checks"] == []
    assert (out / "corruptions.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    markdown = (out / "report.md").read_text()
    assert f"**Mean corruption accuracy: {100 * mean:.2f} %** over 15 corruptions × 5 severities" in markdown
    assert "| gaussian_noise |" in markdown and "Not applicable: corruptions are not attacks" in markdown
    assert f"mean corruption accuracy {100 * mean:.2f}%" in printed

    # a rerun resumes every one of the 75 results, and the claim lands where RobustBench keeps it
    report = evaluate(checkpoint, corrupted_dir, threat_model="corruptions", out_dir=out, progress=False)
    assert all(o.resumed for o in report.outcomes)
    result = export_model(checkpoint, tmp_path / "export", report=out / "report.json", name="Tiny_C")
    assert result.claim == tmp_path / "export" / "model_info" / "cifar10" / "corruptions" / "Tiny_C.json"
    claim = json.loads(result.claim.read_text())
    assert claim["corruptions_acc"] == claim["reported"] == f"{100 * mean:.2f}" and claim["eps"] is None


def test_a_subset_of_corruptions_and_files_that_do_not_fit(checkpoint: Path, corrupted_dir: Path,
                                                           tmp_path: Path) -> None:
    report = evaluate(checkpoint, corrupted_dir, threat_model="corruptions", attacks=["fog", "snow"],
                      severities=[5], out_dir=tmp_path / "two", progress=False)
    assert [o.name for o in report.outcomes] == ["clean", "fog_s5", "snow_s5"]
    with pytest.raises(ConfigError, match="lacks 73 of the 75 corruption results"):
        export_model(checkpoint, tmp_path / "export", report=tmp_path / "two" / "report.json")
    with pytest.raises(ConfigError, match="--severities must be among 1, 2, 3, 4, 5"):
        evaluate(checkpoint, corrupted_dir, threat_model="corruptions", severities=[0], out_dir=tmp_path / "x")
    shuffled = tmp_path / "shuffled"
    (shuffled / "CIFAR-10-C").mkdir(parents=True)
    (shuffled / "cifar-10-batches-py").symlink_to(corrupted_dir / "cifar-10-batches-py")
    (shuffled / "CIFAR-10-C" / "fog.npy").symlink_to(corrupted_dir / "CIFAR-10-C" / "fog.npy")
    labels = np.load(corrupted_dir / "CIFAR-10-C" / "labels.npy")
    np.save(shuffled / "CIFAR-10-C" / "labels.npy", (labels + 1) % 10)
    with pytest.raises(DataError, match="labels differ from the clean test set's"):
        evaluate(checkpoint, shuffled, threat_model="corruptions", attacks=["fog"], severities=[1],
                 out_dir=tmp_path / "y", progress=False)


# -------------------------------------------------------------------------------------------- your own model
USER_MODEL = '''
import torch.nn as nn


class SmallNet(nn.Module):
    def __init__(self, width=8, classes=10):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(4))
        self.head = nn.Linear(width * 16, classes)

    def forward(self, x):
        return self.head(self.features(x).flatten(1))


def build(width=8):
    return SmallNet(width)
'''


def _user_file(folder: Path) -> Path:
    path = folder / "my_models" / "small.py"
    path.parent.mkdir(parents=True)
    path.write_text(USER_MODEL)
    return path


def _trained_user_model(path: Path, width: int = 8) -> nn.Module:
    namespace: dict = {}
    exec(compile(path.read_text(), str(path), "exec"), namespace)  # the same class as the factory builds
    torch.manual_seed(0)
    return namespace["build"](width)


def test_a_model_in_a_file_of_your_own_from_the_command_line(cifar10_dir: Path, tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    source = _user_file(tmp_path)
    model = _trained_user_model(source, width=6)
    weights = tmp_path / "weights.pt"
    # saved from a DDP-wrapped, compiled model: every key carries module._orig_mod.
    torch.save({"state_dict": {f"module._orig_mod.{k}": v for k, v in model.state_dict().items()}}, weights)
    out = tmp_path / "eval"

    def argv(checkpoint: Path, folder: Path) -> list[str]:
        return ["eval", "--model-factory", f"{source}:build", "--model-kwargs", '{"width": 6}', "--checkpoint",
                str(checkpoint), "--dataset", "cifar10", "--data-dir", str(cifar10_dir), "--attacks", "pgd",
                "--n-examples", "16", "--no-sanity", "--out-dir", str(folder), "--no-progress"]

    assert main(argv(weights, out)) == 0
    data = json.loads((out / "report.json").read_text())
    origin = data["model"]["source"]
    assert origin["kind"] == "factory" and origin["factory"] == f"{source}:build" and origin["kwargs"] == {"width": 6}
    assert origin["file_sha256"] == hashlib.sha256(source.read_bytes()).hexdigest()
    assert data["model"]["name"] == "SmallNet" and data["model"]["parameters"] == sum(
        p.numel() for p in model.parameters())
    with torch.no_grad():
        x = load_dataset("cifar10", cifar10_dir, "test", download=False)
        expected = (model.eval()(x.images[:16].float() / 255).argmax(1) == x.labels[:16]).float().mean().item()
    assert data["accuracy"]["clean"] == pytest.approx(expected)
    assert f"file sha256 {origin['file_sha256'][:16]}" in (out / "report.md").read_text()
    capsys.readouterr()

    wrong = tmp_path / "wrong.pt"
    torch.save({"state_dict": {"features.0.weight": torch.zeros(6, 3, 3, 3), "extra.bias": torch.zeros(2)}}, wrong)
    assert main(argv(wrong, tmp_path / "eval2")) == 1
    error = capsys.readouterr().err.strip()
    assert error.count("\n") == 0 and "3 tensors missing (e.g. features.0.bias)" in error
    assert "1 unexpected (e.g. extra.bias)" in error
    for factory, message in [(f"{tmp_path}/nothere.py:build", "does not exist"),
                             (f"{source}:buidl", "has no function 'buidl'; it has SmallNet, build"),
                             ("no_such_package.models:build", "cannot import 'no_such_package.models'"),
                             (f"{source}", "write FILE.py:FUNCTION")]:
        assert main(["eval", "--model-factory", factory, "--dataset", "cifar10", "--data-dir", str(cifar10_dir),
                     "--out-dir", str(tmp_path / "eval3")]) == 1
        error = capsys.readouterr().err.strip()
        assert error.count("\n") == 0 and message in error, error
    assert main(["eval", "--model-factory", f"{source}:build", "--model-kwargs", "{width: 6}", "--dataset", "cifar10",
                 "--data-dir", str(cifar10_dir), "--out-dir", str(tmp_path / "eval4")]) == 1
    assert "--model-kwargs must be a JSON object" in capsys.readouterr().err
    assert main(["eval", "--model-factory", f"{source}:build", "--model-kwargs", '{"depth": 3}', "--dataset",
                 "cifar10", "--data-dir", str(cifar10_dir), "--out-dir", str(tmp_path / "eval5")]) == 1
    assert "unexpected keyword argument 'depth'" in capsys.readouterr().err


def test_a_module_from_python_with_normalisation_and_the_l2_threat_model(
        cifar10_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`evaluate(model=...)` takes an nn.Module; `normalize` equals the same normalisation inside the model."""
    monkeypatch.chdir(tmp_path)
    mean, std = (0.49, 0.48, 0.45), (0.25, 0.24, 0.26)
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(),
                        nn.Linear(32, 10))

    class Inside(nn.Module):  # the same network, normalising inside
        def __init__(self) -> None:
            super().__init__()
            self.net = net

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.net((x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1))

    given = evaluate(model=net, dataset="cifar10", data_dir=cifar10_dir, threat_model="L2", attacks=["pgd"],
                     normalize=(mean, std), sanity=False, **FAST)
    assert given.out_dir.resolve() == tmp_path / "eval-L2-standard-Sequential"
    assert given.model["source"]["kind"] == "module" and given.model["source"]["normalize"]["mean"] == list(mean)
    inside = evaluate(model=Inside(), dataset="cifar10", data_dir=cifar10_dir, threat_model="L2", attacks=["pgd"],
                      sanity=False, out_dir=tmp_path / "inside", **FAST)
    for name in ("clean", "pgd"):
        assert torch.equal(given.outcome(name).flags, inside.outcome(name).flags)
    with pytest.raises(ConfigError, match="pass --dataset"):
        evaluate(model=net, data_dir=cifar10_dir, out_dir=tmp_path / "z")
    with pytest.raises(ConfigError, match=r"returns \(4, 7\) for a batch of 4 images, but cifar10 needs \(4, 10\)"):
        evaluate(model=nn.Sequential(nn.Flatten(), nn.Linear(3072, 7)), dataset="cifar10", data_dir=cifar10_dir,
                 out_dir=tmp_path / "z")
    with pytest.raises(CheckpointError, match="holds no tensors-only state dict"):
        bad = tmp_path / "bad.pt"
        torch.save({"state_dict": {"w": [1, 2]}}, bad)
        evaluate(bad, cifar10_dir, model=net, dataset="cifar10", out_dir=tmp_path / "z")


def test_l2_claims_land_in_the_l2_leaderboards_folder(checkpoint: Path, cifar10_dir: Path, tmp_path: Path) -> None:
    with small_autoattack():
        evaluate(checkpoint, cifar10_dir, threat_model="L2", attacks=["autoattack"], sanity=False,
                 out_dir=tmp_path / "l2", **FAST)
        evaluate(checkpoint, cifar10_dir, threat_model="L2", attacks=["autoattack"], eps=0.25, sanity=False,
                 out_dir=tmp_path / "l2-small", **FAST)
    result = export_model(checkpoint, tmp_path / "export", report=tmp_path / "l2" / "report.json", name="Tiny_L2")
    assert result.claim == tmp_path / "export" / "model_info" / "cifar10" / "L2" / "Tiny_L2.json"
    assert json.loads(result.claim.read_text())["eps"] == "0.5"
    with pytest.raises(ConfigError, match=r"ε = 0.25, but RobustBench's L2 cifar10 leaderboard is at ε = 0.5"):
        export_model(checkpoint, tmp_path / "export2", report=tmp_path / "l2-small" / "report.json")
