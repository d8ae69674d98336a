"""FMN against the closed forms of a linear model, the security curve it gives, EOT, and query counts by hand."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn

from dsnet.attacks.apgd import APGD
from dsnet.attacks.gradient import FGSM, PGD
from dsnet.attacks.minimum_norm import FMN, minimum_norms
from dsnet.attacks.norms import L1, LINF, l1_ball_projection, perturbation_size
from dsnet.attacks.queries import count_queries
from dsnet.errors import ConfigError
from dsnet.evaluation.curves import SecurityCurve

DUAL = {"L2": 2.0, "Linf": 1.0, "L1": math.inf}


def _linear(seed: int = 0) -> tuple[nn.Module, torch.Tensor, torch.Tensor, torch.Tensor]:
    """A linear classifier of 8x8 RGB images and 16 points whose boundaries lie far inside the box [0, 1]."""
    generator = torch.Generator().manual_seed(seed)
    model = nn.Sequential(nn.Flatten(), nn.Linear(192, 10))
    with torch.no_grad():
        model[1].weight.copy_(torch.randn(10, 192, generator=generator) * 0.05)
        model[1].bias.copy_(torch.randn(10, generator=generator) * 0.1)
    x = 0.25 + 0.5 * torch.rand(16, 3, 8, 8, generator=generator)
    with torch.no_grad():
        y = model(x).argmax(dim=1)
    return model.eval(), x, y, model[1].weight.detach()


def _closed_form(model: nn.Module, x: torch.Tensor, y: torch.Tensor, weight: torch.Tensor, norm: str) -> torch.Tensor:
    """min over j ≠ y of (f_y − f_j) / ‖w_y − w_j‖_dual: the distance to the nearest boundary (the box not binding)."""
    with torch.no_grad():
        logits = model(x)
    out = []
    for i in range(x.shape[0]):
        out.append(min(float((logits[i, y[i]] - logits[i, j]) / (weight[y[i]] - weight[j]).norm(p=DUAL[norm]))
                       for j in range(10) if j != int(y[i])))
    return torch.tensor(out)


@pytest.mark.parametrize("norm", ["L2", "Linf"])
def test_fmn_finds_the_closed_form_minimal_perturbation_of_a_linear_model(norm: str) -> None:
    model, x, y, weight = _linear()
    best, size = FMN(norm=norm, steps=200).search(model, x, y)
    exact = _closed_form(model, x, y, weight, norm)
    torch.testing.assert_close(size, exact, rtol=1e-3, atol=0)
    with torch.no_grad():
        assert bool((model(best).argmax(dim=1) != y).all())  # adversarial
        # on the boundary: 1 % less of the same perturbation is classified correctly again
        assert bool((model(x + 0.99 * (best - x)).argmax(dim=1) == y).all())
    torch.testing.assert_close(perturbation_size(best - x, norm), size)


def _l1_optimum(model: nn.Module, x: torch.Tensor, y: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """The exact smallest L1 perturbation of a linear model inside the box: for each wrong class, a fractional
    knapsack that moves the pixels with the largest |w_y − w_j| first, each as far as the box lets it."""
    with torch.no_grad():
        logits = model(x)
    out = []
    for i in range(x.shape[0]):
        best = math.inf
        for j in range(10):
            if j == int(y[i]):
                continue
            w = weight[y[i]] - weight[j]
            margin = float(logits[i, y[i]] - logits[i, j])
            room = torch.where(w > 0, x[i].flatten(), 1 - x[i].flatten())
            total = 0.0
            for k in w.abs().argsort(descending=True).tolist():
                gain = float(w[k].abs() * room[k])
                if gain >= margin:
                    total += margin / float(w[k].abs())
                    break
                margin -= gain
                total += float(room[k])
            best = min(best, total)
        out.append(best)
    return torch.tensor(out)


def test_fmn_in_l1_is_adversarial_and_close_to_the_exact_optimum() -> None:
    """FMN's L1 steps are not sparse, so it need not be exact in L1: here it is on 15 of the 16 points (within
    0.1 %), and 22 % above the optimum on the last one; it is never below (that would not be a perturbation)."""
    model, x, y, weight = _linear()
    best, size = FMN(norm="L1", steps=200).search(model, x, y)
    optimum = _l1_optimum(model, x, y, weight)
    ratio = size / optimum
    assert bool((ratio >= 1 - 1e-4).all()) and int((ratio < 1.001).sum()) >= 15 and float(ratio.max()) < 1.3
    with torch.no_grad():
        assert bool((model(best).argmax(dim=1) != y).all())


def test_l1_projection_is_the_euclidean_projection_onto_the_ball() -> None:
    generator = torch.Generator().manual_seed(3)
    delta = torch.randn(4, 3, 4, 4, generator=generator)
    radius = torch.tensor([1.0, 5.0, 200.0, 0.25])
    projected = l1_ball_projection(delta, radius)
    sizes = projected.flatten(1).abs().sum(dim=1)
    inside = delta.flatten(1).abs().sum(dim=1) <= radius
    torch.testing.assert_close(sizes[~inside], radius[~inside])
    assert torch.equal(projected[inside], delta[inside])
    # the KKT condition: the kept coordinates all moved by the same τ towards 0
    for i in torch.nonzero(~inside).flatten().tolist():
        moved = (delta[i] - projected[i]).abs().flatten()[projected[i].flatten() != 0]
        torch.testing.assert_close(moved, torch.full_like(moved, float(moved[0])))
    assert L1.project(torch.ones(1, 3, 4, 4), torch.zeros(1, 3, 4, 4), 2.0).sum() == pytest.approx(2.0)


def test_the_security_curve_falls_to_zero_and_agrees_with_the_fixed_eps_flags() -> None:
    model, x, y, _ = _linear()
    clean = torch.ones(16, dtype=torch.bool)
    clean[0] = False  # a point counted as misclassified: size 0
    sizes, unconfirmed = minimum_norms(model, FMN(norm="Linf", steps=100), x, y, clean=clean, batch_size=5)
    assert unconfirmed == 0 and sizes[0] == 0 and bool(torch.isfinite(sizes).all())
    curve = SecurityCurve("Linf", 0.01, sizes.tolist(), {})
    levels = curve.points()
    assert levels[0] == (0.0, 15 / 16) and levels[-1][1] == 0.0 and curve.zero_eps == max(sizes.tolist())
    assert all(b[0] > a[0] and b[1] <= a[1] for a, b in zip(levels, levels[1:]))  # ascending ε, monotone
    eps = float(sizes[1:].median())
    attack = FMN(norm="Linf", steps=100, eps=eps)  # FMN within ε, as a fixed-ε attack of the one robust-flags loop
    flags = attack.evaluate(model, x, y, clean=clean, batch_size=5).flags
    assert torch.equal(flags, clean & (sizes > eps))
    assert curve.accuracy_at(eps) == flags.float().mean().item()


class _Noisy(nn.Module):
    """A randomised model: Gaussian noise (σ = 0.5) on its input, then a small ReLU net."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(192, 64), nn.ReLU(), nn.Linear(64, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x + 0.5 * torch.randn_like(x))


