"""Which test points an evaluation attacks, and which of them each DDP rank takes.

Two ways to choose points (SPEC.md §5, reference/eval_ecosystem.md §4.4, §7.3):

- `n_examples=N`: the first N points of the split in file order, as RobustBench's `benchmark()` does, so a
  number can be compared with the leaderboard's protocol;
- `subset=FRACTION`: a seeded random subset of round(FRACTION · total) points, kept in file order (the
  paper's AutoAttack protocol is `subset=0.125`, 1,250 of CIFAR-10's 10,000 test points).

Which rank takes which points is `dsnet.runtime.shard_positions` (blocks of `batch_size` points dealt
round-robin): every rank's batches are exactly the batches a single process would form, and since an attack call
is a pure function of its batch (`dsnet.attacks.Attack`), FGSM, PGD and CW∞ give the same per-point flags on 1 or
n processes.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import torch

from dsnet.errors import ConfigError
from dsnet.runtime.distributed import shard_positions

__all__ = ["PointSelection", "select_points", "shard_positions", "PAPER_SUBSET"]

PAPER_SUBSET = 0.125
"""The fraction of the test set the paper evaluates AutoAttack on (12.5 %)."""


@dataclass(frozen=True)
class PointSelection:
    """The evaluated points and how they were chosen.

    Attributes:
        indices: (n,) int64 indices into the split, increasing.
        total: number of points in the split.
        kind: "all", "first" (`n_examples`) or "subset" (seeded random fraction).
        n_examples: the requested N for "first" (may exceed `total`, then all points are taken).
        fraction: the requested fraction for "subset".
        seed: the seed of the subset draw (None unless "subset").
    """

    indices: torch.Tensor
    total: int
    kind: str
    n_examples: int | None = None
    fraction: float | None = None
    seed: int | None = None

    @property
    def n(self) -> int:
        """Number of evaluated points."""
        return int(self.indices.numel())

    @property
    def description(self) -> str:
        """One sentence for reports, e.g. "the first 1000 of 10000 test points in file order (RobustBench)"."""
        if self.kind == "first":
            if self.n < self.total:
                return f"the first {self.n} of {self.total} points in file order (RobustBench convention)"
            return f"all {self.total} points (--n-examples {self.n_examples} covers the whole split)"
        if self.kind == "subset":
            label = " - the paper's 12.5 % subset" if self.fraction == PAPER_SUBSET else ""
            return (f"a seeded random subset of {self.n} of {self.total} points ({100 * self.fraction:g} %, "
                    f"seed {self.seed}{label})")
        return f"all {self.total} points"

    @property
    def sha256(self) -> str:
        """A hash of the indices, so a resumed evaluation is checked to attack the same points."""
        return hashlib.sha256(self.indices.to(torch.int64).numpy().tobytes()).hexdigest()

    def to_dict(self) -> dict[str, object]:
        """A JSON-ready summary (the indices themselves are stored with the per-point flags)."""
        return {"kind": self.kind, "n": self.n, "total": self.total, "n_examples": self.n_examples,
                "fraction": self.fraction, "seed": self.seed, "description": self.description}


def select_points(total: int, *, n_examples: int | None = None, subset: float | None = None,
                  seed: int = 0) -> PointSelection:
    """Chooses the points to evaluate.

    Args:
        total: number of points in the split.
        n_examples: take the first N points in file order (RobustBench convention).
        subset: take a seeded random fraction in (0, 1] of the points, kept in file order.
        seed: seed of the subset draw.

    Returns:
        The selection; all points when neither `n_examples` nor `subset` is given.

    Raises:
        ConfigError: both are given, or a value is out of range.
    """
    if n_examples is not None and subset is not None:
        raise ConfigError("--n-examples and --subset exclude each other; pass one of them")
    if total < 1:
        raise ConfigError("the split holds no points to evaluate")
    if n_examples is not None:
        if isinstance(n_examples, bool) or not isinstance(n_examples, int) or n_examples < 1:
            raise ConfigError(f"--n-examples must be an integer >= 1, got {n_examples!r}")
        return PointSelection(torch.arange(min(n_examples, total)), total, "first", n_examples=n_examples)
    if subset is not None:
        if isinstance(subset, bool) or not isinstance(subset, (int, float)) or not 0.0 < subset <= 1.0:
            raise ConfigError(f"--subset must be a fraction in (0, 1], e.g. 0.125 for the paper's 12.5 %, "
                              f"got {subset!r}")
        count = max(1, int(round(float(subset) * total)))
        generator = torch.Generator().manual_seed(seed)
        indices = torch.randperm(total, generator=generator)[:count].sort().values
        return PointSelection(indices, total, "subset", fraction=float(subset), seed=seed)
    return PointSelection(torch.arange(total), total, "all")
