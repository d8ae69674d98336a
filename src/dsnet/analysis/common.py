"""Shared pieces of the analyses: finding and loading a trained model, test batches, and writing PNG + CSV."""

from __future__ import annotations

import csv
import io
import logging
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from dsnet.errors import CheckpointError, ConfigError
from dsnet.training.metrics import read_metrics

__all__ = [
    "resolve_checkpoint",
    "load_model",
    "run_label",
    "read_metrics",
    "sample_batches",
    "write_csv",
    "check_outputs",
    "new_figure",
    "save_figure",
]

logger = logging.getLogger(__name__)


def resolve_checkpoint(path: str | Path) -> Path:
    """The checkpoint file for `path`: the file itself, or a run folder's `selected.pt` (else `last.pt`).

    A reproduce cell folder (holding `train/`) is accepted too.

    Raises:
        CheckpointError: nothing loadable is there; the message lists what the folder holds.
    """
    from dsnet.runtime.run_folder import TrainingRun

    path = Path(path)
    if path.is_file():
        return path
    if path.is_dir():
        for folder in (path, path / "train"):
            found = TrainingRun(folder).best_checkpoint()
            if found is not None:
                return found
        held = ", ".join(sorted(p.name for p in path.iterdir())[:8]) or "nothing"
        raise CheckpointError(f"{path} holds no selected.pt or last.pt (it holds {held}); give a run folder of "
                              "`dsnet train` or a .pt checkpoint")
    raise CheckpointError(f"{path} does not exist; give a run folder of `dsnet train` or a .pt checkpoint")


def load_model(path: str | Path, device: str | torch.device = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """Rebuilds the model of a dsnet checkpoint (or run folder) with its weights: fp32, eval mode.

    Loading is `dsnet.evaluation.load_model_for_evaluation` (what `dsnet eval` uses); parameters are left
    trainable so that analyses can take gradients with respect to them.

    Returns:
        (model, info) where info holds "model_name", "dataset", "config" (the run's resolved recipe), "epoch"
        (the checkpoint's next epoch to train) and "checkpoint".

    Raises:
        CheckpointError: a missing, corrupt or foreign checkpoint.
    """
    from dsnet.evaluation import load_model_for_evaluation

    file = resolve_checkpoint(path)
    loaded = load_model_for_evaluation(file, device=device)
    model = loaded.model.requires_grad_(True)
    info = {"model_name": loaded.model_name, "dataset": loaded.dataset, "config": loaded.config,
            "epoch": loaded.epoch, "checkpoint": str(file)}
    return model, info


def run_label(path: str | Path) -> str:
    """A short name for a run in legends: the run folder's name (the cell folder's for `.../train`)."""
    path = Path(path)
    if path.is_file():
        path = path.parent
    return path.parent.name if path.name == "train" else path.name


def sample_batches(
    dataset: str, data_dir: str | Path, *, n_examples: int, batch_size: int, seed: int = 0, split: str = "test",
    device: str | torch.device = "cpu",
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """A seeded random subset of a split as float batches in [0, 1].

    Raises:
        DataError: the dataset files are missing (nothing is downloaded here).
        ConfigError: n_examples or batch_size < 1.
    """
    from dsnet.data import load_dataset, to_float

    if n_examples < 1 or batch_size < 1:
        raise ConfigError(f"n_examples and batch_size must be >= 1, got {n_examples} and {batch_size}")
    data = load_dataset(dataset, data_dir, split, download=False)
    generator = torch.Generator().manual_seed(seed)
    index = torch.randperm(len(data), generator=generator)[: min(n_examples, len(data))]
    subset = data.subset(index)
    batches = []
    for start in range(0, len(subset), batch_size):
        x = to_float(subset.images[start:start + batch_size]).to(device)
        y = subset.labels[start:start + batch_size].to(device)
        batches.append((x, y))
    return batches


ANALYZE_WRITER = "dsnet analyze"
_HINT = "choose another --out-dir or --name"


def check_outputs(out_dir: str | Path, name: str, writer: str = ANALYZE_WRITER) -> None:
    """Refuses, before any work, outputs `<name>.png` / `<name>.csv` that would replace another command's or a
    person's files (the analysis's `RunFolder`)."""
    from dsnet.runtime.run_folder import FolderKind, RunFolder

    RunFolder(out_dir, FolderKind(writer, "analysis", (f"{name}.png", f"{name}.csv"), taken_hint=_HINT)).check_files()


def write_csv(path: str | Path, header: Sequence[str], rows: Iterable[Sequence[Any]], *,
              writer: str = ANALYZE_WRITER) -> Path:
    """Writes a CSV file with a header row, atomically, as a file of `writer`; floats keep full precision."""
    from dsnet.runtime.ownership import write_owned

    text = io.StringIO(newline="")
    table = csv.writer(text)
    table.writerow(list(header))
    for row in rows:
        table.writerow(list(row))
    data = text.getvalue().encode("utf-8")
    return write_owned(path, lambda handle: handle.write(data), writer, hint=_HINT)


def new_figure(width: float = 6.0, height: float = 4.0) -> Any:
    """A matplotlib `Figure` drawn by the Agg backend (no pyplot state, no display), sized in inches."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height))
    return figure


def save_figure(figure: Any, path: str | Path, dpi: int = 200, *, writer: str = ANALYZE_WRITER) -> Path:
    """Saves `figure` as PNG, atomically, as a file of `writer`."""
    from dsnet.runtime.ownership import write_owned

    path = write_owned(path, lambda handle: figure.savefig(handle, dpi=dpi, bbox_inches="tight", format="png"),
                       writer, hint=_HINT)
    logger.info("wrote %s", path)
    return path
