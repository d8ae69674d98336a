"""Baselines: exact sizes, the common model surface, SAT activations, IE weight tying and its correction."""

from __future__ import annotations

import functools
from collections.abc import Iterator
from unittest import mock

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from dsnet.errors import ConfigError
from dsnet.models import create_model, list_models, model_info
from dsnet.models.ie_skip import ImplicitEulerBlock, tied_copy
from dsnet.models.profile import count_flops, count_parameters
from dsnet.models.robnet import RobNet

FAMILIES = {"resnet", "wide_resnet", "ie_skip", "adark_net", "robnet", "densenet", "mobilenetv2", "preact_resnet"}

# (raw, unique) counts for 10 classes; raw counts weight-tied copies twice, as the paper does for IE-ResNet-50.
EXPECTED = {
    "resnet50": (23_520_842, 23_520_842),
    "resnet62": (27_989_578, 27_989_578),
    "sat_resnet50": (23_520_842, 23_520_842),
    "wrn34_10": (46_160_474, 46_160_474),
    "wrn28_10": (36_479_194, 36_479_194),
    "sat_wrn34_10": (46_160_474, 46_160_474),
    "ie_resnet50": (22_414_762, 17_480_618),
    "ie_wrn34_10": (84_885_594, 46_160_474),
    "adark_net": (23_614_908, 23_614_908),
    "robnet_large_v2": (33_326_666, 33_326_666),
    "densenet121": (6_956_298, 6_956_298),
    "mobilenetv2": (2_296_922, 2_296_922),
    "preact_resnet18": (11_172_170, 11_172_170),
}
TINY = [n for n in list_models(include_tiny=True) if model_info(n).tiny and model_info(n).family in FAMILIES]
SAT_PAIRS = [("sat_resnet50", "resnet50"), ("sat_wrn34_10", "wrn34_10")]


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    # Tiny models gain nothing from a second thread, and on a loaded 2-core machine OpenMP's waiting threads
    # made one tiny forward/backward pass take seconds instead of milliseconds. Restored afterwards.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@functools.cache
def _meta(name: str, **kwargs: object) -> nn.Module:
    with torch.device("meta"):
        return create_model(name, **kwargs)


def _tiny(name: str, **kwargs: object) -> nn.Module:
    torch.manual_seed(0)
    return create_model(name, **kwargs)


def test_every_baseline_is_pinned() -> None:
    ours = {n for n in list_models() if model_info(n).family in FAMILIES}
    assert ours == set(EXPECTED)
    assert len(TINY) >= len(FAMILIES)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_parameter_counts(name: str) -> None:
    raw, unique = EXPECTED[name]
    assert model_info(name).expected_params == raw
    assert count_parameters(_meta(name)) == (raw, unique)
    assert sum(p.numel() for p in _meta(name).parameters()) == unique


@pytest.mark.parametrize("name", ["resnet50", "wrn34_10", "ie_resnet50", "adark_net", "robnet_large_v2"])
def test_full_size_shapes_on_meta(name: str) -> None:
    model = _meta(name)
    with torch.device("meta"), torch.no_grad():
        features = model.forward_features(torch.empty(2, 3, 32, 32))
        assert features.shape == (2, model.num_features)
        assert model.forward_head(features).shape == (2, 10)


@pytest.mark.parametrize("name", TINY)
def test_tiny_forward_backward(name: str) -> None:
    model = _tiny(name).train()
    x = torch.rand(2, 3, 32, 32, requires_grad=True)
    out = model(x)
    assert out.shape == (2, 10) and torch.isfinite(out).all()
    F.cross_entropy(out, torch.tensor([1, 2])).backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    for pname, p in model.named_parameters():
        assert p.grad is not None, pname
        assert torch.isfinite(p.grad).all(), pname
        if not pname.endswith("a21"):  # Ada-RK's a21 cancels algebraically (atomic_blocks.AdaRKBlock)
            assert p.grad.abs().sum() > 0, pname


