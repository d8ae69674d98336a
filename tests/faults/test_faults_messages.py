"""Messages that send the user the right way: each names what is wrong and what to do, before work starts.

Promise (README "Guarantees", bad input): a lost file in an unpacked CIFAR-10-C folder is named (no 2.9 GB
download that blames the network), corruptions of a dataset that has none, an unknown split, an extra-data path that
is a folder, an L∞ radius outside [0, 1], and cluster resources that cannot run a job are one line each; a negative
normalisation mean is accepted; an unusual radius is noted in the report; a full disk at a run's first checkpoint
does not claim that an earlier checkpoint is intact.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from faultkit import (
    assert_one_line_error,
    fill_disk,
    fresh_cli_logging,  # noqa: F401 - fixture
    one_epoch_recipe,
    run_cli,
    tiny_filesystem,
    train_one_epoch,
    write_recipe,
)

import dsnet.data.download

pytestmark = pytest.mark.usefixtures("fresh_cli_logging")


@pytest.fixture(autouse=True)
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(request, timeout: float | None = None):  # noqa: ANN001, ANN202
        raise AssertionError(f"the test tried to reach {request.full_url}")

    monkeypatch.setattr(dsnet.data.download, "urlopen", refuse)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict:
    return train_one_epoch(tmp_path_factory.mktemp("messages"))


def _eval(trained: dict, out: Path, *extra: object) -> list:
    return ["eval", "--checkpoint", trained["run"] / "last.pt", "--data-dir", trained["data"], "--out-dir", out,
            "--no-sanity", "--no-progress", *extra]


def test_a_lost_file_of_cifar10c_is_named_not_downloaded(trained: dict, tmp_path: Path, capsys) -> None:
    data = Path(shutil.copytree(trained["data"], tmp_path / "data"))
    folder = data / "CIFAR-10-C"
    folder.mkdir()
    for name in ("labels", "fog"):  # the archive unpacked, then snow.npy lost
        np.save(folder / f"{name}.npy", np.zeros((80,) if name == "labels" else (80, 32, 32, 3), dtype=np.uint8))
    code, _, err = run_cli(["eval", "--checkpoint", trained["run"] / "last.pt", "--data-dir", data, "--out-dir",
                            tmp_path / "eval", "--threat-model", "corruptions", "--attacks", "snow", "--no-progress"],
                           capsys)
    assert_one_line_error(code, err, f"missing {folder / 'snow.npy'}", "holds other files", "copy it back",
                          "dsnet download cifar10c")


def test_corruptions_of_svhn_are_refused_before_any_download(trained: dict, tmp_path: Path, capsys) -> None:
    code, _, err = run_cli(_eval(trained, tmp_path / "eval", "--dataset", "svhn", "--threat-model", "corruptions"),
                           capsys)
    assert_one_line_error(code, err, "svhn has no common-corruption test set")
    assert not (Path(trained["data"]) / "svhn").exists() and "loaded" not in err


def test_an_unknown_split_is_named_before_the_folder_is_compared(trained: dict, tmp_path: Path, capsys) -> None:
    out = tmp_path / "eval"
    assert run_cli(_eval(trained, out, "--attacks", "clean"), capsys)[0] == 0  # a test-split evaluation in `out`
    code, _, err = run_cli(_eval(trained, out, "--attacks", "clean", "--split", "val"), capsys)
    assert_one_line_error(code, err, "unknown split 'val'", "valid splits: train, test")


def test_extra_data_given_as_a_folder(trained: dict, tmp_path: Path, capsys) -> None:
    (tmp_path / "generated").mkdir()
    recipe = write_recipe(tmp_path / "recipe.yaml", one_epoch_recipe(data={"extra_path": str(tmp_path / "generated")}))
    code, _, err = run_cli(["train", "--config", recipe, "--data-dir", trained["data"], "--out-dir", tmp_path / "run"],
                           capsys)
    assert_one_line_error(code, err, "data.extra_path", "is a folder, not a file", ".npz")


def test_linf_eps_beyond_one_is_refused_and_an_unusual_eps_noted(trained: dict, tmp_path: Path, capsys) -> None:
    code, _, err = run_cli(_eval(trained, tmp_path / "a", "--eps", "5"), capsys)
    assert_one_line_error(code, err, "--eps 5 is outside (0, 1]", "8/255 ≈ 0.031, not 8")
    out = tmp_path / "b"
    code, _, err = run_cli(_eval(trained, out, "--eps", "32/255", "--attacks", "clean", "fgsm"), capsys)
    assert code == 0, err
    warnings = json.loads((out / "report.json").read_text())["warnings"]
    assert any("beyond the 0.06275 that Linf evaluations usually go up to" in w for w in warnings), warnings


def test_a_negative_normalisation_mean_is_accepted(trained: dict, tmp_path: Path, capsys) -> None:
    out = tmp_path / "eval"
    code, _, err = run_cli(_eval(trained, out, "--attacks", "clean", "--normalize", "-1,-0.5,-1e-3", "2,2,2"), capsys)
    assert code == 0, err
    source = json.loads((out / "report.json").read_text())["model"]["source"]
    assert source["normalize"] == {"mean": [-1.0, -0.5, -0.001], "std": [2.0, 2.0, 2.0]}


@pytest.mark.parametrize("options, fragment", [
    (["--cpus-per-job", "-4"], "--cpus-per-job must be an integer >= 1, got -4"),
    (["--cpus-per-job", "2", "--gpus-per-job", "4"], "less than one core to each of the job's 4 processes"),
    (["--gpus-per-job", "-1"], "--gpus-per-job must be an integer >= 0"),
])
def test_cluster_resources_are_validated(trained: dict, tmp_path: Path, capsys, options: list,
                                         fragment: str) -> None:
    code, _, err = run_cli(["reproduce", "fig5", "--scale", "mini", "--data-dir", trained["data"], "--out-dir",
                            tmp_path, "--launcher", "slurm", *options], capsys)
    assert_one_line_error(code, err, fragment)
    assert not (tmp_path / "slurm").exists()


def test_a_full_disk_at_the_first_checkpoint_names_no_earlier_one(trained: dict, tmp_path: Path, capsys) -> None:
    with tiny_filesystem(tmp_path / "disk", "2m") as disk:
        recipe = write_recipe(tmp_path / "recipe.yaml", one_epoch_recipe())
        fill_disk(disk, leave=48 * 1024)  # room for config.yaml, the log and metrics, not for a checkpoint
        code, _, err = run_cli(["train", "--config", recipe, "--data-dir", trained["data"], "--out-dir",
                                disk / "run"], capsys)
        message = assert_one_line_error(code, err, "no space left on", ".pt was written", "free disk space")
        assert "is intact" not in message


def test_a_nul_in_an_output_folder_is_one_line(trained: dict, tmp_path: Path, capsys) -> None:
    """Found by the property test: `dsnet export --out-dir '\\x00'` (a checkpoint is optional since factories
    export) reached pathlib, which raises a bare ValueError for such a name."""
    code, _, err = run_cli(["export", "--out-dir", "\x00"], capsys)
    assert_one_line_error(code, err, "--out-dir", "NUL character")
