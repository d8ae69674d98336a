"""Gradient variance of the last layer across batches (the paper's Figure 7b).

Var = E_b ‖g_b − ḡ‖², where g_b is the gradient of the loss on batch b with respect to the last fully
connected layer (weight and bias, flattened) and ḡ is the mean over the batches. As the paper does (after
Shu et al., 2020), the batch gradients stand in for per-example gradients and their mean for the expected
gradient.

Losses: "clean" (CE on clean images) and "adversarial" (CE on PGD examples) run in eval mode on fixed,
seeded training batches; "objective" runs the run's own training objective (e.g. TRADES β = 6, as in the
paper's figure) in train mode, as training does, on a throw-away copy of the model.

Given a run folder that kept per-epoch checkpoints (`train.keep_epoch_checkpoints`), `all_epochs=True`
measures every `epoch-NNNN.pt` and plots the variance against the epoch; otherwise each model contributes
one bar.
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
from dsnet.analysis.common import (
    load_model,
    new_figure,
    resolve_checkpoint,
    run_label,
    sample_batches,
    save_figure,
    write_csv,
)
from dsnet.errors import ConfigError

__all__ = ["last_linear", "gradient_variance", "analyze_gradient_variance"]

logger = logging.getLogger(__name__)


def last_linear(model: nn.Module) -> nn.Linear:
    """The classifier: `forward_head`'s `fc`/`linear`/`classifier` if it is a Linear, else the last Linear.

    Raises:
        ConfigError: the model has no `nn.Linear`.
    """
    for attr in ("fc", "linear", "classifier", "head"):
        layer = getattr(model, attr, None)
        if isinstance(layer, nn.Linear):
            return layer
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ConfigError(f"{type(model).__name__} has no linear layer to measure the gradient variance of")
    return linears[-1]


def gradient_variance(
    model: nn.Module, batches: Sequence[tuple[torch.Tensor, torch.Tensor]], *, loss: str = "clean",
    attack: Any | None = None, objective: Any | None = None, seed: int = 0,
) -> tuple[float, list[float]]:
    """E_b ‖g_b − ḡ‖² of the last linear layer's gradient over `batches`.

    Args:
        model: the network (its parameters' .grad are overwritten; weights are not changed).
        batches: at least two (x, y) batches.
        loss: "clean", "adversarial" (needs `attack`) or "objective" (needs a training `objective`).
        attack: `attack(model, x, y) -> x_adv` for the adversarial loss.
        objective: a `dsnet.training` objective for loss="objective".
        seed: seed of the objective's generator.

    Returns:
        (variance, per-batch gradient norms).

    Raises:
        ConfigError: fewer than two batches, or a loss without what it needs.
    """
    if len(batches) < 2:
        raise ConfigError(f"the gradient variance needs at least 2 batches, got {len(batches)}")
    if loss == "adversarial" and attack is None or loss == "objective" and objective is None:
        raise ConfigError(f"loss={loss!r} needs {'an attack' if loss == 'adversarial' else 'an objective'}")
    if loss not in ("clean", "adversarial", "objective"):
        raise ConfigError(f"loss must be clean, adversarial or objective, got {loss!r}")
    layer = last_linear(model)
    layer_params = [p for p in layer.parameters()]
    generator = torch.Generator(device=batches[0][0].device).manual_seed(seed)
    was_training = model.training
    model.train(loss == "objective")
    gradients = []
    try:
        for x, y in batches:
            if loss == "objective":
                value = objective(model, x, y, epoch=1.0, generator=generator).loss
            else:
                if loss == "adversarial":
                    x = attack(model, x, y)
                value = F.cross_entropy(model(x), y)
            grads = torch.autograd.grad(value, layer_params)
            gradients.append(torch.cat([g.detach().flatten().double() for g in grads]))
    finally:
        model.train(was_training)
    stack = torch.stack(gradients)
    mean = stack.mean(0, keepdim=True)
    variance = float(((stack - mean) ** 2).sum(1).mean())
    return variance, [float(g.norm()) for g in gradients]


def _epoch_checkpoints(source: Path) -> list[tuple[int, Path]]:
    from dsnet.runtime.run_folder import TrainingRun

    return TrainingRun(resolve_checkpoint(source).parent).epoch_checkpoints()


def analyze_gradient_variance(
    sources: Sequence[str | Path], data_dir: str | Path, out_dir: str | Path, *, loss: str = "adversarial",
    n_batches: int = 10, batch_size: int = 128, eps: float | None = None, steps: int = 10, seed: int = 0,
    all_epochs: bool = False, device: str | None = None, name: str = "gradient_variance",
) -> AnalysisResult:
    """Gradient variance of the last layer for each model (or each saved epoch), as a bar or line plot.

    Args:
        sources: run folders or checkpoints.
        data_dir: dataset folder; batches come from the training split (seeded).
        out_dir: where `<name>.png` and `<name>.csv` go.
        loss: "clean", "adversarial" (PGD-`steps`, CE) or "objective" (the run's training objective).
        n_batches: batches to compare (>= 2).
        batch_size: images per batch.
        eps: PGD radius for loss="adversarial" (default: the run's training ε).
        steps: PGD steps for loss="adversarial".
        seed: seed of the batches, the attack and the objective.
        all_epochs: measure every `epoch-NNNN.pt` of each run and plot against the epoch.
        device: default cuda when available.
        name: file stem.

    Returns:
        The PNG and CSV paths and `{model: [(epoch, variance), ...]}`.
    """
    from dsnet.attacks import PGD
    from dsnet.objectives import build_objective

    if not sources:
        raise ConfigError("give at least one run folder or checkpoint")
    if n_batches < 2:
        raise ConfigError(f"n_batches must be >= 2, got {n_batches}")
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    series: dict[str, list[tuple[int | None, float]]] = {}
    rows = []
    for source in sources:
        checkpoints = _epoch_checkpoints(Path(source)) if all_epochs else []
        if all_epochs and not checkpoints:
            raise ConfigError(f"{source} kept no epoch-NNNN.pt checkpoints; train with "
                              "--set train.keep_epoch_checkpoints=true, or drop --all-epochs")
        targets = checkpoints or [(None, resolve_checkpoint(source))]
        label = run_label(source)
        while label in series:
            label += "'"
        series[label] = []
        for epoch, path in targets:
            model, state = load_model(path, device=device)
            config = state.get("config") or {}
            dataset = state["dataset"]
            batches = sample_batches(dataset, data_dir, n_examples=n_batches * batch_size, batch_size=batch_size,
                                   seed=seed, split="train", device=device)
            batches = [b for b in batches if len(b[1]) == batch_size] or batches
            if len(batches) < 2:
                raise ConfigError(f"the {dataset} training split gives fewer than 2 batches of {batch_size}; "
                                  "lower --batch-size")
            attack = objective = None
            if loss == "adversarial":
                radius = eps if eps is not None else float((config.get("objective") or {}).get("eps", 0.031))
                attack = PGD(eps=radius, step_size=radius / 4, steps=steps, seed=seed)
            elif loss == "objective":
                objective = build_objective(**(config.get("objective") or {"name": "standard"}))
            variance, norms = gradient_variance(model, batches, loss=loss, attack=attack, objective=objective,
                                                seed=seed)
            if epoch is None and state.get("epoch") is not None:
                epoch = int(state["epoch"]) - 1  # a checkpoint stores the next epoch to train
            series[label].append((epoch, variance))
            rows.append([label, "" if epoch is None else epoch, f"{variance:.8g}", len(batches), batch_size, loss,
                         f"{sum(norms) / len(norms):.6g}"])
    csv_path = write_csv(Path(out_dir) / f"{name}.csv",
                         ["model", "epoch", "variance", "n_batches", "batch_size", "loss", "mean_grad_norm"], rows)

    figure = new_figure(6.0, 3.6)
    ax = figure.add_subplot(1, 1, 1)
    if all_epochs:
        for label, points in series.items():
            ax.plot([e for e, _ in points], [v for _, v in points], marker="o", markersize=3, label=label)
        ax.set_xlabel("epoch")
        ax.legend(loc="best")
    else:
        labels = list(series)
        ax.bar(range(len(labels)), [series[k][0][1] for k in labels], color="tab:orange")
        ax.set_xticks(range(len(labels)))
        ax.set_xticklabels(labels, rotation=25, ha="right", fontsize=8)
        ax.set_xlabel("model")
    ax.set_ylabel("gradient variance, last layer")
    ax.set_yscale("log")
    ax.grid(alpha=0.3, which="both")
    ax.set_title(f"Gradient variance across {n_batches} batches of {batch_size} ({loss} loss)", fontsize=10)
    png_path = save_figure(figure, Path(out_dir) / f"{name}.png")
    return AnalysisResult(png_path, csv_path, {k: [list(p) for p in v] for k, v in series.items()})
