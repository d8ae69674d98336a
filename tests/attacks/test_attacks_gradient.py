"""FGSM, PGD and CW∞: the ε-ball and the image box, the closed-form optimum on a linear model, monotone
accuracy, the CW margin with negative logits, and a call leaving no trace (mode, RNG, BN statistics)."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
from hypothesis import given, settings
from hypothesis import strategies as st

from dsnet.attacks import FGSM, PGD, CWInf, cw_margin_loss, fgsm_textbook, robust_flags
from dsnet.errors import ConfigError

ATTACK_FACTORIES = {
    "fgsm": lambda eps, seed: FGSM(eps=eps, seed=seed),
    "fgsm_textbook": lambda eps, seed: fgsm_textbook(eps=eps, seed=seed),
    "pgd": lambda eps, seed: PGD(eps=eps, step_size=eps / 4, steps=5, seed=seed),
    "pgd_restarts": lambda eps, seed: PGD(eps=eps, step_size=eps / 4, steps=3, restarts=3, seed=seed),
    "cw_inf": lambda eps, seed: CWInf(eps=eps, step_size=eps / 4, steps=5, seed=seed),
}


@pytest.mark.parametrize("name", sorted(ATTACK_FACTORIES))
@settings(max_examples=6, deadline=None)
@given(eps=st.floats(min_value=0.0, max_value=0.3), seed=st.integers(min_value=0, max_value=2**31))
def test_output_stays_in_eps_ball_and_image_box(name, eps, seed, make_cnn, images, labels_of):
    model = make_cnn()
    x = images(8)
    y = labels_of(model, x)
    x_adv = ATTACK_FACTORIES[name](eps, seed)(model, x, y)
    assert x_adv.shape == x.shape and x_adv.dtype == x.dtype and x_adv.device == x.device
    assert not x_adv.requires_grad
    assert (x_adv - x).abs().max().item() <= eps + 1e-6
    assert x_adv.min().item() >= 0.0 and x_adv.max().item() <= 1.0


@pytest.mark.parametrize("cls", [PGD, CWInf])
def test_zero_steps_without_random_start_returns_the_input(cls, make_cnn, images, labels_of):
    model, x = make_cnn(), images(8)
    x_adv = cls(eps=8 / 255, step_size=2 / 255, steps=0, random_start=False)(model, x, labels_of(model, x))
    assert torch.equal(x_adv, x)


@pytest.mark.parametrize(
    ("build", "argument"),
    [
        (lambda: PGD(eps=8 / 255, step_size=2 / 255, steps=-1), "steps"),
        (lambda: PGD(eps=8 / 255, step_size=2 / 255, steps=2.5), "steps"),
        (lambda: PGD(eps=-0.1, step_size=2 / 255, steps=10), "eps"),
        (lambda: PGD(eps=float("nan"), step_size=2 / 255, steps=10), "eps"),
        (lambda: PGD(eps=8 / 255, step_size=-1.0, steps=10), "step_size"),
        (lambda: PGD(eps=8 / 255, step_size=2 / 255, steps=10, restarts=0), "restarts"),
        (lambda: PGD(eps=8 / 255, step_size=2 / 255, steps=10, restarts=2, random_start=False), "restarts"),
        (lambda: PGD(eps=8 / 255, step_size=2 / 255, steps=10, seed=-1), "seed"),
        (lambda: CWInf(eps=8 / 255, step_size=2 / 255, steps=-3), "steps"),
        (lambda: CWInf(eps=8 / 255, step_size=2 / 255, steps=30, kappa=-1.0), "kappa"),
        (lambda: FGSM(eps=-1.0), "eps"),
        (lambda: FGSM(eps=True), "eps"),
        (lambda: FGSM(eps=0.03, random_start="yes"), "random_start"),
    ],
)
def test_bad_settings_raise_config_error_naming_the_argument(build, argument):
    with pytest.raises(ConfigError, match=argument):
        build()


def test_settings_are_keyword_only():
    with pytest.raises(TypeError):
        PGD(8 / 255, 2 / 255, 10)  # type: ignore[misc]


def _two_class_linear(dim: int = 3 * 8 * 8) -> nn.Module:
    generator = torch.Generator().manual_seed(3)
    linear = nn.Linear(dim, 2).double()
    with torch.no_grad():
        linear.weight.copy_(torch.randn(2, dim, generator=generator, dtype=torch.float64) * 0.05)
        linear.bias.zero_()
    return nn.Sequential(nn.Flatten(), linear).eval()


def _interior_points(n: int = 16) -> torch.Tensor:
    generator = torch.Generator().manual_seed(4)
    return 0.3 + 0.4 * torch.rand(n, 3, 8, 8, generator=generator, dtype=torch.float64)


@pytest.mark.parametrize(
    "attack",
    [
        fgsm_textbook(eps=0.05),
        PGD(eps=0.05, step_size=0.02, steps=10),
        PGD(eps=0.05, step_size=0.02, steps=10, random_start=False),
        CWInf(eps=0.05, step_size=0.02, steps=10, kappa=50.0),
    ],
    ids=["fgsm_textbook", "pgd", "pgd_no_start", "cw_inf"],
)
def test_linear_two_class_model_reaches_the_optimal_corner(attack):
    # For f(x) = Wx + b with two classes, the loss-maximising point of the ε-ball is x + ε·sign(w_other - w_y).
    model, x = _two_class_linear(), _interior_points()
    y = torch.arange(x.shape[0]) % 2
    weight = model[1].weight.detach()
    direction = (weight[1 - y] - weight[y]).sign().view_as(x)
    x_adv = attack(model, x, y)
    torch.testing.assert_close(x_adv, x + 0.05 * direction, rtol=0, atol=1e-12)


def test_textbook_fgsm_on_a_linear_multiclass_model_is_the_closed_form_step():
    generator = torch.Generator().manual_seed(5)
    weight = torch.randn(5, 192, generator=generator, dtype=torch.float64)
    model = nn.Sequential(nn.Flatten(), nn.Linear(192, 5).double()).eval()
    with torch.no_grad():
        model[1].weight.copy_(weight * 0.05)
        model[1].bias.zero_()
    x, y = _interior_points(8), torch.arange(8) % 5
    with torch.no_grad():
        p = model(x).softmax(dim=1)
    # d CE / dx = sum_j p_j w_j - w_y
    gradient = p @ model[1].weight.detach() - model[1].weight.detach()[y]
    expected = x + 0.05 * gradient.sign().view_as(x)
    torch.testing.assert_close(fgsm_textbook(eps=0.05)(model, x, y), expected, rtol=0, atol=1e-12)


def test_paper_fgsm_moves_every_pixel_towards_the_optimum_but_less_far_than_textbook_fgsm():
    model, x = _two_class_linear(), _interior_points()
    y = torch.arange(x.shape[0]) % 2
    weight = model[1].weight.detach()
    direction = (weight[1 - y] - weight[y]).sign().view_as(x)
    paper, textbook = FGSM(eps=0.05)(model, x, y), fgsm_textbook(eps=0.05)(model, x, y)
    assert ((paper - x) * direction).min().item() >= -1e-12
    assert not torch.equal(paper, textbook)  # the random start matters
    with torch.no_grad():
        margin = lambda z: (z.gather(1, y[:, None]) - z.gather(1, 1 - y[:, None])).squeeze(1)  # noqa: E731
        assert (margin(model(textbook)) <= margin(model(paper)) + 1e-12).all()


EPS_GRID = [0.0, 0.5 / 255, 1 / 255, 2 / 255, 4 / 255, 8 / 255, 16 / 255, 0.5]


@pytest.mark.parametrize(
    "make_attack",
    [
        lambda eps: PGD(eps=eps, step_size=eps / 4, steps=10),
        lambda eps: CWInf(eps=eps, step_size=eps / 4, steps=10),
        lambda eps: fgsm_textbook(eps=eps),
    ],
    ids=["pgd", "cw_inf", "fgsm_textbook"],
)
def test_robust_accuracy_does_not_rise_with_eps_and_reaches_zero(make_attack, make_cnn, images, labels_of):
    model, x = make_cnn(), images(64)
    y = labels_of(model, x)
    accuracies = [robust_flags(model, make_attack(eps), x, y, batch_size=32).float().mean().item() for eps in EPS_GRID]
    assert accuracies[0] == 1.0
    assert all(later <= earlier for earlier, later in zip(accuracies, accuracies[1:])), accuracies
    assert accuracies[-1] == 0.0, accuracies
    assert len(set(accuracies)) > 2, accuracies  # the grid actually resolves something


def test_robust_accuracy_does_not_rise_with_steps(make_cnn, images, labels_of):
    model, x = make_cnn(), images(64)
    y = labels_of(model, x)
    accuracies = [
        robust_flags(model, PGD(eps=2 / 255, step_size=0.5 / 255, steps=steps), x, y, batch_size=64)
        .float()
        .mean()
        .item()
        for steps in [0, 1, 2, 5, 10, 20]
    ]
    assert all(later <= earlier for earlier, later in zip(accuracies, accuracies[1:])), accuracies
    assert accuracies[-1] < accuracies[0], accuracies


def test_cw_margin_is_right_when_every_logit_is_negative():
    logits = torch.tensor([[-5.0, -1.0, -3.0], [-5.0, -1.0, -3.0], [-2.0, -7.0, -4.0]])
    y = torch.tensor([0, 1, 0])
    # z_y - max_{j != y} z_j: -5 - (-1) = -4; -1 - (-3) = 2; -2 - (-4) = 2. A one-hot multiply would give
    # max_{j != y} = 0 for the first row instead of -1.
    torch.testing.assert_close(cw_margin_loss(logits, y, kappa=50.0), torch.tensor([-46.0, -52.0, -52.0]))
    torch.testing.assert_close(cw_margin_loss(logits, y, kappa=0.0), torch.tensor([0.0, -2.0, -2.0]))


@settings(max_examples=20, deadline=None)
@given(
    logits=st.lists(st.floats(min_value=-1e3, max_value=1e3), min_size=4, max_size=4),
    label=st.integers(min_value=0, max_value=3),
    kappa=st.floats(min_value=0.0, max_value=100.0),
)
def test_cw_margin_matches_its_definition(logits, label, kappa):
    z = torch.tensor([logits], dtype=torch.float64)
    other = max(value for j, value in enumerate(logits) if j != label)
    expected = -max(logits[label] - other + kappa, 0.0)
    assert cw_margin_loss(z, torch.tensor([label]), kappa).item() == pytest.approx(expected, abs=1e-9)


def _modes(model: nn.Module) -> list[bool]:
    return [module.training for module in model.modules()]


@pytest.mark.parametrize("name", sorted(ATTACK_FACTORIES))
@pytest.mark.parametrize("mode", ["train", "mixed"])
def test_attack_leaves_model_mode_rng_and_bn_statistics_untouched(name, mode, make_cnn, images, labels_of):
    model, x = make_cnn(), images(8)
    y = labels_of(model, x)
    model.train()
    if mode == "mixed":
        model.bn.eval()
    modes = _modes(model)
    buffers = {key: value.clone() for key, value in model.state_dict().items()}
    rng = torch.get_rng_state()
    x_adv = ATTACK_FACTORIES[name](8 / 255, 0)(model, x, y)
    assert _modes(model) == modes
    assert torch.equal(torch.get_rng_state(), rng)
    for key, value in model.state_dict().items():
        assert torch.equal(value, buffers[key]), key
    assert all(parameter.grad is None for parameter in model.parameters())
    # The attack ran in eval mode: the same call on the model in eval mode gives the same output.
    assert torch.equal(x_adv, ATTACK_FACTORIES[name](8 / 255, 0)(model.eval(), x, y))


@pytest.mark.parametrize("name", ["fgsm", "pgd", "pgd_restarts", "cw_inf"])
def test_same_seed_same_output_other_seed_other_output(name, make_cnn, images, labels_of):
    model, x = make_cnn(), images(8)
    y = labels_of(model, x)
    attack = ATTACK_FACTORIES[name](8 / 255, 7)
    first = attack(model, x, y)
    assert torch.equal(attack(model, x, y), first)  # a call does not advance the attack's randomness
    assert torch.equal(ATTACK_FACTORIES[name](8 / 255, 7)(model, x, y), first)
    assert not torch.equal(ATTACK_FACTORIES[name](8 / 255, 8)(model, x, y), first)


def test_restarts_keep_the_first_success_and_never_lose_one(make_cnn, images, labels_of):
    model, x = make_cnn(), images(32)
    y = labels_of(model, x)
    single = PGD(eps=2 / 255, step_size=0.5 / 255, steps=3)(model, x, y)
    multi = PGD(eps=2 / 255, step_size=0.5 / 255, steps=3, restarts=4)(model, x, y)
    with torch.no_grad():
        fooled_single = model(single).argmax(1) != y
        fooled_multi = model(multi).argmax(1) != y
    assert fooled_single.any() and (~fooled_single).any()  # the setting is neither trivial nor hopeless
    assert (fooled_multi | ~fooled_single).all()  # every point fooled by restart 1 stays fooled
    assert torch.equal(multi[fooled_single], single[fooled_single])  # ... by the same, first, success
    assert fooled_multi.sum() > fooled_single.sum()


def test_double_precision_input_gives_double_precision_output(images, labels_of):
    model = _two_class_linear()
    x = images(4, dtype=torch.float64)
    x_adv = PGD(eps=8 / 255, step_size=2 / 255, steps=2)(model, x, torch.zeros(4, dtype=torch.long))
    assert x_adv.dtype == torch.float64


def test_bad_inputs_are_refused(make_cnn):
    attack = PGD(eps=8 / 255, step_size=2 / 255, steps=1)
    with pytest.raises(ValueError, match="float"):
        attack(make_cnn(), torch.zeros(2, 3, 8, 8, dtype=torch.uint8), torch.zeros(2, dtype=torch.long))
    with pytest.raises(ValueError, match="y must be"):
        attack(make_cnn(), torch.zeros(2, 3, 8, 8), torch.zeros(3, dtype=torch.long))


def test_config_and_label_describe_the_attack():
    pgd = PGD(eps=0.031, step_size=0.031 / 4, steps=20)
    assert pgd.config() == {
        "name": "pgd",
        "eps": 0.031,
        "norm": "Linf",
        "step_size": 0.031 / 4,
        "steps": 20,
        "restarts": 1,
        "random_start": True,
        "seed": 0,
    }
    assert pgd.label == "PGD-20"
    assert CWInf(eps=0.031, step_size=0.003, steps=30).config()["kappa"] == 50.0
    assert FGSM(eps=0.031).config()["step_size"] == 0.031
    assert fgsm_textbook(eps=0.031).name == "fgsm_textbook"
    assert "PGD(" in repr(pgd)
