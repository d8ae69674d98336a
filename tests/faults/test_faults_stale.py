"""No number is reused across changed content: an evaluation, a reproduce cell and an export reuse results only for
the very images, weights and model code they were computed on.

Promise (README "Guarantees"): what `dsnet eval` reuses from `eval_state.json` is keyed by content, not by paths.
Each case changes the content behind an unchanged command line, in real files: the test images inverted in place,
the factory file edited, the file that defines the network edited, the corrupted images replaced, and the test
images of a finished reproduce cell changed. The rerun is refused with the difference named (or, for a reproduce
cell, reported as failed and left out of the table); a comment edit, which changes no computation, is reused.
"""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from faultkit import (
    assert_one_line_error,
    fresh_cli_logging,  # noqa: F401 - fixture
    run_cli,
    train_one_epoch,
)

pytestmark = pytest.mark.usefixtures("fresh_cli_logging")


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict:
    return train_one_epoch(tmp_path_factory.mktemp("stale"))


def invert_test_images(data: Path) -> None:
    """Rewrites the CIFAR-10 test batch in place with every image inverted (255 - x): same names, same labels."""
    path = data / "cifar-10-batches-py" / "test_batch"
    with open(path, "rb") as handle:
        batch = pickle.load(handle, encoding="bytes")
    batch[b"data"] = (255 - np.asarray(batch[b"data"], dtype=np.uint8)).astype(np.uint8)
    with open(path, "wb") as handle:
        pickle.dump(batch, handle, protocol=2)


def _eval_argv(checkpoint: Path, data: Path, out: Path, attacks: tuple[str, ...] = ("clean", "fgsm")) -> list:
    return ["eval", "--checkpoint", checkpoint, "--data-dir", data, "--out-dir", out, "--attacks", *attacks,
            "--no-sanity", "--no-progress"]


def _accuracy(out: Path) -> dict[str, float]:
    return json.loads((out / "report.json").read_text())["accuracy"]


def test_other_images_under_the_same_path_are_not_reused(trained: dict, tmp_path: Path, capsys) -> None:
    data = tmp_path / "data"
    shutil.copytree(trained["data"], data)
    out = tmp_path / "eval"
    argv = _eval_argv(trained["run"] / "last.pt", data, out)
    code, _, err = run_cli(_eval_argv(trained["run"] / "last.pt", data, out, ("clean",)), capsys)
    assert code == 0, err
    state = (out / "eval_state.json").read_bytes()

    invert_test_images(data)
    code, _, err = run_cli(argv, capsys)  # the same command, adding FGSM: the stored clean flags are not these images'
    message = assert_one_line_error(code, err, "data_sha256", "images and labels of the evaluated points",
                                    "--restart")
    assert "weights" not in message.split("(", 1)[1].split(";")[0]  # only the data differ
    assert (out / "eval_state.json").read_bytes() == state

    code, _, err = run_cli([*argv, "--restart"], capsys)
    assert code == 0, err
    fresh = tmp_path / "fresh"
    assert run_cli(_eval_argv(trained["run"] / "last.pt", data, fresh), capsys)[0] == 0
    assert _accuracy(out) == _accuracy(fresh)  # the numbers of the inverted images, all of them


FACTORY = '''import torch.nn as nn
from net_blocks import Head


def build(width: int = 8) -> nn.Module:
    # a comment
    return nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         Head(width))
'''

BLOCKS = '''import torch.nn as nn


class Head(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.fc = nn.Linear(width, 10)

    def forward(self, x):
        return self.fc(x)
'''


@pytest.fixture
def factory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict:
    """A factory file that builds its network from a class in a second file, weights saved as a state dict."""
    folder = tmp_path / "code"
    folder.mkdir()
    (folder / "net_blocks.py").write_text(BLOCKS)
    (folder / "my_net.py").write_text(FACTORY)
    monkeypatch.syspath_prepend(str(folder))
    import importlib

    blocks = importlib.import_module("net_blocks")
    torch.manual_seed(0)
    import torch.nn as nn

    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                        blocks.Head(8))
    torch.save({"state_dict": net.state_dict()}, tmp_path / "weights.pt")
    yield {"folder": folder, "weights": tmp_path / "weights.pt"}
    import sys

    sys.modules.pop("net_blocks", None)


