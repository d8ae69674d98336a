"""Learned attention weights per robust module (the paper's Figure 8), with their spread across seeds.

The weights are the softmax of `model.attention`, shape (K modules, N blocks). They are read from a
checkpoint (a run folder's `selected.pt`, else `last.pt`) or, with `epoch=`, from the `attention_weights`
that the trainer logs in `metrics.jsonl` every epoch. Given several runs (seeds), the plot shows the mean
weight of each block per module with the ± one standard deviation band shaded, as in the paper.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from dsnet.analysis.common import new_figure, read_metrics, resolve_checkpoint, run_label, save_figure, write_csv
from dsnet.errors import CheckpointError, ConfigError
from dsnet.models.atomic_blocks import block_label

__all__ = ["AttentionRun", "read_attention", "analyze_attention", "AnalysisResult"]

logger = logging.getLogger(__name__)



@dataclass(frozen=True)
class AnalysisResult:
    """Files an analysis wrote and the numbers behind them."""

    png: Path
    csv: Path
    data: dict[str, Any]


@dataclass(frozen=True)
class AttentionRun:
    """Attention weights of one run: (K, N) rows summing to 1, and the block names of each module."""

    label: str
    weights: torch.Tensor
    block_names: list[list[str]]
    epoch: int | None


def _block_names(state: dict[str, Any], shape: tuple[int, int]) -> list[list[str]]:
    """Block names per module, from the model the checkpoint describes (built on the meta device)."""
    from dsnet.models import create_model

    name = state.get("model_name")
    try:
        with torch.device("meta"):
            model = create_model(name, num_classes=int(state.get("num_classes") or 10),
                                 **dict(state.get("model_kwargs") or {}))
        names = getattr(model, "block_names", None)
    except Exception as error:  # an unreadable init file etc.; the weights are still shown, with slot names
        logger.debug("cannot rebuild %s for block names: %s", name, error)
        names = None
    if not names or len(names) != shape[0]:
        return [[f"block {j + 1}" for j in range(shape[1])] for _ in range(shape[0])]
    return [list(row) for row in names]


def read_attention(source: str | Path, epoch: int | None = None) -> AttentionRun:
    """The attention weights of a run folder, cell folder or checkpoint.

    Args:
        source: a `dsnet train` run folder, a reproduce cell folder, or a `.pt` checkpoint.
        epoch: read this epoch's weights from `metrics.jsonl` instead of the checkpoint.

    Raises:
        CheckpointError: the source holds no DS-Net attention weights.
        ConfigError: `epoch` is not in `metrics.jsonl`.
    """
    from dsnet.runtime.checkpoint import load_checkpoint

    label = run_label(source)
    if epoch is not None:
        rows = [r for r in read_metrics(source) if r.get("epoch") == epoch and r.get("attention_weights")]
        if not rows:
            raise ConfigError(f"{source} has no attention weights for epoch {epoch} in metrics.jsonl")
        weights = torch.tensor(rows[-1]["attention_weights"], dtype=torch.float64)
        state: dict[str, Any] = {}
        try:
            state = load_checkpoint(resolve_checkpoint(source))
        except CheckpointError:
            pass
        return AttentionRun(label, weights, _block_names(state, tuple(weights.shape)) if state else
                            [[f"block {j + 1}" for j in range(weights.shape[1])] for _ in range(weights.shape[0])],
                            epoch)
    path = resolve_checkpoint(source)
    state = load_checkpoint(path)
    logits = (state.get("model") or {}).get("attention")
    if not isinstance(logits, torch.Tensor) or logits.dim() != 2:
        raise CheckpointError(f"{path} holds no attention weights: it is a {state.get('model_name', 'non-DS-Net')} "
                              "checkpoint, not a DS-Net")
    weights = torch.softmax(logits.double(), dim=1)
    return AttentionRun(label, weights, _block_names(state, tuple(weights.shape)), state.get("epoch"))


def analyze_attention(
    sources: Sequence[str | Path], out_dir: str | Path, *, epoch: int | None = None, name: str = "attention",
    title: str | None = None,
) -> AnalysisResult:
    """Plots the attention weights per module, mean ± std over the given runs (Figure 8).

    Args:
        sources: run folders or checkpoints of the same architecture (e.g. three seeds).
        out_dir: where `<name>.png` and `<name>.csv` go.
        epoch: read this epoch from `metrics.jsonl` rather than the selected checkpoint.
        name: file stem.
        title: plot title (default: the runs' names).

    Returns:
        The PNG and CSV paths and `{"mean": (K, N) list, "std": ..., "blocks": [...]}`.

    Raises:
        ConfigError: no sources, or runs whose weights have different shapes.
    """
    if not sources:
        raise ConfigError("give at least one run folder or checkpoint")
    runs = [read_attention(s, epoch) for s in sources]
    shapes = {tuple(r.weights.shape) for r in runs}
    if len(shapes) != 1:
        raise ConfigError(f"the runs have attention weights of different shapes {sorted(shapes)}; compare runs of "
                          "one architecture")
    stack = torch.stack([r.weights for r in runs])  # (R, K, N)
    mean = stack.mean(0)
    std = stack.std(0, unbiased=False) if len(runs) > 1 else torch.zeros_like(mean)
    k, n = mean.shape
    names = runs[0].block_names
    same_everywhere = all(row == names[0] for row in names)
    legend = [block_label(b) for b in names[0]] if same_everywhere else [f"slot {j + 1}" for j in range(n)]
    if same_everywhere and len(set(names[0])) < n:  # same_block models: copies of one block
        legend = [f"{label} #{j + 1}" for j, label in enumerate(legend)]

    out_dir = Path(out_dir)
    rows = []
    for i in range(k):
        for j in range(n):
            values = " ".join(f"{float(r.weights[i, j]):.6f}" for r in runs)
            rows.append([i + 1, j + 1, names[i][j], f"{float(mean[i, j]):.6f}", f"{float(std[i, j]):.6f}",
                         len(runs), values])
    csv_path = write_csv(out_dir / f"{name}.csv", ["module", "slot", "block", "mean", "std", "n_runs", "values"],
                         rows)

    figure = new_figure(6.0, 3.6)
    ax = figure.add_subplot(1, 1, 1)
    modules = list(range(1, k + 1))
    for j in range(n):
        m = mean[:, j].numpy()
        s = std[:, j].numpy()
        (line,) = ax.plot(modules, m, marker="o", markersize=3, label=legend[j])
        if len(runs) > 1:
            ax.fill_between(modules, m - s, m + s, color=line.get_color(), alpha=0.2, linewidth=0)
    ax.axhline(1.0 / n, color="grey", linestyle=":", linewidth=1, label=f"uniform 1/{n}")
    ax.set_xlabel("robust module (input → output)")
    ax.set_ylabel("attention weight (softmax)")
    ax.set_xticks(modules)
    ax.set_xlim(0.5, k + 0.5)
    ax.grid(alpha=0.3)
    ax.legend(loc="best", ncol=2)
    spread = f", mean ± std over {len(runs)} runs" if len(runs) > 1 else ""
    when = f" at epoch {epoch}" if epoch is not None else ""
    ax.set_title(title or f"Attention weights{when}: {', '.join(sorted({r.label for r in runs}))[:70]}{spread}",
                 fontsize=9)
    png_path = save_figure(figure, out_dir / f"{name}.png")
    data = {"mean": mean.tolist(), "std": std.tolist(), "blocks": names, "runs": [r.label for r in runs],
            "max_weight": float(mean.max()), "entropy": float(-(mean * mean.clamp_min(1e-12).log()).sum(1).mean())
            / math.log(n) if n > 1 else 0.0}
    return AnalysisResult(png_path, csv_path, data)
