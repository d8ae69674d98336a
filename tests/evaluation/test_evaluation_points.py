"""Point selection (first N, seeded subset) and the DDP shard logic: pure functions, no model."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from dsnet.errors import ConfigError
from dsnet.evaluation import PAPER_SUBSET, select_points, shard_positions


def test_first_n_examples_are_the_first_points_in_file_order() -> None:
    selection = select_points(100, n_examples=16)
    assert selection.indices.tolist() == list(range(16))
    assert selection.kind == "first" and "first 16 of 100" in selection.description
    assert select_points(10, n_examples=50).n == 10  # more than the split: all of it


def test_subset_is_seeded_sorted_and_labelled() -> None:
    a = select_points(1000, subset=PAPER_SUBSET, seed=3)
    b = select_points(1000, subset=PAPER_SUBSET, seed=3)
    c = select_points(1000, subset=PAPER_SUBSET, seed=4)
    assert a.n == 125 and torch.equal(a.indices, b.indices) and not torch.equal(a.indices, c.indices)
    assert torch.all(a.indices[1:] > a.indices[:-1])
    assert "12.5 %" in a.description and "paper" in a.description and "seed 3" in a.description
    assert "paper" not in select_points(1000, subset=0.5).description
    assert a.sha256 != c.sha256


def test_selection_rejects_both_options_and_bad_values() -> None:
    with pytest.raises(ConfigError, match="exclude each other"):
        select_points(100, n_examples=10, subset=0.1)
    for bad in (0.0, 1.5, -0.1):
        with pytest.raises(ConfigError, match="--subset"):
            select_points(100, subset=bad)
    with pytest.raises(ConfigError, match="--n-examples"):
        select_points(100, n_examples=0)


@settings(max_examples=60, deadline=None)
@given(n=st.integers(0, 200), world=st.integers(1, 5), block=st.integers(1, 17))
def test_rank_slices_partition_the_points_in_whole_batches(n: int, world: int, block: int) -> None:
    shards = [shard_positions(n, rank, world, block) for rank in range(world)]
    merged = torch.cat(shards).sort().values
    assert merged.tolist() == list(range(n))  # every point exactly once
    for shard in shards:
        # A rank's batches of `block` are exactly the batches one process forms: [k*block, (k+1)*block).
        for start in range(0, shard.numel(), block):
            batch = shard[start : start + block]
            assert batch[0] % block == 0
            assert batch.tolist() == list(range(int(batch[0]), int(batch[0]) + batch.numel()))


def test_two_ranks_split_ten_points_in_batches_of_three() -> None:
    assert shard_positions(10, 0, 2, 3).tolist() == [0, 1, 2, 6, 7, 8]
    assert shard_positions(10, 1, 2, 3).tolist() == [3, 4, 5, 9]
    with pytest.raises(ValueError):
        shard_positions(10, 2, 2, 3)
