"""Shared test settings and fixtures.

One intra-op thread: the test models are tiny, and on a small shared CI machine more threads than free cores
make them crawl (a tiny RobNet step took 20 s with 2 threads under load and 0.07 s with 1).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from dsnet_testing import write_cifar10_folder

torch.set_num_threads(1)


@pytest.fixture(scope="session")
def cifar10_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A learnable CIFAR-10 folder: 200 training and 40 test images (shared, treat as read-only)."""
    return write_cifar10_folder(tmp_path_factory.mktemp("cifar10"))
