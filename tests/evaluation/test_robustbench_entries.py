"""RobustBench's entries of the field's families: the table, the folder layout, and `--checkpoint robustbench:NAME`."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

from dsnet.cli import main
from dsnet.errors import CheckpointError, ConfigError
from dsnet.evaluation import load_model_for_evaluation
from dsnet.models import MODELS, create_model
from dsnet.models.robustbench import find_entry, robustbench_entries, robustbench_table

ROOT = Path(__file__).resolve().parents[2]
FAST = ["--n-examples", "8", "--batch-size", "8", "--no-progress", "--no-sanity", "--attacks", "fgsm"]


def test_every_entry_names_a_registered_model_that_builds_for_its_dataset() -> None:
    entries = robustbench_entries()
    assert len(entries) == 47 and len({e.key for e in entries}) == 47
    assert {e.dataset for e in entries} == {"cifar10", "cifar100"}
    assert {e.threat_model for e in entries} == {"Linf", "L2", "corruptions"}
    for entry in entries:
        assert entry.model in MODELS, entry.key
        assert 0 < entry.claim["robust"] < entry.claim["clean"] < 100, entry.key
    # the families' representatives, by RobustBench's names
    expected = {"cifar10/Linf/Wang2023Better_WRN-28-10": "dm_wrn28_10", "cifar10/Linf/Peng2023Robust": "ra_wrn70_16",
                "cifar10/Linf/Huang2022Revisiting_WRN-A4": "wrn_a4", "cifar10/Linf/Huang2021Exploring_ema": "wrn34_r",
                "cifar10/Linf/Bartoldson2024Adversarial_WRN-82-8": "dm_wrn82_8",
                "cifar100/Linf/Wang2023Better_WRN-70-16": "dm_wrn70_16"}
    assert {key: find_entry(key).model for key in expected} == expected


def test_the_readme_table_is_the_table() -> None:
    readme = (ROOT / "README.md").read_text()
    assert robustbench_table(markdown=True) in readme


def test_names_resolve_and_ambiguities_say_which_to_pick() -> None:
    assert find_entry("robustbench:Peng2023Robust").key == "cifar10/Linf/Peng2023Robust"
    assert find_entry("Wang2023Better_WRN-28-10", dataset="cifar100").key == "cifar100/Linf/Wang2023Better_WRN-28-10"
    with pytest.raises(ConfigError, match=r"in 2 tables; name one: robustbench:cifar10/Linf/Wang2023Better_WRN-28-10,"
                                          r" robustbench:cifar10/L2/Wang2023Better_WRN-28-10"):
        find_entry("Wang2023Better_WRN-28-10", dataset="cifar10")
    with pytest.raises(ConfigError, match="did you mean 'Gowal2020Uncovering_70_16'"):
        find_entry("Gowal2020Uncovering_7016")
    with pytest.raises(ConfigError, match="neural-ODE head"):
        find_entry("Kang2021Stable")


def _place(model_dir: Path, key: str, state: dict[str, torch.Tensor]) -> Path:
    dataset, threat, name = key.split("/")
    path = model_dir / dataset / threat / f"{name}.pt"
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}}, path)  # as RobustBench's files often are
    return path


def test_a_file_in_robustbenchs_layout_loads_as_the_entry_says(tmp_path: Path) -> None:
    """The full-size DM-WRN-28-10 of Wang2023Better, CIFAR-100: 100 classes and CIFAR-100's constants, from the table."""
    torch.manual_seed(0)
    weights = create_model("dm_wrn28_10", num_classes=100).state_dict()
    _place(tmp_path, "cifar100/Linf/Wang2023Better_WRN-28-10", weights)
    loaded = load_model_for_evaluation("robustbench:cifar100/Linf/Wang2023Better_WRN-28-10", model_dir=tmp_path)
    assert (loaded.model_name, loaded.dataset, loaded.num_classes) == ("dm_wrn28_10", "cifar100", 100)
    assert loaded.model.state_dict()["logits.weight"].equal(weights["logits.weight"])
    assert torch.allclose(loaded.model.mean.flatten(), torch.tensor([0.5071, 0.4865, 0.4409]))
    assert loaded.source["robustbench"]["claim"]["robust"] == 38.83
    with pytest.raises(ConfigError, match="a cifar100 model, not a cifar10 one"):
        load_model_for_evaluation("robustbench:cifar100/Linf/Wang2023Better_WRN-28-10", model_dir=tmp_path,
                                  dataset="cifar10")
    with pytest.raises(ConfigError, match="is a dm_wrn28_10, not a wrn34_r"):
        load_model_for_evaluation("robustbench:cifar100/Linf/Wang2023Better_WRN-28-10", model_dir=tmp_path,
                                  model_name="wrn34_r")


def test_a_missing_file_says_how_robustbench_puts_it_there(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match=re.escape(
            f"RobustBench's cifar10/Linf/Peng2023Robust is not at {tmp_path}/cifar10/Linf/Peng2023Robust.pt; download "
            f"it there with python -c \"from robustbench.utils import load_model; load_model('Peng2023Robust', "
            f"model_dir='{tmp_path}', dataset='cifar10', threat_model='Linf')\"")):
        load_model_for_evaluation("robustbench:Peng2023Robust", model_dir=tmp_path)


def test_dsnet_eval_of_an_entry_reports_robustbenchs_claim_beside_ours(cifar10_dir: Path, tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """End to end through the command line, on a DM-WRN of the entry's family shrunk by --model-kwargs (a user's
    own small copy stored in RobustBench's layout): the report lands beside the working directory, not in
    RobustBench's folder, and names the entry and its claim."""
    torch.manual_seed(0)
    _place(tmp_path / "models", "cifar10/Linf/Wang2023Better_WRN-28-10",
           create_model("dm_wrn28_10", depth=10, width=1).state_dict())
    monkeypatch.chdir(tmp_path)
    code = main(["eval", "--checkpoint", "robustbench:cifar10/Linf/Wang2023Better_WRN-28-10", "--model-kwargs",
                 '{"depth": 10, "width": 1}', "--data-dir", str(cifar10_dir), "--trained-with", "trades", *FAST])
    assert code == 0
    out = tmp_path / "eval-paper-Wang2023Better_WRN-28-10"
    report = json.loads((out / "report.json").read_text())
    assert report["model"]["name"] == "dm_wrn28_10" and report["model"]["kwargs"] == {"depth": 10, "width": 1}
    assert report["model"]["source"]["robustbench"]["entry"] == "cifar10/Linf/Wang2023Better_WRN-28-10"
    assert "RobustBench lists cifar10/Linf/Wang2023Better_WRN-28-10 at 92.44 % clean and 67.31 % AutoAttack at " \
           "ε = 8/255" in (out / "report.md").read_text()
    assert not any((tmp_path / "models").rglob("report.json"))


def test_dsnet_models_lists_the_entries(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["models", "--robustbench"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:3] == ["Dataset", "Threat", "model"] and len(lines) == 48
    assert any(line.split()[2:4] == ["Peng2023Robust", "ra_wrn70_16"] for line in lines)
