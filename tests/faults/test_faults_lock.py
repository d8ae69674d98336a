"""One writer per folder, with two real processes: the second refuses in one line naming the folder and the first
one's PID, changes nothing, and the first ends exactly as if it had been alone.

Promise (README "Guarantees"): two commands pointed at one run, evaluation or reproduce folder never mix their
files. The first process is paused at a known point (inside a checkpoint or state write, holding its lock; the
`DSNET_TEST_PAUSE` hook of `faultkit.py`), the second runs to its end, then the first is let go.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from faultkit import (
    HERE,
    assert_same_tensors,
    load_weights_only,
    one_epoch_recipe,
    small_cifar10,
    start_paused,
    subprocess_env,
    write_recipe,
)

from dsnet.config import config_from_dict
from dsnet.training.trainer import train

RECIPE = one_epoch_recipe(train={"epochs": 2})


@pytest.fixture(scope="module")
def alone(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The data, the recipe, and the run trained alone (in this process, one thread as in the children)."""
    root = tmp_path_factory.mktemp("lock")
    data = small_cifar10(root / "data")
    train(config_from_dict(RECIPE), data, root / "alone")
    return {"root": root, "data": data, "recipe": write_recipe(root / "recipe.yaml", RECIPE), "run": root / "alone"}


def _run_second(argv: list, tmp_path: Path) -> tuple[int, str]:
    done = subprocess.run([sys.executable, str(HERE / "faultkit.py"), *map(str, argv)], cwd=tmp_path,
                          env=subprocess_env(), capture_output=True, text=True, timeout=180)
    return done.returncode, done.stderr


def _assert_refused(code: int, err: str, folder: Path, pid: int) -> str:
    lines = err.strip().splitlines()
    assert code == 1 and "Traceback" not in err, err
    assert lines[-1].startswith("dsnet: error: ") and sum(line.startswith("dsnet:") for line in lines) == 1, err
    assert f"{folder} is in use by another dsnet process (PID {pid})" in lines[-1], lines[-1]
    return lines[-1]


def _finish(process: subprocess.Popen, marker: Path, tmp_path: Path) -> None:
    marker.write_text("go")
    assert process.wait(timeout=180) == 0, (tmp_path / "first.err").read_text()


def test_second_training_into_the_same_folder_is_refused(alone: dict, tmp_path: Path) -> None:
    run = tmp_path / "run"
    argv = ["train", "--config", alone["recipe"], "--data-dir", alone["data"], "--out-dir", run]
    first, marker = start_paused(argv, tmp_path, "last.pt")
    try:
        before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file() and p.name != ".lock"}
        for extra in ([], ["--resume"]):
            code, err = _run_second([*argv, *extra], tmp_path)
            _assert_refused(code, err, run, first.pid)
        after = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file() and p.name != ".lock"}
        assert after == before, "the refused process changed the folder"
    finally:
        _finish(first, marker, tmp_path)
    assert_same_tensors(load_weights_only(run / "last.pt")["model"], load_weights_only(alone["run"] / "last.pt")["model"])
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [row["epoch"] for row in rows] == [1, 2]


def test_a_killed_holder_leaves_no_stale_lock(alone: dict, tmp_path: Path) -> None:
    run = tmp_path / "run"
    argv = ["train", "--config", alone["recipe"], "--data-dir", alone["data"], "--out-dir", run]
    first, _ = start_paused(argv, tmp_path, "last.pt")
    first.kill()
    first.wait(timeout=60)
    code, err = _run_second([*argv, "--resume"], tmp_path)
    assert code == 0, err
    assert_same_tensors(load_weights_only(run / "last.pt")["model"], load_weights_only(alone["run"] / "last.pt")["model"])


def test_second_evaluation_into_the_same_folder_is_refused(alone: dict, tmp_path: Path) -> None:
    out = tmp_path / "eval"
    argv = ["eval", "--checkpoint", alone["run"] / "last.pt", "--data-dir", alone["data"], "--out-dir", out,
            "--attacks", "clean", "fgsm", "--n-examples", "8", "--no-sanity", "--no-progress"]
    first, marker = start_paused(argv, tmp_path, "eval_state.json")
    try:
        code, err = _run_second(argv, tmp_path)
        _assert_refused(code, err, out, first.pid)
    finally:
        _finish(first, marker, tmp_path)
    report = json.loads((out / "report.json").read_text())
    assert set(report["accuracy"]) == {"clean", "fgsm", "worst_case"}


def test_second_reproduce_of_the_same_cell_is_refused(alone: dict, tmp_path: Path) -> None:
    out = tmp_path / "reproduce"
    argv = ["reproduce", "fig6", "--scale", "mini", "--models", "dsnet4", "--datasets", "cifar10", "--seeds", "0",
            "--epochs", "1", "--n-examples", "8", "--set", "data.val_size=16", "--set", "train.batch_size=16",
            "--data-dir", alone["data"], "--out-dir", out]
    first, marker = start_paused(argv, tmp_path, "last.pt")
    try:
        code, err = _run_second(argv, tmp_path)
        cell = out / "runs" / "cifar10-at-dsnet4-seed0"
        assert code == 1, err
        assert f"{cell} is in use by another dsnet process (PID {first.pid})" in err.strip().splitlines()[-1], err
    finally:
        _finish(first, marker, tmp_path)
    assert (out / "tables" / "fig6.md").is_file()
