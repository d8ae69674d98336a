"""Loading checkpoints that are hostile, from another model, or damaged: a clear message, never code, never a
traceback, and the run folder left as it was.

Promises (README "Guarantees"):
- a checkpoint holding a pickled object that would run code is refused, and the code does not run;
- a checkpoint of another architecture or width is refused with a message naming both;
- a truncated or corrupt checkpoint gets a one-line message, not a traceback.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import random
import shutil
from pathlib import Path

import pytest
import torch
from faultkit import (
    assert_nothing_lost,
    assert_one_line_error,
    folder_snapshot,
    fresh_cli_logging,  # noqa: F401 - fixture
    one_epoch_recipe,
    run_cli,
    train_one_epoch,
    write_recipe,
)

from dsnet.errors import CheckpointError
from dsnet.models import create_model
from dsnet.runtime.checkpoint import load_checkpoint, load_model_state

pytestmark = pytest.mark.usefixtures("fresh_cli_logging")


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """One finished epoch of dsnet_tiny (width 4): a run folder to copy and damage."""
    return train_one_epoch(tmp_path_factory.mktemp("ckpt"))


def _copy_run(trained: dict, tmp_path: Path) -> Path:
    run = tmp_path / "run"
    shutil.copytree(trained["run"], run)
    return run


def _resume_argv(trained: dict, tmp_path: Path, run: Path, *overrides: str) -> list[str]:
    recipe = write_recipe(tmp_path / "recipe.yaml", one_epoch_recipe(train={"epochs": 2}))
    argv = ["train", "--config", recipe, "--data-dir", trained["data"], "--out-dir", run, "--resume"]
    for override in overrides:
        argv += ["--set", override]
    return argv


def _eval_argv(trained: dict, tmp_path: Path, checkpoint: Path, *extra: str) -> list[str]:
    return ["eval", "--checkpoint", checkpoint, "--data-dir", trained["data"], "--out-dir", tmp_path / "eval",
            "--attacks", "clean", "--n-examples", "4", "--no-sanity", "--no-progress", *extra]


class _RunsCode:
    """Unpickling this runs `touch <marker>`: what a malicious checkpoint from the internet would carry."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # noqa: ANN204
        return os.system, (f"touch {self.marker}",)


def _write_hostile(path: Path, marker: Path, fmt: str) -> None:
    payload = {"format": "dsnet-checkpoint-v1", "model": _RunsCode(marker), "epoch": 2}
    if fmt == "torch":
        torch.save(payload, path)
    else:  # a plain pickle, the legacy format torch.load also reads
        with open(path, "wb") as handle:
            pickle.dump(payload, handle)


@pytest.mark.parametrize("fmt", ["torch", "pickle"])
def test_payload_is_live_so_the_refusal_below_means_something(tmp_path: Path, fmt: str) -> None:
    marker = tmp_path / "ran"
    _write_hostile(tmp_path / "evil.pt", marker, fmt)
    with contextlib.suppress(Exception):  # torch.load runs the first pickle before it checks the legacy header
        torch.load(tmp_path / "evil.pt", weights_only=False)  # what an unsafe loader would do
    assert marker.exists()


@pytest.mark.parametrize("fmt", ["torch", "pickle"])
def test_checkpoint_that_would_run_code_is_refused(trained: dict, tmp_path: Path, capsys, fmt: str) -> None:
    run = _copy_run(trained, tmp_path)
    marker = tmp_path / "ran"
    _write_hostile(run / "last.pt", marker, fmt)
    with pytest.raises(CheckpointError, match="could run code"):
        load_checkpoint(run / "last.pt")
    before = folder_snapshot(run)
    code, _, err = run_cli(_resume_argv(trained, tmp_path, run), capsys)
    assert_one_line_error(code, err, "refusing to load", "last.pt", "could run code")
    assert not marker.exists(), "the pickled code ran"
    assert_nothing_lost(before, run)
    for command in (_eval_argv(trained, tmp_path, run / "last.pt"),
                    ["export", "--checkpoint", run / "last.pt", "--out-dir", tmp_path / "export"]):
        code, _, err = run_cli(command, capsys)
        assert_one_line_error(code, err, "refusing to load", "could run code")
        assert not marker.exists(), f"the pickled code ran in dsnet {command[0]}"


