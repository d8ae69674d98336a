"""CIFAR-10, CIFAR-100 and SVHN: where they come from, how they lie on disk, and how to read them.

Each dataset is a `DatasetInfo` in the `DATASETS` registry. `load_dataset` returns an `ImageSplit`: uint8 images
(N, 3, 32, 32) and int64 labels, kept as integers so a whole training set fits on a GPU (150 MB for CIFAR) and
is augmented there (see `dsnet.data.loader`).

The on-disk layout is the one torchvision and the official archives use, so an existing data folder works:
`<root>/cifar-10-batches-py/data_batch_1` ..., `<root>/cifar-100-python/train`, `<root>/train_32x32.mat`.
When a split's files are present they are read as they are: nothing is downloaded and no checksum is computed
(the MD5s belong to the archives, and a folder extracted from elsewhere must load unchanged; a folder holding
only the first CIFAR training batches loads too, with a warning). Only missing files trigger a download, which
is checked against the official MD5 (`dsnet.data.download`).

Readers never show a raw pickle or scipy traceback: a missing, truncated or corrupt file raises a one-line
`DataError` naming the file and the fix. CIFAR pickles are read with an unpickler that only admits the NumPy
array constructors such files hold, so a tampered file cannot run code.
"""

from __future__ import annotations

import functools
import logging
import os
import pickle
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dsnet.data.download import _one_line, download_file, extract_tar
from dsnet.errors import DataError, UnknownNameError
from dsnet.registry import Registry

__all__ = [
    "DATASETS",
    "DatasetInfo",
    "register_dataset",
    "ImageSplit",
    "Resource",
    "download_dataset",
    "load_dataset",
    "missing_files",
]

logger = logging.getLogger(__name__)

DATASETS: Registry[DatasetInfo] = Registry("dataset", package="dsnet.data")
"""Every dataset, registered by `register_dataset` in the file that defines it (a module of `dsnet.data`)."""

# The command that fetches a dataset; named in the messages about missing files.
DOWNLOAD_COMMAND = "dsnet download {name} --data-dir {root}"

# Reads one data file into (images uint8 (N, 3, 32, 32), labels int64 (N,)); raises DataError on a bad file.
Reader = Callable[[Path, int], tuple[np.ndarray, np.ndarray]]


@dataclass(frozen=True)
class Resource:
    """One file to download.

    Attributes:
        url: the official address.
        filename: the name it is saved under, in the data root.
        md5: the official hex MD5 of the file as downloaded.
        extract: whether it is a tar archive to unpack into the data root.
    """

    url: str
    filename: str
    md5: str
    extract: bool = False


@dataclass(frozen=True)
class DatasetInfo:
    """Everything dsnet knows about one dataset.

    Attributes:
        name: the registry name (`cifar10`).
        num_classes: number of labels.
        classes: human-readable class names, index = label.
        files: per split, the data files relative to the data root, read and concatenated in this order.
        resources: per split, what to download when any of its files is missing.
        reader: reads one data file; see `Reader`.
        default_splits: the splits `download_dataset` fetches when none are named (SVHN's 1.3 GB `extra` is
            only fetched on request).
        homepage: where the dataset is described.
    """

    name: str
    num_classes: int
    classes: tuple[str, ...]
    files: Mapping[str, tuple[str, ...]]
    resources: Mapping[str, tuple[Resource, ...]]
    reader: Reader = field(repr=False)
    default_splits: tuple[str, ...] = ("train", "test")
    homepage: str = ""

    @property
    def splits(self) -> tuple[str, ...]:
        """All split names, e.g. ("train", "test")."""
        return tuple(self.files)

    def check_split(self, split: str) -> None:
        """Raises `UnknownNameError` when `split` is not one of this dataset's splits."""
        if split not in self.files:
            raise UnknownNameError(f"unknown split {split!r} of {self.name}; valid splits: {', '.join(self.files)}")


def register_dataset(info: DatasetInfo) -> DatasetInfo:
    """Registers a dataset under `info.name` (in the file that defines it) and returns it."""
    DATASETS.add(info.name, info)
    return info


