"""What the leading robust models trained with, each against its reference formula and off by default: label
smoothing of the outer CE, attacks on batch statistics, gradient clipping, weight decay without normalisation
layers, the first step's BN momentum, and DDP with parameters that get no gradient."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from dsnet_testing import tiny_recipe

from dsnet.config import OptimConfig, config_from_dict
from dsnet.errors import ConfigError
from dsnet.models import create_model, split_parameters
from dsnet.objectives import build_objective, trades_loss
from dsnet.runtime.checkpoint import load_checkpoint
from dsnet.runtime.precision import resolve_precision
from dsnet.training.optimizer import batchnorm_momentum, build_sgd
from dsnet.training.trainer import train, training_step


def _bn_net(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.AdaptiveAvgPool2d(2),
                         nn.Flatten(), nn.Linear(16, 10))


def _shifted_bn_net() -> nn.Sequential:
    """`_bn_net` with BN running means far from any batch's, so that eval-mode and batch-mode attacks differ."""
    model = _bn_net()
    with torch.no_grad():
        model[1].running_mean.fill_(3.0)
    return model


def _batch(n: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.rand(n, 3, 8, 8, generator=g), torch.randint(0, 10, (n,), generator=g)


def _smoothed_ce(logits: torch.Tensor, y: torch.Tensor, ls: float) -> torch.Tensor:
    """DM-Improves-AT's SmoothCrossEntropyLoss, written out: (1 − ls)·NLL + ls·mean_k(−log p_k), batch mean."""
    log_p = logits - logits.exp().sum(1, keepdim=True).log()
    return ((1 - ls) * -log_p[torch.arange(len(y)), y] + ls * -log_p.mean(1)).mean()


def test_label_smoothing_smooths_the_natural_term_of_trades_only() -> None:
    g = torch.Generator().manual_seed(1)
    nat, adv, y = torch.randn(6, 10, generator=g), torch.randn(6, 10, generator=g), torch.randint(0, 10, (6,), generator=g)
    loss, parts = trades_loss(nat, adv, y, beta=5.0, label_smoothing=0.1)
    p_nat = nat.softmax(1)
    kl = (p_nat * (p_nat.log() - adv.log_softmax(1))).sum(1).mean()
    torch.testing.assert_close(parts["loss_natural"], _smoothed_ce(nat, y, 0.1))
    torch.testing.assert_close(parts["loss_robust"], kl)  # unchanged by the smoothing
    torch.testing.assert_close(loss, _smoothed_ce(nat, y, 0.1) + 5.0 * kl)
    assert trades_loss(nat, adv, y, beta=5.0)[1]["loss_natural"] == F.cross_entropy(nat, y)


def test_label_smoothing_of_at_smooths_the_outer_loss_not_the_attack() -> None:
    x, y = _batch()
    plain = build_objective("at", steps=2, start="none", noise_std=0.0)
    smooth = build_objective("at", steps=2, start="none", noise_std=0.0, label_smoothing=0.2)
    a = plain(_bn_net(), x, y, epoch=1.0, generator=torch.Generator().manual_seed(0))
    b = smooth(_bn_net(), x, y, epoch=1.0, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(a.logits, b.logits)  # the same adversarial batch
    torch.testing.assert_close(b.loss, _smoothed_ce(b.logits, y, 0.2))
    with pytest.raises(ConfigError, match="label_smoothing must be in"):
        build_objective("trades", label_smoothing=1.0)
    with pytest.raises(ConfigError, match="label_smoothing"):
        build_objective("mart", label_smoothing=0.1)  # MART's boosted CE has no smoothed form in its reference


@pytest.mark.parametrize("name", ["at", "trades", "mart", "fat"])
def test_a_batch_mode_attack_normalises_with_the_batch_and_updates_no_statistic(name: str) -> None:
    """DM-Improves-AT attacks in train mode with `track_running_stats` off: BN uses the batch's statistics, the
    running ones stay as they were until the outer forwards, and the model is handed back as it came."""
    x, y = _batch()
    model = _shifted_bn_net()
    seen: list[tuple[bool, bool, torch.Tensor]] = []
    model[1].register_forward_pre_hook(
        lambda m, args: seen.append((m.training, m.track_running_stats, m.running_mean.clone())))
    outer = {"at": 1, "trades": 2, "mart": 2, "fat": 1}[name]
    out = build_objective(name, attack_mode="batch")(model, x, y, epoch=1.0, generator=torch.Generator())
    attack, outer_calls = seen[:-outer], seen[-outer:]
    assert attack and all(training and not tracking for training, tracking, _ in attack)
    assert all(torch.equal(mean, torch.full((4,), 3.0)) for _, _, mean in attack + outer_calls[:1])
    assert all(tracking for _, tracking, _ in outer_calls) and model[1].track_running_stats
    assert not torch.equal(model[1].running_mean, torch.full((4,), 3.0))  # the outer forwards update them
    eval_mode = build_objective(name)(_shifted_bn_net(), x, y, epoch=1.0, generator=torch.Generator())
    assert not torch.allclose(out.loss, eval_mode.loss)
    with pytest.raises(ConfigError, match="attack_mode"):
        build_objective(name, attack_mode="train")


def test_gradient_clipping_bounds_the_step_and_is_off_by_default() -> None:
    x, y = _batch()
    objective = build_objective("standard")
    precision = resolve_precision("off", torch.device("cpu"))
    steps = {}
    for clip in (None, 0.01):
        model = _bn_net()
        before = [p.detach().clone() for p in model.parameters()]
        optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
        training_step(model, objective, x * 100, y, optimizers=[optimizer], scaler=precision.grad_scaler(),
                      precision=precision, epoch=1.0, generator=torch.Generator(), grad_clip=clip)
        steps[clip] = torch.cat([(p.detach() - b).flatten() for p, b in zip(model.parameters(), before)]).norm()
    assert steps[None] > 0.1 and float(steps[0.01]) == pytest.approx(0.01, rel=1e-5)


def test_weight_decay_can_spare_the_normalisation_layers() -> None:
    model = create_model("dsnet_tiny")
    network, attention = split_parameters(model)
    norms = {id(p) for m in model.modules() if isinstance(m, nn.BatchNorm2d) for p in m.parameters()}
    default = build_sgd(model, network, OptimConfig(weight_decay=5e-4))
    assert [g["weight_decay"] for g in default.param_groups] == [5e-4]
    spared = build_sgd(model, network, OptimConfig(weight_decay=5e-4, norm_weight_decay=False))
    decayed, free = spared.param_groups
    assert (decayed["weight_decay"], free["weight_decay"]) == (5e-4, 0.0)
    assert {id(p) for p in free["params"]} == norms and not norms & {id(p) for p in decayed["params"]}
    assert len(decayed["params"]) + len(free["params"]) == len(network)  # attention stays with Adam


def test_batchnorm_momentum_is_set_inside_and_restored_after() -> None:
    model = create_model("dm_wrn_tiny").train()
    x = torch.rand(4, 3, 32, 32)
    with batchnorm_momentum(model, 1.0):
        model(x)
    first = model.layer[0].block[0].batchnorm_0
    pre = model.init_conv((x - model.mean) / model.std)
    torch.testing.assert_close(first.running_mean, pre.mean((0, 2, 3)))  # the batch's own statistics
    assert {m.momentum for m in model.modules() if isinstance(m, nn.BatchNorm2d)} == {0.01}


def test_bn_warm_start_changes_the_first_step_only(cifar10_dir: Path, tmp_path: Path) -> None:
    base = dict(model={"name": "dm_wrn_tiny"}, objective={"name": "standard"},
                train={"epochs": 1, "max_steps_per_epoch": 2, "selection": "last"})
    train(config_from_dict(tiny_recipe(**base)), cifar10_dir, tmp_path / "plain")
    warm = {**base, "train": {**base["train"], "bn_warm_start": True}}
    train(config_from_dict(tiny_recipe(**warm)), cifar10_dir, tmp_path / "warm")
    a, b = (load_checkpoint(tmp_path / run / "last.pt")["model"] for run in ("plain", "warm"))
    differs = [k for k in a if "running" in k and not torch.equal(a[k], b[k])]
    assert differs  # the running statistics start from the first batch's, not from 0 and 1
    # With momentum 0.01, two plain steps leave the running variance within 2 % of its initial 1.
    assert float((a["batchnorm.running_var"] - 1).abs().max()) < 0.03
    assert float((b["batchnorm.running_var"] - 1).abs().max()) > 0.03
