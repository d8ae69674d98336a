"""Bad input through the command line: one line saying what is wrong and what to do, a non-zero exit status, and
no earlier result lost.

Promise (README "Guarantees"): a typo must not cost a GPU-day. Most cases run `dsnet train` (in this process,
through `dsnet.cli.main`) against a copy of a finished run with `--resume`, so that the test also shows that the
run folder is left as it was (`train.log` and `metrics.jsonl` may only grow). Configuration mistakes fail before
the dataset is read. No test reaches the network.
"""

from __future__ import annotations

import io
import os
import shutil
from pathlib import Path

import pytest
import torch
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
from torch.optim.optimizer import register_optimizer_step_post_hook

import dsnet.data.download

pytestmark = pytest.mark.usefixtures("fresh_cli_logging")


@pytest.fixture(autouse=True)
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """No test reaches the network; the MD5 test installs its own fake server."""
    def refuse(request, timeout: float | None = None):  # noqa: ANN001, ANN202
        raise AssertionError(f"the test tried to reach {request.full_url}")

    monkeypatch.setattr(dsnet.data.download, "urlopen", refuse)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict:
    return train_one_epoch(tmp_path_factory.mktemp("inputs"))


@pytest.fixture
def case(trained: dict, tmp_path: Path) -> dict:
    """A private copy of the data and of the finished run, and the `dsnet train --resume` command for them."""
    data, run = tmp_path / "data", tmp_path / "run"
    shutil.copytree(trained["data"], data)
    shutil.copytree(trained["run"], run)
    config = write_recipe(tmp_path / "recipe.yaml", one_epoch_recipe(train={"epochs": 2}))
    argv = ["train", "--config", config, "--data-dir", data, "--out-dir", run, "--resume"]
    return {"data": data, "run": run, "argv": argv, "config": config, "tmp": tmp_path}


# A resume that got as far as training records its own config in config.yaml (the checkpoints keep theirs).
STARTED = ("config.yaml",)


def _fails_cleanly(case: dict, capsys, extra: list[str], *fragments: str, may_change: tuple[str, ...] = ()) -> str:
    before = folder_snapshot(case["run"])
    code, _, err = run_cli([*case["argv"], *extra], capsys)
    message = assert_one_line_error(code, err, *fragments)
    assert_nothing_lost(before, case["run"], may_change)
    return message


# ---------------------------------------------------------------------------------------------- dataset files


def _batch(case: dict, name: str) -> Path:
    return case["data"] / "cifar-10-batches-py" / name