@dataclass(frozen=True, eq=False)
class ImageSplit:
    """A labelled set of 32x32 RGB images held as tensors.

    Images stay uint8 (a quarter of float32's memory, so a whole dataset lives on the GPU); the loader turns
    each batch into float in [0, 1].

    Attributes:
        images: (N, 3, H, W) uint8.
        labels: (N,) int64 in [0, num_classes).
        num_classes: number of classes of the dataset (not only those present in this split).
        classes: class names, index = label.
        name: where it came from, for logs and errors (`cifar10/train`).
    """

    images: torch.Tensor
    labels: torch.Tensor
    num_classes: int
    classes: tuple[str, ...] = ()
    name: str = ""

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.dim() != 4 or self.images.shape[1] != 3:
            raise ValueError(f"images must be uint8 (N, 3, H, W), got {self.images.dtype} {tuple(self.images.shape)}")
        if self.labels.dtype != torch.int64 or self.labels.shape != self.images.shape[:1]:
            raise ValueError(
                f"labels must be int64 ({self.images.shape[0]},), got {self.labels.dtype} {tuple(self.labels.shape)}"
            )
        if self.labels.device != self.images.device:
            raise ValueError(f"images on {self.images.device} but labels on {self.labels.device}")

    def __len__(self) -> int:
        return self.images.shape[0]

    @property
    def device(self) -> torch.device:
        """The device both tensors are on."""
        return self.images.device

    def to(self, device: torch.device | str, non_blocking: bool = False) -> ImageSplit:
        """The same split on `device` (itself when already there); call once, before the epoch loop."""
        device = torch.device(device)
        if self.images.device == device:
            return self
        return ImageSplit(
            self.images.to(device, non_blocking=non_blocking),
            self.labels.to(device, non_blocking=non_blocking),
            self.num_classes,
            self.classes,
            self.name,
        )

    def subset(self, indices: torch.Tensor | np.ndarray | list[int], name: str | None = None) -> ImageSplit:
        """The images at `indices`, in that order, as a new split (a copy, not a view)."""
        if isinstance(indices, torch.Tensor):
            index = indices.to(self.images.device, torch.int64)
        else:
            index = torch.as_tensor(np.asarray(indices), dtype=torch.int64, device=self.images.device)
        return ImageSplit(
            self.images.index_select(0, index),
            self.labels.index_select(0, index),
            self.num_classes,
            self.classes,
            self.name if name is None else name,
        )


# ----------------------------------------------------------------------------------------------------------------
# Readers


