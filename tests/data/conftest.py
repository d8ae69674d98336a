"""Tiny dataset files in the real on-disk formats, and a fake HTTP server, for the `dsnet.data` tests.

The CIFAR pickles have the official key names and pickle protocol 2; SVHN files are MATLAB files written by
scipy with X (32, 32, 3, N) uint8 and y (N, 1) holding 10 for the digit 0. No test reads the network: the
autouse fixture below makes every URL fetch fail unless a test installs `fake_server`.
"""

from __future__ import annotations

import io
import pickle
import tarfile
from pathlib import Path
from urllib.error import HTTPError

import numpy as np
import pytest
import scipy.io

import dsnet.data.download


def write_cifar_batch(path: Path, images: np.ndarray, labels: np.ndarray, label_key: bytes = b"labels") -> None:
    """Writes a CIFAR python batch: images (N, 3, 32, 32) uint8 are stored CHW-flattened as (N, 3072)."""
    entry = {
        b"batch_label": b"training batch 1 of 5",
        label_key: [int(v) for v in labels],
        b"data": images.reshape(len(images), -1),
        b"filenames": [f"img_{i}.png".encode() for i in range(len(images))],
    }
    if label_key == b"fine_labels":
        entry[b"coarse_labels"] = [int(v) // 5 for v in labels]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pickle.dumps(entry, protocol=2))


def write_svhn_mat(path: Path, images: np.ndarray, digits: np.ndarray) -> None:
    """Writes an SVHN `*_32x32.mat`: X (32, 32, 3, N) uint8 and y (N, 1) with the digit 0 stored as 10."""
    labels = np.where(digits == 0, 10, digits).astype(np.uint8).reshape(-1, 1)
    path.parent.mkdir(parents=True, exist_ok=True)
    scipy.io.savemat(path, {"X": images.transpose(2, 3, 1, 0), "y": labels})


def make_tar_gz(path: Path, folder: Path, arcname: str) -> bytes:
    """Packs `folder` as `arcname/` into a tar.gz at `path`; returns the archive's bytes."""
    with tarfile.open(path, "w:gz") as tar:
        tar.add(folder, arcname=arcname)
    return path.read_bytes()


def random_images(rng: np.random.Generator, n: int) -> np.ndarray:
    return rng.integers(0, 256, size=(n, 3, 32, 32), dtype=np.uint8)


class DataFiles:
    """Builders for the fixtures and tests (pytest fixtures cannot be imported as plain functions)."""

    write_cifar_batch = staticmethod(write_cifar_batch)
    write_svhn_mat = staticmethod(write_svhn_mat)
    make_tar_gz = staticmethod(make_tar_gz)
    random_images = staticmethod(random_images)


@pytest.fixture
def files() -> type[DataFiles]:
    return DataFiles


@pytest.fixture
def cifar10_root(tmp_path: Path) -> tuple[Path, dict[str, tuple[np.ndarray, np.ndarray]]]:
    """A CIFAR-10 folder with 5 training batches of 4 images and a test batch of 3; returns (root, contents)."""
    rng = np.random.default_rng(0)
    root = tmp_path / "cifar10"
    folder = root / "cifar-10-batches-py"
    batches = {}
    for i in range(1, 6):
        images, labels = random_images(rng, 4), rng.integers(0, 10, 4)
        write_cifar_batch(folder / f"data_batch_{i}", images, labels)
        batches[f"data_batch_{i}"] = (images, labels)
    images, labels = random_images(rng, 3), np.array([9, 0, 5])
    write_cifar_batch(folder / "test_batch", images, labels)
    batches["test_batch"] = (images, labels)
    meta = {b"num_cases_per_batch": 4, b"label_names": [b"airplane"] * 10, b"num_vis": 3072}
    (folder / "batches.meta").write_bytes(pickle.dumps(meta, protocol=2))
    return root, batches


@pytest.fixture
def cifar100_root(tmp_path: Path) -> tuple[Path, dict[str, tuple[np.ndarray, np.ndarray]]]:
    """A CIFAR-100 folder with 6 training and 3 test images; returns (root, contents)."""
    rng = np.random.default_rng(1)
    root = tmp_path / "cifar100"
    contents = {
        "train": (random_images(rng, 6), np.array([0, 99, 50, 3, 3, 42])),
        "test": (random_images(rng, 3), np.array([7, 99, 0])),
    }
    for split, (images, labels) in contents.items():
        write_cifar_batch(root / "cifar-100-python" / split, images, labels, label_key=b"fine_labels")
    return root, contents


@pytest.fixture
def svhn_root(tmp_path: Path) -> tuple[Path, dict[str, tuple[np.ndarray, np.ndarray]]]:
    """SVHN train (5 images) and test (3 images) files; returns (root, contents with digits 0..9)."""
    rng = np.random.default_rng(2)
    root = tmp_path / "svhn"
    contents = {
        "train": (random_images(rng, 5), np.array([0, 1, 9, 0, 5])),
        "test": (random_images(rng, 3), np.array([3, 0, 8])),
    }
    for split, (images, digits) in contents.items():
        write_svhn_mat(root / f"{split}_32x32.mat", images, digits)
    return root, contents


class FakeResponse(io.BytesIO):
    """What `urlopen` returns: a readable body with `status` and `headers`; may drop the connection early."""

    def __init__(self, body: bytes, status: int, fail_after: int | None) -> None:
        super().__init__(body)
        self.status = status
        self.headers = {"Content-Length": str(len(body))}
        self.fail_after = fail_after

    def read(self, size: int | None = -1) -> bytes:
        if self.fail_after is not None:
            if self.tell() >= self.fail_after:
                raise ConnectionResetError("connection reset by peer")
            size = min(size if size and size > 0 else len(self.getvalue()), self.fail_after - self.tell())
        return super().read(size)


class FakeServer:
    """Serves `files` (URL -> bytes) in place of `urllib.request.urlopen`, with HTTP Range support.

    Attributes:
        files: what it serves.
        honour_range: answer a Range request with 206 and the tail (False: 200 and the whole file).
        fail_after: drop the connection after this many bytes of the next response (then reset to None).
        requests: (url, Range header or None) of every request, in order.
    """

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.honour_range = True
        self.fail_after: int | None = None
        self.requests: list[tuple[str, str | None]] = []

    def __call__(self, request, timeout: float | None = None) -> FakeResponse:
        url, byte_range = request.full_url, request.get_header("Range")
        self.requests.append((url, byte_range))
        if url not in self.files:
            raise HTTPError(url, 404, "Not Found", {}, None)
        body, status = self.files[url], 200
        if byte_range and self.honour_range:
            start = int(byte_range.removeprefix("bytes=").removesuffix("-"))
            if start >= len(body):
                raise HTTPError(url, 416, "Range Not Satisfiable", {}, None)
            body, status = body[start:], 206
        fail_after, self.fail_after = self.fail_after, None
        return FakeResponse(body, status, fail_after)


def _no_network(request, timeout: float | None = None):
    raise AssertionError(f"test tried to reach the network: {request.full_url}")


@pytest.fixture(autouse=True)
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every URL fetch fails the test unless it installs `fake_server`."""
    monkeypatch.setattr(dsnet.data.download, "urlopen", _no_network)


@pytest.fixture
def fake_server(monkeypatch: pytest.MonkeyPatch) -> FakeServer:
    server = FakeServer()
    monkeypatch.setattr(dsnet.data.download, "urlopen", server)
    return server
