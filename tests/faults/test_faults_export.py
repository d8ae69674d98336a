"""An export is the model that was evaluated, and a claim is refused unless the export reproduces the report.

Promise (README "Guarantees"): `dsnet export --report` writes the evaluated model, input convention included (the
`--normalize` of the evaluation, its factory, its weights), and refuses a claim whose report the exported model,
rebuilt as `load_exported` rebuilds it, does not reproduce on the report's own points.

The issue's case, for real: a model evaluated with `--normalize` and then exported without it was written with mean 0
and std 1, and its claim (25 % clean) was accepted while the exported model scored 6 %.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import torch.nn as nn
from faultkit import (
    assert_one_line_error,
    fresh_cli_logging,  # noqa: F401 - fixture
    run_cli,
)
from dsnet_testing import small_autoattack
from test_faults_stale import invert_test_images

from dsnet.evaluation.export import load_exported
from dsnet.models import create_model

pytestmark = pytest.mark.usefixtures("fresh_cli_logging")

MEAN, STD = "0.4914,0.4822,0.4465", "0.2471,0.2435,0.2616"
STANDARD = ["--preset", "standard", "--attacks", "clean", "autoattack", "--no-sanity", "--no-progress"]
"""A claim needs AutoAttack (with `small_autoattack`'s tiny budgets here)."""


@pytest.fixture(scope="module")
def normalised(cifar10_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A dsnet_tiny trained a few steps on normalised inputs, saved as a bare state dict, and its evaluation
    with --normalize (a report whose clean flags depend on the normalisation)."""
    from dsnet.data import load_dataset

    root = tmp_path_factory.mktemp("normalised")
    torch.manual_seed(0)
    model = create_model("dsnet_tiny")
    data = load_dataset("cifar10", cifar10_dir, "train", download=False)
    mean = torch.tensor([float(v) for v in MEAN.split(",")]).view(1, 3, 1, 1)
    std = torch.tensor([float(v) for v in STD.split(",")]).view(1, 3, 1, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(30):
        index = torch.randint(0, len(data), (32,))
        x = (data.images[index].float() / 255 - mean) / std
        loss = nn.functional.cross_entropy(model(x), data.labels[index])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    torch.save({"state_dict": model.state_dict()}, root / "weights.pt")
    out = root / "eval"
    from dsnet.cli import main

    with small_autoattack():
        assert main(["eval", "--model", "dsnet_tiny", "--checkpoint", str(root / "weights.pt"), "--dataset",
                     "cifar10", "--data-dir", str(cifar10_dir), "--out-dir", str(out), "--normalize", MEAN, STD,
                     *STANDARD]) == 0
    return {"weights": root / "weights.pt", "report": out / "report.json", "data": cifar10_dir}


def _export(normalised: dict, out: Path, *extra: object) -> list:
    return ["export", "--model", "dsnet_tiny", "--checkpoint", normalised["weights"], "--report", normalised["report"],
            "--out-dir", out, "--name", "Test2026Norm", *extra]


def test_an_export_carries_the_evaluations_normalisation(normalised: dict, tmp_path: Path, capsys) -> None:
    from dsnet.evaluation.export import export_model
    from dsnet.evaluation.loading import load_model_for_evaluation

    report = json.loads(normalised["report"].read_text())
    out = tmp_path / "export"
    result = export_model(normalised["weights"], out, report=normalised["report"], model_name="dsnet_tiny",
                          name="Test2026Norm")  # no --normalize given: it comes from the report
    spec = json.loads(result.architecture.read_text())
    assert spec["input"]["normalization"]["mean"] == [float(v) for v in MEAN.split(",")]
    assert spec["input"]["normalization"]["std"] == [float(v) for v in STD.split(",")]
    assert result.verified["points"] == report["n"] == 40 and result.verified["agree"] == 40

    exported = load_exported(out)
    evaluated = load_model_for_evaluation(normalised["weights"], model_name="dsnet_tiny", dataset="cifar10",
                                          normalize=(MEAN.split(","), STD.split(","))).model
    x = torch.rand(8, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        assert torch.equal(exported(x), evaluated(x))
    # The claim's clean accuracy is the exported model's own on the report's points.
    from dsnet.data import load_dataset

    test = load_dataset("cifar10", normalised["data"], "test", download=False)
    with torch.no_grad():
        clean = (exported(test.images.float() / 255).argmax(1) == test.labels).float().mean().item()
    claim = json.loads(result.claim.read_text())
    assert claim["clean_acc"] == f"{100 * clean:.2f}" == f"{100 * report['accuracy']['clean']:.2f}"


def test_an_option_contradicting_the_report_is_refused(normalised: dict, tmp_path: Path, capsys) -> None:
    out = tmp_path / "export"
    code, _, err = run_cli(_export(normalised, out, "--normalize", "0.5,0.5,0.5", "0.5,0.5,0.5"), capsys)
    assert_one_line_error(code, err, "--normalize", "contradicts", "evaluated the model with")
    assert not out.exists() or not any(out.iterdir())


def test_a_report_the_export_does_not_reproduce_is_refused(normalised: dict, tmp_path: Path, capsys) -> None:
    """A report edited to claim other clean flags (or one of another model) is not the exported model's."""
    report = json.loads(normalised["report"].read_text())
    flags = report["points"]["robust_flags"]["clean"]
    report["points"]["robust_flags"]["clean"] = "".join("1" if c == "0" else "0" for c in flags[:5]) + flags[5:]
    forged = tmp_path / "report.json"
    forged.write_text(json.dumps(report))
    out = tmp_path / "export"
    code, _, err = run_cli(_export({**normalised, "report": forged}, out), capsys)
    assert_one_line_error(code, err, "does not reproduce", "5 of 40 points", "not be the model that was evaluated")
    assert not out.exists() or not any(out.iterdir())  # refused before anything was written


def test_a_report_of_other_images_is_refused(normalised: dict, tmp_path: Path, capsys) -> None:
    data = tmp_path / "data"
    shutil.copytree(normalised["data"], data)
    invert_test_images(data)
    code, _, err = run_cli(_export(normalised, tmp_path / "export", "--data-dir", data), capsys)
    assert_one_line_error(code, err, "are not the ones", "evaluated", "--data-dir")


FACTORY = '''import torch.nn as nn


def build(width: int = 8) -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(width, 10))
'''


def test_a_model_of_a_factory_exports_with_its_code(cifar10_dir: Path, tmp_path: Path, capsys) -> None:
    (tmp_path / "my_net.py").write_text(FACTORY)
    spec = f"{tmp_path / 'my_net.py'}:build"
    torch.manual_seed(1)
    net = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                        nn.Linear(6, 10))
    torch.save(net.state_dict(), tmp_path / "net.pt")
    evaluation = tmp_path / "eval"
    with small_autoattack():
        code, _, err = run_cli(["eval", "--model-factory", spec, "--model-kwargs", '{"width": 6}', "--checkpoint",
                                tmp_path / "net.pt", "--dataset", "cifar10", "--data-dir", cifar10_dir, "--out-dir",
                                evaluation, "--normalize", "-0.5,-0.5,-0.5", "2,2,2", *STANDARD], capsys)
    assert code == 0, err
    out = tmp_path / "export"
    code, printed, err = run_cli(["export", "--checkpoint", tmp_path / "net.pt", "--report",
                                  evaluation / "report.json", "--out-dir", out, "--name", "Mine"], capsys)
    assert code == 0, err  # the factory, its arguments and the normalisation all come from the report
    assert "verified: the export classifies 40 of the report's 40 points as the report does" in printed
    assert (out / "Mine.factory.py").read_text() == FACTORY
    model = load_exported(out)
    net.eval()
    x = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert torch.equal(model(x), net((x + 0.5) / 2))
    (out / "Mine.factory.py").write_text(FACTORY.replace("nn.ReLU()", "nn.Tanh()"))
    with pytest.raises(Exception, match="does not match the checksum"):
        load_exported(out)
