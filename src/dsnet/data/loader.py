"""Batches straight from device memory, augmented on the device, reproducible to the batch.

The whole split sits on the device as uint8 (`ImageSplit.to(device)`), so an epoch is a permutation and one
gather per batch: no worker processes, no host-to-device copies, nothing for a GPU to wait on.

Everything random is a pure function of `(seed, epoch, step, rank)`:
- the epoch's order is `randperm(n)` from a CPU generator seeded by `(seed, epoch)`, the same on every rank and
  on every device;
- the augmentation of batch `step` draws from a generator on the batch's device seeded by
  `(seed, epoch, step, rank)`;
- with extra images, the rows batch `step` takes from them come from a CPU generator seeded the same way.
So the loader's whole state is `(epoch, step)`, and a run resumed from `state_dict()` sees exactly the batches
an uninterrupted run would have seen, mid-epoch included. The global RNG is never touched.

For DDP each rank takes every `world_size`-th index of the shared permutation, so the ranks' slices are
disjoint and together cover the epoch.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F

from dsnet.data.datasets import ImageSplit
from dsnet.data.extra import ExtraImages
from dsnet.errors import ConfigError

__all__ = ["DeviceLoader", "augment_batch", "to_float"]

logger = logging.getLogger(__name__)


def _derive_seed(*keys: int | str) -> int:
    """A 63-bit seed from a tuple of keys; nearby keys (epoch 3 vs 4) give unrelated streams."""
    digest = hashlib.blake2b(repr(keys).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & (2**63 - 1)


def to_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 images (any shape) to float32 in [0, 1]."""
    return images.to(torch.float32).div_(255)


