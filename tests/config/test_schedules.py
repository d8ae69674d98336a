"""Tests of the LR schedules: the value at every decay point of the authors' recipes, warm-up, cosine, cyclic."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from dsnet.errors import ConfigError, UnknownNameError
from dsnet.schedules import SCHEDULES, build_schedule

# The authors' recipes (reference/training_and_baselines.md §2.1; dsnet_reference.md §4.2).
CIFAR_AT = dict(name="piecewise", base_lr=0.1, epochs=120, milestones=[60, 90, 110], factors=[0.1, 0.01, 0.005])
CIFAR_TRADES = dict(name="piecewise", base_lr=0.1, epochs=85, milestones=[75], factors=[0.1])
CIFAR_MART = dict(name="piecewise", base_lr=0.1, epochs=90, milestones=[60, 90], factors=[0.1, 0.01])
SVHN_AT = dict(name="piecewise", base_lr=0.1, epochs=100, warmup_epochs=5, milestones=[40, 70, 90],
               factors=[0.1, 0.01, 0.005])
SVHN_TRADES = dict(name="piecewise", base_lr=0.1, epochs=65, warmup_epochs=5, milestones=[55, 70],
                   factors=[0.1, 0.01])
SVHN_MART = dict(name="piecewise", base_lr=0.1, epochs=70, warmup_epochs=5, milestones=[40, 70], factors=[0.1, 0.01])


@pytest.mark.parametrize(
    ("recipe", "points"),
    [
        (CIFAR_AT, {1: 0.1, 59: 0.1, 59.999: 0.1, 60: 0.01, 89: 0.01, 89.5: 0.01, 90: 0.001, 109: 0.001,
                    110: 0.0005, 120: 0.0005, 120.99: 0.0005}),
        (CIFAR_TRADES, {1: 0.1, 74: 0.1, 74.9: 0.1, 75: 0.01, 85: 0.01}),
        (CIFAR_MART, {59: 0.1, 60: 0.01, 89: 0.01, 90: 0.001}),
        (SVHN_AT, {1: 0.02, 2: 0.04, 3: 0.06, 4: 0.08, 5: 0.1, 6: 0.1, 39: 0.1, 40: 0.01, 69: 0.01, 70: 0.001,
                   89: 0.001, 90: 0.0005, 100: 0.0005}),
        (SVHN_TRADES, {1: 0.02, 5: 0.1, 54: 0.1, 55: 0.01, 65: 0.01}),
        (SVHN_MART, {4: 0.08, 5: 0.1, 39: 0.1, 40: 0.01, 69: 0.01, 70: 0.001}),
    ],
)
def test_piecewise_recipes_at_each_decay_point(recipe: dict, points: dict[float, float]) -> None:
    schedule = build_schedule(**recipe)
    for epoch, lr in points.items():
        assert schedule(epoch) == pytest.approx(lr, rel=1e-12), epoch
        assert schedule.lr_at(epoch) == schedule(epoch)


def test_warmup_is_linear_within_epochs() -> None:
    schedule = build_schedule(**SVHN_AT)
    assert schedule(1.5) == pytest.approx(0.03)
    assert schedule(4.5) == pytest.approx(0.09)
    assert schedule(5.5) == pytest.approx(0.1)


def test_cosine_endpoints_and_midpoint() -> None:
    schedule = build_schedule("cosine", base_lr=0.2, epochs=10, final_lr=0.002)
    assert schedule(1) == pytest.approx(0.2)
    assert schedule(6) == pytest.approx((0.2 + 0.002) / 2)
    assert schedule(11) == pytest.approx(0.002)
    assert schedule(20) == pytest.approx(0.002)
    assert build_schedule("cosine", base_lr=0.1, epochs=10)(11) == pytest.approx(0.0)


def test_cosine_with_warmup_starts_decaying_after_it() -> None:
    schedule = build_schedule("cosine", base_lr=0.6, epochs=170, warmup_epochs=20, final_lr=0.001)
    assert schedule(1) == pytest.approx(0.03)
    assert schedule(10) == pytest.approx(0.3)
    assert schedule(20) == pytest.approx(0.6)
    assert schedule(20.5) < 0.6
    assert schedule(171) == pytest.approx(0.001)


def test_cyclic_peak_and_ends() -> None:
    schedule = build_schedule("cyclic", base_lr=0.2, epochs=15)
    assert schedule(1) == 0.0
    assert schedule(1 + 15 / 4) == pytest.approx(0.1)
    assert schedule(8.5) == pytest.approx(0.2)
    assert schedule(1 + 15 * 3 / 4) == pytest.approx(0.1)
    assert schedule(16) == pytest.approx(0.0)
    early = build_schedule("cyclic", base_lr=0.2, epochs=10, peak_fraction=0.4)
    assert early(5) == pytest.approx(0.2)
    assert early(8) == pytest.approx(0.2 * 0.5)


@given(epoch=st.floats(min_value=1.0, max_value=200.0),
       name=st.sampled_from(["piecewise", "cosine", "cyclic", "onecycle"]))
def test_lr_stays_within_zero_and_base(epoch: float, name: str) -> None:
    params = {"piecewise": dict(milestones=[30, 60], factors=[0.1, 0.01]), "cosine": {}, "cyclic": {},
              "onecycle": {"pct_start": 0.025}}[name]
    lr = build_schedule(name, base_lr=0.1, epochs=100, **params)(epoch)
    assert 0.0 <= lr <= 0.1 + 1e-15


def test_zero_based_epoch_is_refused() -> None:
    with pytest.raises(ValueError, match="1-based"):
        build_schedule(**CIFAR_AT)(0.0)


def test_registry_and_config() -> None:
    assert SCHEDULES.names() == ["piecewise", "cosine", "cyclic", "onecycle"]
    cfg = build_schedule(**CIFAR_AT).config()
    assert cfg == {"name": "piecewise", "base_lr": 0.1, "epochs": 120, "warmup_epochs": 0,
                   "milestones": [60, 90, 110], "factors": [0.1, 0.01, 0.005]}
    assert build_schedule(**cfg).config() == cfg


def test_unknown_name() -> None:
    with pytest.raises(UnknownNameError, match="cosine"):
        build_schedule("cosin", base_lr=0.1, epochs=10)


@pytest.mark.parametrize(
    ("name", "params", "field"),
    [
        ("cosine", {"base_lr": 0.0}, "base_lr"),
        ("cosine", {"base_lr": -0.1}, "base_lr"),
        ("cosine", {"epochs": 0}, "epochs"),
        ("cosine", {"epochs": 10.5}, "epochs"),
        ("cosine", {"warmup_epochs": -1}, "warmup_epochs"),
        ("cosine", {"warmup_epochs": 10}, "warmup_epochs"),
        ("cosine", {"final_lr": -0.1}, "final_lr"),
        ("cosine", {"final_lr": 1.0}, "final_lr"),
        ("cosine", {"finl_lr": 0.0}, "did you mean 'final_lr'"),
        ("piecewise", {"milestones": [60]}, "factors"),
        ("piecewise", {"milestones": [90, 60], "factors": [0.1, 0.01]}, "increasing"),
        ("piecewise", {"milestones": [60, 90], "factors": [0.1]}, "same length"),
        ("piecewise", {"milestones": [60], "factors": [0.0]}, "factors"),
        ("piecewise", {"milestones": [0], "factors": [0.1]}, "milestones"),
        ("piecewise", {"milestones": [3], "factors": [0.1], "warmup_epochs": 5}, "after the warm-up"),
        ("cyclic", {"peak_fraction": 1.0}, "peak_fraction"),
        ("cyclic", {"warmup_epochs": 2}, "warmup_epochs"),
        ("onecycle", {"pct_start": 0.0}, "pct_start"),
        ("onecycle", {"pct_start": 0.1}, "pct_start · epochs"),
        ("onecycle", {"warmup_epochs": 2}, "warmup_epochs"),
        ("onecycle", {"base_momentum": 0.96}, "base_momentum"),
        ("onecycle", {"div_factor": 0}, "div_factor"),
    ],
)
def test_bad_parameters(name: str, params: dict, field: str) -> None:
    kwargs = {"base_lr": 0.1, "epochs": 10, **params}
    with pytest.raises(ConfigError, match=field):
        build_schedule(name, **kwargs)


@pytest.mark.parametrize(("epochs", "pct_start", "lr"), [(400, 0.025, 0.2), (10, 0.3, 0.1), (7, 0.5, 0.4)])
def test_onecycle_is_torchs_one_cycle_stepped_once_per_epoch(epochs: int, pct_start: float, lr: float) -> None:
    """DM-Improves-AT steps torch's OneCycleLR(total_steps=epochs) once per epoch: LR and momentum at every point of
    every epoch are torch's, and the LR of DM's 400-epoch run starts at 0.2/25, peaks at epoch 10, ends at 8e-7."""
    schedule = build_schedule("onecycle", base_lr=lr, epochs=epochs, pct_start=pct_start)
    weight = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([weight], lr=lr, momentum=0.9)
    reference = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, pct_start=pct_start, total_steps=epochs)
    for epoch in range(1, epochs + 1):
        group = optimizer.param_groups[0]
        for within in (0.0, 0.5, 0.999):
            assert schedule(epoch + within) == pytest.approx(group["lr"], rel=1e-12)
            assert schedule.momentum_at(epoch + within) == pytest.approx(group["momentum"], rel=1e-12)
        optimizer.step()
        if epoch < epochs:
            reference.step()
    if epochs == 400:
        assert schedule(1.0) == pytest.approx(0.008) and schedule(10.0) == pytest.approx(0.2)
        assert schedule(400.0) == pytest.approx(8e-7) and schedule(401.0) == pytest.approx(8e-7)
        assert schedule.momentum_at(10.0) == pytest.approx(0.85)


def test_only_onecycle_sets_the_momentum() -> None:
    assert build_schedule(**CIFAR_AT).momentum_at(5.0) is None
    assert build_schedule("onecycle", base_lr=0.1, epochs=10, cycle_momentum=False).momentum_at(5.0) is None
