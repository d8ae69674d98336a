"""The PGD-vs-margin check flags real gradient-masked models through `dsnet eval --no-sanity`, and stays quiet on
ordinary ones.

Two masked models carry the weights of a trained tiny DS-Net:
- logits multiplied by 1e6: the softmax saturates, cross-entropy gradients are exactly zero on every correctly
  classified point, so PGD and FGSM only ever try their random start, while the margin loss of CW∞ is unaffected;
- the input rounded to the 8-bit grid: no gradient reaches the input at all, and only AutoAttack's black-box
  Square breaks points.
Without the ε sweep, no other check notices the first one (PGD-20 equals the clean accuracy, which is fine for the
ordering check).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from test_evaluation_end_to_end import small_autoattack  # noqa: E402 - the shrunk AutoAttack budgets

from dsnet.cli import main
from dsnet.config import config_from_dict
from dsnet.models import MODELS, ModelInfo, register_model
from dsnet.models.dsnet import DSNet
from dsnet.training.trainer import train

TINY = dict(width=4, width_factor=2, depth=3)  # dsnet_tiny's arguments, so its checkpoints load


def _logit_scaled(num_classes: int = 10, **kwargs: Any) -> DSNet:
    model = DSNet(num_classes=num_classes, **{**TINY, **kwargs})
    model.register_forward_hook(lambda module, args, out: out * 1e6)
    return model


def _input_rounded(num_classes: int = 10, **kwargs: Any) -> DSNet:
    model = DSNet(num_classes=num_classes, **{**TINY, **kwargs})
    model.register_forward_pre_hook(lambda module, args: (torch.round(args[0] * 255) / 255, *args[1:]))
    return model


for _name, _builder in (("logit_scaled_tiny", _logit_scaled), ("input_rounded_tiny", _input_rounded)):
    if _name not in MODELS:
        register_model(_name, _builder, ModelInfo(family="test", tiny=True, note="a gradient-masked dsnet_tiny"))


def _recipe(objective: dict, lr: float) -> dict:
    return {"model": {"name": "dsnet_tiny"}, "data": {"dataset": "cifar10", "val_size": 40, "download": False},
            "objective": objective, "optim": {"lr": lr},
            "schedule": {"name": "piecewise", "milestones": [3], "factors": [0.1]},
            "train": {"epochs": 3, "batch_size": 32, "progress": False, "tensorboard": False, "val_pgd_steps": 2}}


@pytest.fixture(scope="module")
def checkpoints(cifar10_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = {}
    # AT at lr 0.05 (the tiny recipe's): at 0.2 it barely learns (37 % clean), and CE and margin then disagree on
    # which of its few robust points can be broken, as they may for a model that knows little.
    for name, objective, lr in (("standard", {"name": "standard"}, 0.2),
                                ("at", {"name": "at", "eps": 0.031, "step_size": 0.015, "steps": 2}, 0.05)):
        run = tmp_path_factory.mktemp(name)
        train(config_from_dict(_recipe(objective, lr)), cifar10_dir, run)
        out[name] = run / "selected.pt"
    return out


def _check(checkpoint: Path, cifar10_dir: Path, out: Path, *extra: str) -> dict[str, Any]:
    code = main(["eval", "--checkpoint", str(checkpoint), "--data-dir", str(cifar10_dir), "--out-dir", str(out),
                 "--n-examples", "40", "--batch-size", "40", "--no-sanity", "--no-progress", *extra])
    assert code == 0
    report = json.loads((out / "report.json").read_text())
    return {c["name"]: c for c in report["sanity_checks"]} | {"accuracy": report["accuracy"]}


def test_logit_scaled_model_is_flagged_without_the_sweep(checkpoints: dict, cifar10_dir: Path, tmp_path: Path) -> None:
    checks = _check(checkpoints["standard"], cifar10_dir, tmp_path, "--model", "logit_scaled_tiny",
                    "--attacks", "clean", "fgsm", "pgd", "cw_inf")
    accuracy = checks["accuracy"]
    assert accuracy["pgd"] > accuracy["cw_inf"] + 0.1  # PGD cannot move; CW∞'s margin still can
    assert checks["ordering"]["status"] == "passed" and checks["eps_sweep"]["status"] == "skipped"
    check = checks["pgd_vs_margin"]
    assert check["status"] == "failed", check
    assert "gradient masking" in check["message"] and check["details"]["share"] < 0.5


def test_input_rounding_model_is_flagged_through_autoattack(checkpoints: dict, cifar10_dir: Path,
                                                            tmp_path: Path) -> None:
    with small_autoattack():
        checks = _check(checkpoints["standard"], cifar10_dir, tmp_path, "--model", "input_rounded_tiny",
                        "--attacks", "clean", "pgd", "cw_inf", "autoattack")
    assert checks["pgd_vs_margin"]["status"] == "failed", checks["pgd_vs_margin"]
    assert checks["pgd_vs_margin"]["details"]["broken_by_margin"] >= 3


@pytest.mark.parametrize("kind", ["standard", "at"])
def test_ordinary_models_pass(checkpoints: dict, cifar10_dir: Path, tmp_path: Path, kind: str) -> None:
    checks = _check(checkpoints[kind], cifar10_dir, tmp_path, "--attacks", "clean", "fgsm", "pgd", "cw_inf")
    assert checks["pgd_vs_margin"]["status"] != "failed", checks["pgd_vs_margin"]
