"""CIFAR-10-C and CIFAR-100-C (Hendrycks & Dietterich, ICLR 2019): the common-corruption test sets.

Each archive unpacks into one folder (`<root>/CIFAR-10-C/`, `<root>/CIFAR-100-C/`) that holds, per corruption,
`<corruption>.npy` of shape (50000, 32, 32, 3) uint8 (the 10,000 test images at severity 1, then 2, ... 5) and
one `labels.npy` (50000,) for all of them. The 15 corruptions of the benchmark are the ones RobustBench
evaluates; the archives also hold 4 extra ones (`EXTRA_CORRUPTIONS`), which load the same way.

The archives (2.9 GB each) are downloaded from Zenodo, resumable, with a progress bar, checked against the
MD5 Zenodo lists, and unpacked safely (`dsnet.data.download`). Files are read memory-mapped: only the rows of
one severity (30 MB) are read, and only the selected points are copied. A file of the wrong shape or type, or
labels that do not match, raise a one-line `DataError` naming the file.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from dsnet.data.datasets import DATASETS, ImageSplit, Resource
from dsnet.data.download import _one_line, download_file, extract_tar
from dsnet.errors import ConfigError, DataError
from dsnet.registry import Registry, unknown_name

__all__ = ["CORRUPTIONS", "EXTRA_CORRUPTIONS", "SEVERITIES", "CORRUPTION_SETS", "CorruptionSet",
           "corruption_set_for", "download_corruptions", "load_corrupted"]

logger = logging.getLogger(__name__)

CORRUPTIONS = (
    "gaussian_noise", "shot_noise", "impulse_noise",
    "defocus_blur", "glass_blur", "motion_blur", "zoom_blur",
    "snow", "frost", "fog", "brightness",
    "contrast", "elastic_transform", "pixelate", "jpeg_compression",
)
"""The 15 benchmark corruptions (noise, blur, weather, digital), in the paper's order."""

EXTRA_CORRUPTIONS = ("speckle_noise", "gaussian_blur", "spatter", "saturate")
"""The 4 held-out corruptions the archives also contain; not part of the benchmark mean."""

SEVERITIES = (1, 2, 3, 4, 5)

PER_SEVERITY = 10_000
"""Test images per severity in the official files (a file holds 5 blocks of the test set's size)."""


@dataclass(frozen=True)
class CorruptionSet:
    """One corrupted copy of a test set.

    Attributes:
        name: the registry name (`cifar10c`).
        clean: the dataset whose test images were corrupted (`cifar10`).
        folder: the folder the archive unpacks into, under the data root.
        archive: the Zenodo file, with its MD5.
        homepage: the Zenodo record.
    """

    name: str
    clean: str
    folder: str
    archive: Resource
    homepage: str

    def path(self, root: str | os.PathLike[str], corruption: str) -> Path:
        """Where `<corruption>.npy` (or "labels") lies under `root`."""
        return Path(root).expanduser() / self.folder / f"{corruption}.npy"

    def missing(self, root: str | os.PathLike[str], corruptions: tuple[str, ...] = CORRUPTIONS) -> list[Path]:
        """The files of `corruptions` (and the labels) that are not under `root`."""
        return [p for p in (self.path(root, c) for c in ("labels", *corruptions)) if not p.is_file()]


CORRUPTION_SETS: Registry[CorruptionSet] = Registry("corruption set", hint="cifar10c or cifar100c")
CORRUPTION_SETS.add("cifar10c", CorruptionSet(
    "cifar10c", "cifar10", "CIFAR-10-C",
    Resource("https://zenodo.org/records/2535967/files/CIFAR-10-C.tar?download=1", "CIFAR-10-C.tar",
             "56bf5dcef84df0e2308c6dcbcbbd8499", extract=True),
    "https://zenodo.org/records/2535967"))
CORRUPTION_SETS.add("cifar100c", CorruptionSet(
    "cifar100c", "cifar100", "CIFAR-100-C",
    Resource("https://zenodo.org/records/3555552/files/CIFAR-100-C.tar?download=1", "CIFAR-100-C.tar",
             "11f0ed0f1191edbf9fa23466ae6021d3", extract=True),
    "https://zenodo.org/records/3555552"))


def corruption_set_for(dataset: str) -> CorruptionSet:
    """The corrupted copy of `dataset`'s test set (`cifar10` -> `cifar10c`).

    Raises:
        ConfigError: the dataset has none (SVHN).
    """
    for entry in (CORRUPTION_SETS.get(name) for name in CORRUPTION_SETS.names()):
        if entry.clean == dataset:
            return entry
    raise ConfigError(f"{dataset} has no common-corruption test set; corruptions are defined for "
                      f"{', '.join(CORRUPTION_SETS.get(n).clean for n in CORRUPTION_SETS.names())}")


def download_corruptions(name: str, root: str | os.PathLike[str], *, progress: bool = True) -> Path:
    """Makes sure every file of corruption set `name` is under `root`, downloading the archive only when one is
    missing (resumable, MD5-checked) and unpacking it there.

    Raises:
        UnknownNameError: an unknown set.
        DataError: the download failed, its MD5 did not match, or files are still missing after unpacking.
    """
    entry = CORRUPTION_SETS.get(name)
    base = Path(root).expanduser()
    if not entry.missing(base, CORRUPTIONS + EXTRA_CORRUPTIONS):
        return base
    archive = download_file(entry.archive.url, base / entry.archive.filename, entry.archive.md5, progress=progress)
    extract_tar(archive, base)
    if still := entry.missing(base):
        raise DataError(f"{name}: {still[0]} is missing after unpacking {archive}; delete it and rerun")
    return base