@pytest.mark.parametrize("damage", ["garbage", "truncated", "empty", "not_a_batch"])
def test_corrupt_or_truncated_dataset_file(case: dict, capsys, damage: str) -> None:
    path = _batch(case, "data_batch_3")
    content = path.read_bytes()
    path.write_bytes({
        "garbage": os.urandom(len(content)),
        "truncated": content[: len(content) // 2],
        "empty": b"",
        "not_a_batch": b"\x80\x02}q\x00.",  # a valid pickle of an empty dict
    }[damage])
    _fails_cleanly(case, capsys, [], "data_batch_3", "corrupt", "delete", "download")


def test_missing_dataset_file(case: dict, capsys) -> None:
    _batch(case, "data_batch_1").unlink()
    _fails_cleanly(case, capsys, [], "missing", "data_batch_1", "dsnet download cifar10")


class _WrongArchive:
    """Stands in for urlopen: every URL answers with bytes that are not the official archive."""

    def __init__(self) -> None:
        self.urls: list[str] = []

    def __call__(self, request, timeout: float | None = None):  # noqa: ANN204
        self.urls.append(request.full_url)
        return _Response(b"this is not the CIFAR-10 archive" * 100)


class _Response(io.BytesIO):
    status = 200

    def __init__(self, payload: bytes) -> None:
        super().__init__(payload)
        self.headers = {"Content-Length": str(len(payload))}


@pytest.mark.parametrize("command", ["train", "download"])
def test_wrong_md5_of_a_download(case: dict, capsys, monkeypatch: pytest.MonkeyPatch, command: str) -> None:
    server = _WrongArchive()
    monkeypatch.setattr(dsnet.data.download, "urlopen", server)
    empty = case["tmp"] / "fresh-data"
    if command == "train":
        extra = ["--set", "data.download=true", "--data-dir", empty]
        message = _fails_cleanly(case, capsys, extra, "MD5", "expected", "rerun")
    else:
        code, _, err = run_cli(["download", "cifar10", "--data-dir", empty, "--no-progress"], capsys)
        message = assert_one_line_error(code, err, "MD5", "expected", "rerun")
    assert server.urls and "c58f30108f718f92721af3b95e74349a" in message
    assert not any(p.is_file() for p in empty.rglob("*")), "a download that failed its MD5 must not be kept"


# ------------------------------------------------------------------------------------------------------ names


@pytest.mark.parametrize(("override", "fragments"), [
    ("model.name=dsnet_tiyn", ("unknown model 'dsnet_tiyn'", "dsnet_tiny")),
    ("model.kwargs.blocks=[residual,mbconvv]", ("unknown atomic block 'mbconvv'", "mbconv")),
    ("model.kwargs.widht=8", ("model.kwargs of dsnet_tiny", "widht")),
    ("model.kwargs.widht=8", ("'widht' is not an argument of DSNet", "did you mean 'width'?", "valid: width,")),
    ("model.kwargs.width=abc", ("model.kwargs of dsnet_tiny", "width must be an integer, got 'abc'")),
    ("model.kwargs.attention_init=foo", ("unknown attention_init 'foo'", "valid: normal, uniform, lognormal")),
    ("objective.name=tradez", ("unknown objective 'tradez'", "trades")),
    ("objective.betaa=6", ("no parameter 'betaa'", "beta")),
    ("data.dataset=cifar11", ("unknown dataset 'cifar11'", "cifar10")),
    ("schedule.name=cosin", ("unknown schedule 'cosin'", "cosine")),
    ("train.epoch=3", ("unknown key train.epoch", "train.epochs")),
    ("train.selection=best", ("train.selection", "best_val_pgd")),
])
def test_unknown_names_suggest_the_right_one(case: dict, capsys, override: str, fragments: tuple[str, ...]) -> None:
    _fails_cleanly(case, capsys, ["--set", override], *fragments)


@pytest.mark.parametrize(("extra", "fragments"), [
    (["--attacks", "pgdd"], ("unknown attack 'pgdd'", "did you mean 'pgd'")),
    (["--preset", "papper"], ("unknown Linf preset 'papper'", "did you mean 'paper'")),
    (["--threat-model", "L2", "--preset", "paper"], ("unknown L2 preset 'paper'", "standard")),
    (["--threat-model", "Linf2"], ("unknown threat model 'Linf2'", "did you mean 'Linf'")),
    (["--trained-with", "tradez"], ("tradez", "--trained-with")),
    (["--dataset", "cifar11"], ("unknown dataset 'cifar11'", "cifar10")),
    (["--device", "cuda:63"], ("--device cuda:63", "visible GPU", "--device auto or cpu")),
    (["--device", "tpu"], ("--device 'tpu' is not a device",)),
])
def test_eval_unknown_names(case: dict, capsys, extra: list[str], fragments: tuple[str, ...]) -> None:
    argv = ["eval", "--checkpoint", case["run"] / "last.pt", "--data-dir", case["data"], "--out-dir",
            case["tmp"] / "eval", "--n-examples", "4", "--no-sanity", "--no-progress", *extra]
    before = folder_snapshot(case["run"])
    code, _, err = run_cli(argv, capsys)
    assert_one_line_error(code, err, *fragments)
    assert_nothing_lost(before, case["run"])


# -------------------------------------------------------------------------------------------- hyper-parameters


@pytest.mark.parametrize(("overrides", "fragments"), [
    (["objective.name=at", "objective.eps=-0.031"], ("eps", ">= 0")),
    (["objective.name=at", "objective.eps=.nan"], ("eps", "finite")),
    (["objective.name=at", "objective.steps=0"], ("steps", ">= 1")),
    (["objective.name=trades", "objective.steps=0"], ("steps", ">= 1")),
    (["train.batch_size=4096"], ("batch_size 4096 is larger than the 64 training images", "lower it")),
    (["train.batch_size=0"], ("train.batch_size", ">= 1")),
    (["optim.lr=-0.1"], ("optim.lr", "> 0")),
    (["train.epochs=0"], ("train.epochs", ">= 1")),
    (["data.val_size=1000"], ("val_size",)),
    (["model.kwargs.width=-4"], ("width", ">= 1")),
    (["train.device=tpu"], ("train.device", "cpu")),
    (["train.device=cuda:7"], ("train.device", "GPU")),
    (["optim.attention_betas=[0.5,0.9,0.1]"], ("optim.attention_betas must be a list of 2 values, got 3",)),
    (["optim.attention_betas=[0.5]"], ("optim.attention_betas must be a list of 2 values, got 1",)),
])
def test_out_of_range_hyper_parameters(case: dict, capsys, overrides: list[str], fragments: tuple[str, ...]) -> None:
    extra = [arg for override in overrides for arg in ("--set", override)]
    _fails_cleanly(case, capsys, extra, *fragments)


def test_bad_recipe_files(case: dict, capsys) -> None:
    _fails_cleanly(case, capsys, ["--config", case["tmp"] / "nope.yaml"], "nope.yaml does not exist", "configs/")
    broken = case["tmp"] / "broken.yaml"
    broken.write_text("model: {name: dsnet_tiny\ntrain: [")
    _fails_cleanly(case, capsys, ["--config", broken], "broken.yaml is not valid YAML")
    _fails_cleanly(case, capsys, ["--set", "train.epochs"], "section.key=value")
    _fails_cleanly(case, capsys, ["--config", case["run"] / "last.pt"], "last.pt as a YAML recipe", "checkpoint")
    scalar = case["tmp"] / "scalar.yaml"
    scalar.write_text("dsnet_tiny\n")
    _fails_cleanly(case, capsys, ["--config", scalar], "must hold a mapping of sections")
    _fails_cleanly(case, capsys, ["--config", case["tmp"]], "is a folder, not a recipe file", "configs/")
    for empty in ("", "# a recipe to write later\n", "{}\n"):
        blank = case["tmp"] / "blank.yaml"
        blank.write_text(empty)
        _fails_cleanly(case, capsys, ["--config", blank], "blank.yaml is empty", "120-epoch run",
                       "configs/quickstart.yaml")


# ------------------------------------------------------------------------------------------------- the disk


def test_output_folder_under_a_file(case: dict, capsys) -> None:
    blocker = case["tmp"] / "a-file"
    blocker.write_text("not a folder")
    code, _, err = run_cli([*case["argv"][:-3], "--out-dir", blocker / "run"], capsys)
    assert_one_line_error(code, err, "cannot write to --out-dir", "writable")
    assert blocker.read_text() == "not a folder"


def test_data_folder_under_a_file(case: dict, capsys) -> None:
    blocker = case["tmp"] / "a-file"
    blocker.write_text("not a folder")
    code, _, err = run_cli(["download", "cifar10", "--data-dir", blocker, "--no-progress"], capsys)
    assert_one_line_error(code, err, "cannot create the data folder", "writable --data-dir")
    _fails_cleanly(case, capsys, ["--data-dir", blocker / "sub", "--set", "data.download=true"],
                   "cannot create the data folder")


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders; the file case covers it")
def test_read_only_output_folder(case: dict, capsys) -> None:
    folder = case["tmp"] / "read-only"
    folder.mkdir(mode=0o500)
    try:
        code, _, err = run_cli([*case["argv"][:-3], "--out-dir", folder / "run"], capsys)
        assert_one_line_error(code, err, "cannot write to --out-dir", "writable")
    finally:
        folder.chmod(0o700)


# ------------------------------------------------------------------------------------------------- NaN loss


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(case: dict, capsys) -> None:
    _fails_cleanly(case, capsys, ["--set", "optim.lr=1e30", "--allow-change", "optim.lr", "--set", "train.log_every=1"],
                   "became nan", "last good checkpoint", "lower optim.lr", "--resume", may_change=STARTED)


def test_weights_that_blow_up_at_the_last_step_are_not_saved(case: dict, capsys) -> None:
    """A finite loss at every step, then an overflow in the epoch's last update (injected after every SGD
    step): the weights must not replace the last good checkpoint."""
    good = load_weights_only(case["run"] / "last.pt")

    def overflow(optimizer: torch.optim.Optimizer, args, kwargs) -> None:  # noqa: ANN001
        if isinstance(optimizer, torch.optim.SGD):
            with torch.no_grad():
                weight = optimizer.param_groups[0]["params"][0]
                weight[(0,) * weight.dim()] = float("inf")

    handle = register_optimizer_step_post_hook(overflow)
    try:
        _fails_cleanly(case, capsys, ["--set", "train.max_steps_per_epoch=1", "--allow-change", "train"],
                       "model weights became nan",
                       "last good checkpoint", "lower optim.lr", may_change=STARTED)
    finally:
        handle.remove()
    kept = load_weights_only(case["run"] / "last.pt")
    assert all(torch.isfinite(v).all() for v in kept["model"].values() if v.is_floating_point())
    assert kept["epoch"] == good["epoch"]


def test_nan_loss_in_a_fresh_run_says_no_checkpoint_was_written(case: dict, capsys) -> None:
    run = case["tmp"] / "fresh"
    code, _, err = run_cli([*case["argv"][:-3], "--out-dir", run, "--set", "optim.lr=1e30", "--set",
                            "train.log_every=1"], capsys)
    assert_one_line_error(code, err, "became nan", "no checkpoint was written yet")


# ------------------------------------------------------------------------------------ files given as arguments


@pytest.mark.parametrize("kind", ["random_bytes", "unsafe"])
def test_attention_init_file_is_loaded_safely_before_the_data(case: dict, capsys, kind: str) -> None:
    """`model.kwargs.attention_init=<file>` goes through the checkpoint loader, at config time."""
    path = case["tmp"] / "attention.pt"
    marker = case["tmp"] / "ran"
    if kind == "unsafe":
        class RunsCode:
            def __reduce__(self):  # noqa: ANN204
                return os.system, (f"touch {marker}",)

        torch.save({"attention": RunsCode()}, path)
        fragments: tuple[str, ...] = ("refusing to load", "attention.pt", "could run code")
    else:
        path.write_bytes(os.urandom(4096))
        fragments = ("attention file", "attention.pt", "corrupt")
    message = _fails_cleanly(case, capsys, ["--set", f"model.kwargs.attention_init={path}"], *fragments)
    assert message.startswith("dsnet: error: model.kwargs of dsnet_tiny")  # the config check, before any data
    assert "could run code" in message or "could run code" not in fragments
    assert not marker.exists()


def test_missing_file_in_a_partly_present_dataset_is_named(case: dict, capsys, monkeypatch: pytest.MonkeyPatch) -> None:
    """A lost middle batch with downloads on and no network: the error names the missing file."""
    from urllib.error import URLError

    def offline(request, timeout: float | None = None):  # noqa: ANN001, ANN202
        raise URLError("network is unreachable")

    monkeypatch.setattr(dsnet.data.download, "urlopen", offline)
    _batch(case, "data_batch_3").unlink()
    _fails_cleanly(case, capsys, ["--set", "data.download=true"], "data_batch_3 is missing", "the other files are there",
                   "network is unreachable")


@pytest.mark.parametrize("command", ["eval", "export"])
def test_eval_and_export_out_dir_that_is_a_file(case: dict, capsys, command: str) -> None:
    blocker = case["tmp"] / "a-file"
    blocker.write_text("not a folder")
    argv = [command, "--checkpoint", case["run"] / "last.pt", "--out-dir", blocker]
    if command == "eval":
        argv += ["--data-dir", case["data"], "--attacks", "clean", "--no-progress"]
    code, _, err = run_cli(argv, capsys)
    assert_one_line_error(code, err, "cannot write to --out-dir", "it is a file, not a folder", "writable folder")
    assert "loaded" not in err, "the out-dir is checked before anything is loaded"
    assert blocker.read_text() == "not a folder"
    code, _, err = run_cli([*argv[:argv.index("--out-dir") + 1], blocker / "sub", *argv[argv.index(blocker) + 1:]],
                           capsys)
    assert_one_line_error(code, err, "cannot write to --out-dir", "writable folder")


def test_export_of_a_report_without_autoattack_writes_nothing(case: dict, capsys) -> None:
    evaluated = case["tmp"] / "eval"
    code, _, err = run_cli(["eval", "--checkpoint", case["run"] / "last.pt", "--data-dir", case["data"], "--out-dir",
                            evaluated, "--attacks", "clean", "fgsm", "--n-examples", "4", "--no-sanity", "--no-progress"],
                           capsys)
    assert code == 0, err
    out = case["tmp"] / "export"
    code, _, err = run_cli(["export", "--checkpoint", case["run"] / "last.pt", "--out-dir", out, "--report",
                            evaluated / "report.json"], capsys)
    assert_one_line_error(code, err, "no AutoAttack result")
    assert not any(out.iterdir()), "the refusal came after writing the model files"