def test_edited_model_code_is_not_reused(trained: dict, factory: dict, tmp_path: Path, capsys) -> None:
    spec = f"{factory['folder'] / 'my_net.py'}:build"
    out = tmp_path / "eval"
    argv = ["eval", "--model-factory", spec, "--checkpoint", factory["weights"], "--dataset", "cifar10", "--data-dir",
            trained["data"], "--out-dir", out, "--attacks", "clean", "--no-sanity", "--no-progress"]
    assert run_cli(argv, capsys)[0] == 0

    # A comment or a docstring changes no computation: everything is reused.
    source = factory["folder"] / "my_net.py"
    source.write_text(FACTORY.replace("# a comment", "# another comment, same code"))
    code, _, err = run_cli(argv, capsys)
    assert code == 0, err
    assert json.loads((out / "report.json").read_text())["attacks"]["clean"]["resumed"] is True

    # The factory's code changes (same weights): refused, naming the file.
    source.write_text(FACTORY.replace("nn.ReLU()", "nn.Tanh()"))
    code, _, err = run_cli(argv, capsys)
    assert_one_line_error(code, err, "model code", "my_net.py", "--restart")
    source.write_text(FACTORY)

    # The class the factory imports from another file changes: refused, naming that file.
    (factory["folder"] / "net_blocks.py").write_text(BLOCKS.replace("return self.fc(x)", "return 2 * self.fc(x)"))
    import sys

    sys.modules.pop("net_blocks", None)
    code, _, err = run_cli(argv, capsys)
    assert_one_line_error(code, err, "model code", "net_blocks.py")


def test_changed_corrupted_images_are_not_reused(trained: dict, tmp_path: Path, capsys) -> None:
    from dsnet.data import load_dataset

    data = tmp_path / "data"
    shutil.copytree(trained["data"], data)
    test = load_dataset("cifar10", data, "test", download=False)
    folder = data / "CIFAR-10-C"
    folder.mkdir()
    np.save(folder / "labels.npy", np.tile(test.labels.numpy().astype(np.uint8), 5))
    hwc = np.tile(test.images.permute(0, 2, 3, 1).numpy(), (5, 1, 1, 1))
    np.save(folder / "fog.npy", hwc)
    out = tmp_path / "eval"
    argv = ["eval", "--checkpoint", trained["run"] / "last.pt", "--data-dir", data, "--out-dir", out,
            "--threat-model", "corruptions", "--attacks", "fog", "--severities", "2", "--no-progress"]
    assert run_cli(argv, capsys)[0] == 0
    np.save(folder / "fog.npy", 255 - hwc)  # same file name and shape, other images
    code, _, err = run_cli(argv, capsys)
    assert_one_line_error(code, err, "fog_s2", "inputs_sha256", "corrupted images")


def test_a_finished_reproduce_cell_on_changed_data_is_left_out(cifar10_dir: Path, tmp_path: Path) -> None:
    from dsnet.experiments.runner import reproduce

    data = tmp_path / "data"
    shutil.copytree(cifar10_dir, data)
    options = {"scale": "mini", "seeds": [0], "datasets": ["cifar10"], "models": ["resnet50"], "epochs": 1,
               "n_examples": 8, "attacks": ["fgsm"], "out_dir": tmp_path / "reproduce", "data_dir": data}
    first = reproduce("table2", **options)
    assert first.failed == {} and "| ResNet-50 | 1 |" in first.markdown  # one seed counted

    invert_test_images(data)
    again = reproduce("table2", **options)
    [(run_id, why)] = again.failed.items()
    assert run_id == "cifar10-at-resnet50-seed0"
    assert "data_sha256" in why and "delete" in why
    assert "| ResNet-50 | 0 |" in again.markdown  # its old numbers are not counted
