"""A real full disk (a tiny tmpfs, filled up): one line naming the folder and the file, the previous file intact,
no temporary file left behind, and the same command finishes once space is free again.

Promise (README "Guarantees"): a full disk while a checkpoint, an evaluation state, AutoAttack's resume state or a
report is written loses nothing. The disk is real: `torch.save` meets the kernel's ENOSPC (which it reports as a
`RuntimeError("... unexpected pos ...")`), not a stand-in. Where mounting a tmpfs is not allowed the tests are
skipped with the reason.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from faultkit import (
    assert_nothing_lost,
    assert_one_line_error,
    fill_disk,
    folder_snapshot,
    fresh_cli_logging,  # noqa: F401 - fixture
    load_weights_only,
    one_epoch_recipe,
    run_cli,
    tiny_filesystem,
    train_one_epoch,
    write_recipe,
)

pytestmark = pytest.mark.usefixtures("fresh_cli_logging")


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict:
    return train_one_epoch(tmp_path_factory.mktemp("disk"))


def _temp_files(folder: Path) -> list[str]:
    return [p.name for p in folder.rglob("*") if p.name.endswith(".tmp")]


def _resume_argv(trained: dict, tmp_path: Path, run: Path) -> list:
    config = write_recipe(tmp_path / "recipe.yaml", one_epoch_recipe(train={"epochs": 2}))
    return ["train", "--config", config, "--data-dir", trained["data"], "--out-dir", run, "--resume"]


def test_full_disk_while_writing_a_checkpoint(trained: dict, tmp_path: Path, capsys) -> None:
    """Room for the log and the metrics row, not for a checkpoint: the epoch's checkpoint write fails."""
    with tiny_filesystem(tmp_path / "disk", "4m") as disk:
        run = disk / "run"
        shutil.copytree(trained["run"], run)
        filler = fill_disk(disk, leave=(run / "last.pt").stat().st_size // 2)
        before = folder_snapshot(run)
        argv = _resume_argv(trained, tmp_path, run)
        code, _, err = run_cli(argv, capsys)
        message = assert_one_line_error(code, err, f"no space left on {run} while writing", ".pt; the previous",
                                        "is intact", "free disk space", "--resume")
        assert "Traceback" not in err and "unexpected pos" not in message
        assert_nothing_lost(before, run, may_change=("config.yaml",))
        assert not _temp_files(disk)
        assert load_weights_only(run / "last.pt")["epoch"] == 2  # still the checkpoint after epoch 1

        filler.unlink()
        code, _, err = run_cli(argv, capsys)
        assert code == 0, err
        assert load_weights_only(run / "last.pt")["epoch"] == 3


def test_disk_full_from_the_start_gives_one_line(trained: dict, tmp_path: Path, capsys) -> None:
    """Not a byte free: the log file is given up with one warning, the first real write refuses in one line."""
    with tiny_filesystem(tmp_path / "disk", "4m") as disk:
        run = disk / "run"
        shutil.copytree(trained["run"], run)
        fill_disk(disk, leave=0)
        before = folder_snapshot(run)
        code, _, err = run_cli(_resume_argv(trained, tmp_path, run), capsys)
        assert_one_line_error(code, err, "no space left on", "is intact", "free disk space")
        assert_nothing_lost(before, run)
        assert not _temp_files(disk)


@pytest.mark.parametrize("attack", ["fgsm", "autoattack"])
def test_full_disk_while_an_evaluation_saves_its_state(trained: dict, tmp_path: Path, capsys, attack: str) -> None:
    """A first evaluation finishes; on a full disk the next attack's state (eval_state.json, or AutoAttack's own
    resume file) cannot be saved: one line, and the earlier state and report are untouched."""
    with tiny_filesystem(tmp_path / "disk", "2m") as disk:
        out = disk / "eval"
        argv = ["eval", "--checkpoint", trained["run"] / "last.pt", "--data-dir", trained["data"], "--out-dir", out,
                "--n-examples", "4", "--no-sanity", "--no-progress"]
        code, _, err = run_cli([*argv, "--attacks", "clean"], capsys)
        assert code == 0, err
        before = folder_snapshot(out)
        fill_disk(disk, leave=0)
        code, _, err = run_cli([*argv, "--attacks", "clean", attack], capsys)
        # eval_state.json was there and is intact; AutoAttack's first resume file was not there before
        kept = "no autoattack-state.rank0of1.pt was written" if attack == "autoattack" else \
            "the previous eval_state.json is intact"
        assert_one_line_error(code, err, f"no space left on {out} while writing", kept, "free disk space")
        assert_nothing_lost(before, out)
        assert not _temp_files(disk)