@pytest.mark.parametrize(("override", "names"), [
    ("model.kwargs.width=8", ("dsnet_tiny {}", "dsnet_tiny {'width': 8}")),
    ("model.name=resnet_tiny", ("dsnet_tiny", "resnet_tiny")),
])
def test_resume_with_another_architecture_or_width_names_both(trained: dict, tmp_path: Path, capsys,
                                                              override: str, names: tuple[str, str]) -> None:
    run = _copy_run(trained, tmp_path)
    before = folder_snapshot(run)
    code, _, err = run_cli(_resume_argv(trained, tmp_path, run, override), capsys)
    assert_one_line_error(code, err, *names, "resume with the same model")
    assert_nothing_lost(before, run)  # config.yaml too: it still describes the run that is there


def test_eval_with_another_architecture_names_both(trained: dict, tmp_path: Path, capsys) -> None:
    code, _, err = run_cli(_eval_argv(trained, tmp_path, trained["run"] / "last.pt", "--model", "resnet_tiny"), capsys)
    assert_one_line_error(code, err, "written for dsnet_tiny", "not for resnet_tiny")
    wide = tmp_path / "wide.pt"
    torch.save(create_model("dsnet_tiny", width=8).state_dict(), wide)
    code, _, err = run_cli(_eval_argv(trained, tmp_path, wide, "--model", "dsnet_tiny", "--dataset", "cifar10"),
                           capsys)
    assert_one_line_error(code, err, "not for dsnet_tiny", "(8, 3, 3, 3) there but (4, 3, 3, 3) here")


@pytest.mark.parametrize(("name", "kwargs", "expected"), [
    ("dsnet_tiny", {"width": 8}, "dsnet_tiny (width=8)"),
    ("resnet_tiny", {}, "resnet_tiny"),
])
def test_load_model_state_names_both_models(trained: dict, name: str, kwargs: dict, expected: str) -> None:
    state = load_checkpoint(trained["run"] / "last.pt")
    model = create_model(name, **kwargs)
    with pytest.raises(CheckpointError) as error:
        load_model_state(model, state, path=trained["run"] / "last.pt", expected_name=expected)
    message = str(error.value)
    assert "written for dsnet_tiny" in message and f"not for {expected}" in message
    assert "shape" in message or "missing" in message
    assert "\n" not in message
    bare = {k: v for k, v in state["model"].items()}  # a bare state dict from elsewhere
    with pytest.raises(CheckpointError, match=f"not for {type(model).__name__}"):
        load_model_state(model, bare)


@pytest.mark.parametrize("damage", ["empty", "first_kb", "half", "last_bytes_cut", "flipped_middle", "random_bytes",
                                    "plain_pickle"])
def test_truncated_or_corrupt_checkpoint_gets_one_line(trained: dict, tmp_path: Path, capsys, damage: str) -> None:
    run = _copy_run(trained, tmp_path)
    data = bytearray((run / "last.pt").read_bytes())
    damaged = {
        "empty": b"",
        "first_kb": data[:1024],
        "half": data[: len(data) // 2],
        "last_bytes_cut": data[:-100],
        "flipped_middle": data[: len(data) // 2] + bytes(b ^ 0xFF for b in data[len(data) // 2: len(data) // 2 + 64])
        + data[len(data) // 2 + 64:],
        "random_bytes": random.Random(0).randbytes(len(data)),
        "plain_pickle": pickle.dumps({"epoch": 2, "model": [1.0, 2.0]}, protocol=4),  # harmless, just not torch's
    }[damage]
    (run / "last.pt").write_bytes(bytes(damaged))
    before = folder_snapshot(run)
    code, _, err = run_cli(_resume_argv(trained, tmp_path, run), capsys)
    message = assert_one_line_error(code, err, "last.pt", "corrupt")
    assert "could run code" not in message and "refusing" not in message, "a damaged file is not an unsafe one"
    assert_nothing_lost(before, run)
    code, _, err = run_cli(_eval_argv(trained, tmp_path, run / "last.pt"), capsys)
    assert_one_line_error(code, err, "last.pt", "corrupt")
