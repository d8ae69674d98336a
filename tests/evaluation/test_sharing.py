"""Sharing a model the way the field does: safetensors + config.json, a model card, and `hf://` through a Hub cache.

Promise (README "Sharing a model"): `dsnet export --format safetensors --hub-card` writes a folder that uploads to
the Hub as it is; `dsnet eval --checkpoint FOLDER` and `--checkpoint hf://ORG/REPO[@REVISION]` rebuild the very
model that was exported (identical logits), reading the weights without unpickling, offline from the Hub's cache
when `HF_HUB_OFFLINE=1`, at the revision asked for, and the report records the commit it loaded.

The Hub cache here is built as `huggingface_hub` lays it out (`models--ORG--REPO/blobs/<sha256>`, snapshots of
symlinks per commit, `refs/<branch>`), and read by the real `huggingface_hub` in offline mode: no network.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest
import torch
import torch.nn as nn
import yaml
from dsnet_testing import small_autoattack

from dsnet.cli import main
from dsnet.errors import CheckpointError, ConfigError
from dsnet.evaluation import load_exported, load_model_for_evaluation
from dsnet.models import create_model

STANDARD = ["--preset", "standard", "--attacks", "clean", "pgd", "autoattack", "--n-examples", "16", "--no-sanity",
            "--no-progress"]
COMMIT_A, COMMIT_B = "a" * 40, "b" * 40


@pytest.fixture(scope="module")
def shared(cifar10_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A dsnet_tiny trained a few steps (a bare state dict), its standard evaluation, and its Hub export."""
    from dsnet.data import load_dataset

    root = tmp_path_factory.mktemp("shared")
    torch.manual_seed(0)
    model = create_model("dsnet_tiny")
    data = load_dataset("cifar10", cifar10_dir, "train", download=False)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(30):
        index = torch.randint(0, len(data), (32,))
        loss = nn.functional.cross_entropy(model(data.images[index].float() / 255), data.labels[index])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    torch.save({"state_dict": model.state_dict()}, root / "weights.pt")
    given = ["--model", "dsnet_tiny", "--checkpoint", str(root / "weights.pt"), "--dataset", "cifar10",
             "--trained-with", "at"]
    with small_autoattack():
        assert main(["eval", *given, "--data-dir", str(cifar10_dir), "--out-dir", str(root / "eval"), *STANDARD]) == 0
    export = root / "export"
    assert main(["export", "--model", "dsnet_tiny", "--checkpoint", str(root / "weights.pt"), "--report",
                 str(root / "eval" / "report.json"), "--out-dir", str(export), "--name", "Tiny2026_DSNet",
                 "--hub-card", "dsnet-test/tiny"]) == 0
    return {"root": root, "weights": root / "weights.pt", "report": root / "eval" / "report.json",
            "export": export, "data": cifar10_dir}


def _probe() -> torch.Tensor:
    return torch.rand(6, 3, 32, 32, generator=torch.Generator().manual_seed(3))


def _logits(model: nn.Module) -> torch.Tensor:
    with torch.no_grad():
        return model(_probe())


def _original(shared: dict) -> nn.Module:
    return load_model_for_evaluation(shared["weights"], model_name="dsnet_tiny", dataset="cifar10").model


def add_to_hub_cache(cache: Path, repo: str, commit: str, folder: Path, refs: tuple[str, ...] = ("main",)) -> Path:
    """Puts `folder`'s files into a Hub cache at `commit`, laid out as huggingface_hub does: content-addressed
    blobs, a snapshot folder of relative symlinks per commit, and `refs/<name>` holding the commit."""
    repo_dir = cache / f"models--{repo.replace('/', '--')}"
    (repo_dir / "blobs").mkdir(parents=True, exist_ok=True)
    snapshot = repo_dir / "snapshots" / commit
    for file in sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith(".")):
        blob = repo_dir / "blobs" / hashlib.sha256(file.read_bytes()).hexdigest()
        shutil.copyfile(file, blob)
        link = snapshot / file.relative_to(folder)
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    (repo_dir / "refs").mkdir(exist_ok=True)
    for ref in refs:
        (repo_dir / "refs" / ref).write_text(commit)
    return snapshot


@pytest.fixture
def offline_hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    cache = tmp_path / "hub-cache"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    return cache


