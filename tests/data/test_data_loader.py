"""The device-side loader (order, resume, DDP shards) and the vectorised crop/flip augmentation."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from dsnet.data import DeviceLoader, ImageSplit, augment_batch
from dsnet.errors import ConfigError


def _split(n: int) -> ImageSplit:
    """n random images whose label is their index, so batches show which images they hold."""
    images = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(n))
    return ImageSplit(images, torch.arange(n), n)


def _epoch(loader: DeviceLoader) -> list[list[int]]:
    return [y.tolist() for _, y in loader]


# ----------------------------------------------------------------------------------------------------------------
# Order, epochs, resume


def test_every_image_once_per_epoch_and_batch_sizes():
    loader = DeviceLoader(_split(10), 4, seed=0)
    batches = _epoch(loader)
    assert [len(b) for b in batches] == [4, 4, 2] and len(loader) == 3
    assert sorted(sum(batches, [])) == list(range(10))
    dropped = DeviceLoader(_split(10), 4, drop_last=True)
    assert [len(b) for b in _epoch(dropped)] == [4, 4] and len(dropped) == 2


def test_batches_hold_float_images_in_unit_range_matching_labels():
    split = _split(10)
    for x, y in DeviceLoader(split, 4):
        assert x.dtype == torch.float32 and x.shape == (len(y), 3, 32, 32)
        assert torch.equal(x, split.images[y].float() / 255)


def test_same_seed_same_batches_new_epoch_new_order():
    first, second = DeviceLoader(_split(12), 4, seed=7), DeviceLoader(_split(12), 4, seed=7)
    epoch0 = _epoch(first)
    assert epoch0 == _epoch(second)
    epoch1 = _epoch(first)  # the epoch advances by itself after a full pass
    assert epoch1 != epoch0 and sorted(sum(epoch1, [])) == list(range(12))
    assert _epoch(DeviceLoader(_split(12), 4, seed=8)) != epoch0
    first.set_epoch(0)
    assert _epoch(first) == epoch0


def test_no_shuffle_keeps_the_split_order():
    assert sum(_epoch(DeviceLoader(_split(7), 3, shuffle=False)), []) == list(range(7))


def test_resume_mid_epoch_gives_the_same_batches_as_an_uninterrupted_run():
    def run(loader: DeviceLoader, steps: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        out = []
        while len(out) < steps:
            for batch in loader:
                out.append(batch)
                if len(out) == steps:
                    break
        return out

    kwargs = dict(batch_size=4, crop=True, flip=True, seed=3)
    uninterrupted = run(DeviceLoader(_split(10), **kwargs), 8)  # 2 epochs and 2 batches

    interrupted = DeviceLoader(_split(10), **kwargs)
    before = run(interrupted, 4)  # one epoch and one batch
    state = interrupted.state_dict()
    assert state == {"epoch": 1, "step": 1, "seed": 3, "batch_size": 4, "world_size": 1}
    resumed = DeviceLoader(_split(10), batch_size=4, crop=True, flip=True, seed=99)
    resumed.load_state_dict(state)
    after = run(resumed, 4)
    for (x, y), (x_ref, y_ref) in zip(before + after, uninterrupted, strict=True):
        assert torch.equal(y, y_ref) and torch.equal(x, x_ref)


def test_state_saved_after_the_last_batch_resumes_at_the_next_epoch():
    loader = DeviceLoader(_split(8), 4, seed=1)
    iterator = iter(loader)
    next(iterator), next(iterator)
    assert loader.state_dict()["step"] == 2
    resumed = DeviceLoader(_split(8), 4, seed=1)
    resumed.load_state_dict(loader.state_dict())
    reference = DeviceLoader(_split(8), 4, seed=1)
    reference.set_epoch(1)
    assert _epoch(resumed) == _epoch(reference)


def test_loader_leaves_the_global_rng_alone():
    state = torch.get_rng_state()
    _epoch(DeviceLoader(_split(10), 4, crop=True, flip=True))
    assert torch.equal(state, torch.get_rng_state())


# ----------------------------------------------------------------------------------------------------------------
# DDP shards


@pytest.mark.parametrize("n, world_size", [(12, 3), (10, 3), (5, 2)])
def test_ranks_are_disjoint_and_cover_the_epoch(n, world_size):
    shards = [_epoch(DeviceLoader(_split(n), 2, seed=4, rank=r, world_size=world_size)) for r in range(world_size)]
    seen = [i for shard in shards for batch in shard for i in batch]
    assert sorted(seen) == list(range(n))  # disjoint (no repeats) and covering
    # Each rank takes every world_size-th element of the one permutation a single process would use.
    single = sum(_epoch(DeviceLoader(_split(n), n, seed=4)), [])
    for rank, shard in enumerate(shards):
        assert sum(shard, []) == single[rank::world_size]


def test_drop_last_gives_every_rank_the_same_number_of_full_batches():
    shards = [_epoch(DeviceLoader(_split(11), 2, drop_last=True, rank=r, world_size=3)) for r in range(3)]
    assert [len(s) for s in shards] == [1, 1, 1] and all(len(b) == 2 for s in shards for b in s)
    seen = [i for s in shards for b in s for i in b]
    assert len(set(seen)) == len(seen)


def test_settings_that_leave_no_batch_are_errors():
    with pytest.raises(ConfigError, match="no batch of 16 with drop_last"):
        DeviceLoader(_split(10), 16, drop_last=True)
    with pytest.raises(ConfigError, match="rank must lie"):
        DeviceLoader(_split(10), 2, rank=2, world_size=2)
    with pytest.raises(ConfigError, match="batch_size"):
        DeviceLoader(_split(10), 0)


# ----------------------------------------------------------------------------------------------------------------
# Augmentation


def _images(n: int = 16, size: int = 8) -> torch.Tensor:
    # 1..255 so that padding zeros are distinguishable from image content.
    return torch.randint(1, 256, (n, 3, size, size), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))


def test_output_is_float_in_unit_range_with_the_same_shape():
    x = _images()
    for crop, flip in [(True, True), (True, False), (False, True), (False, False)]:
        out = augment_batch(x, crop=crop, flip=flip, generator=torch.Generator().manual_seed(1))
        assert out.dtype == torch.float32 and out.shape == x.shape
        assert out.min() >= 0 and out.max() <= 1


def test_flip_only_mirrors_about_half_of_the_images():
    x = _images(64)
    out = augment_batch(x, crop=False, flip=True, generator=torch.Generator().manual_seed(2))
    plain, mirrored = x.float() / 255, torch.flip(x, dims=[3]).float() / 255
    same = [torch.equal(o, p) for o, p in zip(out, plain)]
    flipped = [torch.equal(o, m) for o, m in zip(out, mirrored)]
    assert all(s != f for s, f in zip(same, flipped))  # each image exactly one of the two
    assert 16 < sum(flipped) < 48


def _windows(image: torch.Tensor, padding: int) -> list[tuple[int, int, torch.Tensor]]:
    padded = F.pad(image, (padding,) * 4)
    size = image.shape[-1]
    return [
        (dy, dx, padded[:, dy : dy + size, dx : dx + size])
        for dy in range(2 * padding + 1)
        for dx in range(2 * padding + 1)
    ]


def test_crop_only_shifts_content_and_fills_with_zeros():
    x = _images(32)
    out = augment_batch(x, crop=True, flip=False, padding=4, generator=torch.Generator().manual_seed(3))
    offsets = set()
    for image, result in zip(x, out):
        matches = [(dy, dx) for dy, dx, w in _windows(image, 4) if torch.equal(w.float() / 255, result)]
        assert len(matches) == 1
        offsets.add(matches[0])
        dy, dx = matches[0]
        # A shift of s pixels leaves s rows/columns of zero padding on the matching side.
        if dy < 4:
            assert result[:, : 4 - dy].eq(0).all()
        if dx > 4:
            assert result[:, :, -(dx - 4) :].eq(0).all()
    assert len(offsets) > 10  # offsets vary across the batch


def test_crop_and_flip_is_a_mirrored_window_of_the_padded_image():
    x = _images(32)
    out = augment_batch(x, crop=True, flip=True, padding=2, generator=torch.Generator().manual_seed(4))
    for image, result in zip(x, out):
        candidates = [w for _, _, w in _windows(image, 2)]
        candidates += [torch.flip(w, dims=[2]) for w in candidates]
        assert sum(torch.equal(c.float() / 255, result) for c in candidates) == 1


def test_augmentation_is_deterministic_under_its_generator():
    x = _images()
    a = augment_batch(x, generator=torch.Generator().manual_seed(5))
    b = augment_batch(x, generator=torch.Generator().manual_seed(5))
    c = augment_batch(x, generator=torch.Generator().manual_seed(6))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_loader_switches_change_the_batches():
    split = _split(8)
    plain = next(iter(DeviceLoader(split, 8, shuffle=False)))[0]
    flipped = next(iter(DeviceLoader(split, 8, shuffle=False, flip=True)))[0]
    cropped = next(iter(DeviceLoader(split, 8, shuffle=False, crop=True, padding=4)))[0]
    assert not torch.equal(plain, flipped) and not torch.equal(plain, cropped)
    padding_zero = next(iter(DeviceLoader(split, 8, shuffle=False, crop=True, padding=0)))[0]
    assert torch.equal(plain, padding_zero)


def test_augment_rejects_float_input():
    with pytest.raises(ValueError, match="uint8"):
        augment_batch(torch.rand(2, 3, 8, 8))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_loader_on_the_gpu_stays_on_the_gpu():
    split = _split(10).to("cuda")
    for x, y in DeviceLoader(split, 4, crop=True, flip=True):
        assert x.is_cuda and y.is_cuda and x.dtype == torch.float32
    runs = [[x for x, _ in DeviceLoader(split, 4, crop=True, flip=True, seed=1)] for _ in range(2)]
    assert all(torch.equal(a, b) for a, b in zip(*runs))
