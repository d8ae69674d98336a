"""A seeded validation split carved from the training set, for model selection (Rice et al., 2020).

Rice et al. hold out 1,000 training images and keep the checkpoint with the best validation PGD accuracy, so
the test set is never used to pick a model. The indices come from NumPy's legacy `RandomState` permutation,
whose stream NumPy promises never to change: the same seed gives the same validation images on every machine
and every NumPy and PyTorch version, which a checkpoint resumed elsewhere relies on.
"""

from __future__ import annotations

import numpy as np

from dsnet.data.datasets import ImageSplit
from dsnet.errors import ConfigError

__all__ = ["split_indices", "train_val_split"]


def split_indices(n: int, val_size: int = 1000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Disjoint train and validation indices covering `range(n)`.

    Args:
        n: number of training images.
        val_size: number of images held out for validation.
        seed: seed of the permutation; the same seed always gives the same indices.

    Returns:
        (train_indices, val_indices), each sorted ascending, int64.

    Raises:
        ConfigError: `val_size` is not positive or leaves no training image.
    """
    if val_size < 1:
        raise ConfigError(f"val_size must be at least 1, got {val_size}")
    if val_size >= n:
        raise ConfigError(
            f"a validation split of {val_size} images needs more than {val_size} training images, but there are "
            f"only {n}; lower val_size"
        )
    permutation = np.random.RandomState(seed).permutation(n)
    return np.sort(permutation[val_size:]).astype(np.int64), np.sort(permutation[:val_size]).astype(np.int64)


def train_val_split(split: ImageSplit, val_size: int = 1000, seed: int = 0) -> tuple[ImageSplit, ImageSplit]:
    """Splits a training set into the images to train on and a held-out validation set.

    Args:
        split: the full training split (on any device).
        val_size: number of validation images (1,000 as in Rice et al.).
        seed: seed of the split; keep it fixed across the seeds of the training runs being compared.

    Returns:
        (train, val), disjoint, together holding every image of `split` once.

    Raises:
        ConfigError: `val_size` is not positive or not smaller than the split.
    """
    try:
        train_idx, val_idx = split_indices(len(split), val_size, seed)
    except ConfigError as exc:
        raise ConfigError(f"{split.name or 'training split'}: {exc}") from None
    base = split.name.removesuffix("/train") or "split"
    return split.subset(train_idx, f"{base}/train_without_val"), split.subset(val_idx, f"{base}/val")
