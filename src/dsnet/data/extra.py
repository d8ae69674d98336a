"""Generated or extra training images from an `.npz` file, memory-mapped, mixed into every batch.

The published generated CIFAR sets (Gowal et al. 2021; Wang et al., ICML 2023: 1M to 50M images made by a
diffusion model, e.g. `cifar10/1m.npz`) are `.npz` archives with two arrays: `image`, uint8 (N, 32, 32, 3), and
`label`, integer (N,). `np.load` would read a whole array into memory (50 GB for 50M images); an archive
written by `np.savez` stores its arrays uncompressed, so each one is a contiguous run of bytes inside the zip
file and is mapped here with `np.memmap`: opening costs nothing, and a batch reads only its rows. A compressed
archive (`np.savez_compressed`) cannot be mapped; the error says how to rewrite it.

Which extra images a batch takes is drawn by `dsnet.data.DeviceLoader`, with replacement as the reference sampler
does, as a pure function of (seed, epoch, step, rank), so a run resumed mid-epoch takes the same ones.
"""

from __future__ import annotations

import os
import struct
import zipfile
from pathlib import Path

import numpy as np
import torch

from dsnet.errors import DataError

__all__ = ["ExtraImages", "open_extra_images"]

_LOCAL_HEADER = struct.Struct("<4s5H3L2H")  # the fixed 30 bytes of a zip local file header


class ExtraImages:
    """Images and labels of an extra training set, read row by row from a memory map.

    Attributes:
        path: the `.npz` file.
        images: (N, 32, 32, 3) uint8 memory map (rows are read on indexing).
        labels: (N,) int64 in memory (8 bytes per image).
        num_classes: the dataset's number of classes (labels are checked against it).
    """

    def __init__(self, path: Path, images: np.ndarray, labels: np.ndarray, num_classes: int) -> None:
        self.path = path
        self.images = images
        self.labels = torch.from_numpy(np.array(labels, dtype=np.int64))  # a copy: 8 bytes per image
        self.num_classes = num_classes

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def batch(self, index: torch.Tensor, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """Rows `index` (CPU int64) as (B, 3, 32, 32) uint8 and (B,) int64 on `device`."""
        order = np.argsort(index.numpy(), kind="stable")  # reading the map in file order is the fast way
        rows = np.empty((len(index), *self.images.shape[1:]), dtype=np.uint8)
        rows[order] = self.images[index.numpy()[order]]
        images = torch.from_numpy(rows).permute(0, 3, 1, 2).contiguous()
        labels = self.labels.index_select(0, index)
        if device.type == "cuda":
            images, labels = images.pin_memory(), labels.pin_memory()
        return images.to(device, non_blocking=True), labels.to(device, non_blocking=True)

    def describe(self) -> str:
        return f"{len(self):,} extra images from {self.path}"


def _member_offset(path: Path, archive: zipfile.ZipFile, name: str) -> int:
    """Where the bytes of the stored (uncompressed) member `name` start in the file."""
    info = archive.getinfo(name)
    if info.compress_type != zipfile.ZIP_STORED:
        raise DataError(
            f"{path} is a compressed .npz (np.savez_compressed), which cannot be memory-mapped; rewrite it once "
            f"uncompressed: python -c \"import numpy as np; d = np.load('{path}'); "
            f"np.savez('{path.with_suffix('')}-stored.npz', image=d['image'], label=d['label'])\""
        )
    with path.open("rb") as f:
        f.seek(info.header_offset)
        header = f.read(_LOCAL_HEADER.size)
    if len(header) != _LOCAL_HEADER.size or header[:4] != b"PK\x03\x04":
        raise DataError(f"{path} is a truncated or corrupt .npz (bad zip header of {name}); download it again")
    fields = _LOCAL_HEADER.unpack(header)
    name_length, extra_length = fields[-2], fields[-1]
    return info.header_offset + _LOCAL_HEADER.size + name_length + extra_length


def _map_array(path: Path, archive: zipfile.ZipFile, name: str) -> np.ndarray:
    offset = _member_offset(path, archive, name)
    with path.open("rb") as f:
        f.seek(offset)
        try:
            version = np.lib.format.read_magic(f)
            read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                           else np.lib.format.read_array_header_2_0)
            shape, fortran, dtype = read_header(f)
        except ValueError as error:
            raise DataError(f"{path}: {name} is not a readable .npy array ({error}); download it again") from None
        data_offset = f.tell()
    if fortran:
        raise DataError(f"{path}: {name} is stored in Fortran order; save it C-contiguous (np.ascontiguousarray)")
    needed = data_offset + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if os.path.getsize(path) < needed:
        raise DataError(f"{path} is truncated: {name} needs {needed:,} bytes, the file has "
                        f"{os.path.getsize(path):,}; download it again")
    return np.memmap(path, dtype=dtype, mode="r", offset=data_offset, shape=tuple(shape))


def open_extra_images(path: str | os.PathLike[str], num_classes: int) -> ExtraImages:
    """Opens an extra-data `.npz` (arrays `image` uint8 (N, 32, 32, 3) and `label` (N,)) without reading it.

    Raises:
        DataError: a missing, compressed, truncated or malformed file, or labels outside [0, num_classes); the
            one-line message names the file and what to do.
    """
    path = Path(path)
    if not path.is_file():
        what = "is a folder, not a file" if path.is_dir() else "does not exist"
        found = sorted(p.name for p in path.glob("*.npz"))[:3] if path.is_dir() else []
        inside = f" (it holds {', '.join(found)})" if found else ""
        raise DataError(f"data.extra_path {path} {what}{inside}; point it at an .npz file with arrays image and label")
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as error:
        raise DataError(f"data.extra_path {path} is not a readable .npz ({error}); download it again") from None
    with archive:
        names = set(archive.namelist())
        missing = [key for key in ("image", "label") if f"{key}.npy" not in names]
        if missing:
            found = ", ".join(sorted(n.removesuffix(".npy") for n in names)) or "nothing"
            raise DataError(f"{path} has no array {' or '.join(missing)} (it has: {found}); the extra data needs "
                            "image (N, 32, 32, 3) uint8 and label (N,)")
        images = _map_array(path, archive, "image.npy")
        labels = np.asarray(_map_array(path, archive, "label.npy"))
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1:] != (32, 32, 3):
        raise DataError(f"{path}: image is {images.dtype} {images.shape}, expected uint8 (N, 32, 32, 3)")
    if labels.ndim != 1 or labels.shape[0] != images.shape[0] or not np.issubdtype(labels.dtype, np.integer):
        raise DataError(f"{path}: label is {labels.dtype} {labels.shape}, expected integers ({images.shape[0]},)")
    if len(labels) == 0:
        raise DataError(f"{path} holds no images")
    low, high = int(labels.min()), int(labels.max())
    if low < 0 or high >= num_classes:
        raise DataError(f"{path}: labels run from {low} to {high}, outside [0, {num_classes}) of the dataset")
    return ExtraImages(path, images, labels, num_classes)
