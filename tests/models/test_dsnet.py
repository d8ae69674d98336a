"""DS-Net: exact sizes, attention weights, block algebra, user blocks, pruning."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from dsnet.errors import ConfigError, UnknownNameError
from dsnet.models import BLOCKS, create_model, list_models, register_block, split_parameters
from dsnet.models.atomic_blocks import AdaRKBlock, DenseBlock, ReductionBlock
from dsnet.models.dsnet import ATTENTION_INITS, init_attention, pruned_config, width_for_params
from dsnet.models.profile import count_parameters


def _meta(name: str, **kwargs: object) -> nn.Module:
    with torch.device("meta"):
        return create_model(name, **kwargs)


@pytest.mark.parametrize(("name", "expected"), [("dsnet4", 20_780_245), ("dsnet6", 46_353_435)])
def test_paper_parameter_counts(name: str, expected: int) -> None:
    raw, unique = count_parameters(_meta(name))
    assert raw == unique == expected


@pytest.mark.parametrize(
    ("block", "channels", "expected"),
    [("residual", 20, 7_360), ("mbconv", 20, 2_645), ("mbconv", 160, 133_160), ("dense", 20, 34_080),
     ("ada_rk", 20, 7_362), ("conv", 20, 7_320)],
)
def test_atomic_block_counts(block: str, channels: int, expected: int) -> None:
    assert sum(p.numel() for p in BLOCKS.get(block)(channels).parameters()) == expected


def test_reduction_block_count() -> None:
    assert sum(p.numel() for p in ReductionBlock(80, 160).parameters()) == 359_840


def test_layout_matches_authors() -> None:
    model = _meta("dsnet4")
    kinds = ["R" if isinstance(s, ReductionBlock) else "M" for s in model.stages]
    assert "".join(kinds) == "MMMMMRMMMMMRMMMMM"
    assert model.num_features == 160 and model.fc.in_features == 160


def test_attention_in_state_dict_and_gets_gradient() -> None:
    model = create_model("dsnet_tiny")
    assert "attention" in model.state_dict()
    assert model.attention.shape == (3, 4)
    network, attention = split_parameters(model)
    assert attention == [model.attention]
    assert all(p is not model.attention for p in network)
    model(torch.rand(2, 3, 32, 32)).sum().backward()
    assert model.attention.grad is not None and model.attention.grad.abs().sum() > 0


def test_softmax_rows_sum_to_one() -> None:
    model = create_model("dsnet_tiny", attention_init="uniform", attention_scale=3.0)
    weights = model.attention_weights()
    torch.testing.assert_close(weights.sum(1), torch.ones(3))
    assert weights.std() > 0.01  # a scale of 3 makes them far from uniform


@pytest.mark.parametrize("mode", ["fixed", "same_block"])
def test_fixed_modes_have_no_trainable_attention(mode: str) -> None:
    model = create_model("dsnet_tiny", attention=mode, blocks=("dense",) if mode == "same_block" else None)
    assert "attention" in model.state_dict()
    assert model.attention_parameters() == []
    assert split_parameters(model)[1] == []
    assert all(n != "attention" for n, _ in model.named_parameters())
    torch.testing.assert_close(model.attention_weights(), torch.full((3, 4), 0.25))
    if mode == "same_block":
        assert all(names == ["dense"] * 4 for names in model.block_names)


@pytest.mark.parametrize("init", ATTENTION_INITS)
def test_initialisations_scale(init: str) -> None:
    torch.manual_seed(0)
    small = create_model("dsnet_tiny", attention_init=init).attention.detach()
    torch.manual_seed(0)
    large = create_model("dsnet_tiny", attention_init=init, attention_scale=1.0).attention.detach()
    torch.testing.assert_close(large * 1e-3, small)
    torch.manual_seed(0)
    paper = create_model("dsnet_tiny", attention_init=init, attention_init_params="paper").attention.detach()
    assert paper.abs().max() < 0.05  # at the authors' 1e-3 scale the paper's distributions stay near 1/N
    if init != "lognormal":  # the two parameter sets differ for the lognormal only
        torch.testing.assert_close(paper, small)


# (distribution, parameters) -> mean and std of log(sample) for the lognormal, mean and variance otherwise
_MOMENTS = {
    ("normal", "authors"): (0.0, 1.0), ("uniform", "authors"): (0.5, 1 / 12), ("exponential", "authors"): (1.0, 1.0),
    ("geometric", "authors"): (2.0, 2.0), ("lognormal", "authors"): (1.0, 2.0), ("lognormal", "paper"): (0.0, 1.0),
}


@pytest.mark.parametrize(("init", "params"), sorted(_MOMENTS))
def test_distributions_take_the_authors_or_the_papers_parameters(init: str, params: str) -> None:
    """The authors draw `log_normal_()` with torch's defaults, LogNormal(1, 2); the paper's text says (0, 1)."""
    torch.manual_seed(0)
    sample = init_attention((400, 500), init, scale=1.0, params=params).double()
    if init == "lognormal":
        sample = sample.log()
        first, second = sample.mean(), sample.std()
    else:
        first, second = sample.mean(), sample.var()
    assert (float(first), float(second)) == pytest.approx(_MOMENTS[(init, params)], abs=0.02)


def test_the_authors_lognormal_starts_far_from_uniform_on_dsnet4() -> None:
    """The expected largest |w - 1/4| of DS-Net-4's (15, 4) weights at scale 1e-3: about 0.09 with the authors'
    lognormal, about 0.002 with the paper's (and with every other distribution)."""
    def spread(**kwargs: object) -> float:
        values = []
        for seed in range(50):
            torch.manual_seed(seed)
            weights = torch.softmax(init_attention((15, 4), **kwargs), dim=1)  # type: ignore[arg-type]
            values.append(float((weights - 0.25).abs().max()))
        return sum(values) / len(values)

    assert spread(kind="lognormal") > 0.05
    assert spread(kind="lognormal", params="paper") < 0.005
    assert all(spread(kind=kind) < 0.005 for kind in ATTENTION_INITS if kind != "lognormal")


