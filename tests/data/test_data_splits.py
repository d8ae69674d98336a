"""The seeded validation split carved from the training set."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dsnet.data import ImageSplit, split_indices, train_val_split
from dsnet.errors import ConfigError


def _split(n: int) -> ImageSplit:
    images = torch.arange(n, dtype=torch.int64).remainder(256).to(torch.uint8).view(n, 1, 1, 1).expand(n, 3, 2, 2)
    return ImageSplit(images.contiguous(), torch.arange(n), n, name="toy/train")


def test_indices_are_deterministic_disjoint_and_cover():
    train, val = split_indices(5000, 1000, seed=0)
    assert len(val) == 1000 and len(train) == 4000
    assert np.array_equal(np.sort(np.concatenate([train, val])), np.arange(5000))
    again_train, again_val = split_indices(5000, 1000, seed=0)
    assert np.array_equal(val, again_val) and np.array_equal(train, again_train)
    assert not np.array_equal(val, split_indices(5000, 1000, seed=1)[1])


def test_indices_are_pinned_across_versions():
    # NumPy's legacy RandomState stream never changes: these indices hold on every machine and version.
    assert split_indices(10, 3, seed=0)[1].tolist() == sorted(np.random.RandomState(0).permutation(10)[:3].tolist())
    assert split_indices(10, 3, seed=0)[1].tolist() == [2, 4, 8]


def test_train_val_split_takes_the_rows_at_the_indices():
    split = _split(50)
    train, val = train_val_split(split, val_size=10, seed=3)
    train_idx, val_idx = split_indices(50, 10, seed=3)
    assert val.labels.tolist() == val_idx.tolist() and train.labels.tolist() == train_idx.tolist()
    assert torch.equal(val.images, split.images[torch.from_numpy(val_idx)])
    assert val.name == "toy/val" and train.num_classes == 50
    assert set(train.labels.tolist()).isdisjoint(val.labels.tolist())


@pytest.mark.parametrize("val_size", [50, 80])
def test_validation_larger_than_the_data_is_a_clear_error(val_size):
    with pytest.raises(ConfigError, match=f"toy/train: a validation split of {val_size} images .* only 50"):
        train_val_split(_split(50), val_size=val_size)


def test_validation_size_must_be_positive():
    with pytest.raises(ConfigError, match="val_size must be at least 1"):
        split_indices(50, 0)
