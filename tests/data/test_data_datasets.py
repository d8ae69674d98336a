"""Reading CIFAR-10, CIFAR-100 and SVHN from their real file formats, and the errors for bad or missing files."""

from __future__ import annotations

import logging
import os
import pickle

import numpy as np
import pytest
import torch

import dsnet.data.datasets
from dsnet.data import DATASETS, ImageSplit, load_dataset, missing_files
from dsnet.errors import DataError, UnknownNameError


@pytest.fixture
def downloads_fail(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any download attempt fails the test."""

    def fail(*args, **kwargs):
        raise AssertionError("a download was attempted although the files are present")

    monkeypatch.setattr(dsnet.data.datasets, "download_file", fail)
    monkeypatch.setattr(dsnet.data.datasets, "extract_tar", fail)


def test_registry_lists_the_three_datasets():
    assert DATASETS.names() == ["cifar10", "cifar100", "svhn"]
    assert [DATASETS.get(n).num_classes for n in DATASETS] == [10, 100, 10]
    classes = DATASETS.get("cifar100").classes
    assert len(classes) == 100 and list(classes) == sorted(classes)  # the official fine labels are alphabetical
    assert DATASETS.get("svhn").splits == ("train", "test", "extra")


def test_official_checksums():
    cifar10, cifar100, svhn = (DATASETS.get(n) for n in ("cifar10", "cifar100", "svhn"))
    assert cifar10.resources["train"][0].md5 == "c58f30108f718f92721af3b95e74349a"
    assert cifar100.resources["test"][0].md5 == "eb9058c3a382ffc7106e4002c42a8d85"
    assert {s: r[0].md5 for s, r in svhn.resources.items()} == {
        "train": "e26dedcc434d2e4c54c9b2d4a06d8373",
        "test": "eb5a983be6a315427106f1b8d1a6a3b5",
        "extra": "a93ce644f1a588dc4d68dda5feec44a7",
    }


def test_cifar10_loads_pixels_and_labels_unchanged(cifar10_root, downloads_fail):
    root, batches = cifar10_root
    train = load_dataset("cifar10", root, "train")
    assert train.images.shape == (20, 3, 32, 32) and train.images.dtype == torch.uint8
    assert train.labels.shape == (20,) and train.labels.dtype == torch.int64
    expected = np.concatenate([batches[f"data_batch_{i}"][0] for i in range(1, 6)])
    assert torch.equal(train.images, torch.from_numpy(expected))
    assert train.labels.tolist() == [int(v) for i in range(1, 6) for v in batches[f"data_batch_{i}"][1]]
    assert train.num_classes == 10 and train.classes[0] == "airplane" and train.name == "cifar10/train"

    test = load_dataset("cifar10", root, "test", download=False)
    assert torch.equal(test.images, torch.from_numpy(batches["test_batch"][0]))
    assert test.labels.tolist() == [9, 0, 5]


def test_cifar100_uses_fine_labels(cifar100_root, downloads_fail):
    root, contents = cifar100_root
    for split in ("train", "test"):
        loaded = load_dataset("cifar100", root, split)
        images, labels = contents[split]
        assert torch.equal(loaded.images, torch.from_numpy(images))
        assert loaded.labels.tolist() == labels.tolist() and loaded.num_classes == 100


def test_svhn_transposes_and_maps_label_10_to_0(svhn_root, downloads_fail):
    root, contents = svhn_root
    for split in ("train", "test"):
        loaded = load_dataset("svhn", root, split)
        images, digits = contents[split]
        assert loaded.images.shape == (len(images), 3, 32, 32) and loaded.images.dtype == torch.uint8
        assert loaded.images.is_contiguous()
        assert torch.equal(loaded.images, torch.from_numpy(images))
        assert loaded.labels.dtype == torch.int64 and loaded.labels.tolist() == digits.tolist()


def test_missing_split_without_download_names_files_and_fix(tmp_path):
    with pytest.raises(DataError) as info:
        load_dataset("svhn", tmp_path, "extra", download=False)
    message = str(info.value)
    assert "extra_32x32.mat" in message and "dsnet download svhn" in message and "download=True" in message
    assert "\n" not in message
    assert missing_files("svhn", tmp_path, "extra") == [tmp_path / "extra_32x32.mat"]


@pytest.mark.parametrize("lost", ["data_batch_2", "data_batch_1"])
def test_lost_training_batch_is_an_error_naming_it(cifar10_root, lost):
    root, _ = cifar10_root
    (root / "cifar-10-batches-py" / lost).unlink()
    with pytest.raises(DataError, match=f"missing cifar-10-batches-py/{lost} under"):
        load_dataset("cifar10", root, "train", download=False)


def test_missing_test_batch_is_an_error_naming_it(cifar10_root):
    root, _ = cifar10_root
    (root / "cifar-10-batches-py" / "test_batch").unlink()
    with pytest.raises(DataError, match="test_batch"):
        load_dataset("cifar10", root, "test", download=False)


def test_first_batches_only_load_with_a_warning(cifar10_root, downloads_fail, caplog):
    # The shared real-image sample holds data_batch_1..4 only; such a subset must load without a download.
    root, _ = cifar10_root
    (root / "cifar-10-batches-py" / "data_batch_5").unlink()
    with caplog.at_level(logging.WARNING, logger="dsnet.data"):
        train = load_dataset("cifar10", root, "train")
    assert len(train) == 16
    assert "data_batch_5" in caplog.text and "first 4 of 5" in caplog.text


def test_truncated_pickle_names_the_file(cifar10_root):
    root, _ = cifar10_root
    path = root / "cifar-10-batches-py" / "data_batch_3"
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(DataError) as info:
        load_dataset("cifar10", root, "train")
    message = str(info.value)
    assert str(path) in message and "delete" in message and "\n" not in message
    assert not isinstance(info.value.__cause__, DataError)  # the pickle error is kept for --debug


def test_wrong_array_size_names_the_file(cifar10_root):
    root, _ = cifar10_root
    path = root / "cifar-10-batches-py" / "test_batch"
    entry = {b"data": np.zeros((2, 1000), np.uint8), b"labels": [0, 1]}
    path.write_bytes(pickle.dumps(entry, protocol=2))
    with pytest.raises(DataError, match="test_batch.*'data' must be uint8 \\(N, 3072\\)"):
        load_dataset("cifar10", root, "test")


def test_label_count_mismatch_names_the_file(cifar100_root):
    root, _ = cifar100_root
    path = root / "cifar-100-python" / "test"
    path.write_bytes(pickle.dumps({b"data": np.zeros((2, 3072), np.uint8), b"fine_labels": [0]}, protocol=2))
    with pytest.raises(DataError, match="cifar-100-python/test.*'fine_labels' must hold 2 integers"):
        load_dataset("cifar100", root, "test")


def test_pickle_that_would_run_code_is_refused(cifar10_root, tmp_path):
    root, _ = cifar10_root
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return (os.mkdir, (str(marker),))

    (root / "cifar-10-batches-py" / "test_batch").write_bytes(pickle.dumps({b"data": Exploit()}, protocol=2))
    with pytest.raises(DataError, match="refusing to load posix.mkdir|refusing to load nt.mkdir"):
        load_dataset("cifar10", root, "test")
    assert not marker.exists()


def test_truncated_mat_names_the_file(svhn_root):
    root, _ = svhn_root
    path = root / "train_32x32.mat"
    path.write_bytes(path.read_bytes()[:2000])
    with pytest.raises(DataError) as info:
        load_dataset("svhn", root, "train")
    assert str(path) in str(info.value) and "delete" in str(info.value) and "\n" not in str(info.value)


def test_mat_with_wrong_shape_names_the_file(svhn_root):
    import scipy.io

    root, _ = svhn_root
    path = root / "test_32x32.mat"
    scipy.io.savemat(path, {"X": np.zeros((28, 28, 3, 2), np.uint8), "y": np.ones((2, 1), np.uint8)})
    with pytest.raises(DataError, match="test_32x32.mat.*'X' must be uint8 \\(32, 32, 3, N\\)"):
        load_dataset("svhn", root, "test")


def test_unknown_names_suggest_close_matches(tmp_path):
    with pytest.raises(UnknownNameError, match="did you mean 'cifar10'"):
        load_dataset("cifar01", tmp_path)
    with pytest.raises(UnknownNameError, match="valid splits: train, test"):
        load_dataset("cifar10", tmp_path, "extra")


def test_image_split_checks_and_moves_once():
    split = ImageSplit(torch.zeros(4, 3, 8, 8, dtype=torch.uint8), torch.arange(4), 10)
    assert split.to("cpu") is split and split.device == torch.device("cpu") and len(split) == 4
    moved = split.to("meta")
    assert moved.images.device.type == "meta" and moved.labels.device.type == "meta"
    subset = split.subset([3, 1])
    assert subset.labels.tolist() == [3, 1] and len(subset) == 2
    with pytest.raises(ValueError, match="uint8"):
        ImageSplit(torch.zeros(4, 3, 8, 8), torch.arange(4), 10)
    with pytest.raises(ValueError, match="int64"):
        ImageSplit(torch.zeros(4, 3, 8, 8, dtype=torch.uint8), torch.arange(3), 10)
