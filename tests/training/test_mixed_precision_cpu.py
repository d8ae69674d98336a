"""Mixed precision through the library's training step on a CPU, and the evaluator's fp32 / TF32 math switches.

bf16 and fp16 autocast both run on CPUs in torch 2.13 (fp16 through oneDNN, with `GradScaler("cpu")`), so the
trainer's AMP code path (`resolve_precision` -> `training_step`) is tested here without a GPU: that it really
computes in the reduced dtype, stays close to fp32 from the same weights and data, and that the fp16 scaler skips
a step whose gradients are not finite. `benchmarks/gpu_check.py` measures the same on a GPU over hundreds of steps.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterator

import pytest
import torch
from torch import nn

from dsnet.models import create_model, split_parameters
from dsnet.objectives import build_objective
from dsnet.runtime.precision import MATH_MODES, evaluation_math, math_mode, resolve_precision
from dsnet.training.trainer import training_step

CPU = torch.device("cpu")
LOSS_RTOL = 0.01
"""Relative distance of each step's loss to fp32. Measured over 20 seeds (three AT steps of the tiny DS-Net, two
attack steps each): at most 0.10 % for bf16 (8 significant bits) and 0.085 % for fp16 (11 bits; the sign steps of
the attack and Adam's normalised steps carry both to the same level). 1 % leaves a 10x margin on a shared CPU."""
UPDATE_RTOL = 0.4
"""‖w_reduced − w_fp32‖ / ‖w_fp32 − w_start‖ after three steps: how far the reduced-precision weights are
from fp32's, relative to fp32's own move. Measured 0.10-0.24 over 6 seeds; a lost update gives 1.0, and half the
learning rate about 0.5, which the loss check alone would not see (it moves the third loss by as little as 0.02 %)."""


def _batch(seed: int = 0, n: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, 32, 32, generator=generator), torch.randint(0, 10, (n,), generator=generator)


class _Run:
    """One copy of the tiny DS-Net trained through `training_step` in one precision."""

    def __init__(self, mode: str, model: nn.Module) -> None:
        self.model = model.train()
        self.precision = resolve_precision(mode, CPU)
        network, attention = split_parameters(model)
        self.optimizers = [torch.optim.SGD(network, lr=0.1, momentum=0.9),
                           torch.optim.Adam(attention, lr=1e-3)]
        self.scaler = self.precision.grad_scaler()
        self.objective = build_objective("at", eps=0.031, step_size=0.01, steps=2)
        self.generator = torch.Generator().manual_seed(0)

    def step(self, x: torch.Tensor, y: torch.Tensor) -> float:
        out = training_step(self.model, self.objective, x, y, optimizers=self.optimizers, scaler=self.scaler,
                            precision=self.precision, epoch=1.0, generator=self.generator)
        return float(out.loss.detach())


def _model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return create_model("dsnet_tiny", blocks=("residual", "dense", "ada_rk"))  # no drop-connect: no global draws


def _conv_output_dtypes(model: nn.Module) -> tuple[list[torch.dtype], torch.utils.hooks.RemovableHandle]:
    conv = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
    dtypes: list[torch.dtype] = []
    return dtypes, conv.register_forward_hook(lambda module, inputs, output: dtypes.append(output.dtype))


def _params(model: nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in model.parameters()]


@pytest.mark.parametrize(("mode", "dtype"), [("bf16", torch.bfloat16), ("fp16", torch.float16)])
def test_autocast_training_step_runs_in_reduced_precision_and_tracks_fp32(mode: str, dtype: torch.dtype) -> None:
    base = _model()
    reference, reduced = _Run("off", copy.deepcopy(base)), _Run(mode, copy.deepcopy(base))
    assert reference.precision.dtype is None and reduced.precision.dtype is dtype
    dtypes, hook = _conv_output_dtypes(reduced.model)
    fp32_dtypes, fp32_hook = _conv_output_dtypes(reference.model)
    losses = []
    for step in range(3):
        x, y = _batch(step)
        losses.append((reference.step(x, y), reduced.step(x, y)))
    hook.remove()
    fp32_hook.remove()

    # Every forward pass of the step (the attack's and the training pass) ran the convolution in `dtype`.
    assert len(dtypes) == 3 * (2 + 1) and set(dtypes) == {dtype}
    assert set(fp32_dtypes) == {torch.float32}
    # The master weights stay fp32, and moved as fp32's did.
    assert all(p.dtype == torch.float32 for p in reduced.model.parameters())
    start, fp32, moved = (torch.cat([p.flatten() for p in _params(m)]) for m in (base, reference.model, reduced.model))
    assert (moved - fp32).norm() < UPDATE_RTOL * (fp32 - start).norm()
    for fp32_loss, reduced_loss in losses:
        assert math.isfinite(reduced_loss)
        assert reduced_loss == pytest.approx(fp32_loss, rel=LOSS_RTOL)
    assert losses[0][0] != losses[0][1]  # not secretly the fp32 computation


def test_fp16_scaler_skips_a_step_with_an_inf_gradient_and_backs_off() -> None:
    run = _Run("fp16", _model())
    assert run.scaler.is_enabled()
    start_scale = run.scaler.get_scale()
    assert start_scale > 1.0  # 2^16: the loss is scaled up so that small fp16 gradients do not flush to zero

    # An overflow in the backward pass, as fp16 meets it: the gradient of the logits becomes inf (in the training
    # pass only, which runs in train mode; the attack runs in eval mode and stays finite), so every parameter's
    # gradient is inf or NaN. The scaler must skip both optimisers and halve its scale.
    def overflow(module: nn.Module, inputs: object, logits: torch.Tensor) -> None:
        if module.training:
            logits.register_hook(lambda grad: torch.full_like(grad, math.inf))

    before = _params(run.model)
    poison = run.model.register_forward_hook(overflow)
    x, y = _batch(0)
    assert math.isfinite(run.step(x, y))  # the loss itself is finite: only the gradient overflowed
    poison.remove()
    assert all(not torch.isfinite(p.grad).all() for p in run.model.parameters() if p.grad is not None)
    assert all(torch.equal(a, b) for a, b in zip(before, _params(run.model)))
    assert all(not optimizer.state for optimizer in run.optimizers)  # no momentum or Adam moments either
    assert run.scaler.get_scale() == start_scale * 0.5

    # A normal step then updates the weights, at the backed-off scale (it grows only after 2000 clean steps).
    run.step(*_batch(1))
    after = _params(run.model)
    assert not all(torch.equal(a, b) for a, b in zip(before, after))
    assert all(torch.isfinite(p).all() for p in after)
    assert run.scaler.get_scale() == start_scale * 0.5


def test_bf16_needs_no_scaler_and_fp32_autocast_does_nothing() -> None:
    assert not resolve_precision("bf16", CPU).grad_scaler().is_enabled()
    assert not resolve_precision("off", CPU).grad_scaler().is_enabled()
    assert resolve_precision("auto", CPU).dtype is None  # CPU training stays fp32 unless asked (SPEC §4)
    with resolve_precision("off", CPU).autocast():
        assert not torch.is_autocast_enabled("cpu")


# ----------------------------------------------------------------------------------------- evaluation math
_CALLER = {"cuda.matmul": "tf32", "cudnn.conv": "none", "cudnn.rnn": "ieee", "mkldnn.matmul": "bf16",
           "mkldnn.conv": "tf32", "mkldnn.rnn": "none"}
"""Unusual settings of a caller, every backend different from what either mode sets, so a restore is visible."""


def _set(settings: dict[str, str]) -> None:
    for path, value in settings.items():
        backend = torch.backends
        for part in path.split("."):
            backend = getattr(backend, part)
        backend.fp32_precision = value


@pytest.fixture
def caller_settings() -> Iterator[dict[str, str]]:
    saved = math_mode()
    if set(saved) != set(_CALLER):
        pytest.skip(f"torch {torch.__version__} has no per-backend fp32_precision switches")
    _set(_CALLER)
    try:
        yield dict(_CALLER)
    finally:
        _set(saved)


@pytest.mark.parametrize(("mode", "gpu"), [("fp32", "ieee"), ("tf32", "tf32")])
def test_evaluation_math_sets_the_backends_and_restores_the_callers(caller_settings: dict[str, str], mode: str,
                                                                    gpu: str) -> None:
    expected = {path: gpu if path.startswith("cud") else "ieee" for path in caller_settings}
    with torch.autocast("cpu", dtype=torch.bfloat16), evaluation_math(mode, "cpu") as inside:
        assert inside == math_mode() == expected  # TF32 is for NVIDIA's libraries only; oneDNN stays IEEE
        assert not torch.is_autocast_enabled("cpu")  # evaluation is fp32 even inside a caller's autocast
    assert math_mode() == caller_settings

    with pytest.raises(RuntimeError, match="inside"), evaluation_math(mode, "cpu"):
        raise RuntimeError("an error inside the block")
    assert math_mode() == caller_settings


def test_tf32_mode_computes_what_fp32_does_on_a_cpu() -> None:
    conv = nn.Conv2d(3, 8, 3)
    x = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    outputs = {}
    for mode in MATH_MODES:
        with evaluation_math(mode, "cpu"), torch.no_grad():
            outputs[mode] = conv(x)
    assert torch.equal(outputs["fp32"], outputs["tf32"])


@pytest.mark.parametrize("mode", ["bf16", "FP32", "ieee", ""])
def test_an_unknown_math_mode_is_refused(mode: str) -> None:
    with pytest.raises(ValueError, match="fp32, tf32"):
        evaluation_math(mode, "cpu")


def test_the_eval_config_offers_exactly_the_math_modes_and_refuses_others() -> None:
    from dsnet.errors import ConfigError
    from dsnet.evaluation.config import MATH_CHOICES, EvalConfig

    assert MATH_CHOICES == MATH_MODES  # spelt twice so that `dsnet -h` imports no torch
    with pytest.raises(ConfigError, match="--math must be one of 'fp32', 'tf32', got 'bf16'"):
        EvalConfig(checkpoint="model.pt", math="bf16")
