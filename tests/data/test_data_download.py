"""Resumable, checksummed downloads and safe archive extraction, against a fake HTTP server."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import tarfile
from urllib.error import URLError

import numpy as np
import pytest
import torch

import dsnet.data.download
from dsnet.data import DATASETS, download_dataset, download_file, extract_tar, load_dataset
from dsnet.errors import DataError

URL = "https://example.org/files/blob.bin"
BLOB = bytes(range(256)) * 40  # 10 KiB
BLOB_MD5 = hashlib.md5(BLOB).hexdigest()


def test_download_verifies_and_renames(tmp_path, fake_server):
    fake_server.files[URL] = BLOB
    dest = download_file(URL, tmp_path / "sub" / "blob.bin", BLOB_MD5)
    assert dest.read_bytes() == BLOB and not (tmp_path / "sub" / "blob.bin.part").exists()
    assert fake_server.requests == [(URL, None)]
    download_file(URL, dest, BLOB_MD5)  # already there: no second request
    assert len(fake_server.requests) == 1


def test_download_resumes_a_part_file_with_a_range_request(tmp_path, fake_server):
    fake_server.files[URL] = BLOB
    (tmp_path / "blob.bin.part").write_bytes(BLOB[:3000])
    dest = download_file(URL, tmp_path / "blob.bin", BLOB_MD5)
    assert fake_server.requests == [(URL, "bytes=3000-")]
    assert dest.read_bytes() == BLOB


def test_interrupted_download_keeps_the_part_and_resumes(tmp_path, fake_server):
    fake_server.files[URL] = BLOB
    fake_server.fail_after = 4096
    with pytest.raises(DataError, match="rerun to resume"):
        download_file(URL, tmp_path / "blob.bin", BLOB_MD5)
    assert (tmp_path / "blob.bin.part").read_bytes() == BLOB[:4096]
    download_file(URL, tmp_path / "blob.bin", BLOB_MD5)
    assert fake_server.requests[-1] == (URL, "bytes=4096-")
    assert (tmp_path / "blob.bin").read_bytes() == BLOB


def test_server_ignoring_range_restarts_from_scratch(tmp_path, fake_server):
    fake_server.files[URL] = BLOB
    fake_server.honour_range = False
    (tmp_path / "blob.bin.part").write_bytes(b"garbage" * 10)
    assert download_file(URL, tmp_path / "blob.bin", BLOB_MD5).read_bytes() == BLOB


def test_complete_part_file_is_accepted_on_416(tmp_path, fake_server):
    fake_server.files[URL] = BLOB
    (tmp_path / "blob.bin.part").write_bytes(BLOB)
    assert download_file(URL, tmp_path / "blob.bin", BLOB_MD5).read_bytes() == BLOB


def test_wrong_md5_deletes_the_download_and_names_the_file(tmp_path, fake_server):
    fake_server.files[URL] = BLOB
    with pytest.raises(DataError) as info:
        download_file(URL, tmp_path / "blob.bin", "0" * 32)
    assert "blob.bin" in str(info.value) and "rerun to download again" in str(info.value)
    assert not (tmp_path / "blob.bin").exists() and not (tmp_path / "blob.bin.part").exists()


def test_existing_file_with_wrong_md5_is_reported_not_overwritten(tmp_path, fake_server):
    (tmp_path / "blob.bin").write_bytes(b"not the archive")
    with pytest.raises(DataError, match="blob.bin: MD5 .* delete it and rerun"):
        download_file(URL, tmp_path / "blob.bin", BLOB_MD5)
    assert fake_server.requests == []


def test_http_error_is_a_data_error_naming_the_url(tmp_path, fake_server):
    with pytest.raises(DataError, match=f"cannot download {URL}: HTTP 404"):
        download_file(URL, tmp_path / "blob.bin", BLOB_MD5)


def _cifar10_archive(tmp_path, files, monkeypatch, fake_server):
    """Serves a tiny cifar-10-python.tar.gz at the official URL, with the registry's MD5 set to match it."""
    rng = np.random.default_rng(5)
    source = tmp_path / "source" / "cifar-10-batches-py"
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        files.write_cifar_batch(source / name, files.random_images(rng, 2), rng.integers(0, 10, 2))
    blob = files.make_tar_gz(tmp_path / "source.tar.gz", source, "cifar-10-batches-py")
    info = DATASETS.get("cifar10")
    archive = dataclasses.replace(info.resources["train"][0], md5=hashlib.md5(blob).hexdigest())
    patched = dataclasses.replace(info, resources={"train": (archive,), "test": (archive,)})
    monkeypatch.setitem(DATASETS._entries, "cifar10", patched)
    fake_server.files[archive.url] = blob
    return blob


