"""Datasets (CIFAR-10, CIFAR-100, SVHN), a seeded validation split, and a device-side augmenting loader.

Typical use::

    train = load_dataset("cifar10", "data", "train")
    train, val = train_val_split(train, val_size=1000, seed=0)
    loader = DeviceLoader(train.to("cuda"), 128, crop=True, flip=True, drop_last=True, seed=0)
    for x, y in loader:  # x: (128, 3, 32, 32) float in [0, 1] on the GPU, y: int64
        ...

Modules: `datasets` (registry, file formats, `ImageSplit`), `corruptions` (CIFAR-10-C and CIFAR-100-C), `download`
(resumable, checked downloads and safe extraction), `splits` (validation split), `loader` (batching, augmentation,
DDP sharding).
"""

from __future__ import annotations

from dsnet.lazy import lazy_exports

_EXPORTS = {
    "DATASETS": "datasets",
    "DatasetInfo": "datasets",
    "ImageSplit": "datasets",
    "Resource": "datasets",
    "download_dataset": "datasets",
    "load_dataset": "datasets",
    "missing_files": "datasets",
    "CORRUPTIONS": "corruptions",
    "CORRUPTION_SETS": "corruptions",
    "SEVERITIES": "corruptions",
    "download_corruptions": "corruptions",
    "load_corrupted": "corruptions",
    "download_file": "download",
    "extract_tar": "download",
    "file_md5": "download",
    "DeviceLoader": "loader",
    "augment_batch": "loader",
    "to_float": "loader",
    "split_indices": "splits",
    "train_val_split": "splits",
}

__all__ = list(_EXPORTS)

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