def _corrupt(path: Path, why: str, remove: Path | None = None) -> DataError:
    """The error for a bad data file; `remove` is what to delete so that a rerun fetches it again."""
    return DataError(
        f"{path}: {why}; the file is truncated or corrupt: delete {remove or path} and rerun with download enabled "
        "to fetch it again"
    )


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickler that admits only what a CIFAR batch holds: NumPy arrays, dtypes and Python-2 byte strings."""

    @staticmethod
    @functools.cache
    def _allowed() -> dict[tuple[str, str], Any]:
        try:
            from numpy._core.multiarray import _reconstruct  # NumPy >= 2
        except ImportError:  # pragma: no cover - NumPy 1.x
            from numpy.core.multiarray import _reconstruct
        import _codecs

        return {
            ("numpy.core.multiarray", "_reconstruct"): _reconstruct,  # written by NumPy 1.x (the official files)
            ("numpy._core.multiarray", "_reconstruct"): _reconstruct,  # written by NumPy 2.x
            ("numpy", "ndarray"): np.ndarray,
            ("numpy", "dtype"): np.dtype,
            ("_codecs", "encode"): _codecs.encode,  # how Python 3 writes bytes at protocol 2
        }

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self._allowed()[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}, which a CIFAR batch never holds") from None


def _get(entry: Mapping[Any, Any], key: str) -> Any:
    """`entry[key]` whether the pickle was written by Python 2 (bytes keys) or Python 3 (str keys)."""
    if key.encode() in entry:
        return entry[key.encode()]
    return entry[key]


def _read_cifar_batch(path: Path, num_classes: int, *, label_key: str) -> tuple[np.ndarray, np.ndarray]:
    """Reads one CIFAR python pickle: `data` (N, 3072) uint8 in CHW order and a list of N labels."""

    def corrupt(why: str) -> DataError:
        # The batches come from one archive: deleting the folder is what makes the next run extract it again.
        return _corrupt(path, why, remove=path.parent)

    try:
        with open(path, "rb") as f:
            entry = _ArrayUnpickler(f, encoding="bytes").load()
    except Exception as exc:  # noqa: BLE001 - any unpickling failure means the same thing to the user
        raise corrupt(f"not a readable CIFAR batch ({_one_line(exc)})") from exc
    try:
        data = _get(entry, "data")
        labels = np.asarray(_get(entry, label_key))
    except (KeyError, TypeError) as exc:
        raise corrupt(f"a CIFAR batch must be a dict with 'data' and {label_key!r}") from exc
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        shape = getattr(data, "shape", None)
        dtype = getattr(data, "dtype", type(data).__name__)
        raise corrupt(f"'data' must be uint8 (N, 3072), got {dtype} {shape}")
    if labels.shape != (data.shape[0],) or not np.issubdtype(labels.dtype, np.integer):
        raise corrupt(f"{label_key!r} must hold {data.shape[0]} integers, got {labels.dtype} {labels.shape}")
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise corrupt(f"labels must lie in [0, {num_classes}), got [{labels.min()}, {labels.max()}]")
    return data.reshape(-1, 3, 32, 32), labels.astype(np.int64)


def _read_svhn_mat(path: Path, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Reads an SVHN `*_32x32.mat`: X (32, 32, 3, N) uint8 and y (N, 1) in 1..10, where 10 is the digit 0."""
    import scipy.io

    try:
        mat = scipy.io.loadmat(path, variable_names=["X", "y"])
    except Exception as exc:  # noqa: BLE001 - scipy raises ValueError, OSError, TypeError... for a bad file
        raise _corrupt(path, f"not a readable MATLAB file ({_one_line(exc)})") from exc
    if "X" not in mat or "y" not in mat:
        found = sorted(k for k in mat if not k.startswith("__"))
        raise _corrupt(path, f"an SVHN file must hold 'X' and 'y', found {found}")
    images, labels = mat["X"], mat["y"]
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[:3] != (32, 32, 3):
        raise _corrupt(path, f"'X' must be uint8 (32, 32, 3, N), got {images.dtype} {images.shape}")
    n = images.shape[3]
    if labels.size != n or not np.issubdtype(labels.dtype, np.number):
        raise _corrupt(path, f"'y' must hold {n} labels, got {labels.dtype} {labels.shape}")
    labels = labels.reshape(-1).astype(np.int64)
    if n and (labels.min() < 1 or labels.max() > num_classes):
        raise _corrupt(path, f"'y' must lie in 1..{num_classes}, got {labels.min()}..{labels.max()}")
    # (H, W, C, N) -> (N, C, H, W); the label 10 stands for the digit 0.
    return np.ascontiguousarray(images.transpose(3, 2, 0, 1)), labels % 10


# ----------------------------------------------------------------------------------------------------------------
# Registered datasets

_CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")

_CIFAR100_CLASSES = (
    "apple", "aquarium_fish", "baby", "bear", "beaver", "bed", "bee", "beetle", "bicycle", "bottle",
    "bowl", "boy", "bridge", "bus", "butterfly", "camel", "can", "castle", "caterpillar", "cattle",
    "chair", "chimpanzee", "clock", "cloud", "cockroach", "couch", "crab", "crocodile", "cup", "dinosaur",
    "dolphin", "elephant", "flatfish", "forest", "fox", "girl", "hamster", "house", "kangaroo", "keyboard",
    "lamp", "lawn_mower", "leopard", "lion", "lizard", "lobster", "man", "maple_tree", "motorcycle", "mountain",
    "mouse", "mushroom", "oak_tree", "orange", "orchid", "otter", "palm_tree", "pear", "pickup_truck", "pine_tree",
    "plain", "plate", "poppy", "porcupine", "possum", "rabbit", "raccoon", "ray", "road", "rocket",
    "rose", "sea", "seal", "shark", "shrew", "skunk", "skyscraper", "snail", "snake", "spider",
    "squirrel", "streetcar", "sunflower", "sweet_pepper", "table", "tank", "telephone", "television", "tiger",
    "tractor", "train", "trout", "tulip", "turtle", "wardrobe", "whale", "willow_tree", "wolf", "woman", "worm",
)  # fmt: skip

