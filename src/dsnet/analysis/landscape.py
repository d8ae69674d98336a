"""Loss landscape along two filter-normalised random directions (the paper's Figure 7a; Li et al., 2018).

f(α, β) = L(W* + α·δ + β·η), where δ and η are random Gaussian directions with the same shapes as the
weights, rescaled filter by filter so that each filter of δ has the norm of the matching filter of W*
("filter normalisation", Li, Xu, Taylor, Studer & Goldstein, NeurIPS 2018, arXiv:1712.09913). As in their
default (`--xignore biasbn`), one-dimensional tensors (biases, BN affine parameters) get a zero direction, and
so do DS-Net's attention logits: the landscape is over the network weights. BN running statistics are
buffers and stay fixed; the model is evaluated in eval mode.

The loss is the mean cross-entropy on a fixed, seeded set of test images, either clean or adversarial: in
the adversarial case every grid point is attacked afresh with PGD (CE, uniform start) against the perturbed
weights, which is the robust loss the model was trained to minimise.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from dsnet.analysis.attention import AnalysisResult
from dsnet.analysis.common import load_model, new_figure, run_label, sample_batches, save_figure, write_csv
from dsnet.errors import ConfigError

__all__ = ["filter_normalized_direction", "loss_landscape", "analyze_landscape"]

logger = logging.getLogger(__name__)


def filter_normalized_direction(model: nn.Module, generator: torch.Generator, skip: Sequence[str] = ("attention",)
                                ) -> dict[str, torch.Tensor]:
    """A random direction in weight space, filter-normalised to the model's weights.

    Args:
        model: the network at W*.
        generator: CPU generator for the Gaussian draws (the direction is the same on every device).
        skip: parameter names that get a zero direction (besides all 1-D tensors).

    Returns:
        parameter name -> direction tensor (same shape, device and dtype as the parameter).
    """
    direction = {}
    for name, param in model.named_parameters():
        if param.dim() <= 1 or name in skip or name.split(".")[-1] in skip:
            direction[name] = torch.zeros_like(param)
            continue
        d = torch.randn(param.shape, generator=generator, dtype=torch.float32).to(param)
        w = param.detach()
        # One filter = one slice along dim 0 (an output channel of a conv, a row of a linear layer).
        d_norm = d.flatten(1).norm(dim=1).clamp_min(1e-10)
        w_norm = w.flatten(1).norm(dim=1)
        scale = (w_norm / d_norm).view(-1, *([1] * (param.dim() - 1)))
        direction[name] = d * scale
    return direction


def _loss_at(model: nn.Module, batches: Sequence[tuple[torch.Tensor, torch.Tensor]], attack: Any | None) -> float:
    total, count = 0.0, 0
    for x, y in batches:
        if attack is not None:
            x = attack(model, x, y)
        with torch.no_grad():
            total += float(F.cross_entropy(model(x), y, reduction="sum"))
        count += len(y)
    return total / max(count, 1)


def loss_landscape(
    model: nn.Module, batches: Sequence[tuple[torch.Tensor, torch.Tensor]], *, grid: int = 21, span: float = 1.0,
    attack: Any | None = None, seed: int = 0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The loss on a grid × grid lattice of (α, β) in [−span, span]², around the model's weights.

    Args:
        model: a trained network; its weights are restored afterwards (also on error).
        batches: (x, y) batches of images in [0, 1].
        grid: points per axis (odd numbers include the trained weights at the centre).
        span: half-width of the lattice in units of the filter-normalised directions.
        attack: None for the clean loss, or `attack(model, x, y) -> x_adv` (e.g. `dsnet.attacks.PGD`).
        seed: seed of the two directions.

    Returns:
        (alphas (grid,), betas (grid,), losses (grid, grid) indexed [alpha, beta]).

    Raises:
        ConfigError: grid < 2 or span <= 0.
    """
    if grid < 2 or span <= 0:
        raise ConfigError(f"the landscape needs grid >= 2 and span > 0, got grid={grid}, span={span}")
    generator = torch.Generator().manual_seed(seed)
    delta = filter_normalized_direction(model, generator)
    eta = filter_normalized_direction(model, generator)
    params = dict(model.named_parameters())
    original = {name: p.detach().clone() for name, p in params.items()}
    alphas = torch.linspace(-span, span, grid)
    betas = torch.linspace(-span, span, grid)
    losses = torch.empty(grid, grid, dtype=torch.float64)
    was_training = model.training
    model.eval()
    try:
        for i, a in enumerate(alphas.tolist()):
            for j, b in enumerate(betas.tolist()):
                with torch.no_grad():
                    for name, p in params.items():
                        p.copy_(original[name] + a * delta[name] + b * eta[name])
                losses[i, j] = _loss_at(model, batches, attack)
            logger.debug("landscape row %d/%d done", i + 1, grid)
    finally:
        with torch.no_grad():
            for name, p in params.items():
                p.copy_(original[name])
        model.train(was_training)
    return alphas, betas, losses


