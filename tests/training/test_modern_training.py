"""Training beyond the paper: EMA of the weights, AWP, extra (generated) data and L2 adversarial training, each
against its reference formula, off by default, and resumable exactly."""

from __future__ import annotations

import copy
import json
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from dsnet_testing import tiny_recipe

from dsnet.config import config_from_dict
from dsnet.data import DeviceLoader, ImageSplit
from dsnet.data.extra import open_extra_images
from dsnet.errors import ConfigError, DataError
from dsnet.evaluation import evaluate
from dsnet.evaluation.export import export_model
from dsnet.objectives import build_objective
from dsnet.objectives.awp import weight_perturbation
from dsnet.runtime.checkpoint import load_checkpoint
from dsnet.runtime.hashing import state_dict_sha256
from dsnet.training.ema import WeightAverage
from dsnet.training.trainer import train, training_step

FAST = {"n_examples": 16, "batch_size": 16, "progress": False}


def _train(data_dir: Path, out: Path, resume: bool = False, **sections: dict):
    return train(config_from_dict(tiny_recipe(**sections)), data_dir, out, resume=resume)


def _weights(path: Path, key: str = "model") -> dict[str, torch.Tensor]:
    state = load_checkpoint(path)
    return state[key] if key == "model" else state[key]["model"]


def _tiny_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.AdaptiveAvgPool2d(2),
                         nn.Flatten(), nn.Linear(16, 10))


def _extra_file(path: Path, n: int = 64, value: int | None = None, compressed: bool = False, **arrays) -> Path:
    rng = np.random.default_rng(1)
    image = (np.full((n, 32, 32, 3), value, np.uint8) if value is not None
             else rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8))
    content = {"image": image, "label": rng.integers(0, 10, n), **arrays}
    (np.savez_compressed if compressed else np.savez)(path, **content)
    return path


# ---------------------------------------------------------------------------------------------------------- EMA


def test_weight_average_follows_the_reference_update_and_takes_the_buffers() -> None:
    """θ̄ <- d·θ̄ + (1 − d)·θ with d = 0 before the warm-up and min(τ, (1 + δ)/(10 + δ)) after (DM-Improves-AT)."""
    model = _tiny_net()
    average = WeightAverage(model, decay=0.995, warmup_steps=3)
    expected = [p.detach().clone() for p in model.parameters()]
    for step in range(1, 40):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p) * 0.1)
        average.update(step)
        decay = 0.0 if step < 3 else min(0.995, (1 + step - 3) / (10 + step - 3))
        expected = [decay * e + (1 - decay) * p.detach() for e, p in zip(expected, model.parameters())]
    for mine, theirs in zip(average.model.parameters(), expected):
        torch.testing.assert_close(mine, theirs, rtol=1e-6, atol=1e-7)
    model.train()(torch.rand(8, 3, 32, 32))  # the model's BN statistics move; the average's do not, until taken
    assert not torch.equal(average.model[1].running_mean, model[1].running_mean)
    average.take_buffers(model)
    assert torch.equal(average.model[1].running_mean, model[1].running_mean)
    assert average.model[1].num_batches_tracked == model[1].num_batches_tracked


def test_ema_run_validates_saves_and_is_what_eval_evaluates(cifar10_dir: Path, tmp_path: Path) -> None:
    """(Resuming it exactly after a kill: tests/faults/test_faults_kill.py.)"""
    full = _train(cifar10_dir, tmp_path / "full", objective={"name": "standard"},
                  train={"epochs": 2, "ema_decay": 0.8, "ema_warmup": 0.1})
    raw, averaged = _weights(tmp_path / "full" / "last.pt"), _weights(tmp_path / "full" / "last.pt", "ema")
    assert any(not torch.equal(raw[k], averaged[k]) for k in raw if raw[k].is_floating_point())
    assert all(torch.equal(raw[k], averaged[k]) for k in raw if "running" in k)  # BN buffers: the model's
    row = full.history[-1]
    assert row["val_pgd_acc_ema"] is not None and row["val_clean_acc_ema"] is not None

    report = evaluate(tmp_path / "full" / "last.pt", cifar10_dir, attacks=["pgd"], sanity=False,
                      out_dir=tmp_path / "eval", **FAST)
    assert report.model["weights_sha256"] == state_dict_sha256(averaged.items())
    assert "weight average" in report.model["source"]["weights"]
    assert "weight average (EMA" in (tmp_path / "eval" / "report.md").read_text()
    exported = export_model(tmp_path / "full" / "last.pt", tmp_path / "export")
    spec = json.loads(exported.architecture.read_text())
    assert spec["weights"]["tensors_sha256"] == report.model["weights_sha256"]  # the average is what is exported
    assert "weight average" in spec["weights"]["which"]
    raw_report = evaluate(tmp_path / "full" / "last.pt", cifar10_dir, attacks=["pgd"], sanity=False, weights="raw",
                          out_dir=tmp_path / "eval-raw", **FAST)
    assert raw_report.model["weights_sha256"] == state_dict_sha256(raw.items())
    _train(cifar10_dir, tmp_path / "plain", train={"epochs": 1})
    assert "ema" not in load_checkpoint(tmp_path / "plain" / "last.pt")
    with pytest.raises(ConfigError, match="holds no weight average"):
        evaluate(tmp_path / "plain" / "last.pt", cifar10_dir, weights="ema", out_dir=tmp_path / "e3", **FAST)


