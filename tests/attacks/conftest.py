"""Fixtures for the attack tests: tiny models on 3x8x8 images, one thread (tiny models gain nothing from more,
and on a shared 2-core machine more threads only oversubscribe it)."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
import torch
import torch.nn as nn


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class TinyCNN(nn.Module):
    """conv-BN-ReLU-dropout-pool-linear: has BN statistics and dropout, so eval mode matters."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.drop = nn.Dropout(0.3)
        self.head = nn.Linear(8 * 4 * 4, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.drop(torch.relu(self.bn(self.conv(x))))
        return self.head(nn.functional.avg_pool2d(h, 2).flatten(1))


@pytest.fixture(scope="session")
def make_cnn() -> Callable[..., TinyCNN]:
    """Builds a randomly initialised TinyCNN with fixed weights per seed, in eval mode."""

    def make(seed: int = 0, num_classes: int = 10) -> TinyCNN:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = TinyCNN(num_classes)
            # Non-trivial BN statistics, so a BN left in train mode would change the outputs.
            model.bn.running_mean.uniform_(-0.1, 0.1)
            model.bn.running_var.uniform_(0.5, 1.5)
        return model.eval()

    return make


@pytest.fixture(scope="session")
def images() -> Callable[..., torch.Tensor]:
    """Seeded images (n, 3, 8, 8) in [0, 1], with some pixels exactly 0 and 1 to exercise clipping."""

    def make(n: int = 16, seed: int = 0, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        generator = torch.Generator().manual_seed(seed)
        x = torch.rand(n, 3, 8, 8, generator=generator, dtype=dtype)
        x[:, 0, 0, :] = 0.0
        x[:, 0, 1, :] = 1.0
        return x

    return make


def predictions(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The model's own labels, so clean accuracy is 100 % and every point has something to lose."""
    with torch.no_grad():
        return model(x).argmax(dim=1)


@pytest.fixture(scope="session")
def labels_of() -> Callable[[nn.Module, torch.Tensor], torch.Tensor]:
    return predictions
