"""The L2 ball: uniform starts, normalised-gradient steps and the projection against their formulas; FGM, PGD-L2
and CW-L2 stay in the ball and the image box, lower accuracy, and reach 0 at a large ε."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn
from hypothesis import given, settings
from hypothesis import strategies as st

from dsnet.attacks import CWL2, FGSM, PGD, build_attack, get_norm, robust_flags
from dsnet.attacks.core import gradient_ascent, random_start
from dsnet.attacks.norms import L2, LINF, perturbation_size
from dsnet.errors import ConfigError

L2_ATTACKS = {
    "fgm": lambda eps, seed: FGSM(eps=eps, seed=seed, norm="L2"),
    "fgm_textbook": lambda eps, seed: build_attack("fgsm_textbook", eps=eps, seed=seed, norm="L2"),
    "pgd_l2": lambda eps, seed: PGD(eps=eps, step_size=eps / 4, steps=5, seed=seed, norm="L2"),
    "pgd_l2_restarts": lambda eps, seed: PGD(eps=eps, step_size=eps / 4, steps=3, restarts=2, seed=seed, norm="L2"),
    "cw_l2": lambda eps, seed: CWL2(eps=eps, step_size=eps / 4, steps=5, seed=seed),
}


def _l2(delta: torch.Tensor) -> torch.Tensor:
    return delta.flatten(1).norm(dim=1)


@pytest.mark.parametrize("name", sorted(L2_ATTACKS))
@settings(max_examples=5, deadline=None)
@given(eps=st.floats(min_value=0.0, max_value=3.0), seed=st.integers(min_value=0, max_value=2**31))
def test_output_stays_in_the_l2_ball_and_the_image_box(name, eps, seed, make_cnn, images, labels_of):
    model = make_cnn()
    x = images(8)
    x_adv = L2_ATTACKS[name](eps, seed)(model, x, labels_of(model, x))
    assert x_adv.shape == x.shape and not x_adv.requires_grad
    assert _l2(x_adv - x).max().item() <= eps + 1e-5
    assert x_adv.min().item() >= 0.0 and x_adv.max().item() <= 1.0


def test_uniform_start_is_uniform_in_the_ball() -> None:
    """In d = 2 dimensions a uniform point of the disc has (r/ε)² ~ U(0, 1) and a uniform angle."""
    eps = 0.1
    x = torch.full((20000, 1, 1, 2), 0.5)  # far from the box, so clipping plays no part
    start = random_start(x, eps, "uniform", torch.Generator().manual_seed(0), norm="L2")
    delta = (start - x).flatten(1)
    r2 = (delta.norm(dim=1) / eps) ** 2
    assert r2.max().item() <= 1 + 1e-6
    assert r2.mean().item() == pytest.approx(0.5, abs=0.01) and r2.var().item() == pytest.approx(1 / 12, abs=0.005)
    angle = torch.atan2(delta[:, 1], delta[:, 0])
    assert (angle > 0).float().mean().item() == pytest.approx(0.5, abs=0.015)
    # and in the 3072 dimensions of a CIFAR image it lies just inside the sphere
    big = random_start(torch.full((64, 3, 32, 32), 0.5), 0.5, "uniform", torch.Generator().manual_seed(1),
                       norm="L2")
    radii = _l2(big - 0.5)
    assert radii.max().item() <= 0.5 + 1e-6 and radii.min().item() >= 0.5 * 0.99


def test_step_is_alpha_times_the_normalised_gradient_and_projection_rescales() -> None:
    generator = torch.Generator().manual_seed(0)
    grad = torch.randn(4, 3, 5, 5, generator=generator)
    grad[0] = 0.0  # a zero gradient gives a zero step, not NaN
    step = L2.step(grad, 0.3)
    expected = 0.3 * grad / _l2(grad).clamp_min(1e-12).view(-1, 1, 1, 1)
    assert torch.allclose(step, expected) and torch.equal(step[0], torch.zeros_like(step[0]))
    assert torch.allclose(_l2(step[1:]), torch.full((3,), 0.3))
    assert torch.equal(LINF.step(grad, 0.3), 0.3 * grad.sign())

    x = torch.full((3, 3, 5, 5), 0.5)
    delta = torch.randn(3, 3, 5, 5, generator=generator) * 0.01
    delta[0] *= 100  # far outside a ball of 0.2: rescaled onto its sphere, same direction
    projected = L2.project(x + delta, x, 0.2) - x
    assert _l2(projected[:1]).item() == pytest.approx(0.2, rel=1e-5)
    assert torch.allclose(projected[0] / 0.2, delta[0] / _l2(delta[:1]), atol=1e-6)
    assert torch.allclose(projected[1:], delta[1:], atol=1e-6)  # inside: untouched (up to rounding of x + δ − x)


def test_pgd_l2_on_a_linear_two_class_model_walks_along_the_weights() -> None:
    """With loss = margin of a linear model and the box far away, every step adds α·w/‖w‖ until ‖δ‖ = ε."""
    torch.manual_seed(0)
    w = torch.randn(3 * 4 * 4)

    class Linear(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            score = x.flatten(1) @ w
            return torch.stack([score, -score], dim=1)

    x = torch.full((2, 3, 4, 4), 0.5)
    x_adv = gradient_ascent(Linear(), x, lambda logits, _: logits[:, 0] - logits[:, 1], eps=0.3, step_size=0.1,
                            steps=5, norm="L2", start="none")
    expected = x + 0.3 * (w / w.norm()).view(1, 3, 4, 4)
    assert torch.allclose(x_adv, expected, atol=1e-6)


@pytest.mark.parametrize(
    "make_attack",
    [
        lambda eps: PGD(eps=eps, step_size=eps / 4, steps=10, norm="L2"),
        lambda eps: CWL2(eps=eps, step_size=eps / 4, steps=10),
        lambda eps: FGSM(eps=eps, norm="L2", random_start=False),
    ],
    ids=["pgd_l2", "cw_l2", "fgm_textbook"],
)
def test_l2_robust_accuracy_falls_with_eps_and_reaches_zero(make_attack, make_cnn, images, labels_of):
    model, x = make_cnn(), images(64)
    y = labels_of(model, x)
    grid = [0.0, 0.05, 0.1, 0.25, 0.5, 1.0, 20.0]
    accuracies = [robust_flags(model, make_attack(eps), x, y, batch_size=32).float().mean().item() for eps in grid]
    assert accuracies[0] == 1.0
    assert all(later <= earlier for earlier, later in zip(accuracies, accuracies[1:])), accuracies
    assert accuracies[-1] == 0.0, accuracies
    assert len(set(accuracies)) > 2, accuracies


def test_l2_pgd_is_at_least_as_strong_as_fgm(make_cnn, images, labels_of):
    model, x = make_cnn(), images(64)
    y = labels_of(model, x)
    fgm = robust_flags(model, FGSM(eps=0.25, norm="L2"), x, y).float().mean().item()
    pgd = robust_flags(model, PGD(eps=0.25, step_size=0.0625, steps=20, norm="L2"), x, y).float().mean().item()
    assert pgd <= fgm


def test_labels_configs_and_bad_norms() -> None:
    pgd = PGD(eps=0.5, step_size=0.125, steps=20, norm="l2")
    assert pgd.label == "PGD-20 (L2)" and pgd.config()["norm"] == "L2"
    assert CWL2(eps=0.5, step_size=0.125, steps=30).label == "CW-L2-30"
    assert build_attack("cw_l2", eps=0.5, step_size=0.1, steps=3).config()["norm"] == "L2"
    assert FGSM(eps=0.5, norm="L2").label == "FGM (L2)"
    assert PGD(eps=0.031, step_size=0.01, steps=3).label == "PGD-3"  # L∞ labels stay the paper's
    with pytest.raises(ConfigError, match="unknown norm 'L3'"):
        PGD(eps=0.5, step_size=0.1, steps=3, norm="L3")
    with pytest.raises(ConfigError, match="AutoAttack only"):
        get_norm("L1")
    with pytest.raises(ConfigError, match="norm"):
        build_attack("autoattack", eps=0.5, norm="L4")
    l1 = build_attack("autoattack", eps=12.0, norm="L1")
    assert l1.label == "AutoAttack (L1)" and l1.config()["norm"] == "L1"
    stages = l1.config()["stage_settings"]  # the reference's own L1 settings, read off it
    assert stages["apgd-ce"]["n_restarts"] == 5 and stages["apgd-ce"]["use_largereps"]


def test_perturbation_size_in_each_norm() -> None:
    delta = torch.tensor([[[[3.0, -4.0]]]])
    assert perturbation_size(delta, "Linf").item() == 4.0
    assert perturbation_size(delta, "L2").item() == 5.0
    assert perturbation_size(delta, "L1").item() == 7.0
    assert math.isclose(L2.size(delta).item(), 5.0)
