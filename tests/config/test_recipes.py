"""Every recipe in configs/ validates, and each paper setting holds exactly the numbers of the paper's text.

The table below is transcribed from section 5 of the paper (shared/paper/dsnet_icml2021.txt, "For CIFAR-10,
during training, ..."), not from the recipes: epochs and decay points per training style, "reduced by 20" for
SVHN, ε = 0.031, step 0.007 (SVHN: 0.003), 10 steps, β = 1 and 6 for TRADES, β = 6 for MART, batch 128, SGD with
lr 0.1, momentum 0.9 and weight decay 5e-4, selection one epoch after the first decay.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest

from dsnet.config import load_config
from dsnet.schedules import build_schedule

CONFIGS = sorted((Path(__file__).parents[2] / "configs").glob("*.yaml"))
BEYOND_THE_PAPER = ("quickstart", "cifar10_trades_ema_awp", "cifar10_trades_dm", "cifar10_trades_rrn",
                    "cifar10_trades_wrn34r")
PAPER_RECIPES = [p for p in CONFIGS if p.stem not in BEYOND_THE_PAPER]
"""One recipe per (dataset, training style), of DS-Net-4; every other model trains with the same (`<recipe>_<model>`)."""
PAPER = re.compile(r"(cifar10|svhn)_(at|trades1|trades6|mart)(?:_(\w+))?")

# (dataset, objective) -> epochs, LR decay epochs, decay factors (cumulative multipliers of the base LR)
PAPER_SCHEDULES = {
    ("cifar10", "at"): (120, [60, 90], [0.1, 0.01]),
    ("cifar10", "trades"): (85, [75], [0.1]),
    ("cifar10", "mart"): (90, [60], [0.1]),
    ("svhn", "at"): (100, [40, 70], [0.1, 0.01]),
    ("svhn", "trades"): (65, [55], [0.1]),
    ("svhn", "mart"): (70, [40], [0.1]),
}
PAPER_BETA = {"at": None, "trades1": 1.0, "trades6": 6.0, "mart": 6.0}


def test_there_are_recipes() -> None:
    """One file per (dataset, style), and every paper setting by name (the model composed over the recipe)."""
    assert {p.stem for p in PAPER_RECIPES} == {f"{d}_{s}" for d in ("cifar10", "svhn")
                                               for s in ("at", "trades1", "trades6", "mart")}
    for name, model in (("cifar10_at_dsnet4", "dsnet4"), ("cifar10_trades6_dsnet6", "dsnet6"),
                        ("svhn_mart_wrn34_10", "wrn34_10"), ("cifar10_at_sat_wrn34_10", "sat_wrn34_10")):
        assert load_config(name).model.name == model
    with pytest.raises(Exception, match="names no recipe.*cifar10_at_wrn34_10"):
        load_config("cifar10_at_wrn34_11")


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_recipe_validates(path: Path) -> None:
    config = load_config(path)
    assert config.train.batch_size >= 1


@pytest.mark.parametrize("name", [p.stem for p in PAPER_RECIPES] + ["cifar10_at_wrn34_10", "svhn_trades6_dsnet6"])
def test_every_paper_recipe_holds_the_papers_numbers(name: str) -> None:
    dataset, style, model = PAPER.fullmatch(name).groups()
    model = model or "dsnet4"
    config = load_config(name)
    objective = config.objective
    name = "trades" if style.startswith("trades") else style
    epochs, milestones, factors = PAPER_SCHEDULES[(dataset, name)]
    assert config.model.name == model and config.data.dataset == dataset
    assert objective["name"] == name
    assert (objective["eps"], objective["steps"]) == (0.031, 10)
    assert objective["step_size"] == (0.003 if dataset == "svhn" else 0.007)
    assert objective.get("beta") == PAPER_BETA[style]
    assert (config.train.epochs, config.train.batch_size, config.train.selection) == (epochs, 128,
                                                                                      "first_decay_plus_one")
    assert (config.optim.lr, config.optim.momentum, config.optim.weight_decay) == (0.1, 0.9, 5e-4)
    assert config.schedule["name"] == "piecewise"
    assert (config.schedule["milestones"], config.schedule["factors"]) == (milestones, factors)
    schedule = build_schedule(base_lr=config.optim.lr, epochs=epochs, **config.schedule)
    for milestone, factor in zip(milestones, factors):
        assert schedule(milestone - 0.01) > schedule(milestone) == pytest.approx(0.1 * factor)
    assert schedule(epochs) == pytest.approx(0.1 * factors[-1])
    if dataset == "svhn":
        assert schedule(1) == pytest.approx(0.02)  # 5-epoch linear warm-up (the authors' script)


@pytest.mark.parametrize("path", PAPER_RECIPES, ids=[p.stem for p in PAPER_RECIPES])
def test_every_departure_of_the_authors_script_is_noted_beside_its_value(path: Path) -> None:
    """Where the authors' script differs from the paper's text, the recipe says so (a comment, not a value)."""
    text = path.read_text()
    dataset, style, _ = PAPER.fullmatch(path.stem).groups()
    expected = {
        ("cifar10", "at"): ["x0.005 from epoch 110"],
        ("cifar10", "mart"): ["epoch 90", "0.001"],
        ("svhn", "at"): ["x0.005 from epoch 90", "0.0005"],
        ("svhn", "mart"): ["x0.01 at epoch 70", "0.001"],
    }.get((dataset, "trades" if style.startswith("trades") else style), [])
    if dataset == "svhn":
        expected += ["eps / 10 = 0.0031", "warm-up", "0.02 throughout epoch 1"]
    for fragment in expected:
        assert fragment in text, f"{path.name} does not note {fragment!r}"


def test_the_modern_recipe_holds_the_numbers_of_its_sources() -> None:
    """EMA τ 0.995 from 2.5 % of the steps and 70 % generated images per batch (Wang et al. 2023), AWP γ 0.005 from
    epoch 10 (csdongxian/AWP's TRADES script), the RobustBench ε with the paper's TRADES schedule."""
    path = Path(__file__).parents[2] / "configs" / "cifar10_trades_ema_awp.yaml"
    config = load_config(path)
    objective = config.objective
    assert (objective["name"], objective["awp_gamma"], objective["awp_warmup"]) == ("trades", 0.005, 9)
    assert objective["eps"] == pytest.approx(8 / 255) and objective["step_size"] == pytest.approx(2 / 255)
    assert (config.train.ema_decay, config.train.ema_warmup, config.train.selection) == (0.995, 0.025, "best_val_pgd")
    assert (config.data.extra_fraction, config.data.extra_path) == (0.7, "data/cifar10_1m.npz")
    assert (config.train.epochs, config.schedule["milestones"]) == (85, [75])
    assert "huggingface.co/datasets/P2333/DM-Improves-AT" in path.read_text()


def test_the_dm_recipe_holds_the_values_of_wang_et_als_code() -> None:
    """DM-Improves-AT's README command and code defaults (train-wa.py, watrain.py, trades.py, parser.py)."""
    path = Path(__file__).parents[2] / "configs" / "cifar10_trades_dm.yaml"
    config = load_config(path)
    o = config.objective
    assert (o["name"], o["beta"], o["label_smoothing"], o["steps"], o["start"], o["noise_std"]) == (
        "trades", 5.0, 0.1, 10, "uniform", 0.0)
    assert o["eps"] == pytest.approx(8 / 255) and o["step_size"] == pytest.approx(2 / 255)
    assert (o["attack_mode"], o["outer_order"]) == ("batch", "clean_first")
    assert (config.model.name, config.data.extra_fraction, config.data.val_size) == ("dm_wrn28_10", 0.7, 1024)
    optim = config.optim
    assert (optim.lr, optim.nesterov, optim.weight_decay, optim.norm_weight_decay) == (0.2, True, 5e-4, False)
    schedule = config.schedule
    assert (schedule["name"], schedule(1.0), schedule(10.0), schedule(400.0)) == pytest.approx(
        ("onecycle", 0.008, 0.2, 8e-7))
    assert schedule.momentum_at(1.0) == pytest.approx(0.95) and schedule.momentum_at(10.0) == pytest.approx(0.85)
    train = config.train
    assert (train.epochs, train.batch_size, train.max_steps_per_epoch) == (400, 512, 98)  # ceil(50000 / 512)
    assert (train.ema_decay, train.ema_warmup, train.bn_warm_start, train.val_pgd_steps) == (0.995, 0.025, True, 40)
    assert "huggingface.co/datasets/P2333/DM-Improves-AT" in path.read_text()
    assert load_config("cifar10_trades_dm_ra_wrn70_16").model.name == "ra_wrn70_16"


def test_the_rrn_recipe_holds_the_values_of_huang_et_als_code() -> None:
    """robust-residual-network's configs/CIFAR10/RobustResNet-A1.yaml, main_dist.py and core/losses/trades.py."""
    path = Path(__file__).parents[2] / "configs" / "cifar10_trades_rrn.yaml"
    config = load_config(path)
    o = config.objective
    assert (o["name"], o["beta"], o["steps"], o["start"], o["start_std"], o["noise_std"], o["attack_mode"]) == (
        "trades", 6.0, 10, "normal", 0.001, 0.0, "eval")
    assert o["eps"] == pytest.approx(8 / 255) and o["step_size"] == pytest.approx(2 / 255)
    assert (config.model.name, config.model.kwargs) == ("rrn_a1", {"activation": "relu"})
    optim = config.optim
    assert (optim.lr, optim.momentum, optim.weight_decay, optim.nesterov, optim.grad_clip) == (0.1, 0.9, 2e-4,
                                                                                                False, 5.0)
    schedule = config.schedule
    assert [schedule(e) for e in (75.0, 76.0, 90.0, 91.0)] == pytest.approx([0.1, 0.01, 0.01, 0.001])
    assert (config.train.epochs, config.train.batch_size, config.train.val_pgd_steps) == (100, 128, 20)
    assert load_config("cifar10_trades_rrn_wrn_a4").model.name == "wrn_a4"


def test_the_wrn34r_recipe_holds_the_values_of_its_code() -> None:
    """HanxunH/RobustWRN's WRN-34-R-trades-500k.yaml, main.py and dataset.py (RobustBench's Huang2021Exploring)."""
    path = Path(__file__).parents[2] / "configs" / "cifar10_trades_wrn34r.yaml"
    config = load_config(path)
    o = config.objective
    assert (o["name"], o["beta"], o["steps"], o["start"], o["noise_std"], o["attack_mode"]) == (
        "trades", 6.0, 10, "normal", 0.0, "eval")
    assert (config.model.name, config.data.extra_fraction) == ("wrn34_r", 0.5)
    optim = config.optim
    assert (optim.lr, optim.momentum, optim.weight_decay, optim.grad_clip, optim.norm_weight_decay) == (
        0.1, 0.9, 5e-4, None, True)
    schedule = config.schedule
    for epoch in (1, 2, 200, 400):  # main.py's 0.05 * (1 + cos((epoch - 1) * pi / 400)), here at the 1-based epoch
        assert schedule(float(epoch)) == pytest.approx(0.05 * (1 + math.cos((epoch - 1) * math.pi / 400)))
    train = config.train
    assert (train.epochs, train.batch_size, train.max_steps_per_epoch, train.ema_decay) == (400, 256, 196, None)
