"""Rebuilding a model to evaluate or export from a checkpoint.

Two kinds of file are accepted, both read with `torch.load(..., weights_only=True)`:

- a checkpoint written by `dsnet train` (`last.pt`, `selected.pt`, `epoch-NNNN.pt`): the model is rebuilt
  from the `model_name`, `model_kwargs` and `num_classes` stored in it, and the dataset and training objective
  come from its resolved config;
- a tensors-only state dict, bare or as `{"state_dict": ...}` (RobustBench's layout, our export): the
  architecture comes from `model_name` (`--model NAME`) and the dataset from `dataset` (`--dataset`).

The model comes back in fp32 and eval mode, with parameters that need no gradient (attacks differentiate the
input only). A checkpoint of another architecture raises `CheckpointError` naming both.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from dsnet.errors import CheckpointError, ConfigError, UnknownNameError
from dsnet.runtime.hashing import state_dict_sha256

__all__ = ["LoadedModel", "load_model_for_evaluation"]

logger = logging.getLogger(__name__)


@dataclass
class LoadedModel:
    """A model ready to evaluate, and what is known about it.

    Attributes:
        model: fp32, eval mode, on the requested device.
        model_name: registered architecture name.
        model_kwargs: constructor overrides it was built with.
        num_classes: size of its output.
        dataset: dataset it is evaluated on.
        trained_with: training objective, which decides the paper preset's step size.
        trained_with_source: where `trained_with` came from, in words, for the report.
        checkpoint: the file it was loaded from.
        weights_sha256: hash of the stored weights (ties reports and exports to these weights).
        epoch: the next epoch to train, as a training checkpoint stores it (`trained_epochs` is the one finished).
        config: the training run's resolved config, when there is one.
    """

    model: nn.Module
    model_name: str
    model_kwargs: dict[str, Any]
    num_classes: int
    dataset: str
    trained_with: str
    trained_with_source: str
    checkpoint: Path
    weights_sha256: str
    epoch: int | None = None
    config: dict[str, Any] = field(default_factory=dict)

    @property
    def trained_epochs(self) -> int | None:
        """The epoch whose weights these are (a checkpoint stores the next epoch to train)."""
        return self.epoch - 1 if self.epoch is not None else None

    @property
    def parameters(self) -> int:
        """Number of parameters."""
        return sum(p.numel() for p in self.model.parameters())


def _dataset_classes(dataset: str) -> int:
    from dsnet.data import DATASETS

    return DATASETS.get(dataset).num_classes


def load_model_for_evaluation(
    checkpoint: str | Path,
    *,
    model_name: str | None = None,
    dataset: str | None = None,
    trained_with: str | None = None,
    device: torch.device | str = "cpu",
) -> LoadedModel:
    """Loads a training checkpoint or a tensors-only state dict into its architecture.

    Args:
        checkpoint: a file written by `dsnet train`, or a tensors-only state dict (bare or {"state_dict": ...}).
        model_name: the architecture; required for a bare state dict; for a training checkpoint, building
            another architecture than the stored one is allowed and fails with a message naming both.
        dataset: the dataset to evaluate on; default: the checkpoint's training dataset.
        trained_with: the training objective (`at`, `trades`, ...); default: the checkpoint's.
        device: where the model goes.

    Returns:
        The model in fp32 and eval mode, with its metadata.

    Raises:
        CheckpointError: unreadable or unsafe file, no weights, or weights of another architecture.
        ConfigError: a bare state dict without `model_name` or `dataset`, or a class count that does not fit.
        UnknownNameError: an unknown model, dataset or objective name.
    """
    from dsnet.models import create_model
    from dsnet.objectives import OBJECTIVES
    from dsnet.runtime.checkpoint import load_checkpoint, load_model_state

    path = Path(checkpoint)
    state = load_checkpoint(path, map_location="cpu")
    ours = isinstance(state.get("model"), dict) and "model_name" in state
    config: dict[str, Any] = dict(state.get("config") or {}) if ours else {}
    if ours:
        weights = state["model"]
        stored_name = str(state["model_name"])
        name = model_name or stored_name
        kwargs = dict(state.get("model_kwargs") or {}) if name == stored_name else {}
        dataset = dataset or (config.get("data") or {}).get("dataset")
        if dataset is None:
            raise ConfigError(f"{path} does not say which dataset it was trained on; pass --dataset")
        stored_classes = int(state.get("num_classes") or 0)
        num_classes = stored_classes or _dataset_classes(dataset)
        if stored_classes and stored_classes != _dataset_classes(dataset):
            raise ConfigError(
                f"{path} has {stored_classes} classes but {dataset} has {_dataset_classes(dataset)}; "
                "pass the --dataset it was trained on"
            )
        described = state
    else:
        weights = state.get("state_dict", state)
        if not isinstance(weights, dict) or not weights or not all(
            isinstance(v, torch.Tensor) for v in weights.values()
        ):
            raise CheckpointError(
                f"{path} holds neither a dsnet training checkpoint nor a tensors-only state dict; "
                "pass a file written by `dsnet train` or `dsnet export`"
            )
        if model_name is None:
            raise ConfigError(f"{path} holds a bare state dict without its architecture; pass --model NAME "
                              "(`dsnet models` lists them) and --dataset")
        if dataset is None:
            raise ConfigError(f"{path} holds a bare state dict; pass --dataset (cifar10, cifar100 or svhn)")
        name, kwargs, num_classes = model_name, {}, _dataset_classes(dataset)
        described = weights

    source = "given"
    if trained_with is None:
        trained_with = (config.get("objective") or {}).get("name")
        source = "the checkpoint's training config"
        if trained_with is None:
            trained_with, source = "at", "assumed (the file holds no training config; pass --trained-with)"
            logger.warning("%s holds no training config: assuming an AT-trained model for the step sizes "
                           "(pass --trained-with trades for a TRADES model)", path)
    if trained_with not in OBJECTIVES:
        raise UnknownNameError(f"training objective {trained_with!r} has no evaluation step preset; pass "
                               f"--trained-with one of {', '.join(OBJECTIVES.names())}")

    model = create_model(name, num_classes=num_classes, **kwargs)
    load_model_state(model, described, path=path, expected_name=name)
    model = model.float().to(device).eval()
    model.requires_grad_(False)
    return LoadedModel(
        model=model,
        model_name=name,
        model_kwargs=kwargs,
        num_classes=num_classes,
        dataset=dataset,
        trained_with=trained_with,
        trained_with_source=source,
        checkpoint=path,
        weights_sha256=state_dict_sha256(weights.items()),
        epoch=int(state["epoch"]) if ours and isinstance(state.get("epoch"), int) else None,
        config=config,
    )
