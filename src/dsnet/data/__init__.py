"""Datasets (CIFAR-10, CIFAR-100, SVHN), a seeded validation split, and a device-side augmenting loader.

Typical use::

    train = load_dataset("cifar10", "data", "train")
    train, val = train_val_split(train, val_size=1000, seed=0)
    loader = DeviceLoader(train.to("cuda"), 128, crop=True, flip=True, drop_last=True, seed=0)
    for x, y in loader:  # x: (128, 3, 32, 32) float in [0, 1] on the GPU, y: int64
        ...

Modules: `datasets` (registry, file formats, `ImageSplit`), `download` (resumable, checked downloads and safe
extraction), `splits` (validation split), `loader` (batching, augmentation, DDP sharding).
"""

from dsnet.data.datasets import (
    DATASETS,
    DatasetInfo,
    ImageSplit,
    Resource,
    download_dataset,
    load_dataset,
    missing_files,
)
from dsnet.data.download import download_file, extract_tar, file_md5
from dsnet.data.loader import DeviceLoader, augment_batch, to_float
from dsnet.data.splits import split_indices, train_val_split

__all__ = [
    "DATASETS",
    "DatasetInfo",
    "DeviceLoader",
    "ImageSplit",
    "Resource",
    "augment_batch",
    "download_dataset",
    "download_file",
    "extract_tar",
    "file_md5",
    "load_dataset",
    "missing_files",
    "split_indices",
    "to_float",
    "train_val_split",
]
