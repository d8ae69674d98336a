"""The trainer end to end on small generated data: it learns, resumes exactly, and refuses bad input."""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path

import pytest
import torch
import yaml
from dsnet_testing import tiny_recipe

from dsnet.cli import main
from dsnet.config import config_from_dict
from dsnet.errors import CheckpointError, ConfigError, TrainingDivergedError
from dsnet.runtime.checkpoint import load_checkpoint
from dsnet.training.trainer import train


def _train(data: Path, out: Path, resume: bool = False, allow_changes: tuple[str, ...] = (), **sections: dict):
    return train(config_from_dict(tiny_recipe(**sections)), data, out, resume=resume, allow_changes=allow_changes)


def test_training_lowers_the_loss_and_writes_the_run_folder(cifar10_dir: Path, tmp_path: Path) -> None:
    result = _train(cifar10_dir, tmp_path / "run", train={"epochs": 5, "tensorboard": True},
                    schedule={"milestones": [4]}, objective={"name": "standard"})
    losses = [row["train_loss"] for row in result.history]
    assert losses[-1] < 0.8 * losses[0]
    assert max(row["val_clean_acc"] for row in result.history) >= 0.25  # 10 classes: chance is 0.1
    for name in ("config.yaml", "train.log", "metrics.jsonl", "last.pt", "selected.pt"):
        assert (tmp_path / "run" / name).is_file(), name
    assert any((tmp_path / "run" / "tensorboard").iterdir())
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2, 3, 4, 5]
    assert len(rows[0]["attention_weights"]) == 3 and math.isclose(sum(rows[0]["attention_weights"][0]), 1.0, rel_tol=1e-6)
    # first_decay_plus_one with the decay at epoch 4 selects epoch 5
    assert result.selected_epoch == 5 and load_checkpoint(tmp_path / "run" / "selected.pt")["epoch"] == 6
    log = (tmp_path / "run" / "train.log").read_text()
    assert "epoch 5 | lr 0.0050" in log


def test_checkpoint_holds_everything_and_loads_weights_only(cifar10_dir: Path, tmp_path: Path) -> None:
    _train(cifar10_dir, tmp_path / "run", train={"epochs": 1})
    state = torch.load(tmp_path / "run" / "last.pt", weights_only=True)
    for key in ("model", "optimizer", "attention_optimizer", "scaler", "loader", "rng", "generator", "epoch",
                "config", "metrics"):
        assert key in state, key
    assert "attention" in state["model"]
    assert state["attention_optimizer"]["state"], "Adam must have stepped the attention weights"


def test_resumed_run_ends_with_identical_weights(cifar10_dir: Path, tmp_path: Path) -> None:
    full = _train(cifar10_dir, tmp_path / "full", train={"epochs": 3})
    _train(cifar10_dir, tmp_path / "part", train={"epochs": 1})
    resumed = _train(cifar10_dir, tmp_path / "part", resume=True, train={"epochs": 3})
    assert [r["epoch"] for r in resumed.history] == [1, 2, 3]
    assert "after epoch 1: continuing with epoch 2 of 3" in (tmp_path / "part" / "train.log").read_text()
    a = load_checkpoint(tmp_path / "full" / "last.pt")["model"]
    b = load_checkpoint(tmp_path / "part" / "last.pt")["model"]
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert full.history[-1]["train_loss"] == resumed.history[-1]["train_loss"]
    lines = (tmp_path / "part" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2, 3]


def test_existing_run_is_never_overwritten(cifar10_dir: Path, tmp_path: Path) -> None:
    _train(cifar10_dir, tmp_path / "run", train={"epochs": 1})
    before = (tmp_path / "run" / "last.pt").read_bytes()
    with pytest.raises(ConfigError, match="--resume"):
        _train(cifar10_dir, tmp_path / "run", train={"epochs": 1})
    assert (tmp_path / "run" / "last.pt").read_bytes() == before
    with pytest.raises(CheckpointError, match="no .*last.pt"):
        _train(cifar10_dir, tmp_path / "empty", resume=True)


def test_nan_loss_stops_with_a_clear_error_and_keeps_the_checkpoint(cifar10_dir: Path, tmp_path: Path) -> None:
    _train(cifar10_dir, tmp_path / "run", train={"epochs": 1})
    good = load_checkpoint(tmp_path / "run" / "last.pt")
    with pytest.raises(TrainingDivergedError, match="last good checkpoint"):
        _train(cifar10_dir, tmp_path / "run", resume=True, allow_changes=("optim.lr",),
               train={"epochs": 2, "log_every": 1}, optim={"lr": 1e30})
    kept = load_checkpoint(tmp_path / "run" / "last.pt")
    assert kept["epoch"] == good["epoch"]
    assert all(torch.equal(kept["model"][k], good["model"][k]) for k in good["model"])