def test_load_downloads_extracts_and_then_stays_offline(tmp_path, files, monkeypatch, fake_server):
    _cifar10_archive(tmp_path, files, monkeypatch, fake_server)
    root = tmp_path / "data"
    train = load_dataset("cifar10", root, "train")
    assert train.images.shape == (10, 3, 32, 32)
    assert (root / "cifar-10-python.tar.gz").exists()
    assert len(fake_server.requests) == 1
    test = load_dataset("cifar10", root, "test")  # same archive, already extracted: no request
    assert len(test) == 2 and len(fake_server.requests) == 1

    # A lost batch is restored from the verified archive on disk, without the network.
    (root / "cifar-10-batches-py" / "data_batch_2").unlink()
    assert torch.equal(load_dataset("cifar10", root, "train").images, train.images)
    assert len(fake_server.requests) == 1


def test_official_md5_rejects_a_different_archive(tmp_path, files, fake_server):
    rng = np.random.default_rng(6)
    source = tmp_path / "source" / "cifar-10-batches-py"
    files.write_cifar_batch(source / "test_batch", files.random_images(rng, 2), np.array([1, 2]))
    fake_server.files[DATASETS.get("cifar10").resources["test"][0].url] = files.make_tar_gz(
        tmp_path / "x.tar.gz", source, "cifar-10-batches-py"
    )
    with pytest.raises(DataError, match="cifar-10-python.tar.gz: downloaded file has MD5 .* expected c58f3010"):
        load_dataset("cifar10", tmp_path / "data", "test")
    assert not (tmp_path / "data" / "cifar-10-batches-py").exists()


def test_svhn_downloads_the_mat_file(tmp_path, files, monkeypatch, fake_server):
    rng = np.random.default_rng(7)
    files.write_svhn_mat(tmp_path / "served.mat", files.random_images(rng, 3), np.array([0, 4, 9]))
    blob = (tmp_path / "served.mat").read_bytes()
    info = DATASETS.get("svhn")
    resource = dataclasses.replace(info.resources["test"][0], md5=hashlib.md5(blob).hexdigest())
    monkeypatch.setitem(DATASETS._entries, "svhn", dataclasses.replace(info, resources={"test": (resource,)}))
    fake_server.files[resource.url] = blob
    root = download_dataset("svhn", tmp_path / "data", "test", progress=False)
    assert (root / "test_32x32.mat").read_bytes() == blob
    assert load_dataset("svhn", root, "test").labels.tolist() == [0, 4, 9]


def _tar_with(tmp_path, member: tarfile.TarInfo, data: bytes = b""):
    path = tmp_path / "bad.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        tar.addfile(member, io.BytesIO(data) if member.isfile() else None)
    return path


@pytest.mark.parametrize("name", ["../escape.txt", "/tmp/absolute.txt", "ok/../../escape.txt"])
def test_extraction_refuses_paths_outside_the_folder(tmp_path, name):
    member = tarfile.TarInfo(name)
    member.size = 3
    archive = _tar_with(tmp_path, member, b"bad")
    with pytest.raises(DataError, match="points outside the target folder"):
        extract_tar(archive, tmp_path / "out")
    assert not (tmp_path / "escape.txt").exists()


def test_extraction_refuses_links(tmp_path):
    member = tarfile.TarInfo("cifar-10-batches-py/test_batch")
    member.type, member.linkname = tarfile.SYMTYPE, "/etc/passwd"
    with pytest.raises(DataError, match="link or special file"):
        extract_tar(_tar_with(tmp_path, member), tmp_path / "out")
    assert not (tmp_path / "out" / "cifar-10-batches-py" / "test_batch").exists()


def test_truncated_archive_names_the_archive(tmp_path, files):
    source = tmp_path / "src"
    files.write_cifar_batch(source / "test_batch", files.random_images(np.random.default_rng(0), 8), np.arange(8))
    blob = files.make_tar_gz(tmp_path / "a.tar.gz", source, "cifar-10-batches-py")
    (tmp_path / "a.tar.gz").write_bytes(blob[: len(blob) // 2])
    with pytest.raises(DataError, match="a.tar.gz: cannot extract .* delete it and rerun"):
        extract_tar(tmp_path / "a.tar.gz", tmp_path / "out")


def test_unreachable_host_is_a_data_error(tmp_path, monkeypatch):
    def unreachable(request, timeout=None):
        raise URLError(OSError(-2, "Name or service not known"))

    monkeypatch.setattr(dsnet.data.download, "urlopen", unreachable)
    with pytest.raises(DataError, match=f"cannot download {URL}: .*Name or service not known; check the network"):
        download_file(URL, tmp_path / "blob.bin", BLOB_MD5)