_CIFAR10_ARCHIVE = Resource(
    "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
    "cifar-10-python.tar.gz",
    "c58f30108f718f92721af3b95e74349a",
    extract=True,
)
_CIFAR100_ARCHIVE = Resource(
    "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
    "cifar-100-python.tar.gz",
    "eb9058c3a382ffc7106e4002c42a8d85",
    extract=True,
)
_SVHN_URL = "http://ufldl.stanford.edu/housenumbers/"
_SVHN_MD5 = {
    "train": "e26dedcc434d2e4c54c9b2d4a06d8373",
    "test": "eb5a983be6a315427106f1b8d1a6a3b5",
    "extra": "a93ce644f1a588dc4d68dda5feec44a7",
}

register_dataset(
    DatasetInfo(
        name="cifar10",
        num_classes=10,
        classes=_CIFAR10_CLASSES,
        files={
            "train": tuple(f"cifar-10-batches-py/data_batch_{i}" for i in range(1, 6)),
            "test": ("cifar-10-batches-py/test_batch",),
        },
        resources={"train": (_CIFAR10_ARCHIVE,), "test": (_CIFAR10_ARCHIVE,)},
        reader=functools.partial(_read_cifar_batch, label_key="labels"),
        homepage="https://www.cs.toronto.edu/~kriz/cifar.html",
    ),
)
register_dataset(
    DatasetInfo(
        name="cifar100",
        num_classes=100,
        classes=_CIFAR100_CLASSES,
        files={"train": ("cifar-100-python/train",), "test": ("cifar-100-python/test",)},
        resources={"train": (_CIFAR100_ARCHIVE,), "test": (_CIFAR100_ARCHIVE,)},
        reader=functools.partial(_read_cifar_batch, label_key="fine_labels"),
        homepage="https://www.cs.toronto.edu/~kriz/cifar.html",
    ),
)
register_dataset(
    DatasetInfo(
        name="svhn",
        num_classes=10,
        classes=tuple(str(d) for d in range(10)),
        files={split: (f"{split}_32x32.mat",) for split in _SVHN_MD5},
        resources={
            split: (Resource(f"{_SVHN_URL}{split}_32x32.mat", f"{split}_32x32.mat", md5),)
            for split, md5 in _SVHN_MD5.items()
        },
        reader=_read_svhn_mat,
        homepage="http://ufldl.stanford.edu/housenumbers/",
    ),
)


# ----------------------------------------------------------------------------------------------------------------
# Public functions


def missing_files(name: str, root: str | os.PathLike[str], split: str) -> list[Path]:
    """The data files of `split` that are not under `root` (empty when the split can be loaded offline)."""
    info = DATASETS.get(name)
    info.check_split(split)
    base = Path(root).expanduser()
    return [base / rel for rel in info.files[split] if not (base / rel).is_file()]


