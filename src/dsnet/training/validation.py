"""What the trainer learns from and checks itself on: the training split of a recipe with its held-out validation
split (Rice et al.), and the clean and robust accuracy measured on that split after every epoch."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn

from dsnet.attacks.base import Attack
from dsnet.attacks.metrics import clean_flags
from dsnet.config import RunConfig
from dsnet.data import ImageSplit, load_dataset, train_val_split

__all__ = ["build_training_data", "evaluate_robustness"]


def build_training_data(config: RunConfig, data_dir: str | Path) -> tuple[ImageSplit, ImageSplit | None]:
    """Loads the training split (with SVHN extra if asked), cuts the subset and the validation split."""
    data = config.data
    train_split = load_dataset(data.dataset, data_dir, "train", download=data.download)
    if data.svhn_extra:
        extra = load_dataset(data.dataset, data_dir, "extra", download=data.download)
        train_split = ImageSplit(torch.cat([train_split.images, extra.images]),
                                 torch.cat([train_split.labels, extra.labels]),
                                 train_split.num_classes, train_split.classes, "train+extra")
    if data.train_subset is not None and data.train_subset < len(train_split):
        train_split = train_split.subset(torch.arange(data.train_subset))
    if data.val_size == 0:
        return train_split, None
    train_part, val_part = train_val_split(train_split, val_size=data.val_size, seed=data.val_seed)
    return train_part, val_part



def evaluate_robustness(model: nn.Module, split: ImageSplit, attack: Attack, *, batch_size: int,
                        progress: str | None = None) -> tuple[float, float]:
    """Clean and robust accuracy (fractions) of `model` on `split` under `attack`, through the one robust-flags
    loop (`dsnet.attacks.metrics`): sharded across ranks and summed, so the numbers do not depend on the number
    of processes; a point is robust when its clean and adversarial inputs are both classified correctly."""
    clean = clean_flags(model, split.images, split.labels, batch_size=batch_size)
    run = attack.evaluate(model, split.images, split.labels, clean=clean, batch_size=batch_size, progress=progress)
    n = max(len(split), 1)
    return float(clean.sum()) / n, float(run.flags.sum()) / n