def test_given_attention_weights_load(tmp_path) -> None:
    given = torch.arange(12, dtype=torch.float32).view(3, 4) / 10
    model = create_model("dsnet_tiny", attention_init=given)
    torch.testing.assert_close(model.attention.detach(), given)
    source = create_model("dsnet_tiny", attention_init="uniform", attention_scale=1.0)
    torch.save({"model": source.state_dict()}, tmp_path / "ckpt.pt")
    loaded = create_model("dsnet_tiny", attention_init=str(tmp_path / "ckpt.pt"))
    torch.testing.assert_close(loaded.attention.detach(), source.attention.detach())
    with pytest.raises(ConfigError, match="shape"):
        create_model("dsnet_tiny", attention_init=torch.zeros(2, 4))


def test_eval_mode_is_deterministic() -> None:
    model = create_model("dsnet_tiny").eval()
    x = torch.rand(4, 3, 32, 32)
    torch.testing.assert_close(model(x), model(x), rtol=0, atol=0)


def test_ada_rk_closed_form() -> None:
    torch.manual_seed(0)
    block = AdaRKBlock(4, a21=0.3, b10=-0.4).double().eval()
    x = torch.randn(2, 4, 6, 6, dtype=torch.float64)
    c = torch.sigmoid(block.b10)
    fx = block.branch(x)
    expected = block.bn_out(x + (1 - 1 / (2 * c)) * fx + block.branch(x + c * fx) / (2 * c))
    torch.testing.assert_close(block(x), expected)
    block(x).sum().backward()
    assert block.a21.grad.abs() < 1e-10  # α cancels: a21 is trainable but dead, as in the authors' code
    assert block.b10.grad.abs() > 1e-6


def test_dense_block_averages() -> None:
    torch.manual_seed(0)
    block = DenseBlock(4).double().eval()
    x = torch.randn(2, 4, 5, 5, dtype=torch.float64)
    f1 = block.layers[0](x)
    f2 = block.layers[1](torch.cat([x, f1], 1))
    torch.testing.assert_close(block(x), block.bn_out(torch.stack([x, f1, f2]).mean(0)))


def test_user_registered_block_works_inside_dsnet() -> None:
    name = "test_scaled_identity"
    if name not in BLOCKS:

        @register_block(name)
        class ScaledIdentity(nn.Module):
            def __init__(self, channels: int) -> None:
                super().__init__()
                self.scale = nn.Parameter(torch.ones(channels, 1, 1))

            def forward(self, x: torch.Tensor) -> torch.Tensor:
                return x * self.scale

    model = create_model("dsnet_tiny", blocks=("residual", name))
    assert model.attention.shape == (3, 2)
    out = model(torch.rand(2, 3, 32, 32))
    out.sum().backward()
    assert model.stages[0].blocks[1].scale.grad is not None


def test_unknown_names_give_clear_errors() -> None:
    with pytest.raises(UnknownNameError, match="did you mean 'dsnet4'"):
        create_model("dsnet44")
    with pytest.raises(UnknownNameError, match="did you mean 'residual'"):
        create_model("dsnet_tiny", blocks=("residul", "dense"))
    with pytest.raises(ConfigError, match="attention mode"):
        create_model("dsnet_tiny", attention="gumbel")
    with pytest.raises(ValueError, match="registered already"):
        register_block("dense")(DenseBlock)


def test_block_subset_and_width_matching() -> None:
    model = create_model("dsnet_tiny", blocks=("residual", "dense", "ada_rk"))
    assert model.attention.shape == (3, 3)
    target = count_parameters(_meta("dsnet4"))[0]
    width = width_for_params(target, width_factor=4, depth=15, blocks=("residual", "dense"))
    matched = count_parameters(_meta("dsnet4", blocks=("residual", "dense"), width=width))[0]
    for other in (width - 1, width + 1):
        worse = count_parameters(_meta("dsnet4", blocks=("residual", "dense"), width=other))[0]
        assert abs(worse - target) >= abs(matched - target)
    auto = _meta("dsnet4", blocks=("residual", "dense"), target_params=target)
    assert count_parameters(auto)[0] == matched


def test_pruning_keeps_top_blocks_with_renormalised_fixed_weights() -> None:
    logits = torch.tensor([[3.0, 0.0, 2.0, 1.0], [0.0, 1.0, 2.0, 3.0], [1.0, 0.5, 5.0, 0.0]])
    model = create_model("dsnet_tiny", attention_init=logits)
    cfg = pruned_config(model, keep=2)
    pruned = create_model("dsnet_tiny", **cfg)
    assert pruned.block_names == [["residual", "dense"], ["ada_rk", "dense"], ["dense", "residual"]]
    assert pruned.attention_parameters() == []
    full = torch.softmax(logits, 1)
    expected = full[0, [0, 2]] / full[0, [0, 2]].sum()
    torch.testing.assert_close(pruned.attention_weights()[0], expected)
    assert pruned(torch.rand(2, 3, 32, 32)).shape == (2, 10)


def test_registry_lists_dsnet_models() -> None:
    assert {"dsnet4", "dsnet6", "dsnet_small"} <= set(list_models())
    assert "dsnet_tiny" not in list_models() and "dsnet_tiny" in list_models(include_tiny=True)
    assert list_models("dsnet[46]") == ["dsnet4", "dsnet6"]
