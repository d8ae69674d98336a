"""`--resume` means the same recipe: a change that could alter the finished epochs' meaning is refused with the list
of differences, unless it is made on purpose (`--allow-change`), and then it is on record.

Promise (README "Guarantees"): a run folder's `config.yaml` always describes the weights next to it.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml
from faultkit import (
    assert_nothing_lost,
    assert_one_line_error,
    folder_snapshot,
    fresh_cli_logging,  # noqa: F401 - fixture
    load_weights_only,
    one_epoch_recipe,
    run_cli,
    train_one_epoch,
    write_recipe,
)

pytestmark = pytest.mark.usefixtures("fresh_cli_logging")


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict:
    return train_one_epoch(tmp_path_factory.mktemp("resume"))


@pytest.fixture
def case(trained: dict, tmp_path: Path) -> dict:
    run = tmp_path / "run"
    shutil.copytree(trained["run"], run)
    config = write_recipe(tmp_path / "recipe.yaml", one_epoch_recipe(train={"epochs": 2}))
    return {"run": run, "argv": ["train", "--config", config, "--data-dir", trained["data"], "--out-dir", run,
                                 "--resume"]}


@pytest.mark.parametrize(("overrides", "shown"), [
    (["objective.name=at", "objective.steps=2"], ("objective.name: 'standard' -> 'at'",)),
    (["optim.lr=0.2", "data.flip=false"], ("data.flip: True -> False", "optim.lr: 0.05 -> 0.2")),
    (["train.batch_size=8"], ("train.batch_size: 16 -> 8",)),
])
def test_a_changed_recipe_is_refused_with_the_differences(case: dict, capsys, overrides: list[str],
                                                          shown: tuple[str, ...]) -> None:
    before = folder_snapshot(case["run"])
    extra = [arg for override in overrides for arg in ("--set", override)]
    code, _, err = run_cli([*case["argv"], *extra], capsys)
    assert_one_line_error(code, err, f"--resume would change the recipe of {case['run']}", *shown,
                          "--allow-change KEY", "another --out-dir")
    assert_nothing_lost(before, case["run"])  # config.yaml included: it still describes the weights


def test_settings_that_cannot_change_the_finished_epochs_pass(case: dict, capsys) -> None:
    extra = ["--set", "train.epochs=3", "--set", "train.device=cpu", "--set", "train.log_every=1",
             "--set", "train.compile=false", "--no-progress"]
    code, _, err = run_cli([*case["argv"], *extra], capsys)
    assert code == 0, err
    assert load_weights_only(case["run"] / "last.pt")["epoch"] == 4
    assert yaml.safe_load((case["run"] / "config.yaml").read_text())["train"]["epochs"] == 3


def test_a_deliberate_change_is_allowed_and_recorded(case: dict, capsys) -> None:
    extra = ["--set", "optim.lr=0.02", "--allow-change", "optim.lr"]
    code, _, err = run_cli([*case["argv"], *extra], capsys)
    assert code == 0, err
    assert "--allow-change: resuming with optim.lr: 0.05 -> 0.02" in err
    rows = [json.loads(line) for line in (case["run"] / "metrics.jsonl").read_text().splitlines()]
    events = [row for row in rows if row.get("event") == "recipe_change"]
    assert events == [{"event": "recipe_change", "before_epoch": 2, "changes": ["optim.lr: 0.05 -> 0.02"],
                       "allowed_by": ["optim.lr"]}]
    assert [row["epoch"] for row in rows if "epoch" in row] == [1, 2]
    assert yaml.safe_load((case["run"] / "config.yaml").read_text())["optim"]["lr"] == 0.02
    # --allow-change covers only what it names: another change is still refused
    code, _, err = run_cli([*case["argv"], "--set", "train.epochs=3", "--set", "optim.lr=0.02", "--set",
                            "optim.momentum=0.5", "--allow-change", "optim.lr"], capsys)
    assert_one_line_error(code, err, "optim.momentum: 0.9 -> 0.5")


def test_a_run_cannot_be_shortened_below_its_finished_epochs(case: dict, capsys) -> None:
    code, _, err = run_cli([*case["argv"], "--set", "train.epochs=2"], capsys)
    assert code == 0, err
    before = folder_snapshot(case["run"])
    code, _, err = run_cli([*case["argv"], "--set", "train.epochs=1"], capsys)
    assert_one_line_error(code, err, "train.epochs 1 is below the 2 epochs", "extend a run, not shorten it")
    assert_nothing_lost(before, case["run"])


def test_allow_change_without_resume_is_a_usage_mistake(case: dict, capsys, tmp_path: Path) -> None:
    argv = [a if a != case["run"] else tmp_path / "new" for a in case["argv"] if a != "--resume"]
    code, _, err = run_cli([*argv, "--allow-change", "optim.lr"], capsys)
    assert_one_line_error(code, err, "--allow-change only applies to --resume")
    assert not (tmp_path / "new").exists()