def augment_batch(
    images: torch.Tensor,
    *,
    crop: bool = True,
    flip: bool = True,
    padding: int = 4,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Random crop with zero padding and random horizontal flip of a uint8 batch, then conversion to [0, 1].

    The same augmentation as torchvision's `RandomCrop(H, padding)` followed by `RandomHorizontalFlip()`,
    done for the whole batch at once: the batch is zero-padded once and every output pixel is gathered from
    its sample's offset window (flipped windows read their columns in reverse), all in one indexing operation
    on the batch's device.

    Args:
        images: (B, C, H, W) uint8.
        crop: take a random HxW window of the image padded by `padding` zero pixels on each side.
        flip: mirror each image left-right with probability 1/2.
        padding: zero pixels added on each side before cropping.
        generator: source of randomness, on the images' device; None uses the global generator.

    Returns:
        (B, C, H, W) float32 in [0, 1].
    """
    if images.dtype != torch.uint8 or images.dim() != 4:
        raise ValueError(f"images must be uint8 (B, C, H, W), got {images.dtype} {tuple(images.shape)}")
    if padding < 0:
        raise ValueError(f"padding must be >= 0, got {padding}")
    crop = crop and padding > 0
    if not (crop or flip):
        return to_float(images)
    batch, channels, height, width = images.shape
    device = images.device
    rows = torch.arange(height, device=device).expand(batch, height)
    cols = torch.arange(width, device=device).expand(batch, width)
    source = images
    if crop:
        source = F.pad(images, (padding, padding, padding, padding))
        # Offsets into the padded image; 0 and 2 * padding are the extreme shifts, padding is no shift.
        offsets = torch.randint(0, 2 * padding + 1, (2, batch, 1), device=device, generator=generator)
        rows = rows + offsets[0]
        cols = cols + offsets[1]
    if flip:
        mirrored = torch.rand(batch, 1, device=device, generator=generator) < 0.5
        # Flipping the cropped window reverses the order in which its columns are read.
        cols = torch.where(mirrored, cols.flip(1), cols)
    out = source[
        torch.arange(batch, device=device)[:, None, None, None],
        torch.arange(channels, device=device)[None, :, None, None],
        rows[:, None, :, None],
        cols[:, None, None, :],
    ]
    return to_float(out)


class DeviceLoader:
    """Iterates over an `ImageSplit` in batches of float images in [0, 1] and int64 labels.

    Each pass over the loader is one epoch; after a full pass the epoch advances by itself, so every epoch
    has a fresh order without a `set_epoch` call. Leaving a pass early (`break`) and iterating again
    continues that epoch where it stopped; `set_epoch` restarts anywhere.

    Args:
        split: the images and labels, already on the device to train on (`split.to(device)`).
        batch_size: images per batch on this rank.
        shuffle: a new random order every epoch; False keeps the split's order (evaluation).
        drop_last: drop the last, smaller batch, and give every rank the same number of images, so all ranks
            run the same number of steps (needed for DDP training). Without it, every image is used once per
            epoch and rank sizes differ by at most one image.
        crop: random crop after `padding` zero pixels on each side.
        flip: random horizontal flip.
        padding: zero padding for the crop (4 in the paper's recipe).
        seed: seed of the order and of the augmentation.
        rank: this process's rank.
        world_size: number of processes sharing each epoch.
        extra: extra (e.g. generated) images mixed into every batch (`dsnet.data.extra`).
        extra_fraction: the share of each batch taken from `extra`: int(batch_size · fraction) images, drawn
            with replacement as a function of (seed, epoch, step, rank); the rest come from `split`, whose one
            pass is still the epoch. Both parts are augmented together.

    Raises:
        ConfigError: a setting is out of range or leaves this rank without a batch.
    """

    def __init__(
        self,
        split: ImageSplit,
        batch_size: int,
        *,
        shuffle: bool = True,
        drop_last: bool = False,
        crop: bool = False,
        flip: bool = False,
        padding: int = 4,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        extra: ExtraImages | None = None,
        extra_fraction: float = 0.0,
    ) -> None:
        if batch_size < 1:
            raise ConfigError(f"batch_size must be at least 1, got {batch_size}")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ConfigError(f"rank must lie in [0, world_size), got rank {rank} of world_size {world_size}")
        if padding < 0:
            raise ConfigError(f"padding must be >= 0, got {padding}")
        self.split = split
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.crop = crop
        self.flip = flip
        self.padding = padding
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.extra = extra
        self.extra_per_batch = int(batch_size * extra_fraction) if extra is not None else 0
        self.split_per_batch = batch_size - self.extra_per_batch
        if self.split_per_batch < 1:
            raise ConfigError(f"data.extra_fraction {extra_fraction} leaves no image of {split.name or 'the split'} "
                              f"in a batch of {batch_size}; lower it below 1")
        self.epoch = 0
        self.step = 0
        if len(self) == 0:
            raise ConfigError(
                f"{split.name or 'split'} of {len(split)} images gives rank {rank} of {world_size} no batch of "
                f"{batch_size}" + (" with drop_last" if drop_last else "") + "; lower batch_size or world_size"
            )

    @property
    def num_samples(self) -> int:
        """Images of the split this rank sees per epoch (an epoch is one pass over the split, extra images aside)."""
        n = len(self.split)
        if self.drop_last:
            return (n // self.world_size) // self.split_per_batch * self.split_per_batch
        return len(range(self.rank, n, self.world_size))

    def __len__(self) -> int:
        """Batches per epoch on this rank."""
        return -(-self.num_samples // self.split_per_batch)

    def epoch_indices(self, epoch: int) -> torch.Tensor:
        """This rank's indices into the split for `epoch`, in batch order: (num_samples,) int64 on the CPU."""
        n = len(self.split)
        if self.shuffle:
            generator = torch.Generator().manual_seed(_derive_seed(self.seed, "order", epoch))
            order = torch.randperm(n, generator=generator)
        else:
            order = torch.arange(n)
        return order[self.rank :: self.world_size][: self.num_samples]

    def set_epoch(self, epoch: int, step: int = 0) -> None:
        """Makes the next pass produce `epoch`, starting at batch `step`."""
        if epoch < 0 or not 0 <= step <= len(self):
            raise ConfigError(f"epoch must be >= 0 and step in [0, {len(self)}], got epoch {epoch} step {step}")
        self.epoch, self.step = epoch, step

    def state_dict(self) -> dict[str, int]:
        """Where the loader is: the next batch is batch `step` of `epoch`. Plain ints, safe in any checkpoint."""
        return {
            "epoch": self.epoch,
            "step": self.step,
            "seed": self.seed,
            "batch_size": self.batch_size,
            "world_size": self.world_size,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continues from a `state_dict()`; the following batches equal those of the run that saved it."""
        for key in ("batch_size", "world_size"):
            if key in state and int(state[key]) != getattr(self, key):
                logger.warning(
                    "resuming a loader saved with %s %s under %s %s: the remaining batches will differ from the "
                    "interrupted run", key, state[key], key, getattr(self, key),
                )
        self.seed = int(state["seed"])
        self.set_epoch(int(state["epoch"]), min(int(state["step"]), len(self)))

    def batch_generator(self, step: int) -> torch.Generator:
        """The generator that augments batch `step` of the current epoch on this rank."""
        generator = torch.Generator(device=self.split.device)
        return generator.manual_seed(_derive_seed(self.seed, "augment", self.epoch, step, self.rank))

    def extra_generator(self, step: int) -> torch.Generator:
        """The CPU generator that draws batch `step`'s extra rows (with replacement, as the reference sampler)."""
        return torch.Generator().manual_seed(_derive_seed("extra", self.seed, self.epoch, step, self.rank))

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        if self.step >= len(self):  # state saved after the last batch of an epoch: the next epoch is due
            self.epoch, self.step = self.epoch + 1, 0
        order = self.epoch_indices(self.epoch).to(self.split.device)
        augment = self.crop or self.flip
        per_batch = self.split_per_batch
        for step in range(self.step, len(self)):
            index = order[step * per_batch : (step + 1) * per_batch]
            images = self.split.images.index_select(0, index)
            labels = self.split.labels.index_select(0, index)
            if self.extra is not None and self.extra_per_batch:
                rows = torch.randint(0, len(self.extra), (self.extra_per_batch,), generator=self.extra_generator(step))
                extra_images, extra_labels = self.extra.batch(rows, self.split.device)
                images, labels = torch.cat([images, extra_images]), torch.cat([labels, extra_labels])
            if augment:
                generator = self.batch_generator(step)
                x = augment_batch(images, crop=self.crop, flip=self.flip, padding=self.padding, generator=generator)
            else:
                x = to_float(images)
            self.step = step + 1  # before yielding, so a checkpoint taken while the batch trains resumes after it
            yield x, labels
        self.epoch, self.step = self.epoch + 1, 0