# ---------------------------------------------------------------------------------------------------------- AWP


def _reference_awp(model: nn.Module, loss_of, lr: float = 0.01) -> dict[str, torch.Tensor]:
    """csdongxian/AWP, AT_AWP/utils_awp.py: one SGD step of a proxy on −loss, then the normalised difference."""
    proxy = copy.deepcopy(model)
    proxy.load_state_dict(model.state_dict())
    proxy.train()
    optimizer = torch.optim.SGD(proxy.parameters(), lr=lr)
    loss = -1.0 * loss_of(proxy)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    diff = OrderedDict()
    for (old_k, old_w), (_, new_w) in zip(model.state_dict().items(), proxy.state_dict().items()):
        if len(old_w.size()) <= 1:
            continue
        if "weight" in old_k:
            diff_w = new_w - old_w
            diff[old_k] = old_w.norm() / (diff_w.norm() + 1e-20) * diff_w
    return diff


@pytest.mark.parametrize("name", ["at", "trades"])
def test_awp_perturbation_equals_the_reference_and_leaves_bn_statistics_alone(name: str) -> None:
    model = _tiny_net().train()
    objective = build_objective(name, steps=2, awp_gamma=0.01)
    x, y = torch.rand(16, 3, 32, 32), torch.randint(0, 10, (16,))
    x_adv = (x + 0.03 * torch.randn_like(x)).clamp(0, 1)
    before = copy.deepcopy(model.state_dict())
    ours = weight_perturbation(model, lambda m: objective.outer(m, x, x_adv, y).loss)
    # The reference in float64: in float32 its difference (w + lr·g) − w keeps only 2-3 digits of lr·g.
    theirs = _reference_awp(copy.deepcopy(model).double(), lambda m: objective.outer(m, x.double(), x_adv.double(),
                                                                                    y).loss)
    assert set(ours) == set(theirs) == {"0.weight", "5.weight"}  # conv and linear; no bias, no BN affine
    for key in theirs:
        assert (ours[key].double() - theirs[key]).norm() <= 1e-4 * theirs[key].norm(), key  # float32 vs float64
        assert torch.isclose(ours[key].norm(), before[key].norm(), rtol=1e-5)  # ‖v_l‖ = ‖w_l‖
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_awp_of_a_compiled_model_differentiates_its_proxy() -> None:
    """The trainer compiles blocks in place (`nn.Module.compile`); the proxy, a deep copy, must still run on its
    own weights and BN buffers, not on the model's (dynamo's "eager" backend wraps the call the same way)."""
    model = _tiny_net().train()
    objective = build_objective("at", awp_gamma=0.01)
    x, y = torch.rand(8, 3, 32, 32), torch.randint(0, 10, (8,))
    expected = weight_perturbation(copy.deepcopy(model), lambda m: objective.outer(m, x, x, y).loss)
    for block in model:
        block.compile(backend="eager")
    statistics = model[1].running_mean.clone()
    got = weight_perturbation(model, lambda m: objective.outer(m, x, x, y).loss)
    assert all(torch.equal(got[k], expected[k]) for k in expected)
    assert torch.equal(model[1].running_mean, statistics)


