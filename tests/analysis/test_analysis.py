"""Each analysis writes a readable PNG and a CSV of the numbers behind it, from tiny trained runs."""

from __future__ import annotations

import csv
import logging
from pathlib import Path

import pytest
import torch
from dsnet_testing import tiny_recipe

from dsnet.analysis.attention import analyze_attention, read_attention
from dsnet.analysis.gradient_variance import analyze_gradient_variance, gradient_variance
from dsnet.analysis.landscape import analyze_landscape, filter_normalized_direction, loss_landscape
from dsnet.analysis.lipschitz import analyze_lipschitz, jacobian_spectral_norm
from dsnet.cli import main
from dsnet.config import config_from_dict
from dsnet.errors import CheckpointError, ConfigError
from dsnet.models import create_model
from dsnet.training.trainer import train

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def runs(cifar10_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Two seeds of a tiny DS-Net, 2 epochs of 2 steps, every epoch's checkpoint kept."""
    root = tmp_path_factory.mktemp("analysis-runs")
    out = []
    for seed in (0, 1):
        recipe = tiny_recipe(train={"epochs": 2, "seed": seed, "max_steps_per_epoch": 2,
                                    "keep_epoch_checkpoints": True},
                             objective={"steps": 1}, model={"kwargs": {"attention_scale": 1.0}})
        train(config_from_dict(recipe), cifar10_dir, root / f"seed{seed}")
        out.append(root / f"seed{seed}")
    return out


def _check_png(path: Path) -> None:
    import matplotlib.image

    assert path.read_bytes()[:8] == PNG_SIGNATURE
    image = matplotlib.image.imread(path)
    assert image.ndim == 3 and image.shape[0] > 200 and image.shape[1] > 300


def _read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def test_attention_plot_and_csv_with_spread_over_seeds(runs: list[Path], tmp_path: Path) -> None:
    result = analyze_attention(runs, tmp_path)
    _check_png(result.png)
    rows = _read_csv(result.csv)
    assert len(rows) == 3 * 4  # modules x blocks
    assert [r["block"] for r in rows[:4]] == ["residual", "mbconv", "dense", "ada_rk"]
    for module in ("1", "2", "3"):
        assert sum(float(r["mean"]) for r in rows if r["module"] == module) == pytest.approx(1.0, abs=1e-5)
    assert all(r["n_runs"] == "2" and len(r["values"].split()) == 2 for r in rows)
    assert any(float(r["std"]) > 0 for r in rows)  # two seeds, different initial weights
    # the logged weights of the selected epoch equal the checkpoint's softmaxed logits
    logged = read_attention(runs[0], epoch=2)
    stored = read_attention(runs[0])
    assert torch.allclose(logged.weights, stored.weights, atol=1e-6)


def test_attention_refuses_a_model_without_attention(cifar10_dir: Path, tmp_path: Path) -> None:
    recipe = tiny_recipe(model={"name": "resnet_tiny"}, train={"epochs": 1, "max_steps_per_epoch": 1},
                         objective={"name": "standard"})
    train(config_from_dict(recipe), cifar10_dir, tmp_path / "resnet")
    with pytest.raises(CheckpointError, match="not a DS-Net"):
        analyze_attention([tmp_path / "resnet"], tmp_path / "out")


def test_filter_normalised_directions_match_filter_norms() -> None:
    model = create_model("dsnet_tiny")
    direction = filter_normalized_direction(model, torch.Generator().manual_seed(0))
    for name, param in model.named_parameters():
        d = direction[name]
        if param.dim() <= 1 or name == "attention":
            assert torch.count_nonzero(d) == 0, name
        else:
            assert torch.allclose(d.flatten(1).norm(dim=1), param.detach().flatten(1).norm(dim=1), rtol=1e-4), name


def test_loss_landscape_restores_the_weights_and_centres_on_them(cifar10_dir: Path) -> None:
    model = create_model("dsnet_tiny").eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x, y = torch.rand(8, 3, 32, 32), torch.randint(0, 10, (8,))
    alphas, betas, losses = loss_landscape(model, [(x, y)], grid=3, span=0.5)
    assert losses.shape == (3, 3) and alphas.tolist() == [-0.5, 0.0, 0.5]
    with torch.no_grad():
        centre = torch.nn.functional.cross_entropy(model(x), y).item()
    assert losses[1, 1].item() == pytest.approx(centre, rel=1e-5)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_landscape_png_and_csv(runs: list[Path], cifar10_dir: Path, tmp_path: Path) -> None:
    result = analyze_landscape(runs, cifar10_dir, tmp_path, grid=3, span=0.5, loss="adversarial", n_examples=8,
                               batch_size=8, steps=1)
    _check_png(result.png)
    rows = _read_csv(result.csv)
    assert len(rows) == 2 * 3 * 3 and set(rows[0]) == {"model", "alpha", "beta", "loss"}
    assert {r["model"] for r in rows} == {"seed0", "seed1"}
    assert all(float(r["loss"]) > 0 for r in rows)


def test_gradient_variance_is_zero_for_identical_batches() -> None:
    model = create_model("dsnet_tiny").eval()
    batch = (torch.rand(4, 3, 32, 32), torch.randint(0, 10, (4,)))
    variance, norms = gradient_variance(model, [batch, batch, batch])
    assert variance == pytest.approx(0.0, abs=1e-12) and len(norms) == 3 and norms[0] > 0
    other = (torch.rand(4, 3, 32, 32), torch.randint(0, 10, (4,)))
    assert gradient_variance(model, [batch, other])[0] > 0


def test_gradient_variance_png_and_csv_per_model_and_per_epoch(runs: list[Path], cifar10_dir: Path,
                                                               tmp_path: Path) -> None:
    result = analyze_gradient_variance(runs, cifar10_dir, tmp_path, loss="objective", n_batches=2, batch_size=8)
    _check_png(result.png)
    rows = _read_csv(result.csv)
    assert len(rows) == 2 and all(float(r["variance"]) > 0 and r["epoch"] == "2" for r in rows)
    per_epoch = analyze_gradient_variance(runs[:1], cifar10_dir, tmp_path / "epochs", loss="clean", n_batches=2,
                                          batch_size=8, all_epochs=True)
    _check_png(per_epoch.png)
    assert [r["epoch"] for r in _read_csv(per_epoch.csv)] == ["1", "2"]


def test_power_iteration_finds_the_spectral_norm_of_a_linear_map() -> None:
    layer = torch.nn.Linear(6, 4)
    estimate = jacobian_spectral_norm(layer, torch.randn(3, 6), iters=50)
    assert torch.allclose(estimate, torch.linalg.matrix_norm(layer.weight.detach(), 2).expand(3), rtol=1e-4)


def test_lipschitz_png_and_csv(runs: list[Path], cifar10_dir: Path, tmp_path: Path) -> None:
    result = analyze_lipschitz(runs[:1], cifar10_dir, tmp_path, n_examples=4, iters=3)
    _check_png(result.png)
    rows = _read_csv(result.csv)
    assert len(rows) == 3 * (4 + 2)  # per module: 4 blocks, the module itself and the Lemma 3.2 bound
    assert all(float(r["lipschitz_mean"]) > 0 for r in rows)
    data = result.data["seed0"]
    assert len(data["blocks"]) == 3 and len(data["blocks"][0]) == 4


def test_analyze_command(runs: list[Path], cifar10_dir: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.setattr(logging.getLogger("dsnet"), "handlers", [])  # main() adds a handler on captured stderr
    assert main(["analyze", "attention", *map(str, runs), "--out-dir", str(tmp_path)]) == 0
    assert (tmp_path / "attention.png").is_file() and "attention.csv" in capsys.readouterr().out
    assert main(["analyze", "lipschitz", str(runs[0]), "--out-dir", str(tmp_path)]) == 1  # no --data-dir
    with pytest.raises(ConfigError):
        analyze_gradient_variance(runs, cifar10_dir, tmp_path, n_batches=1)
