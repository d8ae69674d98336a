"""BatchNorm running statistics are updated as the authors' code updates them (the eval-mode model depends on it).

The authors' Ada-RK block evaluates its conv unit F on x, x, x1 per training forward (F(x) appears twice in their
formula), and their reduction block applies its first BN to x once per path. With momentum 0.1 and fresh
statistics (mean 0, variance 1), one training forward must therefore leave, for a BN whose inputs were a, a, b:
mean 0.171·m(a) + 0.1·m(b) and variance 0.729 + 0.171·v(a) + 0.1·v(b), with v the unbiased per-channel variance.
`bn_updates="once"` updates every BN once per forward (a, b). Outputs and gradients do not depend on the switch.
"""

from __future__ import annotations

import copy
from collections import defaultdict

import pytest
import torch
import torch.nn as nn

from dsnet.models import create_model
from dsnet.models.atomic_blocks import AdaRKBlock, ReductionBlock, set_bn_updates


def _stats(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return x.mean((0, 2, 3)), x.var((0, 2, 3), unbiased=True)


def _record_inputs(model: nn.Module) -> dict[nn.Module, list[torch.Tensor]]:
    inputs: dict[nn.Module, list[torch.Tensor]] = defaultdict(list)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.register_forward_pre_hook(lambda m, args: inputs[m].append(args[0].detach().clone()))
    return inputs


def _expected(inputs: list[torch.Tensor], momentum: float = 0.1) -> tuple[torch.Tensor, torch.Tensor]:
    """The running mean and variance after updating fresh statistics with each input in turn."""
    mean, var = torch.zeros(inputs[0].shape[1]), torch.ones(inputs[0].shape[1])
    for x in inputs:
        m, v = _stats(x)
        mean, var = (1 - momentum) * mean + momentum * m, (1 - momentum) * var + momentum * v
    return mean, var


def test_ada_rk_branch_sees_x_x_x1_in_the_authors_order() -> None:
    torch.manual_seed(0)
    block = AdaRKBlock(6).train()
    inputs = _record_inputs(block)
    x = torch.randn(8, 6, 5, 5)
    block(x)
    for bn in (block.branch.bn1, block.branch.bn2):
        a, a_again, b = inputs[bn]
        assert torch.equal(a, a_again) and not torch.allclose(a, b)
        (m_a, v_a), (m_b, v_b) = _stats(a), _stats(b)
        torch.testing.assert_close(bn.running_mean, 0.171 * m_a + 0.1 * m_b)
        torch.testing.assert_close(bn.running_var, 0.729 + 0.171 * v_a + 0.1 * v_b)
        assert int(bn.num_batches_tracked) == 3
    (out,) = inputs[block.bn_out]
    torch.testing.assert_close(block.bn_out.running_mean, 0.1 * _stats(out)[0])
    assert torch.equal(inputs[block.branch.bn1][0], x)


def test_ada_rk_once_updates_x_then_x1() -> None:
    torch.manual_seed(0)
    block = AdaRKBlock(6).train()
    block.bn_updates = "once"
    inputs = _record_inputs(block)
    block(torch.randn(8, 6, 5, 5))
    bn = block.branch.bn1
    a, b = inputs[bn]
    torch.testing.assert_close(bn.running_mean, 0.09 * _stats(a)[0] + 0.1 * _stats(b)[0])
    torch.testing.assert_close(bn.running_var, 0.81 + 0.09 * _stats(a)[1] + 0.1 * _stats(b)[1])


@pytest.mark.parametrize(("mode", "updates"), [("authors", 2), ("once", 1)])
def test_reduction_block_first_bn_is_updated_once_per_path(mode: str, updates: int) -> None:
    torch.manual_seed(0)
    block = ReductionBlock(4, 8).train()
    block.bn_updates = mode
    x = torch.randn(8, 4, 6, 6)
    block(x)
    m, v = _stats(x)
    keep = 0.9 ** updates
    torch.testing.assert_close(block.bn1.running_mean, (1 - keep) * m)
    torch.testing.assert_close(block.bn1.running_var, keep + (1 - keep) * v)


@pytest.mark.parametrize("mode", ["authors", "once"])
def test_every_bn_of_a_dsnet_after_one_training_forward(mode: str) -> None:
    """Every BN of DS-Net equals the closed form over what it saw, and saw what the authors' code shows it."""
    torch.manual_seed(0)
    model = create_model("dsnet_tiny", bn_updates=mode).train()
    inputs = _record_inputs(model)
    model(torch.rand(8, 3, 32, 32))
    branch_bns = {bn for m in model.modules() if isinstance(m, AdaRKBlock) for bn in (m.branch.bn1, m.branch.bn2)}
    reduction_bns = {m.bn1 for m in model.modules() if isinstance(m, ReductionBlock)}
    assert branch_bns and reduction_bns
    for bn in (m for m in model.modules() if isinstance(m, nn.BatchNorm2d)):
        seen = inputs[bn]
        if mode == "authors":
            calls = 3 if bn in branch_bns else 2 if bn in reduction_bns else 1
        else:
            calls = 2 if bn in branch_bns else 1
        assert len(seen) == calls == int(bn.num_batches_tracked)
        if calls > 1 and mode == "authors":
            assert torch.equal(seen[0], seen[1])  # the second pass repeats the first input
        mean, var = _expected(seen)
        torch.testing.assert_close(bn.running_mean, mean)
        torch.testing.assert_close(bn.running_var, var)


def test_outputs_and_gradients_do_not_depend_on_the_switch() -> None:
    torch.manual_seed(0)
    authors = create_model("dsnet_tiny").train()
    once = copy.deepcopy(authors)
    set_bn_updates(once, "once")
    x = torch.rand(6, 3, 32, 32)
    outputs = []
    for model in (authors, once):
        torch.manual_seed(1)  # the same drop-connect masks for both
        out = model(x)
        out.square().sum().backward()
        outputs.append(out)
    assert torch.equal(outputs[0], outputs[1])
    for (name, a), (_, b) in zip(authors.named_parameters(), once.named_parameters()):
        assert torch.equal(a.grad, b.grad), name
    changed = [n for (n, a), (_, b) in zip(authors.named_buffers(), once.named_buffers()) if not torch.equal(a, b)]
    assert changed and all("branch" in n or "bn1" in n for n in changed)


def test_eval_mode_runs_no_extra_pass() -> None:
    model = create_model("dsnet_tiny").eval()
    inputs = _record_inputs(model)
    model(torch.rand(2, 3, 32, 32))
    branch_bns = {bn for m in model.modules() if isinstance(m, AdaRKBlock) for bn in (m.branch.bn1, m.branch.bn2)}
    assert all(len(seen) == (2 if bn in branch_bns else 1) for bn, seen in inputs.items())  # F(x) and F(x1)
    assert all(int(bn.num_batches_tracked) == 0 for bn in model.modules() if isinstance(bn, nn.BatchNorm2d))


def test_unknown_mode_is_refused() -> None:
    from dsnet.errors import ConfigError

    with pytest.raises(ConfigError, match="bn_updates must be one of authors, once"):
        create_model("dsnet_tiny", bn_updates="twice")