def test_awp_step_is_the_step_taken_at_the_perturbed_weights_then_restored() -> None:
    """w' = w − lr·∇L(w + γv) for plain SGD: the step is computed at the perturbed point and the perturbation
    taken back after it (AT_AWP/train_cifar10.py: perturb, backward, step, restore)."""
    gamma, lr = 0.05, 0.1
    model = _tiny_net().train()
    objective = build_objective("at", steps=1, step_size=0.01, awp_gamma=gamma, noise_std=0.0)
    x, y = torch.rand(16, 3, 32, 32), torch.randint(0, 10, (16,))
    expected = copy.deepcopy(model)
    x_adv = objective._attack(expected, x, objective.attack_loss(expected, x, y),
                              torch.Generator().manual_seed(3))
    v = _reference_awp(copy.deepcopy(expected).double(),
                       lambda m: objective.outer(m, x.double(), x_adv.double(), y).loss)
    v = {k: d.float() for k, d in v.items()}
    params = dict(expected.named_parameters())
    with torch.no_grad():
        for k, d in v.items():
            params[k].add_(gamma * d)
    F.cross_entropy(expected(x_adv), y).backward()
    with torch.no_grad():
        for p in expected.parameters():
            p.sub_(lr * p.grad)
        for k, d in v.items():
            params[k].sub_(gamma * d)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    from dsnet.runtime.precision import resolve_precision

    precision = resolve_precision("off", torch.device("cpu"))
    training_step(model, objective, x, y, optimizers=[optimizer], scaler=precision.grad_scaler(), precision=precision,
                  epoch=1.0, generator=torch.Generator().manual_seed(3))
    for (k, a), b in zip(model.state_dict().items(), expected.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6, msg=k)


def test_awp_before_its_warmup_is_bit_identical_to_no_awp(cifar10_dir: Path, tmp_path: Path) -> None:
    objective = {"name": "at", "eps": 0.031, "step_size": 0.01, "steps": 1}
    keep = {"epochs": 2, "keep_epoch_checkpoints": True}
    _train(cifar10_dir, tmp_path / "plain", objective=objective, train=keep)
    _train(cifar10_dir, tmp_path / "awp", objective={**objective, "awp_gamma": 0.01, "awp_warmup": 1}, train=keep)
    a, b = _weights(tmp_path / "plain" / "epoch-0001.pt"), _weights(tmp_path / "awp" / "epoch-0001.pt")
    assert all(torch.equal(a[k], b[k]) for k in a)
    # from epoch 2 on AWP is active: the weights move elsewhere
    a, b = _weights(tmp_path / "plain" / "last.pt"), _weights(tmp_path / "awp" / "last.pt")
    assert any(not torch.equal(a[k], b[k]) for k in a if a[k].is_floating_point())


def test_objectives_without_awp_or_l2_refuse_them() -> None:
    with pytest.raises(ConfigError, match="awp_gamma: fat runs its own training step"):
        build_objective("fat", awp_gamma=0.01)
    with pytest.raises(ConfigError, match="norm"):
        build_objective("fat", norm="L2")
    with pytest.raises(ConfigError, match="norm"):
        build_objective("at", norm="L3")


# --------------------------------------------------------------------------------------------------- extra data


