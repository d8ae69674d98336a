"""A training run killed with SIGKILL and resumed, again and again, ends exactly where an uninterrupted run ends.

Promise (README "Guarantees"): a run that dies at hour 20 loses nothing. The run below is killed five times,
each time resumed with the same `dsnet train ... --resume` command (as a requeue script would do):

1. inside the very first checkpoint write (half the bytes on disk), so no checkpoint exists yet;
2. inside the second checkpoint write, again torn;
3. after `selected.pt` is fully written and synced, just before its rename;
4. and 5. at seeded random moments after an epoch ends (in a checkpoint write or inside the next epoch).

After every kill each `*.pt` in the run folder must load with `weights_only=True` (never half-written). The
final weights, the selected checkpoint and the metrics must equal those of an uninterrupted run bitwise (CPU,
fixed seed), and no temporary file may be left behind.
"""

from __future__ import annotations

import json
import random
import shlex
import signal
import subprocess
from pathlib import Path

import pytest
from faultkit import (
    KILL_ENV,
    assert_same_tensors,
    checkpoint_files,
    load_weights_only,
    run_and_kill,
    small_cifar10,
    start_paused,
    tiny_recipe,
    write_recipe,
)

from dsnet.config import config_from_dict
from dsnet.training.trainer import train

EPOCHS = 6
ATTEMPT_TIMEOUT_S = 240.0