def analyze_landscape(
    sources: Sequence[str | Path], data_dir: str | Path, out_dir: str | Path, *, grid: int = 21, span: float = 1.0,
    loss: str = "adversarial", n_examples: int = 256, batch_size: int = 128, eps: float | None = None,
    steps: int = 10, step_size: float | None = None, seed: int = 0, device: str | None = None,
    name: str = "landscape",
) -> AnalysisResult:
    """3-D loss surfaces of one or more trained models side by side (Figure 7a).

    Args:
        sources: run folders or checkpoints.
        data_dir: dataset folder (each model's own dataset, test split).
        out_dir: where `<name>.png` and `<name>.csv` go.
        grid: points per axis.
        span: the lattice covers [−span, span]² in direction units.
        loss: "clean" or "adversarial" (PGD against the perturbed weights at every point).
        n_examples: test images in the loss.
        batch_size: images per forward pass.
        eps: PGD radius (default: the run's training ε, else 0.031).
        steps: PGD steps.
        step_size: PGD step (default ε/4).
        seed: seed of the directions and of the image subset.
        device: default cuda when available.
        name: file stem.

    Returns:
        The PNG and CSV paths and per-model `{"alphas", "betas", "losses", "center", "sharpness"}`, where
        sharpness is the mean loss increase over the lattice relative to the centre.
    """
    from dsnet.attacks import PGD

    if loss not in ("clean", "adversarial"):
        raise ConfigError(f"loss must be clean or adversarial, got {loss!r}")
    if not sources:
        raise ConfigError("give at least one run folder or checkpoint")
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    results: dict[str, dict[str, Any]] = {}
    rows = []
    for source in sources:
        model, state = load_model(source, device=device)
        config = state.get("config") or {}
        dataset = state["dataset"]
        batches = sample_batches(dataset, data_dir, n_examples=n_examples, batch_size=batch_size, seed=seed,
                               device=device)
        attack = None
        if loss == "adversarial":
            radius = eps if eps is not None else float((config.get("objective") or {}).get("eps", 0.031))
            attack = PGD(eps=radius, step_size=step_size or radius / 4, steps=steps, seed=seed)
        alphas, betas, surface = loss_landscape(model, batches, grid=grid, span=span, attack=attack, seed=seed)
        label = run_label(source)
        while label in results:
            label += "'"
        centre = float(surface[grid // 2, grid // 2]) if grid % 2 else float(surface.min())
        results[label] = {"alphas": alphas.tolist(), "betas": betas.tolist(), "losses": surface.tolist(),
                          "center": centre, "sharpness": float((surface - centre).mean())}
        for i, a in enumerate(alphas.tolist()):
            for j, b in enumerate(betas.tolist()):
                rows.append([label, f"{a:.6f}", f"{b:.6f}", f"{float(surface[i, j]):.6f}"])
    csv_path = write_csv(Path(out_dir) / f"{name}.csv", ["model", "alpha", "beta", "loss"], rows)

    figure = new_figure(3.6 * len(results), 3.6)
    top = max(max(max(r) for r in res["losses"]) for res in results.values())
    bottom = min(min(min(r) for r in res["losses"]) for res in results.values())
    for k, (label, res) in enumerate(results.items()):
        ax = figure.add_subplot(1, len(results), k + 1, projection="3d")
        a, b = torch.meshgrid(torch.tensor(res["alphas"]), torch.tensor(res["betas"]), indexing="ij")
        ax.plot_surface(a.numpy(), b.numpy(), torch.tensor(res["losses"]).numpy(), cmap="viridis",
                        linewidth=0, antialiased=True, vmin=bottom, vmax=top)
        ax.set_zlim(bottom, top)
        ax.set_xlabel("α (direction δ)", fontsize=8)
        ax.set_ylabel("β (direction η)", fontsize=8)
        ax.set_zlabel(f"{loss} CE loss", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.set_title(label[:40], fontsize=9)
    figure.suptitle(f"Loss landscape, filter-normalised directions ({loss} loss, {n_examples} test images)",
                    fontsize=10)
    png_path = save_figure(figure, Path(out_dir) / f"{name}.png")
    return AnalysisResult(png_path, csv_path, results)