def download_dataset(
    name: str,
    root: str | os.PathLike[str],
    splits: str | tuple[str, ...] | list[str] | None = None,
    *,
    progress: bool = True,
) -> Path:
    """Makes sure the files of `splits` are under `root`, downloading and extracting only what is missing.

    A split whose files are all present is left alone (no network, no checksum). An archive that was already
    downloaded and verified is reused, so a deleted batch file is restored without the network.

    Args:
        name: a registered dataset (`cifar10`, `cifar100`, `svhn`).
        root: the data folder.
        splits: one split or several; default: the dataset's `default_splits` (train and test).
        progress: show download progress bars on stderr.

    Returns:
        The data root.

    Raises:
        UnknownNameError: unknown dataset or split.
        DataError: a download failed, its MD5 did not match, or an archive lacked the expected files.
    """
    info = DATASETS.get(name)
    base = Path(root).expanduser()
    wanted = info.default_splits if splits is None else (splits,) if isinstance(splits, str) else tuple(splits)
    done: set[str] = set()
    for split in wanted:
        if not missing_files(name, base, split):
            continue
        for resource in info.resources[split]:
            if resource.filename in done:
                continue
            archive = download_file(resource.url, base / resource.filename, resource.md5, progress=progress)
            if resource.extract:
                extract_tar(archive, base)
            done.add(resource.filename)
        if still_missing := missing_files(name, base, split):
            raise DataError(
                f"{name} {split}: {still_missing[0]} is still missing after downloading "
                f"{', '.join(r.filename for r in info.resources[split])}; delete those and rerun"
            )
    return base


def load_dataset(
    name: str,
    root: str | os.PathLike[str],
    split: str = "train",
    *,
    download: bool = True,
    progress: bool = True,
) -> ImageSplit:
    """Loads one split of a dataset into CPU tensors.

    Files that are present are read as they are. When none of the split's files is there, or one is missing
    between present ones (a lost file), the split is downloaded (or, with `download=False`, a `DataError` lists
    the missing files). When only the last files are absent, as in a subset made of the first CIFAR training
    batches, the present ones are loaded with a warning instead of downloading over the user's folder.

    Args:
        name: a registered dataset (`cifar10`, `cifar100`, `svhn`).
        root: the data folder, laid out as the official archives (and torchvision) lay it out.
        split: `train`, `test`, or for SVHN also `extra`.
        download: fetch missing files from the official address; when False, missing files raise `DataError`.
        progress: show download progress bars on stderr.

    Returns:
        The split with uint8 images (N, 3, 32, 32) and int64 labels (N,), on the CPU; move it once with `.to()`.

    Raises:
        UnknownNameError: unknown dataset or split.
        DataError: files are missing (with `download=False`), a download failed, or a file is corrupt.
    """
    info = DATASETS.get(name)
    info.check_split(split)
    base = Path(root).expanduser()
    files = info.files[split]
    present = [(base / rel).is_file() for rel in files]
    leading = present.index(False) if False in present else len(files)
    if leading == 0 or any(present[leading:]):  # nothing there, or a gap: a file was lost
        missing = ", ".join(rel for rel, ok in zip(files, present) if not ok)
        command = DOWNLOAD_COMMAND.format(name=name, root=base)
        if not download:
            raise DataError(
                f"{name} {split}: missing {missing} under {base}; run `{command}` or load with download=True"
            )
        try:
            download_dataset(name, base, split, progress=progress)
        except DataError as error:
            if not any(present):
                raise
            raise DataError(f"{name} {split}: {missing} is missing under {base} (the other files are there), and "
                            f"fetching it failed: {error}") from None
    elif leading < len(files):
        # Only the last files are absent, as in a subset made from the first batches (e.g. a small sample of
        # CIFAR-10): read what is there rather than download over the user's folder.
        logger.warning(
            "%s %s: %s not under %s; loading the first %d of %d files only (for the full split, run `%s`)",
            name, split, ", ".join(files[leading:]), base, leading, len(files),
            DOWNLOAD_COMMAND.format(name=name, root=base),
        )
        files = files[:leading]
    parts = [info.reader(base / rel, info.num_classes) for rel in files]
    images = np.concatenate([p[0] for p in parts]) if len(parts) > 1 else parts[0][0]
    labels = np.concatenate([p[1] for p in parts]) if len(parts) > 1 else parts[0][1]
    logger.info("loaded %s %s: %d images from %s", name, split, len(labels), base)
    return ImageSplit(
        torch.from_numpy(np.ascontiguousarray(images)),
        torch.from_numpy(labels),
        info.num_classes,
        info.classes,
        f"{name}/{split}",
    )
