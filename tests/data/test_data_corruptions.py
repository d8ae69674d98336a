"""CIFAR-10-C / CIFAR-100-C: the official archive's layout (5 severity blocks per .npy, one labels.npy), the rows of
one severity in the order asked for, a checked, resumable download through the fake server, and one-line errors."""

from __future__ import annotations

import hashlib
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from dsnet.data import CORRUPTION_SETS, load_corrupted
from dsnet.data.corruptions import CORRUPTIONS, EXTRA_CORRUPTIONS, SEVERITIES, CorruptionSet, download_corruptions
from dsnet.data.datasets import Resource
from dsnet.errors import ConfigError, DataError, UnknownNameError

N = 6  # test images per severity in these small files (10,000 in the official ones)


def _write(folder: Path, names: tuple[str, ...], n: int = N) -> dict[str, np.ndarray]:
    """Files in the official layout: each image's first pixel holds its severity and its position."""
    folder.mkdir(parents=True, exist_ok=True)
    labels = np.arange(n, dtype=np.uint8) % 10
    np.save(folder / "labels.npy", np.tile(labels, len(SEVERITIES)))
    written = {}
    for offset, name in enumerate(names):
        images = np.zeros((len(SEVERITIES) * n, 32, 32, 3), dtype=np.uint8)
        for severity in SEVERITIES:
            block = images[(severity - 1) * n : severity * n]
            block[:, 0, 0, 0] = severity
            block[:, 0, 0, 1] = np.arange(n)
            block[:, 0, 0, 2] = offset
        np.save(folder / f"{name}.npy", images)
        written[name] = images
    return written


def test_the_official_archives_and_the_benchmark_corruptions() -> None:
    assert CORRUPTION_SETS.names() == ["cifar10c", "cifar100c"]
    c10, c100 = CORRUPTION_SETS.get("cifar10c"), CORRUPTION_SETS.get("cifar100c")
    assert (c10.archive.md5, c10.folder, c10.clean) == ("56bf5dcef84df0e2308c6dcbcbbd8499", "CIFAR-10-C", "cifar10")
    assert (c100.archive.md5, c100.folder, c100.clean) == ("11f0ed0f1191edbf9fa23466ae6021d3", "CIFAR-100-C",
                                                           "cifar100")
    assert "zenodo.org/records/2535967" in c10.archive.url and "zenodo.org/records/3555552" in c100.archive.url
    assert len(CORRUPTIONS) == 15 and len(set(CORRUPTIONS) | set(EXTRA_CORRUPTIONS)) == 19
    assert {"gaussian_noise", "jpeg_compression", "elastic_transform", "fog"} <= set(CORRUPTIONS)


def test_one_severity_is_read_in_the_order_asked_for(tmp_path: Path) -> None:
    _write(tmp_path / "CIFAR-10-C", ("fog",))
    split = load_corrupted("cifar10", tmp_path, "fog", 3, torch.tensor([4, 0, 2]), download=False)
    assert split.images.shape == (3, 3, 32, 32) and split.images.dtype == torch.uint8  # HWC on disk, CHW here
    assert split.images[:, 0, 0, 0].tolist() == [3, 3, 3]  # severity 3's block
    assert split.images[:, 1, 0, 0].tolist() == [4, 0, 2]  # the positions asked for, in that order
    assert split.labels.tolist() == [4, 0, 2] and split.labels.dtype == torch.int64
    assert split.name == "cifar10c/fog/3" and split.num_classes == 10
    everything = load_corrupted("cifar10", tmp_path, "fog", 5, download=False)
    assert len(everything) == N and everything.images[:, 0, 0, 0].unique().tolist() == [5]


def test_bad_names_files_and_sizes_get_one_line(tmp_path: Path) -> None:
    _write(tmp_path / "CIFAR-10-C", ("fog",))
    with pytest.raises(UnknownNameError, match="did you mean 'fog'"):
        load_corrupted("cifar10", tmp_path, "fogg", 1, download=False)
    with pytest.raises(ConfigError, match="severity must be one of 1, 2, 3, 4, 5"):
        load_corrupted("cifar10", tmp_path, "fog", 6, download=False)
    with pytest.raises(ConfigError, match="svhn has no common-corruption test set"):
        load_corrupted("svhn", tmp_path, "fog", 1, download=False)
    with pytest.raises(DataError, match=r"missing .*CIFAR-10-C/snow\.npy.*dsnet download cifar10c"):
        load_corrupted("cifar10", tmp_path, "snow", 1, download=False)
    with pytest.raises(DataError, match="holds 6 images per severity, but the cifar10 test set has 10000"):
        load_corrupted("cifar10", tmp_path, "fog", 1, test_size=10_000, download=False)
    np.save(tmp_path / "CIFAR-10-C" / "fog.npy", np.zeros((7, 32, 32, 3), dtype=np.uint8))
    with pytest.raises(DataError, match=r"fog\.npy holds uint8 \(7, 32, 32, 3\), expected uint8 \(50000, 32, 32, 3\)"):
        load_corrupted("cifar10", tmp_path, "fog", 1, download=False)
    (tmp_path / "CIFAR-10-C" / "fog.npy").write_bytes(b"\x93NUMPY garbage")
    with pytest.raises(DataError, match=r"fog\.npy is not a readable \.npy file"):
        load_corrupted("cifar10", tmp_path, "fog", 1, download=False)
    _write(tmp_path / "CIFAR-10-C", ("fog",))
    np.save(tmp_path / "CIFAR-10-C" / "labels.npy", np.zeros(5 * N, dtype=np.uint8) + 10)
    with pytest.raises(DataError, match="holds label 10, but cifar10 has 10 classes"):
        load_corrupted("cifar10", tmp_path, "fog", 1, download=False)


def test_download_checks_the_md5_and_unpacks_the_archive(tmp_path: Path, fake_server,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    source = tmp_path / "source"
    written = _write(source / "CIFAR-10-C", CORRUPTIONS + EXTRA_CORRUPTIONS, n=2)
    archive = tmp_path / "CIFAR-10-C.tar"
    with tarfile.open(archive, "w") as tar:
        tar.add(source / "CIFAR-10-C", arcname="CIFAR-10-C")
    blob = archive.read_bytes()
    url = "https://zenodo.example/CIFAR-10-C.tar"
    fake_server.files[url] = blob
    entry = CORRUPTION_SETS.get("cifar10c")
    patched = CorruptionSet(entry.name, entry.clean, entry.folder,
                            Resource(url, entry.archive.filename, hashlib.md5(blob).hexdigest(), extract=True),
                            entry.homepage)
    monkeypatch.setitem(CORRUPTION_SETS._entries, "cifar10c", patched)

    root = tmp_path / "data"
    split = load_corrupted("cifar10", root, "zoom_blur", 2)  # missing: downloaded, checked and unpacked
    assert len(fake_server.requests) == 1
    assert torch.equal(split.images, torch.from_numpy(written["zoom_blur"][2:4].transpose(0, 3, 1, 2).copy()))
    download_corruptions("cifar10c", root)  # everything is there: no second request
    assert len(fake_server.requests) == 1

    wrong = CorruptionSet(entry.name, entry.clean, entry.folder,
                          Resource(url, entry.archive.filename, "0" * 32, extract=True), entry.homepage)
    monkeypatch.setitem(CORRUPTION_SETS._entries, "cifar10c", wrong)
    with pytest.raises(DataError, match="MD5"):
        download_corruptions("cifar10c", tmp_path / "elsewhere")
