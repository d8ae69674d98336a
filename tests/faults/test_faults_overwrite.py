"""Nothing of a run is overwritten by another command.

Promise (README "Guarantees"): a command refuses to replace a file it did not write itself (a training checkpoint,
`config.yaml`, `metrics.jsonl`, the report of another evaluation, a person's own file) with one line naming the
file, before it writes anything; a fresh name in a run folder is fine. Every case runs the real command against a
real run folder and compares every byte of the folder before and after.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
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
    return train_one_epoch(tmp_path_factory.mktemp("overwrite"))


@pytest.fixture
def run(trained: dict, tmp_path: Path) -> Path:
    """A private copy of the finished run folder."""
    return Path(shutil.copytree(trained["run"], tmp_path / "run"))


def test_export_into_a_run_folder_cannot_replace_its_checkpoint(trained: dict, run: Path, tmp_path: Path,
                                                                capsys) -> None:
    before = folder_snapshot(run)
    for name, taken in (("last", "last.pt"), ("epoch-0003", "epoch-0003.pt")):  # a file, and a name train reserves
        code, _, err = run_cli(["export", "--checkpoint", run / "selected.pt", "--out-dir", run, "--name", name],
                               capsys)
        assert_one_line_error(code, err, str(run / taken), "dsnet train", "--name")
        assert_nothing_lost(before, run)
    assert not (run / "epoch-0003.pt").exists()

    # A fresh name in the run folder is fine, and the run still resumes.
    code, _, err = run_cli(["export", "--checkpoint", run / "selected.pt", "--out-dir", run, "--name", "Mine"], capsys)
    assert code == 0, err
    assert_nothing_lost(before, run, may_change=(".dsnet-files.json",))
    recipe = write_recipe(tmp_path / "recipe.yaml", one_epoch_recipe(train={"epochs": 2}))
    code, _, err = run_cli(["train", "--config", recipe, "--data-dir", trained["data"], "--out-dir", run, "--resume"],
                           capsys)
    assert code == 0, err
    assert load_weights_only(run / "last.pt")["epoch"] == 3


def test_an_export_edited_by_hand_is_not_replaced(run: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "export"
    argv = ["export", "--checkpoint", run / "last.pt", "--out-dir", out, "--name", "Mine"]
    assert run_cli(argv, capsys)[0] == 0
    assert run_cli(argv, capsys)[0] == 0  # its own files, unchanged: replaced
    spec = out / "Mine.architecture.json"
    spec.write_text(spec.read_text().replace('"name": "Mine"', '"name": "Mine", "note": "mine"'))
    edited = spec.read_bytes()
    code, _, err = run_cli(argv, capsys)
    assert_one_line_error(code, err, str(spec), "was changed since dsnet export wrote it")
    assert spec.read_bytes() == edited


def test_eval_refuses_a_persons_file_and_a_report_without_its_state(run: Path, tmp_path: Path, trained: dict,
                                                                     capsys) -> None:
    folder = tmp_path / "notes"
    folder.mkdir()
    (folder / "report.md").write_text("# my notes\n")
    argv = ["eval", "--checkpoint", run / "last.pt", "--data-dir", trained["data"], "--attacks", "clean",
            "--no-sanity", "--no-progress", "--out-dir"]
    for option in ([], ["--restart"]):  # --restart discards an evaluation, never a person's file
        code, _, err = run_cli([*argv, folder, *option], capsys)
        assert_one_line_error(code, err, str(folder / "report.md"), "not written by dsnet eval")
    assert (folder / "report.md").read_text() == "# my notes\n"

    evaluation = tmp_path / "eval"
    assert run_cli([*argv, evaluation], capsys)[0] == 0
    (evaluation / "eval_state.json").unlink()  # whose report is this now? nobody can tell
    report = (evaluation / "report.json").read_bytes()
    code, _, err = run_cli([*argv, evaluation], capsys)
    assert_one_line_error(code, err, "report.json", "eval_state.json is gone", "--restart")
    assert (evaluation / "report.json").read_bytes() == report
    assert run_cli([*argv, evaluation, "--restart"], capsys)[0] == 0

    # dsnet eval into the run folder itself writes beside the checkpoints and changes none of them
    before = folder_snapshot(run)
    assert run_cli([*argv, run], capsys)[0] == 0
    assert_nothing_lost(before, run, may_change=(".dsnet-files.json",))


def test_train_does_not_replace_a_persons_config(trained: dict, tmp_path: Path, capsys) -> None:
    folder = tmp_path / "project"
    folder.mkdir()
    (folder / "config.yaml").write_text("my: own settings\n")
    recipe = write_recipe(tmp_path / "recipe.yaml", one_epoch_recipe())
    code, _, err = run_cli(["train", "--config", recipe, "--data-dir", trained["data"], "--out-dir", folder], capsys)
    assert_one_line_error(code, err, str(folder / "config.yaml"), "not written by dsnet train", "another --out-dir")
    assert (folder / "config.yaml").read_text() == "my: own settings\n"
    assert not (folder / "last.pt").exists()


def test_analyze_does_not_replace_a_persons_figure(run: Path, tmp_path: Path, capsys) -> None:
    folder = tmp_path / "figures"
    folder.mkdir()
    (folder / "attention.png").write_bytes(b"my figure")
    code, _, err = run_cli(["analyze", "attention", run, "--out-dir", folder], capsys)
    assert_one_line_error(code, err, str(folder / "attention.png"), "not written by dsnet analyze")
    assert (folder / "attention.png").read_bytes() == b"my figure"
    manifest = json.loads((folder / ".dsnet-files.json").read_text()) if (folder / ".dsnet-files.json").exists() \
        else {"files": {}}
    assert "attention.png" not in manifest["files"]