def test_a_safetensors_export_holds_the_model_and_round_trips_without_unpickling(
        shared: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    from safetensors.torch import load_file

    export = shared["export"]
    assert sorted(p.name for p in export.iterdir() if not p.name.startswith(".")) == \
        ["README.md", "config.json", "model.safetensors", "model_info"]  # + the claim: ε is the leaderboard's
    claim = json.loads((export / "model_info" / "cifar10" / "Linf" / "Tiny2026_DSNet.json").read_text())
    assert claim["evaluation_math"] == "fp32"
    spec = json.loads((export / "config.json").read_text())
    assert (spec["model_name"], spec["model_kwargs"], spec["num_classes"], spec["dataset"]) == \
        ("dsnet_tiny", {}, 10, "cifar10")
    assert spec["classes"][:2] == ["airplane", "automobile"] and len(spec["classes"]) == 10
    assert spec["input"]["range"] == [0.0, 1.0] and spec["input"]["normalization"]["std"] == [1.0, 1.0, 1.0]
    assert spec["weights"]["sha256"] == hashlib.sha256((export / "model.safetensors").read_bytes()).hexdigest()
    assert sorted(load_file(export / "model.safetensors")) == sorted(create_model("dsnet_tiny").state_dict())

    expected = _logits(_original(shared))

    def no_unpickling(*args: object, **kwargs: object) -> None:
        raise AssertionError("a safetensors export was read through torch.load")

    monkeypatch.setattr(torch, "load", no_unpickling)
    assert torch.equal(_logits(load_exported(export)), expected)
    assert torch.equal(_logits(load_model_for_evaluation(export).model), expected)
    assert torch.equal(_logits(load_model_for_evaluation(export / "model.safetensors").model), expected)


def test_the_model_card_carries_the_reports_numbers_in_the_hubs_format(shared: dict) -> None:
    text = (shared["export"] / "README.md").read_text()
    assert text.startswith("---\n")
    header = yaml.safe_load(text.split("---\n")[1])
    report = json.loads(shared["report"].read_text())
    assert header["library_name"] == "dsnet" and header["datasets"] == ["uoft-cs/cifar10"]
    assert "adversarial-robustness" in header["tags"] and "dsnet_tiny" in header["tags"]
    (entry,) = header["model-index"]
    assert entry["name"] == "Tiny2026_DSNet"
    (result,) = entry["results"]
    assert result["dataset"]["type"] == "uoft-cs/cifar10" and result["dataset"]["split"] == "test"
    values = {m["args"]["attack"] if "args" in m else "clean": m for m in result["metrics"]}
    assert set(values) == {"clean", "pgd", "autoattack"}
    for name, metric in values.items():
        assert metric["value"] == round(100 * report["accuracy"][name], 2)
    assert values["autoattack"]["args"] | {"attack": None} == {
        "attack": None, "threat_model": "Linf", "eps": report["threat_model"]["eps"], "points": 16, "split": "test",
        "preset": "standard"}
    assert f"| {values['autoattack']['name']} | {100 * report['accuracy']['autoattack']:.2f} |" in text
    assert "hf://dsnet-test/tiny" in text


def test_eval_of_the_export_folder_gives_the_reports_per_point_results(shared: dict, tmp_path: Path) -> None:
    with small_autoattack():
        assert main(["eval", "--checkpoint", str(shared["export"]), "--data-dir", str(shared["data"]), "--out-dir",
                     str(tmp_path / "again"), *STANDARD]) == 0
    before = json.loads(shared["report"].read_text())
    after = json.loads((tmp_path / "again" / "report.json").read_text())
    assert after["points"]["robust_flags"] == before["points"]["robust_flags"]
    assert after["model"]["source"]["kind"] == "dsnet export"
    assert after["model"]["trained_with"] == "at" and "config.json" in after["model"]["trained_with_source"]


def test_hf_reference_loads_offline_from_the_hub_cache_at_the_revision_asked(
        shared: dict, offline_hub: Path, tmp_path: Path) -> None:
    add_to_hub_cache(offline_hub, "dsnet-test/tiny", COMMIT_A, shared["export"], refs=("main", "v1"))
    expected = _logits(_original(shared))
    assert torch.equal(_logits(load_exported("hf://dsnet-test/tiny")), expected)

    # a new commit on main with other weights: main moves, v1 and the pinned commit stay
    changed = tmp_path / "changed"
    state = torch.load(shared["weights"], weights_only=True)["state_dict"]
    state["stem.bias"] = state["stem.bias"] + 0.5
    torch.save({"state_dict": state}, tmp_path / "changed.pt")
    assert main(["export", "--model", "dsnet_tiny", "--dataset", "cifar10", "--checkpoint",
                 str(tmp_path / "changed.pt"), "--out-dir", str(changed), "--format", "safetensors"]) == 0
    add_to_hub_cache(offline_hub, "dsnet-test/tiny", COMMIT_B, changed, refs=("main",))
    moved = _logits(load_exported("hf://dsnet-test/tiny"))
    assert not torch.equal(moved, expected)
    assert torch.equal(_logits(load_exported("hf://dsnet-test/tiny@v1")), expected)
    assert torch.equal(_logits(load_exported(f"hf://dsnet-test/tiny@{COMMIT_A}")), expected)
    assert torch.equal(_logits(load_exported(f"hf://dsnet-test/tiny@{COMMIT_A}/model.safetensors")), expected)

    # the report says which commit a branch resolved to
    out = tmp_path / "eval-hub"
    assert main(["eval", "--checkpoint", "hf://dsnet-test/tiny@v1", "--data-dir", str(shared["data"]),
                 "--out-dir", str(out), "--preset", "standard", "--attacks", "clean", "--n-examples", "16",
                 "--no-sanity", "--no-progress"]) == 0
    report = json.loads((out / "report.json").read_text())
    hub = report["model"]["source"]["hub"]
    assert (hub["repo"], hub["revision"], hub["commit"]) == ("dsnet-test/tiny", "v1", COMMIT_A)
    assert report["checkpoint"] == f"hf://dsnet-test/tiny@{COMMIT_A}"
    assert COMMIT_A in (out / "report.md").read_text()
    before = json.loads(shared["report"].read_text())
    assert report["points"]["robust_flags"]["clean"] == before["points"]["robust_flags"]["clean"]


def test_the_hub_refuses_clearly(shared: dict, offline_hub: Path, tmp_path: Path,
                                 capsys: pytest.CaptureFixture[str]) -> None:
    add_to_hub_cache(offline_hub, "dsnet-test/tiny", COMMIT_A, shared["export"])
    with pytest.raises(CheckpointError, match="not in the Hub cache.*HF_HUB_OFFLINE"):
        load_exported("hf://dsnet-test/absent")
    with pytest.raises(CheckpointError, match="not in the Hub cache"):
        load_exported("hf://dsnet-test/tiny@v9")
    with pytest.raises(ConfigError, match="not a Hub reference"):
        load_exported("hf://only-org")
    code = main(["eval", "--checkpoint", "hf://dsnet-test/tiny/missing.pt", "--data-dir", str(shared["data"]),
                 "--out-dir", str(tmp_path / "e"), "--no-progress"])
    error = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(error) == 1 and "missing.pt" in error[0] and "hf download" in error[0]

    # code is never run from the Hub: an export built by a factory file is refused
    factory_export = tmp_path / "factory-export"
    factory_export.mkdir()
    spec = json.loads((shared["export"] / "config.json").read_text())
    spec["factory"] = {"file": "Net.factory.py", "function": "build", "kwargs": {}, "sha256": "0" * 64}
    (factory_export / "config.json").write_text(json.dumps(spec))
    shutil.copyfile(shared["export"] / "model.safetensors", factory_export / "model.safetensors")
    (factory_export / "Net.factory.py").write_text("raise SystemExit('ran code from the Hub')\n")
    add_to_hub_cache(offline_hub, "dsnet-test/coded", COMMIT_A, factory_export)
    with pytest.raises(CheckpointError, match="does not run from the Hub"):
        load_exported("hf://dsnet-test/coded")


def test_export_options_and_corrupt_safetensors_are_refused(shared: dict, tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["export", "--model", "dsnet_tiny", "--dataset", "cifar10", "--checkpoint", str(shared["weights"]),
                 "--out-dir", str(tmp_path / "x"), "--format", "pt", "--hub-card"]) == 1
    assert "--format safetensors" in capsys.readouterr().err
    assert not (tmp_path / "x").exists() or not any((tmp_path / "x").iterdir())

    # an export decides its own architecture and input convention
    with pytest.raises(ConfigError, match="drop --normalize"):
        load_model_for_evaluation(shared["export"], normalize=((0.5,) * 3, (0.5,) * 3))

    # a pickle renamed .safetensors is refused as what it is, never unpickled
    fake = tmp_path / "weights.safetensors"
    shutil.copyfile(shared["weights"], fake)
    with pytest.raises(CheckpointError, match="not a safetensors file"):
        load_model_for_evaluation(fake, model_name="dsnet_tiny", dataset="cifar10")
    # a truncated download
    copy = tmp_path / "copy"
    shutil.copytree(shared["export"], copy)
    data = (copy / "model.safetensors").read_bytes()
    (copy / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="does not match the checksum"):
        load_exported(copy)