def kill_recipe() -> dict:
    """6 epochs of 4 PGD-1 steps on 64 images; the LR decays at epoch 3, so epoch 4 is selected."""
    return tiny_recipe(
        data={"val_size": 16},
        objective={"name": "at", "eps": 0.031, "step_size": 0.01, "steps": 1},
        schedule={"milestones": [3]},
        train={"epochs": EPOCHS, "batch_size": 16, "val_pgd_steps": 1},
    )


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The uninterrupted run, in this process (one thread, as in the children)."""
    root = tmp_path_factory.mktemp("kill")
    data = small_cifar10(root / "data")
    result = train(config_from_dict(kill_recipe()), data, root / "reference")
    return {"root": root, "data": data, "run": root / "reference", "result": result}


def _epoch_lines(text: str) -> int:
    return sum(line.startswith("epoch ") for line in text.splitlines())


def _attempt(argv: list[str], cwd: Path, log: Path, kill_after_s: float | None = None, **env: str) -> int:
    """Runs one attempt; with `kill_after_s`, SIGKILLs it that long after its first epoch line."""
    return run_and_kill(argv, cwd, log, started=lambda text: _epoch_lines(text) > 0, what="finished an epoch",
                        kill_after_s=kill_after_s, timeout_s=ATTEMPT_TIMEOUT_S, **env)


def test_run_killed_five_times_ends_with_the_weights_of_an_uninterrupted_run(reference: dict) -> None:
    root, run = reference["root"], reference["root"] / "killed"
    recipe = write_recipe(root / "recipe.yaml", kill_recipe())
    command = ["train", "--config", str(recipe), "--data-dir", str(reference["data"]), "--out-dir", str(run)]
    epoch_time = max(row["epoch_time_s"] for row in reference["result"].history) + 0.5
    rng = random.Random(20210701)
    attempts = [
        ({KILL_ENV: "torn:last.pt:1"}, None),
        ({KILL_ENV: "torn:last.pt:2"}, None),
        ({KILL_ENV: "rename:selected.pt:1"}, None),
        ({}, rng.uniform(0.0, 1.5 * epoch_time)),
        ({}, rng.uniform(0.0, 1.5 * epoch_time)),
        ({}, None),
    ]
    history = []
    last_epoch = 0
    for i, (env, kill_after_s) in enumerate(attempts):
        log = root / f"attempt{i}.stderr"
        argv = command if i == 0 else [*command, "--resume"]
        code = _attempt(argv, root, log, kill_after_s, **env)
        what = env.get(KILL_ENV) or (f"kill {kill_after_s:.2f} s after an epoch" if kill_after_s else "no kill")
        history.append((what, code))
        if env:
            assert code == -signal.SIGKILL, f"attempt {i} ({env}) was not killed: exit {code}\n{log.read_text()}"
        assert code in (0, -signal.SIGKILL), f"attempt {i} failed with exit {code}:\n{log.read_text()}"
        for path in checkpoint_files(run):  # never half-written, whenever the kill came
            load_weights_only(path)
        if (run / "last.pt").exists():
            epoch = load_weights_only(run / "last.pt")["epoch"]
            assert epoch >= last_epoch, "a resumed run went back in time"
            last_epoch = epoch
        if i == 0:
            assert not (run / "last.pt").exists() and list(run.glob(".last.pt.*")), "expected a torn temporary file"
        if i == 1:
            assert last_epoch == 2, "the kill inside the second write must leave the first epoch's checkpoint"
    assert code == 0, history

    ours, theirs = load_weights_only(run / "last.pt"), load_weights_only(reference["run"] / "last.pt")
    assert ours["epoch"] == theirs["epoch"] == EPOCHS + 1
    assert_same_tensors(ours["model"], theirs["model"])
    selected, expected = load_weights_only(run / "selected.pt"), load_weights_only(reference["run"] / "selected.pt")
    assert selected["selected_epoch"] == expected["selected_epoch"] == 4
    assert_same_tensors(selected["model"], expected["model"])
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == list(range(1, EPOCHS + 1))
    assert [r["train_loss"] for r in rows] == [r["train_loss"] for r in reference["result"].history]
    leftovers = [p.name for p in run.iterdir() if p.name.endswith(".tmp") or p.name.endswith(".part")]
    assert not leftovers, f"temporary files left behind: {leftovers}"


def test_ctrl_c_names_the_command_that_continues(reference: dict, tmp_path: Path) -> None:
    """SIGINT (Ctrl-C) in the middle of a checkpoint write: exit 130, one line with the --resume command, no torn
    file, and that command finishes the run with the weights of the uninterrupted one."""
    recipe = write_recipe(tmp_path / "recipe.yaml", kill_recipe())
    run = tmp_path / "run"
    argv = ["train", "--config", recipe, "--data-dir", reference["data"], "--out-dir", run]
    process, _ = start_paused(argv, tmp_path, "last.pt")
    process.send_signal(signal.SIGINT)
    try:
        assert process.wait(timeout=120) == 130
    except subprocess.TimeoutExpired:
        process.kill()
        pytest.fail(f"no exit 120 s after SIGINT; stderr:\n{(tmp_path / 'first.err').read_text()}")
    last = (tmp_path / "first.err").read_text().strip().splitlines()[-1]
    assert last.startswith("dsnet: interrupted; nothing finished is lost, continue with: dsnet train --config")
    assert last.endswith(f"--out-dir {run} --resume"), last
    assert not [p for p in run.iterdir() if p.name.endswith(".tmp")]
    command = shlex.split(last.split("continue with: ", 1)[1])[1:]
    assert run_and_kill(command, tmp_path, tmp_path / "continue.err", started=lambda _: True, what="started") == 0
    assert_same_tensors(load_weights_only(run / "last.pt")["model"], load_weights_only(reference["run"] / "last.pt")["model"])


def test_ema_awp_and_extra_data_run_killed_mid_run_resumes_exactly(reference: dict, tmp_path: Path) -> None:
    """The options beyond the paper keep the promise: a run with a weight average, AWP and generated images mixed
    into each batch, SIGKILLed just after its first checkpoint and resumed, ends with the raw and the averaged
    weights of the uninterrupted run, bitwise."""
    import numpy as np

    rng = np.random.default_rng(0)
    extra = tmp_path / "generated.npz"
    np.savez(extra, image=rng.integers(0, 256, (48, 32, 32, 3), dtype=np.uint8), label=rng.integers(0, 10, 48))
    recipe = kill_recipe()
    recipe["objective"] = {"name": "trades", "eps": 0.031, "step_size": 0.01, "steps": 1, "awp_gamma": 0.01}
    recipe["data"].update(extra_path=str(extra), extra_fraction=0.25)
    recipe["train"].update(epochs=2, ema_decay=0.9, ema_warmup=0.1)
    train(config_from_dict(recipe), reference["data"], tmp_path / "uninterrupted")
    path = write_recipe(tmp_path / "recipe.yaml", recipe)
    run = tmp_path / "run"
    argv = ["train", "--config", str(path), "--data-dir", str(reference["data"]), "--out-dir", str(run)]
    killed = _attempt(argv, tmp_path, tmp_path / "killed.err", **{KILL_ENV: "after:last.pt:1"})
    assert killed == -signal.SIGKILL, (tmp_path / "killed.err").read_text()
    assert load_weights_only(run / "last.pt")["epoch"] == 2
    assert _attempt([*argv, "--resume"], tmp_path, tmp_path / "resumed.err") == 0, (tmp_path / "resumed.err").read_text()
    ours, theirs = load_weights_only(run / "last.pt"), load_weights_only(tmp_path / "uninterrupted" / "last.pt")
    assert_same_tensors(ours["model"], theirs["model"])
    assert_same_tensors(ours["ema"]["model"], theirs["ema"]["model"])