def test_batch_larger_than_the_data_is_refused(cifar10_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="batch_size 4096 is larger"):
        _train(cifar10_dir, tmp_path / "run", train={"batch_size": 4096})


def test_cli_train_and_resume(cifar10_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(tiny_recipe()))
    args = ["train", "--config", str(recipe), "--data-dir", str(cifar10_dir), "--out-dir", str(tmp_path / "run")]
    assert main(args + ["--set", "train.epochs=1"]) == 0
    assert "done: 1 epochs" in capsys.readouterr().out
    assert main(args + ["--resume"]) == 0
    assert load_checkpoint(tmp_path / "run" / "last.pt")["epoch"] == 3
    assert main(args + ["--set", "train.epoch=1"]) == 1
    assert "did you mean train.epochs" in capsys.readouterr().err


def test_cli_missing_data_gives_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(tiny_recipe()))
    code = main(["train", "--config", str(recipe), "--data-dir", str(tmp_path / "nothing"),
                 "--out-dir", str(tmp_path / "run")])
    err = capsys.readouterr().err.strip()
    assert code == 1 and err.startswith("dsnet: error:") and len(err.splitlines()) == 1
    assert "download" in err


def test_files_follow_the_umask(cifar10_dir: Path, tmp_path: Path) -> None:
    old = os.umask(0o027)
    try:
        _train(cifar10_dir, tmp_path / "run", train={"epochs": 1})
    finally:
        os.umask(old)
    for name in ("last.pt", "selected.pt", "config.yaml", "metrics.jsonl", "train.log"):
        assert (tmp_path / "run" / name).stat().st_mode & 0o777 == 0o640, name


def test_progress_lines_when_the_output_is_not_a_terminal(cifar10_dir: Path, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """A log file or a cluster job gets a timed progress line (step, img/s, loss, ETA), and the recipe goes to
    config.yaml rather than into one long log line."""
    from dsnet.training import progress

    monkeypatch.setattr(progress, "PROGRESS_INTERVAL_S", 0.0)  # a line at every step instead of every minute
    _train(cifar10_dir, tmp_path / "run", train={"epochs": 2, "progress": True})
    log = (tmp_path / "run" / "train.log").read_text()
    assert re.search(r"epoch 1/2 step 1/5 \| \d+ img/s \| loss \d+\.\d{3} \| ETA (\?|\d+ s)", log), log
    assert "epoch 2/2 step 5/5" in log
    assert f"the resolved recipe is {tmp_path / 'run' / 'config.yaml'}" in log
    assert max(len(line) for line in log.splitlines()) < 300


def test_progress_eta_covers_the_whole_run() -> None:
    from dsnet.training.progress import TrainingProgress, format_duration

    now = [0.0]
    bar = TrainingProgress(enabled=True, epochs=3, steps_per_epoch=10, first_epoch=1, terminal=False,
                           clock=lambda: now[0])
    bar.start_epoch(1, 0)
    for step in range(1, 6):
        now[0] += 2.0
        bar.step(step, 100.0, loss=lambda: 1.0, accuracy=lambda: 0.5, log_step=False)
    assert bar.eta_s(1, 5) == pytest.approx(2.0 * (5 + 2 * 10))  # 5 steps left in epoch 1, two more epochs
    assert format_duration(50) == "50 s" and format_duration(1500) == "25 min" and format_duration(9000) == "2.5 h"


def test_an_objectives_own_terms_are_logged_per_epoch(cifar10_dir: Path, tmp_path: Path) -> None:
    """TRADES' natural and robust terms reach metrics.jsonl, and they add up to the logged loss."""
    beta = 3.0
    result = _train(cifar10_dir, tmp_path / "run", train={"epochs": 1, "max_steps_per_epoch": 2},
                    objective={"name": "trades", "steps": 1, "beta": beta})
    row = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[-1])
    assert row["train_loss_natural"] > 0 and row["train_loss_robust"] >= 0
    assert row["train_loss"] == pytest.approx(row["train_loss_natural"] + beta * row["train_loss_robust"], rel=1e-5)
    assert result.final["train_loss_natural"] == row["train_loss_natural"]