@pytest.mark.parametrize("name", TINY)
def test_eval_is_deterministic_and_per_example(name: str) -> None:
    model = _tiny(name)
    model(torch.rand(8, 3, 32, 32))  # one train-mode pass so BN running statistics are not the defaults
    model.eval()
    x = torch.rand(3, 3, 32, 32)
    with torch.no_grad():
        first, second, alone = model(x), model(x), model(x[:1])
    assert torch.equal(first, second)
    torch.testing.assert_close(alone, first[:1], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", TINY)
def test_surface_and_num_classes(name: str) -> None:
    model = _tiny(name, num_classes=100).eval()
    assert model.num_classes == 100
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        features = model.forward_features(x)
        logits = model(x)
    assert features.shape == (2, model.num_features)
    assert logits.shape == (2, 100)
    torch.testing.assert_close(model.forward_head(features), logits)
    raw10, _ = count_parameters(_tiny(name))
    raw100, _ = count_parameters(model)
    assert raw100 - raw10 == 90 * (model.num_features + 1)


@pytest.mark.parametrize(("sat", "plain"), SAT_PAIRS)
def test_sat_models_have_no_relu(sat: str, plain: str) -> None:
    def modules_of(name: str, kind: type[nn.Module]) -> list[nn.Module]:
        return [m for m in _meta(name).modules() if isinstance(m, kind)]

    assert not modules_of(sat, nn.ReLU) and modules_of(sat, nn.SiLU)
    assert modules_of(plain, nn.ReLU) and not modules_of(plain, nn.SiLU)
    assert count_parameters(_meta(sat)) == count_parameters(_meta(plain))


@pytest.mark.parametrize("name", ["resnet_tiny", "wrn_tiny"])
def test_sat_forward_calls_no_relu(name: str) -> None:
    model = _tiny(name, act_layer=nn.SiLU)
    with mock.patch("torch.nn.functional.relu", side_effect=AssertionError("ReLU called")), mock.patch(
        "torch.relu", side_effect=AssertionError("ReLU called")
    ):
        out = model(torch.rand(2, 3, 32, 32))
    assert out.shape == (2, 10)


def test_wrn_legacy_sub_block1_and_reference_names() -> None:
    legacy = _meta("wrn34_10", legacy_sub_block1=True)
    assert count_parameters(legacy) == (48_262_586, 48_262_586)
    keys = set(legacy.state_dict())
    assert {"conv1.weight", "block1.layer.0.convShortcut.weight", "sub_block1.layer.4.conv2.weight", "fc.bias"} <= keys
    assert "sub_block1.layer.0.bn1.weight" not in _meta("wrn34_10").state_dict()


def test_wrn_depth_is_checked() -> None:
    with pytest.raises(ConfigError, match="6n \\+ 4"):
        create_model("wrn_tiny", depth=12)


# ---- IE-Skip ---------------------------------------------------------------------------------------------------


def _branch(channels: int = 4) -> nn.Sequential:
    return nn.Sequential(nn.GroupNorm(1, channels), nn.Tanh(), nn.Conv2d(channels, channels, 3, padding=1))


def test_tied_copy_shares_every_parameter() -> None:
    model = _meta("ie_resnet50")
    blocks = [m for m in model.modules() if isinstance(m, ImplicitEulerBlock)]
    assert len(blocks) == 2 + 3 + 5 + 2
    for block in blocks:
        pairs = list(zip(block.branch.named_parameters(), block.branch_tied.named_parameters()))
        assert len(pairs) == 9  # 3 GroupNorms (weight, bias) and 3 convs
        assert all(name == twin_name and p is twin for (name, p), (twin_name, twin) in pairs)
    with pytest.raises(ConfigError, match="GroupNorm"):
        tied_copy(nn.Sequential(nn.Conv2d(2, 2, 1), nn.BatchNorm2d(2)))


def test_tie_survives_dtype_change_and_state_dict_round_trip() -> None:
    torch.manual_seed(0)
    block = ImplicitEulerBlock(_branch()).to(torch.float64)
    assert block.branch[2].weight is block.branch_tied[2].weight
    other = ImplicitEulerBlock(_branch()).to(torch.float64)
    other.load_state_dict(block.state_dict())
    assert other.branch[2].weight is other.branch_tied[2].weight
    torch.testing.assert_close(other.branch[2].weight, block.branch[2].weight)


def test_ie_correction_matches_the_equation() -> None:
    torch.manual_seed(0)
    block = ImplicitEulerBlock(_branch(), theta=1.0, step=0.1, iterations=1)
    x = torch.randn(2, 4, 8, 8)
    with torch.no_grad():
        y0 = x + block.branch(x)
    y = y0.clone().requires_grad_(True)
    residual = (y - x - block.branch(y)).pow(2).sum()  # θ = 1: r(y) = ‖y − x − f(y)‖²
    (gradient,) = torch.autograd.grad(residual, y)
    expected = y0 - 0.1 * gradient
    torch.testing.assert_close(block(x), expected)
    with torch.no_grad():
        torch.testing.assert_close(block(x), expected)
    with torch.inference_mode():
        torch.testing.assert_close(block(x), expected)
    plain = ImplicitEulerBlock(_branch(), step=0.0)
    with torch.no_grad():
        torch.testing.assert_close(plain(x), x + plain.branch(x))


def test_ie_correction_is_constant_unless_asked() -> None:
    torch.manual_seed(0)
    block = ImplicitEulerBlock(_branch())
    x = torch.randn(2, 4, 8, 8, requires_grad=True)
    weights = torch.randn(2, 4, 8, 8)
    (grad_ie,) = torch.autograd.grad((block(x) * weights).sum(), x)
    (grad_explicit,) = torch.autograd.grad(((x + block.branch(x)) * weights).sum(), x)
    torch.testing.assert_close(grad_ie, grad_explicit)  # the correction adds nothing to white-box gradients

    block.differentiable_correction = True
    out = block(x)
    (grad_full,) = torch.autograd.grad((out * weights).sum(), x)
    assert not torch.allclose(grad_full, grad_explicit)
    with torch.no_grad():
        block.differentiable_correction = False
        torch.testing.assert_close(out, block(x))  # same function, only the gradient differs


def test_ie_models_can_be_profiled() -> None:
    # FlopCounterMode tracks modules with gradient hooks, which autograd.grad inside forward must tolerate.
    assert count_flops(_tiny("ie_resnet_tiny")) > count_flops(_tiny("ie_resnet_tiny", step=0.0, iterations=0))


def test_ie_wrn_unique_count_is_wrn34_10() -> None:
    assert count_parameters(_meta("ie_wrn34_10"))[1] == count_parameters(_meta("wrn34_10"))[0]
    assert not [m for m in _meta("ie_wrn34_10").modules() if isinstance(m, nn.BatchNorm2d)]


# ---- RobNet ------------------------------------------------------------------------------------------------------


def test_robnet_layout() -> None:
    model = _meta("robnet_large_v2")
    assert model.reduction_cells == (11, 22)
    assert model.num_features == 1024
    assert all(not m.affine for cell in model.cells for m in cell.modules() if isinstance(m, nn.BatchNorm2d))


def test_robnet_genotype_is_checked() -> None:
    with pytest.raises(ConfigError, match="14 codes"):
        RobNet(genotype=("11",) * 13, width=4, num_cells=3)
    with pytest.raises(ConfigError, match="only zero edges"):
        RobNet(genotype=("00", "00") + ("11",) * 12, width=4, num_cells=3)
    zero_edges = ("00", "11") + ("01",) * 12
    assert RobNet(genotype=zero_edges, width=4, num_cells=3)(torch.rand(2, 3, 32, 32)).shape == (2, 10)
