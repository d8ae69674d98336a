"""Tests of the training objectives and the Fast-AT collapse guard, on tiny linear/BN models and batches of 6."""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import dsnet.objectives.base
import dsnet.objectives.fast_at
import dsnet.objectives.fat
from dsnet.attacks.core import gradient_ascent, sign_gradient_ascent
from dsnet.errors import ConfigError, UnknownNameError
from dsnet.objectives import (
    OBJECTIVES,
    ObjectiveOutput,
    build_objective,
    ce_attack_loss,
    early_stopped_pgd,
    mart_loss,
    tau_at,
    trades_loss,
)
from dsnet.training.collapse_guard import CollapseGuard

ADVERSARIAL = ["at", "trades", "mart", "fat", "fast_at"]
SHAPE = (6, 3, 4, 4)
CLASSES = 5


def make_linear(seed: int = 0) -> nn.Module:
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return nn.Sequential(nn.Flatten(), nn.Linear(48, CLASSES))


def make_bn(seed: int = 0) -> nn.Sequential:
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return nn.Sequential(nn.Flatten(), nn.Linear(48, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, CLASSES))


def make_batch(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(SHAPE, generator=g), torch.randint(0, CLASSES, (SHAPE[0],), generator=g)


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# Plain-torch formulas, written independently of torch.nn.functional's losses.
def log_softmax(z: torch.Tensor) -> torch.Tensor:
    return z - z.exp().sum(dim=1, keepdim=True).log()


def ce(z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return -log_softmax(z)[torch.arange(len(y)), y].mean()


def kl_rows(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Σ_c p_c (log p_c − log q_c) per row: KL(p ‖ q)."""
    return (p * (p.log() - q.log())).sum(dim=1)


class Spy:
    """Wraps an attack function, recording its keyword arguments and returning its real result."""

    def __init__(self, fn: Any) -> None:
        self.fn = fn
        self.calls: list[dict[str, Any]] = []
        self.results: list[Any] = []

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self.calls.append({"args": args, **kwargs})
        result = self.fn(*args, **kwargs)
        self.results.append(result)
        return result


@pytest.fixture
def spy_pgd(monkeypatch: pytest.MonkeyPatch) -> Spy:
    spy = Spy(gradient_ascent)  # the PGD objectives' attack, in their norm
    fast = Spy(sign_gradient_ascent)  # Fast-AT's FGSM step
    fast.calls, fast.results = spy.calls, spy.results  # one record of both places the attack loop is called
    monkeypatch.setattr(dsnet.objectives.base, "gradient_ascent", spy)
    monkeypatch.setattr(dsnet.objectives.fast_at, "sign_gradient_ascent", fast)
    return spy


@pytest.fixture
def spy_fat(monkeypatch: pytest.MonkeyPatch) -> Spy:
    spy = Spy(early_stopped_pgd)
    monkeypatch.setattr(dsnet.objectives.fat, "early_stopped_pgd", spy)
    return spy


# ---------------------------------------------------------------------------------------------------------
# Registry, building, validation


def test_registry_names() -> None:
    assert OBJECTIVES.names() == ["standard", "at", "trades", "mart", "fat", "fast_at"]


def test_unknown_name() -> None:
    with pytest.raises(UnknownNameError, match="trades"):
        build_objective("tradse")


def test_unknown_parameter_is_named_with_suggestion() -> None:
    with pytest.raises(ConfigError, match=r"'epss'.*did you mean 'eps'"):
        build_objective("at", epss=0.1)
    with pytest.raises(ConfigError, match="'beta'"):
        build_objective("at", beta=1.0)


@pytest.mark.parametrize(
    ("name", "params", "field"),
    [
        ("at", {"eps": -0.1}, "eps"),
        ("at", {"eps": math.nan}, "eps"),
        ("at", {"steps": 0}, "steps"),
        ("at", {"steps": 2.5}, "steps"),
        ("at", {"steps": True}, "steps"),
        ("at", {"step_size": -1}, "step_size"),
        ("at", {"start": "gaussian"}, "start"),
        ("at", {"noise_std": -1e-3}, "noise_std"),
        ("trades", {"beta": -1.0}, "beta"),
        ("trades", {"beta": "6"}, "beta"),
        ("mart", {"beta": -6}, "beta"),
        ("fat", {"tau": -1}, "tau"),
        ("fat", {"tau_schedule": "dynamic"}, "tau_schedule"),
        ("fat", {"tau": 1, "tau_schedule": "fat"}, "tau_schedule"),
        ("fat", {"base": "free"}, "base"),
        ("fat", {"beta": 6.0}, "beta"),
        ("fast_at", {"eps": -1}, "eps"),
        ("fast_at", {"step_size": -0.01}, "step_size"),
        ("fast_at", {"attack_mode": "training"}, "attack_mode"),
    ],
)
def test_bad_parameters_raise_config_error_naming_them(name: str, params: dict, field: str) -> None:
    with pytest.raises(ConfigError, match=field):
        build_objective(name, **params)


def test_all_problems_reported_at_once() -> None:
    with pytest.raises(ConfigError) as info:
        build_objective("trades", eps=-1, steps=0, beta=-2)
    assert all(f in str(info.value) for f in ("eps", "steps", "beta"))


def test_none_parameters_keep_defaults() -> None:
    assert build_objective("at", eps=None).config()["eps"] == 0.031


@pytest.mark.parametrize("name", OBJECTIVES.names())
def test_config_round_trips(name: str) -> None:
    cfg = build_objective(name).config()
    assert cfg["name"] == name
    rebuilt = build_objective(name, **{k: v for k, v in cfg.items() if k != "name"})
    assert rebuilt.config() == cfg


def test_defaults_are_the_authors() -> None:
    at = build_objective("at").config()
    assert (at["eps"], at["step_size"], at["steps"], at["start"], at["noise_std"]) == (0.031, 0.007, 10, "uniform",
                                                                                       0.001)
    trades = build_objective("trades").config()
    assert (trades["start"], trades["start_std"], trades["noise_std"], trades["beta"]) == ("normal", 0.001, 0.001, 6.0)
    mart = build_objective("mart").config()
    assert (mart["start"], mart["noise_std"], mart["beta"]) == ("uniform", 0.0, 6.0)
    assert build_objective("at", eps=0).config()["eps"] == 0.0 and isinstance(build_objective("at", eps=0).eps, float)


def test_fat_resolves_defaults_per_base() -> None:
    at = build_objective("fat").config()
    assert (at["start"], at["noise_std"], at["beta"], at["tau"], at["tau_schedule"]) == ("uniform", 0.001, None, None,
                                                                                         "fat")
    trades = build_objective("fat", base="trades").config()
    assert (trades["start"], trades["noise_std"], trades["beta"], trades["tau_schedule"]) == ("normal", 0.0, 6.0,
                                                                                             "fat_trades")
    mart = build_objective("fat", base="mart", tau=3, beta=5.0).config()
    assert (mart["beta"], mart["tau"], mart["tau_schedule"]) == (5.0, 3, None)


def test_fast_at_step_defaults_to_one_and_a_quarter_eps() -> None:
    assert build_objective("fast_at").config()["step_size"] == pytest.approx(1.25 * 0.031)
    assert build_objective("fast_at", eps=8 / 255).config()["step_size"] == pytest.approx(10 / 255)
    assert build_objective("fast_at", eps=8 / 255, step_size=0.02).config()["step_size"] == 0.02


# ---------------------------------------------------------------------------------------------------------
# Loss formulas


def test_standard_is_clean_cross_entropy() -> None:
    model, (x, y) = make_linear(), make_batch()
    out = build_objective("standard")(model, x, y, epoch=1.0, generator=gen())
    assert isinstance(out, ObjectiveOutput)
    torch.testing.assert_close(out.loss, ce(model(x), y))
    torch.testing.assert_close(out.logits, model(x))
    assert torch.equal(out.targets, y) and out.metrics == {}


def test_at_formula_and_attack_settings(spy_pgd: Spy) -> None:
    model, (x, y) = make_linear(), make_batch()
    out = build_objective("at")(model, x, y, epoch=1.0, generator=gen())
    call = spy_pgd.calls[0]
    assert (call["eps"], call["step_size"], call["steps"], call["start"], call["noise_std"]) == (0.031, 0.007, 10,
                                                                                               "uniform", 0.001)
    x_adv = spy_pgd.results[0]
    # The attack loss is per-example CE.
    logits = model(x_adv)
    torch.testing.assert_close(call["args"][2](logits, x_adv), -log_softmax(logits)[torch.arange(6), y])
    torch.testing.assert_close(out.loss, ce(logits, y))
    torch.testing.assert_close(out.logits, logits)
    assert (x_adv - x).abs().max() <= 0.031 + 1e-6 and not torch.equal(x_adv, x)


def test_trades_formula_kl_direction_and_attack_loss(spy_pgd: Spy) -> None:
    model, (x, y) = make_linear(), make_batch()
    out = build_objective("trades", beta=6.0)(model, x, y, epoch=1.0, generator=gen())
    call = spy_pgd.calls[0]
    assert (call["start"], call["start_std"], call["noise_std"]) == ("normal", 0.001, 0.001)
    x_adv = spy_pgd.results[0]
    z_nat, z_adv = model(x), model(x_adv)
    p, q = z_nat.softmax(1), z_adv.softmax(1)
    expected = ce(z_nat, y) + 6.0 * kl_rows(p, q).sum() / len(y)
    torch.testing.assert_close(out.loss, expected)
    wrong_direction = ce(z_nat, y) + 6.0 * kl_rows(q, p).mean()
    assert not torch.allclose(out.loss, wrong_direction)
    torch.testing.assert_close(out.logits, z_adv)
    torch.testing.assert_close(out.metrics["loss_robust"], kl_rows(p, q).mean().detach())
    # Attack loss: per-example KL(p(x) ‖ p(x')) with p(x) fixed.
    z = torch.randn(6, CLASSES)
    torch.testing.assert_close(call["args"][2](z, x_adv), kl_rows(p.detach(), z.softmax(1)))


def test_trades_kl_is_batchmean() -> None:
    g = gen(3)
    z_nat, z_adv = torch.randn(4, CLASSES, generator=g), torch.randn(4, CLASSES, generator=g)
    y = torch.tensor([0, 1, 2, 3])
    loss, parts = trades_loss(z_nat, z_adv, y, beta=1.0)
    kl = kl_rows(z_nat.softmax(1), z_adv.softmax(1))
    torch.testing.assert_close(parts["loss_robust"], kl.sum() / 4)  # not / (B·K) as reduction="mean" would give
    doubled, _ = trades_loss(z_nat.repeat(2, 1), z_adv.repeat(2, 1), y.repeat(2), beta=1.0)
    torch.testing.assert_close(doubled, loss)  # per-example average: independent of batch size


def test_trades_natural_branch_gets_gradient_from_kl() -> None:
    g = gen(4)
    z_nat = torch.randn(4, CLASSES, generator=g, requires_grad=True)
    z_adv = torch.randn(4, CLASSES, generator=g, requires_grad=True)
    y = torch.tensor([0, 1, 2, 3])
    loss, _ = trades_loss(z_nat, z_adv, y, beta=6.0)
    (grad,) = torch.autograd.grad(loss, z_nat)
    # Hand-derived: dCE/dz = (p − onehot)/B; dKL(p‖q)/dz_nat = p ⊙ (log p − log q − KL) / B.
    p, q = z_nat.softmax(1).detach(), z_adv.softmax(1).detach()
    kl = kl_rows(p, q).unsqueeze(1)
    expected = (p - F.one_hot(y, CLASSES)) / 4 + 6.0 * p * (p.log() - q.log() - kl) / 4
    torch.testing.assert_close(grad, expected)


def test_trades_objective_gradient_flows_through_natural_branch(spy_pgd: Spy) -> None:
    model, (x, y) = make_linear(), make_batch()
    out = build_objective("trades")(model, x, y, epoch=1.0, generator=gen())
    grads = torch.autograd.grad(out.loss, list(model.parameters()))
    x_adv = spy_pgd.results[0]
    z_nat, z_adv = model(x), model(x_adv)
    detached = ce(z_nat, y) + 6.0 * kl_rows(z_nat.softmax(1).detach(), z_adv.softmax(1)).mean()
    grads_detached = torch.autograd.grad(detached, list(model.parameters()))
    assert not torch.allclose(grads[0], grads_detached[0])


def mart_by_hand(z_nat: torch.Tensor, z_adv: torch.Tensor, y: torch.Tensor, y_wrong: torch.Tensor,
                 beta: float) -> torch.Tensor:
    p_adv, q = z_adv.softmax(1), z_nat.softmax(1)
    rows = torch.arange(len(y))
    bce = ce(z_adv, y) - torch.log(1.0001 - p_adv[rows, y_wrong] + 1e-12).mean()
    kl = (q * (q.log() - torch.log(p_adv + 1e-12))).sum(1)
    return bce + beta * (kl * (1.0000001 - q[rows, y])).mean()


def test_mart_wrong_class_choice() -> None:
    z_adv = torch.tensor([[5.0, 3.0, 1.0, 0.0], [4.0, 0.5, 2.0, 1.0]])
    z_nat = torch.tensor([[1.0, 0.0, 0.5, 0.2], [0.3, 0.1, 0.2, 1.0]])
    # Row 0: top-1 is the label 0, so y' is the runner-up 1. Row 1: label 2 is not top-1, so y' is the top-1, 0.
    y = torch.tensor([0, 2])
    loss, parts = mart_loss(z_nat, z_adv, y, beta=6.0)
    torch.testing.assert_close(loss, mart_by_hand(z_nat, z_adv, y, torch.tensor([1, 0]), 6.0))
    assert not torch.allclose(loss, mart_by_hand(z_nat, z_adv, y, torch.tensor([2, 1]), 6.0))
    torch.testing.assert_close(parts["loss_bce"] + 6.0 * parts["loss_kl"], loss.detach())


def test_mart_weight_is_not_detached() -> None:
    z_nat = torch.tensor([[1.0, 0.0, 0.5]], requires_grad=True)
    z_adv = torch.tensor([[0.2, 1.0, 0.1]])
    y = torch.tensor([0])
    (grad,) = torch.autograd.grad(mart_loss(z_nat, z_adv, y, 6.0)[0], z_nat)
    q = z_nat.softmax(1)
    kl = (q * (q.log() - torch.log(z_adv.softmax(1) + 1e-12))).sum(1)
    (expected,) = torch.autograd.grad((6.0 * kl * (1.0000001 - q[:, 0])).mean(), z_nat)
    torch.testing.assert_close(grad, expected)


def test_mart_formula_and_attack_settings(spy_pgd: Spy) -> None:
    model, (x, y) = make_linear(), make_batch()
    out = build_objective("mart")(model, x, y, epoch=1.0, generator=gen())
    call = spy_pgd.calls[0]
    assert (call["start"], call["noise_std"], call["steps"]) == ("uniform", 0.0, 10)
    x_adv = spy_pgd.results[0]
    z_nat, z_adv = model(x), model(x_adv)
    top2 = z_adv.softmax(1).argsort(1, descending=True)[:, :2]
    y_wrong = torch.where(top2[:, 0] == y, top2[:, 1], top2[:, 0])
    torch.testing.assert_close(out.loss, mart_by_hand(z_nat, z_adv, y, y_wrong, 6.0))


def test_mart_reference_normal_start_changes_attack(spy_pgd: Spy) -> None:
    model, (x, y) = make_linear(), make_batch()
    # One step, so that the iterates do not all end on the same corner of the ε-ball.
    build_objective("mart", steps=1)(model, x, y, epoch=1.0, generator=gen())
    build_objective("mart", steps=1, start="normal")(model, x, y, epoch=1.0, generator=gen())
    assert spy_pgd.calls[1]["start"] == "normal"
    assert not torch.equal(spy_pgd.results[0], spy_pgd.results[1])


def test_fast_at_formula_and_attack_settings(spy_pgd: Spy) -> None:
    model, (x, y) = make_linear(), make_batch()
    out = build_objective("fast_at")(model, x, y, epoch=1.0, generator=gen())
    call = spy_pgd.calls[0]
    assert (call["steps"], call["start"], call["eps"]) == (1, "uniform", 0.031)
    assert call["step_size"] == pytest.approx(1.25 * 0.031)
    torch.testing.assert_close(out.loss, ce(model(spy_pgd.results[0]), y))


# ---------------------------------------------------------------------------------------------------------
# Modes, BN statistics, RNG


def record_bn(model: nn.Sequential) -> list[tuple[bool, torch.Tensor]]:
    records: list[tuple[bool, torch.Tensor]] = []
    bn = model[2]
    bn.register_forward_pre_hook(lambda m, inp: records.append((m.training, m.running_mean.clone())))
    return records


@pytest.mark.parametrize(("name", "outer_forwards"), [("at", 1), ("trades", 2), ("mart", 2), ("fat", 1),
                                                     ("fast_at", 1)])
def test_attack_in_eval_mode_outer_in_train_mode(name: str, outer_forwards: int) -> None:
    model, (x, y) = make_bn(), make_batch()
    records = record_bn(model)
    initial = model[2].running_mean.clone()
    out = build_objective(name)(model, x, y, epoch=1.0, generator=gen())
    modes = [training for training, _ in records]
    n_eval = len(modes) - outer_forwards
    assert n_eval >= 1
    assert modes == [False] * n_eval + [True] * outer_forwards
    for _, running_mean in records[:n_eval + 1]:  # generation leaves BN statistics as they were
        assert torch.equal(running_mean, initial)
    assert all(m.training for m in model.modules())
    assert all(p.grad is None for p in model.parameters())
    assert out.loss.dim() == 0 and out.loss.requires_grad


@pytest.mark.parametrize("name", ["trades", "mart"])
@pytest.mark.parametrize("order", ["adversarial_first", "clean_first"])
def test_outer_forwards_run_in_the_chosen_order(name: str, order: str) -> None:
    """DS-Net's script runs the adversarial batch first, so BN statistics weigh the clean batch more; the loss and
    its gradient do not depend on the order."""
    model, (x, y) = make_bn(), make_batch()
    inputs: list[torch.Tensor] = []
    model[2].register_forward_pre_hook(lambda m, args: inputs.append(args[0].detach().clone()) if m.training else None)
    out = build_objective(name, outer_order=order)(model, x, y, epoch=1.0, generator=gen())
    first, second = inputs
    clean = model[1](x.flatten(1)).detach()
    assert torch.equal(second if order == "adversarial_first" else first, clean)
    expected = 0.09 * first.mean(0) + 0.1 * second.mean(0)  # fresh statistics, momentum 0.1, two updates
    torch.testing.assert_close(model[2].running_mean, expected)
    other = build_objective(name, outer_order="clean_first" if order == "adversarial_first" else "adversarial_first")
    again = other(make_bn(), x, y, epoch=1.0, generator=gen())
    torch.testing.assert_close(out.loss, again.loss)
    assert build_objective(name).outer_order == "adversarial_first"  # the authors' order is the default


def test_fast_at_train_mode_attack_uses_batch_statistics() -> None:
    model, (x, y) = make_bn(), make_batch()
    records = record_bn(model)
    initial = model[2].running_mean.clone()
    out_train = build_objective("fast_at", attack_mode="train")(model, x, y, epoch=1.0, generator=gen())
    assert [training for training, _ in records] == [True, True]
    assert not torch.equal(records[1][1], initial)  # the FGSM forward updated the running statistics
    assert all(m.training for m in model.modules())
    out_eval = build_objective("fast_at")(make_bn(), x, y, epoch=1.0, generator=gen())
    assert not torch.allclose(out_train.logits, out_eval.logits)


class NoSyncCounter(nn.Sequential):
    """Stands in for a DDP model: counts how often the attack enters `no_sync()`."""

    entered = 0

    @contextmanager
    def no_sync(self) -> Iterator[None]:
        type(self).entered += 1
        yield


@pytest.mark.parametrize(("name", "params"), [("fat", {}), ("fast_at", {"attack_mode": "train"}),
                                              ("fast_at", {})])
def test_attacks_run_inside_no_sync(name: str, params: dict) -> None:
    NoSyncCounter.entered = 0
    model, (x, y) = NoSyncCounter(*make_linear()), make_batch()
    build_objective(name, **params)(model, x, y, epoch=1.0, generator=gen())
    assert NoSyncCounter.entered == 1


@pytest.mark.parametrize("name", OBJECTIVES.names())
def test_objectives_leave_global_rng_alone_and_are_seeded(name: str) -> None:
    model, (x, y) = make_bn(), make_batch()
    objective = build_objective(name)
    state = torch.get_rng_state()
    first = objective(model, x, y, epoch=1.0, generator=gen(7))
    assert torch.equal(torch.get_rng_state(), state)
    again = objective(make_bn(), x, y, epoch=1.0, generator=gen(7))
    torch.testing.assert_close(first.loss, again.loss)


@pytest.mark.parametrize("name", ADVERSARIAL)
def test_outputs_are_aligned_and_metrics_are_detached_scalars(name: str) -> None:
    model, (x, y) = make_linear(), make_batch()
    out = build_objective(name)(model, x, y, epoch=1.0, generator=gen())
    assert out.logits.shape == (6, CLASSES) and torch.equal(out.targets, y)
    for value in out.metrics.values():
        assert isinstance(value, torch.Tensor) and value.dim() == 0 and not value.requires_grad


# ---------------------------------------------------------------------------------------------------------
# Friendly AT


@pytest.mark.parametrize(
    ("schedule", "points"),
    [
        ("fat", [(1.0, 0), (50.0, 0), (50.99, 0), (51.0, 1), (90.5, 1), (91.0, 2), (120.0, 2)]),
        ("fat_trades", [(30.9, 0), (31.0, 1), (50.0, 1), (51.0, 2), (70.0, 2), (71.0, 3), (85.0, 3)]),
        ("fat_mart", [(20.0, 0), (21.0, 1), (40.0, 1), (41.0, 2), (60.0, 2), (61.0, 3), (80.0, 3), (81.0, 4)]),
    ],
)
def test_tau_schedules(schedule: str, points: list[tuple[float, int]]) -> None:
    assert [tau_at(schedule, e) for e, _ in points] == [t for _, t in points]


def test_fat_objective_uses_epoch_for_tau() -> None:
    model, (x, y) = make_linear(), make_batch()
    fat = build_objective("fat")
    assert [fat(model, x, y, epoch=e, generator=gen()).metrics["tau"].item() for e in (50.5, 51.0, 91.0)] == [0, 1, 2]
    assert build_objective("fat", tau=4).tau_for(1.0) == 4


def test_fat_with_tau_k_is_plain_pgd() -> None:
    model, (x, y) = make_linear(), make_batch()
    settings = dict(eps=0.031, step_size=0.007, steps=10, start="uniform", noise_std=0.001)
    x_fat, taken = early_stopped_pgd(model, x, y, ce_attack_loss(y), tau=10, generator=gen(5), **settings)
    x_pgd = sign_gradient_ascent(model, x, ce_attack_loss(y), generator=gen(5), **settings)
    torch.testing.assert_close(x_fat, x_pgd, rtol=0, atol=0)
    assert torch.equal(taken, torch.full((6,), 10))
    fat = build_objective("fat", tau=10)(model, x, y, epoch=1.0, generator=gen(5))
    at = build_objective("at")(model, x, y, epoch=1.0, generator=gen(5))
    torch.testing.assert_close(fat.loss, at.loss)


def frozen_setup() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """A linear model whose margins dwarf what an ε = 0.031 step can change: example 0 is labelled with its
    least likely class (misclassified throughout), the others with their predicted class (correct throughout)."""
    model = make_linear()
    with torch.no_grad():
        model[1].weight.mul_(0.2)
        model[1].bias.copy_(torch.arange(CLASSES, dtype=torch.float) * 2.0)
    x, _ = make_batch()
    z = model(x)
    y = z.argmax(1)
    y[0] = z[0].argmin()
    top2 = z.topk(2, dim=1).values
    assert (top2[:, 0] - top2[:, 1]).min() > 2 * 0.031 * model[1].weight.abs().sum(1).max()
    return model, x, y


def test_fat_freezes_misclassified_point_at_tau_zero() -> None:
    model, x, y = frozen_setup()
    settings = dict(eps=0.031, step_size=0.007, steps=10, start="none", noise_std=0.0)
    x_adv, taken = early_stopped_pgd(model, x, y, ce_attack_loss(y), tau=0, generator=gen(), **settings)
    assert taken.tolist() == [0] + [10] * 5
    assert torch.equal(x_adv[0], x[0])
    # The other examples are aligned with their inputs and get exactly the PGD result.
    x_pgd = sign_gradient_ascent(model, x, ce_attack_loss(y), generator=gen(), **settings)
    torch.testing.assert_close(x_adv[1:], x_pgd[1:], rtol=0, atol=0)
    # With τ = 3 the misclassified point takes three more steps before it stops.
    x_adv3, taken3 = early_stopped_pgd(model, x, y, ce_attack_loss(y), tau=3, generator=gen(), **settings)
    assert taken3[0].item() == 3 and not torch.equal(x_adv3[0], x[0])


def test_fat_stops_early_when_every_example_is_frozen() -> None:
    model, x, _ = frozen_setup()
    y = model(x).argmin(1)  # every example misclassified from the start
    calls = []
    model.register_forward_pre_hook(lambda m, inp: calls.append(1))
    x_adv, taken = early_stopped_pgd(model, x, y, ce_attack_loss(y), eps=0.031, step_size=0.007, steps=10, tau=0,
                                     start="none", generator=gen())
    assert len(calls) == 1 and taken.sum().item() == 0 and torch.equal(x_adv, x)


@pytest.mark.parametrize("base", ["trades", "mart"])
def test_fat_outer_losses_share_trades_and_mart(spy_fat: Spy, base: str) -> None:
    model, (x, y) = make_linear(), make_batch()
    out = build_objective("fat", base=base, beta=2.0, tau=1)(model, x, y, epoch=1.0, generator=gen())
    call = spy_fat.calls[0]
    assert (call["start"], call["noise_std"], call["tau"]) == ("normal", 0.0, 1)
    x_adv = spy_fat.results[0][0]
    z_nat, z_adv = model(x), model(x_adv)
    expected = (trades_loss if base == "trades" else mart_loss)(z_nat, z_adv, y, 2.0)[0]
    torch.testing.assert_close(out.loss, expected)
    torch.testing.assert_close(out.logits, z_adv)
    z = torch.randn(6, CLASSES)
    attack_loss = call["args"][3](z, x_adv)
    if base == "trades":
        torch.testing.assert_close(attack_loss, kl_rows(z_nat.softmax(1).detach(), z.softmax(1)))
    else:
        torch.testing.assert_close(attack_loss, -log_softmax(z)[torch.arange(6), y])


def test_fat_at_outer_loss_and_metrics(spy_fat: Spy) -> None:
    model, (x, y) = make_linear(), make_batch()
    out = build_objective("fat")(model, x, y, epoch=1.0, generator=gen())
    x_adv, taken = spy_fat.results[0]
    torch.testing.assert_close(out.loss, ce(model(x_adv), y))
    torch.testing.assert_close(out.metrics["fat_steps"], taken.float().mean())
    assert (spy_fat.calls[0]["start"], spy_fat.calls[0]["noise_std"]) == ("uniform", 0.001)


# ---------------------------------------------------------------------------------------------------------
# Collapse guard


class MarginModel(nn.Module):
    """Logits (0, scale·(mean(x) − 0.5)): class 0 on clean probes with mean(x) = 0.49; with a large scale an
    ε = 0.031 perturbation flips it to class 1, with scale 0 nothing can."""

    def __init__(self, scale: float) -> None:
        super().__init__()
        self.scale = scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = x.flatten(1).mean(1)
        return torch.stack([torch.zeros_like(m), self.scale * (m - 0.5)], dim=1)


def probe() -> tuple[torch.Tensor, torch.Tensor]:
    return torch.full((4, 3, 4, 4), 0.49), torch.zeros(4, dtype=torch.long)


def test_collapse_guard_flags_a_drop() -> None:
    guard = CollapseGuard(*probe(), eps=0.031)
    assert guard.step_size == pytest.approx(0.031 / 4) and guard.steps == 5
    first = guard.check(MarginModel(0.0))
    assert (first.robust_acc, first.reference_acc, first.collapsed) == (1.0, None, False)
    second = guard.check(MarginModel(100.0))
    assert (second.robust_acc, second.reference_acc, second.collapsed) == (0.0, 1.0, True)
    assert guard.reference_acc == 1.0 and guard.history == [1.0, 0.0]


def test_collapse_guard_threshold_and_resume() -> None:
    x, y = probe()
    x[:1] = 0.45  # one probe far from the boundary: stays correct under attack
    guard = CollapseGuard(x, y, eps=0.031)
    guard.check(MarginModel(0.0))
    assert guard.check(MarginModel(100.0)).collapsed  # 1.0 -> 0.25 is a drop of 0.75
    relaxed = CollapseGuard(x, y, eps=0.031, threshold=0.8)
    relaxed.check(MarginModel(0.0))
    assert not relaxed.check(MarginModel(100.0)).collapsed
    resumed = CollapseGuard(x, y, eps=0.031)
    resumed.load_state_dict(guard.state_dict())
    assert resumed.check(MarginModel(100.0)).collapsed  # still compared with the pre-collapse 1.0


def test_collapse_guard_leaves_rng_and_mode_alone() -> None:
    model = make_bn()
    state = torch.get_rng_state()
    CollapseGuard(*make_batch(), eps=0.031).check(model)
    assert torch.equal(torch.get_rng_state(), state) and model.training


@pytest.mark.parametrize(("params", "field"), [({"eps": -1}, "eps"), ({"steps": 0}, "steps"),
                                               ({"threshold": 0}, "threshold"), ({"step_size": 0}, "step_size")])
def test_collapse_guard_validates(params: dict, field: str) -> None:
    with pytest.raises(ConfigError, match=field):
        CollapseGuard(*probe(), **{"eps": 0.031, **params})
