"""Helpers shared by the test folders: a learnable CIFAR-10 folder in the real format and a tiny recipe.

A module of its own (not conftest.py) so that `from dsnet_testing import ...` always finds it: several test
folders have a conftest.py, and `from conftest import ...` gets whichever pytest imported first.
"""

from __future__ import annotations

import pickle
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

CIFAR10_CLASSES = [b"airplane", b"automobile", b"bird", b"cat", b"deer", b"dog", b"frog", b"horse", b"ship", b"truck"]


def _learnable_images(rng: np.random.Generator, labels: np.ndarray) -> np.ndarray:
    """Images whose class is visible as a colour (crop- and flip-invariant), plus pixel noise."""
    palette = np.array([[r, g, b] for r in (40, 215) for g in (40, 215) for b in (40, 215)] + [[128, 128, 128],
                                                                                           [215, 128, 40]])
    noise = rng.integers(-40, 41, size=(len(labels), 3, 32, 32))
    images = palette[labels][:, :, None, None] + noise
    return np.clip(images, 0, 255).astype(np.uint8)


def write_cifar10_folder(root: Path, per_batch: int = 40, n_test: int = 40, seed: int = 0) -> Path:
    """Writes `root/cifar-10-batches-py/` with 5 training batches of `per_batch` images and a test batch.

    The files are python pickles with the official keys (b"data" as (N, 3072) uint8, b"labels"), so the real
    parser reads them; the images are easy enough that a tiny model learns them in a few steps.
    """
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for name in names:
        n = n_test if name == "test_batch" else per_batch
        labels = rng.integers(0, 10, size=n)
        images = _learnable_images(rng, labels)
        entry = {b"batch_label": name.encode(), b"labels": labels.tolist(), b"data": images.reshape(n, -1),
                 b"filenames": [f"{name}_{i}.png".encode() for i in range(n)]}
        with open(folder / name, "wb") as handle:
            pickle.dump(entry, handle, protocol=2)
    with open(folder / "batches.meta", "wb") as handle:
        pickle.dump({b"label_names": CIFAR10_CLASSES, b"num_cases_per_batch": per_batch, b"num_vis": 3072}, handle,
                    protocol=2)
    return root


def tiny_recipe(**sections: dict) -> dict:
    """A recipe for a tiny DS-Net that trains in seconds on `cifar10_dir`; sections override the defaults."""
    recipe = {
        "model": {"name": "dsnet_tiny"},
        "data": {"dataset": "cifar10", "val_size": 40, "download": False},
        "objective": {"name": "at", "eps": 0.031, "step_size": 0.01, "steps": 2},
        "optim": {"lr": 0.05},
        "schedule": {"name": "piecewise", "milestones": [2], "factors": [0.1]},
        "train": {"epochs": 2, "batch_size": 32, "progress": False, "tensorboard": False, "val_pgd_steps": 2},
    }
    for key, value in sections.items():
        replace = "name" in value and key in ("objective", "schedule")  # another entry: its own parameters
        recipe[key] = dict(value) if replace else {**recipe.get(key, {}), **value}
    return recipe


LEARNING_RECIPE = {
    "model": {"name": "dsnet_tiny"},
    "data": {"dataset": "cifar10", "val_size": 40, "download": False},
    "objective": {"name": "standard"},
    "optim": {"lr": 0.2},
    "schedule": {"name": "piecewise", "milestones": [3], "factors": [0.1]},
    "train": {"epochs": 3, "batch_size": 32, "progress": False, "tensorboard": False, "val_pgd_steps": 2},
}
"""As `tiny_recipe`, trained without attacks, so that it learns enough in 3 epochs (about 3 s) to leave robust
points for the evaluation tests."""


@contextmanager
def small_autoattack() -> Iterator[None]:
    """The reference AutoAttack with tiny budgets (5 iterations, one restart, 2 target classes, 50 Square queries),
    only while the context is open; a direct call of the reference inside the context gets the same budgets
    (`dsnet.attacks.autoattack.toy_budgets`)."""
    from dsnet.attacks.autoattack import toy_budgets

    with toy_budgets():
        yield