def test_extra_npz_is_memory_mapped_and_bad_files_get_one_line(tmp_path: Path) -> None:
    path = _extra_file(tmp_path / "gen.npz", n=50)
    extra = open_extra_images(path, num_classes=10)
    assert isinstance(extra.images, np.memmap) and len(extra) == 50
    expected = np.load(path)
    images, labels = extra.batch(torch.tensor([7, 3, 7, 49]), torch.device("cpu"))
    assert torch.equal(images, torch.from_numpy(expected["image"][[7, 3, 7, 49]]).permute(0, 3, 1, 2))
    assert labels.tolist() == expected["label"][[7, 3, 7, 49]].tolist()
    cases = {
        "compressed": (_extra_file(tmp_path / "c.npz", compressed=True), "compressed .npz"),
        "missing": (tmp_path / "none.npz", "does not exist"),
        "no labels": (tmp_path / "nolabel.npz", "has no array label"),
        "shape": (tmp_path / "shape.npz", r"expected uint8 \(N, 32, 32, 3\)"),
        "labels": (tmp_path / "labels.npz", r"labels run from 0 to 12, outside \[0, 10\)"),
        "truncated": (tmp_path / "cut.npz", "truncated|not a readable"),
    }
    np.savez(tmp_path / "nolabel.npz", image=np.zeros((4, 32, 32, 3), np.uint8))
    np.savez(tmp_path / "shape.npz", image=np.zeros((4, 3, 32, 32), np.uint8), label=np.zeros(4, int))
    np.savez(tmp_path / "labels.npz", image=np.zeros((2, 32, 32, 3), np.uint8), label=np.array([0, 12]))
    whole = path.read_bytes()
    (tmp_path / "cut.npz").write_bytes(whole[: len(whole) // 2])
    for case, (bad, message) in cases.items():
        with pytest.raises(DataError, match=message) as error:
            open_extra_images(bad, num_classes=10)
        assert "\n" not in str(error.value), case


def test_loader_mixes_the_extra_share_into_every_batch_seeded_and_resumable(tmp_path: Path) -> None:
    split = ImageSplit(torch.zeros(40, 3, 32, 32, dtype=torch.uint8), torch.zeros(40, dtype=torch.int64), 10)
    extra = open_extra_images(_extra_file(tmp_path / "white.npz", n=30, value=255), num_classes=10)

    def loader(rank: int = 0, world_size: int = 1) -> DeviceLoader:
        return DeviceLoader(split, 10, shuffle=True, drop_last=True, crop=True, flip=True, seed=5, rank=rank,
                            world_size=world_size, extra=extra, extra_fraction=0.7)

    first = loader()
    assert (first.extra_per_batch, first.split_per_batch, len(first)) == (7, 3, 13)  # an epoch: one pass of the split
    batches = list(first)
    for x, y in batches:
        assert x.shape == (10, 3, 32, 32)
        white = (x[:, :, 8:24, 8:24] == 1).flatten(1).all(1)  # the centre survives a 4-pixel crop
        assert white.sum() == 7 and not white[:3].any()
    again = loader()
    again.set_epoch(0, 6)  # resumed mid-epoch: the same batches as the uninterrupted epoch
    for (x, y), (x2, y2) in zip(batches[6:], again):
        assert torch.equal(x, x2) and torch.equal(y, y2)
    rank0, rank1 = next(iter(loader(0, 2))), next(iter(loader(1, 2)))
    assert not torch.equal(rank0[1], rank1[1]) or not torch.equal(rank0[0], rank1[0])
    with pytest.raises(ConfigError, match="leaves no image"):
        DeviceLoader(split, 10, extra=extra, extra_fraction=1.0)


def test_extra_data_run_and_a_wrong_path_that_fails_before_the_dataset(cifar10_dir: Path, tmp_path: Path) -> None:
    data = {"extra_path": str(_extra_file(tmp_path / "gen.npz", n=64)), "extra_fraction": 0.25}
    result = _train(cifar10_dir, tmp_path / "run", data=data, train={"epochs": 1})
    assert "64 extra images" in (tmp_path / "run" / "train.log").read_text()
    assert result.history[0]["train_loss"] > 0
    with pytest.raises(DataError, match="data.extra_path .* does not exist"):
        _train(tmp_path / "no-dataset-here", tmp_path / "bad", data={"extra_path": str(tmp_path / "nope.npz")})


# ------------------------------------------------------------------------------------------------------------ L2


def test_l2_training_attacks_in_the_l2_ball_and_validates_in_l2(cifar10_dir: Path, tmp_path: Path) -> None:
    objective = build_objective("at", norm="L2", eps=0.5, step_size=0.2, steps=3)
    model = _tiny_net().train()
    x, y = torch.rand(8, 3, 32, 32), torch.randint(0, 10, (8,))
    x_adv = objective._attack(model, x, objective.attack_loss(model, x, y), torch.Generator().manual_seed(0))
    sizes = (x_adv - x).flatten(1).norm(dim=1)
    assert (sizes <= 0.5 + 1e-5).all() and (sizes > 0.25).all()
    assert (x_adv - x).abs().max() > 0.031  # an L2 ball reaches farther than the L∞ one along a pixel
    validation = objective.validation_attack(5)
    assert validation.config()["norm"] == "L2" and validation.config()["eps"] == 0.5
    result = _train(cifar10_dir, tmp_path / "l2", train={"epochs": 1},
                    objective={"name": "trades", "norm": "L2", "eps": 0.5, "step_size": 0.125, "steps": 2})
    assert result.history[-1]["val_pgd_acc"] is not None
    assert "norm: L2" in (tmp_path / "l2" / "config.yaml").read_text()
