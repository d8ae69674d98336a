"""The fast path changes speed, not results: channels_last, frozen parameters during attacks, compiled blocks
(with a clean eager fallback) and bf16 attacks give the plain path's logits, losses and gradients within float
tolerance.

Compilation is expensive on a CPU, so the equivalence of compiled blocks is tested with the `aot_eager` backend
(dynamo capture and AOTAutograd, no code generation), and inductor once, on a 3-block DS-Net (~30 s, marked slow,
skipped without a C++ compiler).
"""

from __future__ import annotations

import copy
import logging
import os
import shutil
from pathlib import Path

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from dsnet_testing import tiny_recipe

from dsnet.attacks.core import frozen_parameters, project, sign_gradient_ascent
from dsnet.config import config_from_dict
from dsnet.models import create_model
from dsnet.models.dsnet import DSNet
from dsnet.runtime.checkpoint import load_checkpoint
from dsnet.training import fast_path
from dsnet.training.fast_path import EagerFallback, compile_regions, resolve_channels_last, resolve_compile
from dsnet.training.trainer import train

TOL = {"rtol": 1e-4, "atol": 1e-5}


def _tiny() -> nn.Module:
    torch.manual_seed(0)
    return create_model("dsnet_tiny")


def _batch(n: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    return torch.rand(n, 3, 32, 32, generator=generator), torch.randint(0, 10, (n,), generator=generator)


def _attack_view(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
    """What an attack step sees: eval-mode logits, the summed CE and its gradient w.r.t. the input."""
    model.eval()
    x = x.clone().requires_grad_(True)
    with frozen_parameters(model), torch.enable_grad():
        logits = model(x)
        loss = F.cross_entropy(logits, y, reduction="sum")
        (grad,) = torch.autograd.grad(loss, x)
    return {"logits": logits.detach(), "loss": loss.detach(), "input_grad": grad}


def _training_view(model: nn.Module, raw: nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
    """What a training step sees: train-mode loss, every parameter gradient and the updated BN statistics."""
    raw.train()
    raw.zero_grad(set_to_none=True)
    torch.manual_seed(7)  # the same drop-connect masks
    loss = F.cross_entropy(model(x), y)
    loss.backward()
    view = {"loss": loss.detach()}
    view.update({f"grad:{n}": p.grad for n, p in raw.named_parameters() if p.grad is not None})
    view.update({f"buffer:{n}": b for n, b in raw.named_buffers() if b.is_floating_point()})
    return view


def _assert_close(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], **TOL, msg=lambda m, key=key: f"{key}: {m}")


def test_defaults_channels_last_everywhere_compile_on_gpu_only() -> None:
    cpu, gpu = torch.device("cpu"), torch.device("cuda", 0)
    assert resolve_channels_last(None, cpu) and resolve_channels_last(None, gpu)
    assert not resolve_channels_last(False, gpu)
    assert resolve_compile("auto", gpu) and not resolve_compile("auto", cpu)
    assert resolve_compile(True, cpu) and not resolve_compile(False, gpu)
    assert config_from_dict({}).train.compile == "auto"


def test_channels_last_gives_the_same_logits_loss_and_gradients() -> None:
    plain = _tiny()
    fast = copy.deepcopy(plain).to(memory_format=torch.channels_last)
    x, y = _batch()
    x_cl = x.contiguous(memory_format=torch.channels_last)
    _assert_close(_attack_view(fast, x_cl, y), _attack_view(plain, x, y))
    _assert_close(_training_view(fast, fast, x_cl, y), _training_view(plain, plain, x, y))


def test_attack_freezes_parameters_only_while_it_runs() -> None:
    model = _tiny()
    model.stem.bias.requires_grad_(False)  # frozen by the user: must stay frozen
    before = {n: p.requires_grad for n, p in model.named_parameters()}
    x, y = _batch()
    seen: list[bool] = []

    def loss_fn(logits: torch.Tensor, x_adv: torch.Tensor) -> torch.Tensor:
        seen.append(any(p.requires_grad for p in model.parameters()))
        return F.cross_entropy(logits, y, reduction="none")

    generator = torch.Generator().manual_seed(5)
    x_adv = sign_gradient_ascent(model, x, loss_fn, eps=0.03, step_size=0.01, steps=3, generator=generator)
    assert seen == [False, False, False]
    assert {n: p.requires_grad for n, p in model.named_parameters()} == before
    assert all(p.grad is None for p in model.parameters())

    # The same iterates as a textbook loop that leaves the parameters alone.
    generator = torch.Generator().manual_seed(5)
    reference = (x + torch.rand(x.shape, generator=generator).mul_(0.06).sub_(0.03)).clamp(0, 1)
    model.eval()
    for _ in range(3):
        reference.requires_grad_(True)
        (grad,) = torch.autograd.grad(F.cross_entropy(model(reference), y, reduction="sum"), reference)
        reference = project(reference.detach() + 0.01 * grad.sign(), x, 0.03)
    torch.testing.assert_close(x_adv, reference, rtol=0, atol=1e-6)

    def failing(logits: torch.Tensor, x_adv: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        sign_gradient_ascent(model, x, failing, eps=0.03, step_size=0.01, steps=1)
    assert {n: p.requires_grad for n, p in model.named_parameters()} == before


def test_regions_are_the_blocks_in_containers_and_keep_state_dict_keys() -> None:
    model = _tiny()
    keys = list(model.state_dict())
    regions = compile_regions(model, backend="eager")
    assert regions == [f"stages.{i}" for i in range(len(model.stages))]
    assert list(model.state_dict()) == keys
    lone = nn.Conv2d(3, 3, 3)
    assert compile_regions(lone, backend="eager") == [""]
    fast_path.uncompile(model)
    assert not EagerFallback(model).compiled


def test_compiled_blocks_give_the_same_logits_loss_and_gradients() -> None:
    torch._dynamo.reset()
    plain = _tiny()
    raw = copy.deepcopy(plain).to(memory_format=torch.channels_last)
    compile_regions(raw, backend="aot_eager")
    fast = EagerFallback(raw)
    x, y = _batch()
    x_cl = x.contiguous(memory_format=torch.channels_last)
    _assert_close(_attack_view(fast, x_cl, y), _attack_view(plain, x, y))
    _assert_close(_training_view(fast, raw, x_cl, y), _training_view(plain, plain, x, y))
    assert fast.compiled


def _failing_backend(graph_module: torch.fx.GraphModule, example_inputs: list) -> None:
    raise RuntimeError("no C++ compiler in this test")


def test_failed_compilation_falls_back_to_eager_with_one_warning(caplog: pytest.LogCaptureFixture) -> None:
    torch._dynamo.reset()
    plain = _tiny().eval()
    raw = copy.deepcopy(plain)
    compile_regions(raw, backend=_failing_backend)
    fast = EagerFallback(raw)
    x, _ = _batch()
    with caplog.at_level(logging.WARNING, logger="dsnet"):
        out = fast(x)
        again = fast(x)
    torch.testing.assert_close(out, plain(x), rtol=0, atol=0)
    torch.testing.assert_close(again, out, rtol=0, atol=0)
    warnings = [r for r in caplog.records if "torch.compile failed" in r.getMessage()]
    assert len(warnings) == 1 and "eager" in warnings[0].getMessage()
    assert not fast.compiled


def test_a_model_error_is_not_mistaken_for_a_compiler_failure() -> None:
    torch._dynamo.reset()
    raw = _tiny()
    compile_regions(raw, backend=_failing_backend)
    with pytest.raises(RuntimeError, match="channels"):
        EagerFallback(raw)(torch.rand(2, 5, 32, 32))  # 5 input channels: eager fails too


def test_training_proceeds_in_eager_when_compilation_fails(cifar10_dir: Path, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch,
                                                          caplog: pytest.LogCaptureFixture) -> None:
    torch._dynamo.reset()
    monkeypatch.setattr(fast_path, "COMPILE_BACKEND", _failing_backend)
    settings = {"epochs": 1, "max_steps_per_epoch": 2}
    with caplog.at_level(logging.WARNING, logger="dsnet"):
        train(config_from_dict(tiny_recipe(train={**settings, "compile": True})), cifar10_dir, tmp_path / "c")
    assert sum("torch.compile failed" in r.getMessage() for r in caplog.records) == 1
    train(config_from_dict(tiny_recipe(train={**settings, "compile": False})), cifar10_dir, tmp_path / "e")
    a = load_checkpoint(tmp_path / "c" / "last.pt")["model"]
    b = load_checkpoint(tmp_path / "e" / "last.pt")["model"]
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=1e-6, msg=key)


def test_bf16_attack_keeps_fp32_iterates_and_accurate_input_gradients() -> None:
    """Under the trainer's bf16 autocast the model runs in bf16, but the iterate, its gradient and the projection
    stay fp32: the ε-ball holds exactly and the gradient direction stays close to fp32's."""
    model = _tiny().eval()
    x, y = _batch(8)
    fp32 = _attack_view(model, x, y)["input_grad"]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        bf16 = _attack_view(model, x, y)["input_grad"]
        x_adv = sign_gradient_ascent(model, x, lambda z, _: F.cross_entropy(z, y, reduction="none"), eps=0.031,
                                     step_size=0.007, steps=3)
    assert bf16.dtype == torch.float32 and x_adv.dtype == torch.float32
    assert float((x_adv - x).abs().max()) <= 0.031 + 1e-7
    assert float(F.cosine_similarity(bf16.flatten(), fp32.flatten(), dim=0)) > 0.99
    assert float((bf16.sign() == fp32.sign()).float().mean()) > 0.9


def _has_cpp_compiler() -> bool:
    return any(shutil.which(c) for c in (os.environ.get("CXX", ""), "g++", "clang++") if c)


@pytest.mark.slow
@pytest.mark.skipif(not _has_cpp_compiler(), reason="inductor needs a C++ compiler on a CPU")
def test_inductor_compiled_attack_step_matches_eager() -> None:
    """One real compilation (~30 s on a 2-core CPU): a DS-Net with one residual module and two reductions."""
    torch._dynamo.reset()
    torch.manual_seed(0)
    plain = DSNet(width=4, width_factor=1, depth=1, blocks=("residual",))
    raw = copy.deepcopy(plain).to(memory_format=torch.channels_last)
    assert compile_regions(raw) == ["stages.0", "stages.1", "stages.2"]
    fast = EagerFallback(raw)
    x, y = _batch()
    x_cl = x.contiguous(memory_format=torch.channels_last)
    _assert_close(_attack_view(fast, x_cl, y), _attack_view(plain, x, y))
    assert fast.compiled, "inductor fell back to eager"
