"""Every recipe in configs/ validates, and the paper settings hold the paper's numbers."""

from __future__ import annotations

from pathlib import Path

import pytest

from dsnet.config import load_config
from dsnet.training.schedules import build_schedule

CONFIGS = sorted((Path(__file__).parents[2] / "configs").glob("*.yaml"))


def test_there_are_recipes() -> None:
    names = {p.stem for p in CONFIGS}
    assert {"quickstart", "cifar10_at_dsnet4", "cifar10_trades1_dsnet4", "cifar10_trades6_dsnet6",
            "cifar10_mart_dsnet4", "svhn_at_dsnet4", "cifar10_at_wrn34_10"} <= names


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_recipe_validates(path: Path) -> None:
    config = load_config(path)
    assert config.train.batch_size >= 1


@pytest.mark.parametrize(("name", "epochs", "decay_epoch", "step"), [
    ("cifar10_at_dsnet4", 120, 60, 0.007), ("cifar10_trades6_dsnet4", 85, 75, 0.007),
    ("cifar10_mart_dsnet4", 90, 60, 0.007), ("svhn_at_dsnet4", 100, 40, 0.003), ("svhn_mart_dsnet6", 70, 40, 0.003),
])
def test_paper_settings(name: str, epochs: int, decay_epoch: int, step: float) -> None:
    config = load_config(Path(__file__).parents[2] / "configs" / f"{name}.yaml")
    assert config.train.epochs == epochs and config.train.batch_size == 128
    assert config.objective["eps"] == 0.031 and config.objective["steps"] == 10
    assert config.objective["step_size"] == step
    schedule = build_schedule(base_lr=config.optim.lr, epochs=epochs, **config.schedule)
    assert schedule(decay_epoch - 0.01) == pytest.approx(0.1)
    assert schedule(decay_epoch) == pytest.approx(0.01)
    if name.startswith("svhn"):
        assert schedule(1) == pytest.approx(0.02)  # 5-epoch linear warm-up