def test_query_counts_are_the_hand_counts() -> None:
    """PGD-k from a random start: k forwards and k backwards per point, plus the forward that classifies the result;
    with EOT-e each step is e of each; FGSM: one of each plus the classification."""
    model, x, y, _ = _linear()
    clean = torch.ones(16, dtype=torch.bool)
    for attack, forward, backward in ((PGD(eps=0.03, step_size=0.01, steps=7), 8, 7),
                                      (PGD(eps=0.03, step_size=0.01, steps=7, eot=3), 22, 21),
                                      (FGSM(eps=0.03), 2, 1)):
        with count_queries(model) as count:
            attack.evaluate(model, x, y, clean=clean, batch_size=5)
        assert (count.forward, count.backward) == (forward * 16, backward * 16), attack.label
        assert count.forward_calls == forward * 4  # batches of 5, 5, 5 and 1
        assert count.to_dict(16)["forward_per_point"] == forward
    with count_queries(model) as count:
        model(x)
    assert (count.forward, count.backward) == (16, 0)
    model(x)
    assert count.forward == 16  # the hooks are gone after the block


def test_eot_follows_the_expected_gradient_of_a_randomised_model() -> None:
    """Plain PGD follows one noisy sample of the gradient; averaged over 20 samples it breaks more points."""
    model = _Noisy().eval()
    generator = torch.Generator().manual_seed(1)
    x = torch.rand(64, 3, 8, 8, generator=generator)
    with torch.no_grad(), torch.random.fork_rng():
        torch.manual_seed(0)
        y = model.net(x).argmax(dim=1)  # the noise-free prediction as the label
    clean = torch.ones(64, dtype=torch.bool)

    def accuracy(eot: int) -> float:
        with torch.random.fork_rng():
            torch.manual_seed(0)
            run = PGD(eps=0.02, step_size=0.005, steps=10, eot=eot).evaluate(model, x, y, clean=clean)
        return run.accuracy

    plain, averaged = accuracy(1), accuracy(20)
    assert averaged < plain - 0.1  # 60.9 % -> 43.8 % here
    assert PGD(eps=0.02, step_size=0.005, steps=10, eot=20).label == "PGD-10 (EOT-20)"
    with pytest.raises(ConfigError, match="eot"):
        PGD(eps=0.02, step_size=0.005, steps=10, eot=0)


def test_apgd_runs_the_reference_and_lowers_accuracy() -> None:
    model, x, y, _ = _linear()
    clean = torch.ones(16, dtype=torch.bool)
    run = APGD(eps=0.05, steps=20).evaluate(model, x, y, clean=clean, batch_size=16)
    assert run.accuracy < 1.0 and run.stats["max_linf"] <= 0.05 + 1e-6
    assert APGD(eps=0.05, steps=20, restarts=2).label == "APGD-CE-20×2"
    with pytest.raises(ConfigError, match="loss"):
        APGD(eps=0.05, loss="kl")


def test_fmn_settings_are_checked() -> None:
    with pytest.raises(ConfigError, match="unknown norm 'L3'"):
        FMN(norm="L3")
    with pytest.raises(ConfigError, match="gamma"):
        FMN(gamma=1.5)
    assert FMN().config()["eps"] is None and FMN(norm="L2").label == "FMN-100 (L2)"
    assert LINF.project(torch.full((2, 1, 1, 1), 0.9), torch.full((2, 1, 1, 1), 0.5),
                        torch.tensor([0.1, 0.3])).flatten().tolist() == pytest.approx([0.6, 0.8])
