"""Non-finite values are errors where they are first seen, and the output probe and a user's factory fail cleanly.

Promise (README "Guarantees"): NaN or infinite weights are refused when they are loaded, NaN or infinite
`--normalize` values when the command line is parsed, and NaN logits or a NaN iterate inside any attack stop the
evaluation with one line naming the attack and the batch, the finished attacks kept. The model is probed with a batch
of different images before any data is read; a model that collapses the batch is refused, one that ignores its
input is flagged in the report; whatever a factory does (raise, `sys.exit`, return something else) is one line.
Every model here is a real module run through `dsnet eval`, not a patched function.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn as nn
from faultkit import (
    assert_one_line_error,
    fresh_cli_logging,  # noqa: F401 - fixture
    run_cli,
    train_one_epoch,
)

from dsnet.attacks.core import gradient_ascent
from dsnet.attacks.metrics import perturbation_stats
from dsnet.evaluation.sanity import check_perturbations

pytestmark = pytest.mark.usefixtures("fresh_cli_logging")


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict:
    return train_one_epoch(tmp_path_factory.mktemp("nonfinite"))


def _eval(trained: dict, out: Path, *extra: object) -> list:
    return ["eval", "--data-dir", trained["data"], "--out-dir", out, "--no-sanity", "--no-progress", *extra]


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_weights_are_refused_when_loaded(trained: dict, tmp_path: Path, capsys, value: float) -> None:
    state = torch.load(trained["run"] / "last.pt", weights_only=True)
    state["model"]["stem.weight"][0, 0, 0, 0] = value
    broken = tmp_path / "broken.pt"
    torch.save(state, broken)
    out = tmp_path / "eval"
    code, _, err = run_cli(_eval(trained, out, "--checkpoint", broken), capsys)
    assert_one_line_error(code, err, str(broken), "NaN or infinite", "stem.weight", "1 of")
    assert not (out / "report.json").exists()


@pytest.mark.parametrize("mean", ["nan,0.5,0.5", "0.5,inf,0.5"])
def test_non_finite_normalisation_is_a_usage_error(trained: dict, tmp_path: Path, capsys, mean: str) -> None:
    with pytest.raises(SystemExit) as stop:
        run_cli(_eval(trained, tmp_path, "--checkpoint", trained["run"] / "last.pt", "--normalize", mean,
                      "0.2,0.2,0.2"), capsys)
    assert stop.value.code == 2
    assert "expected finite numbers" in capsys.readouterr().err


def test_a_zero_std_is_refused_before_loading(trained: dict, tmp_path: Path, capsys) -> None:
    code, _, err = run_cli(_eval(trained, tmp_path, "--checkpoint", trained["run"] / "last.pt", "--normalize",
                                 "0.5,0.5,0.5", "0.2,0,0.2"), capsys)
    assert_one_line_error(code, err, "--normalize", "stds > 0", "std 0.0")


OFF_GRID_NAN = '''import torch
import torch.nn as nn


class OffGridNaN(nn.Module):
    """A classifier that returns NaN for any image off the 8-bit grid (every attacked image)."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(3072, 10))

    def forward(self, x):
        off = (x * 255 - torch.round(x * 255)).abs().amax(dim=(1, 2, 3)) > 1e-4
        return torch.where(off[:, None], torch.full_like(self.net(x), float("nan")), self.net(x))


def build() -> nn.Module:
    torch.manual_seed(0)
    return OffGridNaN()
'''


def test_nan_logits_inside_an_attack_stop_the_evaluation(trained: dict, tmp_path: Path, capsys) -> None:
    (tmp_path / "off_grid.py").write_text(OFF_GRID_NAN)
    out = tmp_path / "eval"
    argv = _eval(trained, out, "--model-factory", f"{tmp_path / 'off_grid.py'}:build", "--dataset", "cifar10",
                 "--attacks", "clean", "fgsm", "pgd", "--batch-size", "4")
    code, _, err = run_cli(argv, capsys)
    message = assert_one_line_error(code, err, "FGSM:", "NaN or infinite", "batch 1", "evaluated points")
    assert "the finished metrics (clean) are kept" in message
    state = json.loads((out / "eval_state.json").read_text())
    assert list(state["results"]) == ["clean"] and not (out / "report.json").exists()


def test_a_nan_gradient_moves_the_iterate_to_nan_not_nowhere() -> None:
    """sign(NaN) is 0 in torch: a NaN loss must not look like an attack that found nothing to do."""
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 3))
    x = torch.full((2, 3, 2, 2), 0.5)

    def loss(logits: torch.Tensor, x_adv: torch.Tensor) -> torch.Tensor:
        return logits.sum(dim=1) * torch.sqrt(x_adv.sum(dim=(1, 2, 3)) - 100)  # sqrt of a negative: NaN

    x_adv = gradient_ascent(model, x, loss, eps=0.1, step_size=0.05, steps=2, start="none")
    assert torch.isnan(x_adv).all()


def test_the_perturbation_check_fails_on_a_nan_point() -> None:
    x = torch.zeros(3, 3, 4, 4)
    x_adv = x + 0.01
    x_adv[1, 0, 0, 0] = float("nan")
    check = check_perturbations({"pgd": perturbation_stats([(x, x_adv)], torch.device("cpu"), 0.031)},
                                {"pgd": "PGD-20"}, 0.031)
    assert check.status == "failed" and "1 NaN" in check.message


COLLAPSING = '''import torch.nn as nn