def _open(path: Path, images: bool) -> np.ndarray:
    """`path` memory-mapped, checked to be uint8 (5k, 32, 32, 3) images or (5k,) labels."""
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError, EOFError) as error:
        raise DataError(f"{path} is not a readable .npy file ({_one_line(error)}); delete it and rerun to "
                        "download the archive again") from None
    shape = tuple(array.shape)
    good = (len(shape) == 4 and shape[1:] == (32, 32, 3)) if images else len(shape) == 1
    if array.dtype != np.uint8 or not good or shape[0] % len(SEVERITIES) or not shape[0]:
        expected = "(50000, 32, 32, 3)" if images else "(50000,)"
        raise DataError(f"{path} holds {array.dtype} {shape}, expected uint8 {expected} (5 severities of the test set) "
                        "as in the official archive; delete it and rerun to download again")
    return array


def load_corrupted(
    dataset: str,
    root: str | os.PathLike[str],
    corruption: str,
    severity: int,
    indices: torch.Tensor | None = None,
    *,
    test_size: int | None = None,
    download: bool = True,
    progress: bool = True,
) -> ImageSplit:
    """The test images of `dataset` under one corruption at one severity.

    Args:
        dataset: the clean dataset (`cifar10`, `cifar100`).
        root: the data folder; the corrupted files lie in `<root>/CIFAR-10-C/` (`<root>/CIFAR-100-C/`).
        corruption: one of `CORRUPTIONS` or `EXTRA_CORRUPTIONS`.
        severity: 1 to 5.
        indices: test-set positions to read (as the clean evaluation selected them); default all of them.
        test_size: the clean test set's size; the files must hold 5 blocks of exactly that many images.
        download: fetch the archive when a file is missing; when False, a missing file raises `DataError`.
        progress: show a download progress bar.

    Returns:
        uint8 images (n, 3, 32, 32) and int64 labels, in the order of `indices`.

    Raises:
        ConfigError: an unknown corruption or severity, or a dataset without a corrupted copy.
        DataError: missing (with `download=False`), truncated or malformed files.
    """
    entry = corruption_set_for(dataset)
    if corruption not in CORRUPTIONS + EXTRA_CORRUPTIONS:
        raise unknown_name("corruption", corruption, CORRUPTIONS + EXTRA_CORRUPTIONS)
    if severity not in SEVERITIES:
        raise ConfigError(f"corruption severity must be one of 1, 2, 3, 4, 5, got {severity!r}")
    base = Path(root).expanduser()
    if missing := entry.missing(base, (corruption,)):
        present = (base / entry.folder).is_dir() and any((base / entry.folder).glob("*.npy"))
        if present:  # a lost file in an unpacked folder: name it, rather than fetch 2.9 GB and blame the network
            raise DataError(f"{entry.name}: missing {missing[0]}, though {base / entry.folder} holds other files "
                            f"of the set; copy it back from {entry.archive.filename}, or delete the folder and run "
                            f"`dsnet download {entry.name} --data-dir {base}` (2.9 GB)")
        if not download:
            raise DataError(f"{entry.name}: missing {missing[0]}; run `dsnet download {entry.name} --data-dir {base}` "
                            "or load with download=True")
        download_corruptions(entry.name, base, progress=progress)
    images = _open(entry.path(base, corruption), images=True)
    labels = _open(entry.path(base, "labels"), images=False)
    per_severity = images.shape[0] // len(SEVERITIES)
    if labels.shape[0] != images.shape[0]:
        raise DataError(f"{entry.path(base, 'labels')} holds {labels.shape[0]} labels but "
                        f"{entry.path(base, corruption).name} holds {images.shape[0]} images; delete the folder and "
                        "rerun to download again")
    if test_size is not None and per_severity != test_size:
        raise DataError(f"{entry.path(base, corruption)} holds {per_severity} images per severity, but the {dataset} "
                        f"test set has {test_size}; the corrupted files do not belong to this test set")
    rows = slice((severity - 1) * per_severity, severity * per_severity)
    if indices is None:
        picked_images, picked_labels = images[rows], labels[rows]
    else:
        index = np.asarray(indices.cpu() if isinstance(indices, torch.Tensor) else indices, dtype=np.int64)
        if index.size and (index.min() < 0 or index.max() >= per_severity):
            raise ConfigError(f"test-set positions must lie in [0, {per_severity}), got {index.min()}..{index.max()}")
        picked_images, picked_labels = images[rows.start + index], labels[rows.start + index]
    num_classes = DATASETS.get(dataset).num_classes
    picked_labels = np.asarray(picked_labels, dtype=np.int64)
    if picked_labels.size and picked_labels.max() >= num_classes:
        raise DataError(f"{entry.path(base, 'labels')} holds label {int(picked_labels.max())}, but {dataset} has "
                        f"{num_classes} classes; delete the folder and rerun to download again")
    chw = torch.from_numpy(np.ascontiguousarray(np.asarray(picked_images).transpose(0, 3, 1, 2)))
    return ImageSplit(chw, torch.from_numpy(picked_labels), num_classes, DATASETS.get(dataset).classes,
                      f"{entry.name}/{corruption}/{severity}")
