"""accuracy / correct_flags / robust_flags: batching, only still-correct points attacked, fp32, no trace."""

from __future__ import annotations

import pytest
import torch

from dsnet.attacks import PGD, accuracy, correct_flags, robust_flags
from dsnet.errors import ConfigError


def test_accuracy_and_correct_flags_match_a_direct_forward(make_cnn, images, labels_of):
    model, x = make_cnn(), images(21)
    y = labels_of(model, x)
    y[::3] = (y[::3] + 1) % 10
    expected = model(x).argmax(1) == y
    for batch_size in (1, 4, 21, 100):
        assert torch.equal(correct_flags(model, x, y, batch_size), expected)
        assert accuracy(model, x, y, batch_size) == pytest.approx(expected.float().mean().item())


class RecordingAttack:
    """Returns a fixed perturbation and remembers which labels it was asked to attack."""

    def __init__(self, shift: float) -> None:
        self.shift = shift
        self.batches: list[int] = []
        self.seen: list[torch.Tensor] = []

    def __call__(self, model, x, y):
        self.batches.append(x.shape[0])
        self.seen.append(x.clone())
        return (x + self.shift).clamp(0, 1)


def test_robust_flags_attacks_only_correct_points_in_batches(make_cnn, images, labels_of):
    model, x = make_cnn(), images(20)
    y = labels_of(model, x)
    wrong = torch.zeros(20, dtype=torch.bool)
    wrong[[1, 5, 6, 13]] = True
    y[wrong] = (y[wrong] + 1) % 10
    attack = RecordingAttack(shift=0.0)
    flags = robust_flags(model, attack, x, y, batch_size=6)
    assert torch.equal(flags, ~wrong)  # an attack that changes nothing leaves exactly the correct points
    assert attack.batches == [6, 6, 4]
    assert torch.equal(torch.cat(attack.seen), x[~wrong])


def test_robust_flags_is_at_most_clean_and_matches_attacking_everything(make_cnn, images, labels_of):
    model, x = make_cnn(), images(24)
    y = labels_of(model, x)
    y[:4] = (y[:4] + 1) % 10
    attack = PGD(eps=2 / 255, step_size=0.5 / 255, steps=5)
    flags = robust_flags(model, attack, x, y, batch_size=8)
    clean = correct_flags(model, x, y)
    assert not (flags & ~clean).any()
    # Attacking the correct points by hand, in the same batches, gives the same flags.
    correct_index = clean.nonzero().squeeze(1)
    manual = torch.zeros_like(flags)
    for start in range(0, correct_index.numel(), 8):
        index = correct_index[start : start + 8]
        manual[index] = model(attack(model, x[index], y[index])).argmax(1) == y[index]
    assert torch.equal(flags, manual)


def test_helpers_run_in_fp32_under_autocast_and_leave_no_trace(make_cnn, images, labels_of):
    model, x = make_cnn(), images(8)
    y = labels_of(model, x)
    dtypes: list[torch.dtype] = []
    handle = model.head.register_forward_hook(lambda module, args, output: dtypes.append(output.dtype))
    model.train()
    rng = torch.get_rng_state()
    try:
        with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
            robust_flags(model, PGD(eps=2 / 255, step_size=0.5 / 255, steps=2), x, y, batch_size=4)
            accuracy(model, x, y)
    finally:
        handle.remove()
    assert dtypes and set(dtypes) == {torch.float32}
    assert model.training and all(module.training for module in model.modules())
    assert torch.equal(torch.get_rng_state(), rng)


def test_bad_inputs(make_cnn):
    model = make_cnn()
    with pytest.raises(ValueError, match="x.float\\(\\) / 255"):
        accuracy(model, torch.zeros(2, 3, 8, 8, dtype=torch.uint8), torch.zeros(2, dtype=torch.long))
    with pytest.raises(ConfigError, match="batch_size"):
        accuracy(model, torch.zeros(2, 3, 8, 8), torch.zeros(2, dtype=torch.long), batch_size=0)