class MeanOfBatch(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(3072, 10))

    def forward(self, x):
        return self.net(x).mean(dim=0, keepdim=True)  # one row for any batch


class Constant(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.logits = nn.Parameter(nn.init.normal_(nn.Parameter(__import__("torch").zeros(10))))

    def forward(self, x):
        return self.logits.expand(x.shape[0], 10)


def collapsing() -> nn.Module:
    return MeanOfBatch()


def constant() -> nn.Module:
    return Constant()
'''


def test_the_probe_refuses_a_batch_collapsing_model_and_flags_a_constant_one(trained: dict, tmp_path: Path,
                                                                             capsys) -> None:
    (tmp_path / "odd.py").write_text(COLLAPSING)
    out = tmp_path / "eval"
    code, _, err = run_cli(_eval(trained, out, "--model-factory", f"{tmp_path / 'odd.py'}:collapsing", "--dataset",
                                 "cifar10", "--attacks", "clean", "fgsm"), capsys)
    assert_one_line_error(code, err, "returns (1, 10) for a batch of 4 images", "one row per image")
    assert "loaded cifar10" not in err  # refused before any data was read

    code, _, err = run_cli(_eval(trained, out, "--model-factory", f"{tmp_path / 'odd.py'}:constant", "--dataset",
                                 "cifar10", "--attacks", "clean", "fgsm"), capsys)
    assert code == 0, err
    report = json.loads((out / "report.json").read_text())
    assert any("same logits to 4 different images" in w for w in report["warnings"])
    assert "**Warning:** the model gave the same logits" in (out / "report.md").read_text()


FACTORIES = '''import sys
import torch.nn as nn


def exits(width: int = 4):
    sys.exit(0)


def type_error(width: int = 4):
    return nn.Linear(width, "ten")  # a TypeError inside the factory, not in its arguments


def not_a_module(width: int = 4):
    return {"width": width}
'''


@pytest.mark.parametrize("function, kwargs, fragments", [
    ("exits", "{}", ("exits", "called sys.exit(0)")),
    ("type_error", "{}", ("raised TypeError", "empty(): argument 'size'")),
    ("type_error", '{"depth": 3}', ("does not take --model-kwargs", '"depth": 3', "it takes width")),
    ("not_a_module", "{}", ("returned a dict, not a torch.nn.Module",)),
])
def test_whatever_a_factory_does_is_one_line(trained: dict, tmp_path: Path, capsys, function: str, kwargs: str,
                                             fragments: tuple[str, ...]) -> None:
    (tmp_path / "factories.py").write_text(FACTORIES)
    code, _, err = run_cli(_eval(trained, tmp_path / "eval", "--model-factory", f"{tmp_path / 'factories.py'}:{function}",
                                 "--model-kwargs", kwargs, "--dataset", "cifar10"), capsys)
    message = assert_one_line_error(code, err, *fragments)
    if function == "type_error" and kwargs == "{}":
        assert "--model-kwargs" not in message  # the user's bug, not their arguments


def test_a_factory_file_that_exits_on_import_is_one_line(trained: dict, tmp_path: Path, capsys) -> None:
    (tmp_path / "bye.py").write_text("import sys\nsys.exit(3)\n")
    code, _, err = run_cli(_eval(trained, tmp_path / "eval", "--model-factory", f"{tmp_path / 'bye.py'}:build",
                                 "--dataset", "cifar10"), capsys)
    assert_one_line_error(code, err, "importing", "bye.py", "called sys.exit(3)")
