"""The AutoAttack adapter against a direct call of the reference (`pyautoattack`) on a tiny model.

One direct call and one adapter call (16 points, 3x8x8 images, eps 2/255 so that APGD-CE does not break
everything and all four attacks run) are shared by the tests of this module; the resume test adds one more
run. The adapter's call gets the model in train mode with dropout active: it must still match the direct
call on the model in eval mode.
"""

from __future__ import annotations

import logging
import re
import warnings
from types import SimpleNamespace

import pyautoattack
import pytest
import torch
import torch.nn as nn
from dsnet_testing import small_autoattack

import dsnet.attacks.autoattack as aa_module
from dsnet.attacks import AutoAttack
from dsnet.errors import ConfigError

EPS = 2 / 255
BATCH = 8


def _mlp() -> nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return nn.Sequential(nn.Flatten(), nn.Linear(192, 32), nn.ReLU(), nn.Dropout(0.5), nn.Linear(32, 10))


def _data(model: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.rand(16, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        y = model.eval()(x).argmax(1)
    y[:3] = (y[:3] + 1) % 10  # three points wrong from the start
    return x, y


class _Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__(level=logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


@pytest.fixture(scope="module")
def runs(_one_thread):
    model, direct_model = _mlp(), _mlp()  # the same weights; each call gets its own instance
    x, y = _data(model)

    reference_logger = logging.getLogger("auto-attack")
    lines, level = _Lines(), reference_logger.level
    reference_logger.addHandler(lines)
    reference_logger.setLevel(logging.DEBUG)
    try:
        with torch.random.fork_rng(devices=[]):
            direct = pyautoattack.AutoAttack(direct_model.eval(), device="cpu", eps=EPS, seed=0, version="standard")
            x_ref, y_ref = direct.run_standard_evaluation(x, y, batch_size=BATCH)
    finally:
        reference_logger.removeHandler(lines)
        reference_logger.setLevel(level)
    logged = {
        match.group(1).lower(): match.group(2)
        for match in (re.match(r"robust accuracy after (\S+): ([\d.]+%)", line) for line in lines.lines)
        if match
    }

    model.train()
    model[1].eval()  # a mixed mode; dropout (model[3]) stays in train mode
    modes = [module.training for module in model.modules()]
    rng = torch.get_rng_state()
    result = AutoAttack(eps=EPS, seed=0, batch_size=BATCH).run(model, x, y)
    return SimpleNamespace(
        model=model, direct_model=direct_model, x=x, y=y, x_ref=x_ref, robust_ref=y_ref == y, logged=logged, result=result,
        modes_before=modes, modes_after=[module.training for module in model.modules()],
        rng_before=rng, rng_after=torch.get_rng_state(),
    )


def test_same_robust_flags_and_adversarial_examples_as_the_reference(runs):
    assert torch.equal(runs.result.robust, runs.robust_ref)
    assert torch.equal(runs.result.x_adv, runs.x_ref)
    assert runs.result.robust_accuracy == runs.robust_ref.float().mean().item()


def test_every_stage_ran_and_accuracy_falls_stage_by_stage(runs):
    result = runs.result
    assert result.stages == ("apgd-ce", "apgd-t", "fab-t", "square") == result.stages_run
    accuracies = result.stage_accuracies
    assert list(result.stage_accuracy) == ["clean", *result.stages]
    assert all(later <= earlier for earlier, later in zip(accuracies, accuracies[1:]))
    assert accuracies[-1] == result.robust_accuracy
    assert 0 < result.robust_accuracy < accuracies[1] < result.clean_accuracy == 13 / 16  # not all at stage 1
    # the same numbers the reference logs after each of its attacks
    assert {stage: f"{result.stage_accuracy[stage]:.2%}" for stage in result.stages} == runs.logged


def test_per_point_record_is_consistent(runs):
    result = runs.result
    assert torch.equal(result.clean, runs.model.eval()(runs.x).argmax(1) == runs.y)
    assert torch.equal(result.robust, result.fallen_at == -1)
    assert torch.equal(~result.clean, result.fallen_at == 0)
    for number, stage in enumerate(result.stages, start=1):
        before = list(result.stage_accuracy.values())[number - 1]
        broken = (result.fallen_at == number).sum().item()
        assert result.stage_accuracy[stage] == pytest.approx(before - broken / result.n)
    changed = (result.x_adv != runs.x).flatten(1).any(1)
    assert not (changed & (result.fallen_at < 1)).any()  # only broken points carry an adversarial example
    assert (result.x_adv - runs.x).abs().max().item() <= EPS + 1e-6
    assert result.max_perturbation <= EPS + 1e-6
    assert 0.0 <= result.x_adv.min().item() and result.x_adv.max().item() <= 1.0


def test_global_rng_and_model_modes_are_untouched(runs):
    assert torch.equal(runs.rng_before, runs.rng_after)
    assert runs.modes_before == runs.modes_after


def test_result_carries_config_and_a_json_summary(runs):
    summary = runs.result.to_dict()
    assert summary["n"] == 16 and summary["robust_accuracy"] == runs.result.robust_accuracy
    assert summary["config"]["eps"] == EPS and summary["config"]["seed"] == 0
    assert summary["config"]["batch_size"] == BATCH and summary["config"]["version"] == "standard"
    assert summary["warnings"] == [] and summary["resumed"] is False


class _Interrupted(Exception):
    """Stands for a killed job."""


def test_an_interrupted_run_resumes_at_the_next_batch_with_the_same_result(runs, tmp_path, monkeypatch):
    state = tmp_path / "aa_state.pt"
    original = aa_module._STAGE_RUNNERS["apgd-t"]
    calls = []

    def interrupted(aa, x, y):
        calls.append(x.shape[0])
        if len(calls) == 2:
            raise _Interrupted
        return original(aa, x, y)

    monkeypatch.setitem(aa_module._STAGE_RUNNERS, "apgd-t", interrupted)
    attack = AutoAttack(eps=EPS, seed=0, batch_size=BATCH)
    with pytest.raises(_Interrupted):
        attack.run(runs.model, runs.x, runs.y, state_path=state)
    assert state.exists() and len(calls) == 2
    saved = torch.load(state, weights_only=True)  # tensors and plain values only
    assert (saved["completed"], saved["current"], saved["next_batch"]) == (["apgd-ce"], "apgd-t", 1)
    monkeypatch.setitem(aa_module._STAGE_RUNNERS, "apgd-t", original)

    resumed = attack.run(runs.model, runs.x, runs.y, state_path=state)
    assert resumed.resumed
    assert torch.equal(resumed.robust, runs.result.robust)
    assert torch.equal(resumed.x_adv, runs.result.x_adv)
    assert torch.equal(resumed.fallen_at, runs.result.fallen_at)
    assert resumed.stage_accuracy == runs.result.stage_accuracy

    # A finished state answers at once with the same result.
    again = attack.run(runs.model, runs.x, runs.y, state_path=str(state))
    assert torch.equal(again.x_adv, runs.result.x_adv) and again.stage_accuracy == runs.result.stage_accuracy

    # The state belongs to these settings and these points only.
    with pytest.raises(ConfigError, match="eps"):
        AutoAttack(eps=EPS / 2, seed=0, batch_size=BATCH).run(runs.model, runs.x, runs.y, state_path=state)
    with pytest.raises(ConfigError, match="data_sha256"):
        attack.run(runs.model, runs.x.flip(0), runs.y.flip(0), state_path=state)
    other = _mlp()
    with torch.no_grad():
        other[1].bias.add_(1.0)
    with pytest.raises(ConfigError, match="model_sha256"):
        attack.run(other, runs.x, runs.y, state_path=state)
    state.write_bytes(b"not a state")
    with pytest.raises(ConfigError, match="cannot be read"):
        attack.run(runs.model, runs.x, runs.y, state_path=state)


class _ProbabilityModel(nn.Module):
    """Outputs softmax probabilities over 3 classes and warns from inside its forward."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(192, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        warnings.warn("a warning that is not AutoAttack's", UserWarning, stacklevel=2)
        return self.linear(x.flatten(1)).softmax(dim=1)


def test_check_warnings_are_captured_and_other_warnings_pass_through():
    model = _ProbabilityModel()
    x = torch.rand(4, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        y = (model(x).argmax(1) + 1) % 3  # every point wrong: the checks run, no attack does
    reference_logger = logging.getLogger("auto-attack")
    reference_logger.disabled = True  # as after a logging config with disable_existing_loggers
    rng = torch.get_rng_state()
    try:
        with pytest.warns(UserWarning, match="not AutoAttack's"):
            result = AutoAttack(eps=EPS, batch_size=4).run(model, x, y)
        assert reference_logger.disabled
    finally:
        reference_logger.disabled = False
    assert any("probability distribution" in message for message in result.warnings)
    assert any("target classes" in message for message in result.warnings)
    assert not any("not AutoAttack's" in message for message in result.warnings)
    assert result.stages_run == () and result.robust_accuracy == 0.0
    assert result.stage_accuracies == [0.0] * 5
    assert torch.equal(result.x_adv, x)
    assert torch.equal(torch.get_rng_state(), rng)
    with pytest.warns(UserWarning):
        assert torch.equal(AutoAttack(eps=EPS, batch_size=4)(model, x, y), x)


def test_bad_input_and_settings():
    with pytest.raises(ValueError, match="no points"):
        AutoAttack(eps=EPS).run(_mlp(), torch.zeros(0, 3, 8, 8), torch.zeros(0, dtype=torch.long))
    with pytest.raises(ConfigError, match="device"):
        AutoAttack(eps=EPS, device="nonsense")
    with pytest.raises(ConfigError, match="seed"):
        AutoAttack(eps=EPS, seed=-1)


def test_rand_version_runs_its_own_attacks_and_matches_the_reference():
    model = _mlp().eval()
    x, y = _data(model)
    x, y = x[:8], y[:8]
    with torch.random.fork_rng(devices=[]):
        direct = pyautoattack.AutoAttack(model, device="cpu", eps=4 / 255, seed=3, version="rand")
        _, y_ref = direct.run_standard_evaluation(x, y, batch_size=8)
    attack = AutoAttack(eps=4 / 255, seed=3, version="rand", batch_size=8)
    result = attack.run(model, x, y)
    assert result.stages == ("apgd-ce", "apgd-dlr")
    assert result.config["stage_settings"]["apgd-ce"]["eot_iter"] == 20
    assert torch.equal(result.robust, y_ref == y)
    assert 0 < result.robust.sum() < result.clean.sum()  # something to find, something left
    assert attack.label == "AutoAttack (rand)"


def test_parameters_get_no_gradient_and_stay_trainable(runs):
    """FAB calls backward(): the direct call of the reference leaves `.grad` filled on its trainable model; the
    adapter freezes the parameters, so they get none and stay trainable."""
    assert "fab-t" in runs.result.stages_run
    assert any(p.grad is not None for p in runs.direct_model.parameters())
    assert all(p.grad is None for p in runs.model.parameters())
    assert all(p.requires_grad for p in runs.model.parameters())


def test_batch_size_defaults_to_the_references():
    assert AutoAttack(eps=EPS).batch_size == 250
    assert AutoAttack(eps=EPS).config()["batch_size"] == 250


@pytest.mark.parametrize(("norm", "eps"), [("L2", 0.15), ("L1", 2.0)])
def test_l2_and_l1_flags_and_examples_equal_a_direct_call_of_the_reference(norm, eps, _one_thread):
    """Both sides run with the same small budgets (the comparison is of the adapter, not of the budgets)."""
    model, direct_model = _mlp(), _mlp()
    x, y = _data(model)
    with small_autoattack(), torch.random.fork_rng(devices=[]):
        direct = pyautoattack.AutoAttack(direct_model.eval(), device="cpu", norm=norm, eps=eps, seed=0,
                                         version="standard")
        x_ref, y_ref = direct.run_standard_evaluation(x, y, batch_size=BATCH)
        result = AutoAttack(eps=eps, seed=0, batch_size=BATCH, norm=norm).run(model, x, y)
    assert torch.equal(result.robust, y_ref == y)
    assert torch.equal(result.x_adv, x_ref)
    assert result.robust.sum() < result.clean.sum()  # the attack broke something: the comparison says something
    size = (result.x_adv - x).flatten(1).norm(p=1 if norm == "L1" else 2, dim=1)
    assert size.max().item() <= eps * (1 + 1e-5) and result.max_perturbation == pytest.approx(size.max().item())
