"""Learning-rate schedules as pure functions of the 1-based fractional epoch (STYLE rule 16).

A schedule maps `epoch` to a learning rate. `epoch` is **1-based and fractional**: epoch e (as the authors and
logs count it) covers [e, e + 1), so the first batch of training is at 1.0 and, with N batches per epoch,
batch i (0-based) of epoch e is at `e + i / N`. The trainer sets the LR on every iteration:

    schedule = build_schedule("piecewise", base_lr=0.1, epochs=120, milestones=[60, 90, 110],
                              factors=[0.1, 0.01, 0.005])
    lr = schedule(epoch + i / len(loader))

Conventions, chosen to match the authors' code (reference/training_and_baselines.md §2, which calls its LR
function with the 1-based epoch and uses "≥" thresholds):

- piecewise: epoch e uses the factor of the last milestone m <= e; "decay at 60" means epochs 1-59 at the
  base LR and all of epoch 60 at the new one. `factors` are multipliers of the base LR, not cumulative.
- warm-up (`warmup_epochs` = W > 0): lr = base_lr · epoch / W for epoch <= W, so whole epochs e <= W get
  exactly base_lr · e / W (the authors' SVHN rule with W = 5: 0.02, 0.04, ..., 0.1). W = 1 therefore
  changes nothing. Piecewise milestones must come after the warm-up; cosine decays over the epochs after it.
- cosine: from base_lr at epoch max(W, 1) down to `final_lr` at epoch `epochs + 1` (the end of training).
- cyclic: 0 at epoch 1, linearly up to base_lr at the `peak_fraction` point of training, linearly down to 0 at
  epoch `epochs + 1` (Fast-AT's one-cycle schedule). It ramps up by itself, so it takes no warm-up.
- onecycle: torch's `OneCycleLR` as DM-Improves-AT and the robust-residual-network's advanced recipe use it, with
  one scheduler step per epoch (the LR is constant within an epoch): cosine up from base_lr / div_factor to base_lr
  over the first `pct_start` of the epochs, cosine down to base_lr / div_factor / final_div_factor at the last
  epoch; SGD's momentum cycles the other way (max_momentum → base_momentum → max_momentum). The only schedule that
  also sets the momentum (`momentum_at`).

Past the end of training (epoch > epochs + 1) every schedule holds its final value.
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass
from typing import Any, ClassVar

from dsnet.registry import Registry
from dsnet.validate import Problems, Settings, build_settings, is_number

__all__ = ["SCHEDULES", "Schedule", "PiecewiseSchedule", "CosineSchedule", "CyclicSchedule", "OneCycleSchedule",
           "build_schedule"]

SCHEDULES: Registry[type[Schedule]] = Registry("schedule")


def _register(cls: type[Schedule]) -> type[Schedule]:
    SCHEDULES.add(cls.name, cls)
    return cls


@dataclass(frozen=True, kw_only=True)
class Schedule(Settings):
    """Base of the LR schedules: a frozen, validated config that is called with the 1-based fractional epoch.

    Attributes:
        base_lr: the peak learning rate (> 0).
        epochs: number of training epochs (>= 1).
        warmup_epochs: W, linear warm-up over epochs <= W (0 = none); must be < epochs.
    """

    kind: ClassVar[str] = "schedule"
    fixed: ClassVar[tuple[str, ...]] = ("base_lr", "epochs")  # from optim.lr and train.epochs
    base_lr: float
    epochs: int
    warmup_epochs: int = 0

    def _validate(self, problems: Problems) -> None:
        problems.number("base_lr", self.base_lr, strict=True)
        if problems.integer("epochs", self.epochs, minimum=1) and problems.integer(
                "warmup_epochs", self.warmup_epochs, minimum=0) and self.warmup_epochs >= self.epochs:
            problems.add(f"warmup_epochs ({self.warmup_epochs}) must be less than epochs ({self.epochs})")

    def _after_warmup(self, epoch: float) -> float:
        """The LR at a 1-based fractional `epoch` past the warm-up."""
        raise NotImplementedError

    def lr_at(self, epoch: float) -> float:
        """The learning rate at the 1-based fractional `epoch` (1.0 = first batch of epoch 1).

        Raises:
            ValueError: `epoch` < 1, which means the caller counts epochs from 0.
        """
        if not epoch >= 1:
            raise ValueError(f"epoch is 1-based (first batch at 1.0), got {epoch!r}")
        if epoch <= self.warmup_epochs:
            return self.base_lr * epoch / self.warmup_epochs
        return self._after_warmup(epoch)

    def momentum_at(self, epoch: float) -> float | None:
        """SGD's momentum at `epoch`, for a schedule that sets it; None leaves `optim.momentum` as it is."""
        return None

    def __call__(self, epoch: float) -> float:
        return self.lr_at(epoch)


@_register
@dataclass(frozen=True, kw_only=True)
class PiecewiseSchedule(Schedule):
    """Piecewise-constant LR: base_lr · factors[i] from milestone i on ("≥" semantics, 1-based epochs).

    The authors' CIFAR-10 AT recipe is milestones (60, 90, 110), factors (0.1, 0.01, 0.005): 0.1 for epochs
    1-59, 0.01 for 60-89, 0.001 for 90-109, 0.0005 from 110. Milestones past the last epoch never apply
    (allowed, so shortening a recipe's epochs for a smoke run needs no other change).

    Attributes:
        milestones: strictly increasing 1-based epochs at which a factor starts; after the warm-up.
        factors: one multiplier of base_lr (> 0) per milestone.
    """

    name: ClassVar[str] = "piecewise"
    milestones: tuple[float, ...]
    factors: tuple[float, ...]

    def _validate(self, problems: Problems) -> None:
        super()._validate(problems)
        milestones, factors = self.milestones, self.factors
        if not isinstance(milestones, (list, tuple)) or not all(is_number(m) and m >= 1 for m in milestones):
            problems.add(f"milestones must be a list of 1-based epochs >= 1, got {milestones!r}")
        elif any(b <= a for a, b in zip(milestones, milestones[1:])):
            problems.add(f"milestones must be strictly increasing, got {list(milestones)}")
        elif milestones and isinstance(self.warmup_epochs, int) and milestones[0] <= self.warmup_epochs:
            problems.add(f"milestones must come after the warm-up (warmup_epochs={self.warmup_epochs}), "
                         f"got {list(milestones)}")
        if not isinstance(factors, (list, tuple)) or not all(is_number(f) and f > 0 for f in factors):
            problems.add(f"factors must be a list of numbers > 0, got {factors!r}")
        elif isinstance(milestones, (list, tuple)) and len(factors) != len(milestones):
            problems.add(f"factors ({len(factors)}) and milestones ({len(milestones)}) must have the same length")
        if isinstance(milestones, list):
            object.__setattr__(self, "milestones", tuple(milestones))
        if isinstance(factors, list):
            object.__setattr__(self, "factors", tuple(factors))

    def _after_warmup(self, epoch: float) -> float:
        passed = bisect.bisect_right(self.milestones, epoch)  # number of milestones <= epoch
        return self.base_lr * (self.factors[passed - 1] if passed else 1.0)


@_register
@dataclass(frozen=True, kw_only=True)
class CosineSchedule(Schedule):
    """Cosine decay from base_lr (at epoch max(warmup_epochs, 1)) to `final_lr` (at epoch epochs + 1).

    Attributes:
        final_lr: the LR at the end of training, 0 <= final_lr <= base_lr.
    """

    name: ClassVar[str] = "cosine"
    final_lr: float = 0.0

    def _validate(self, problems: Problems) -> None:
        super()._validate(problems)
        if problems.number("final_lr", self.final_lr) and is_number(self.base_lr) and self.final_lr > self.base_lr:
            problems.add(f"final_lr ({self.final_lr}) must not exceed base_lr ({self.base_lr})")

    def _after_warmup(self, epoch: float) -> float:
        start = max(self.warmup_epochs, 1)
        progress = min(1.0, (epoch - start) / (self.epochs + 1 - start))
        return self.final_lr + (self.base_lr - self.final_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))


@_register
@dataclass(frozen=True, kw_only=True)
class CyclicSchedule(Schedule):
    """One linear cycle 0 → base_lr → 0 over the whole run (Fast-AT: 15 epochs, max 0.2, peak at the middle).

    Attributes:
        peak_fraction: where the peak lies as a fraction of training, 0 < peak_fraction < 1 (Fast-AT 0.5;
            robust_overfitting's cyclic 0.4).
    """

    name: ClassVar[str] = "cyclic"
    peak_fraction: float = 0.5

    def _validate(self, problems: Problems) -> None:
        super()._validate(problems)
        if not is_number(self.peak_fraction) or not 0 < self.peak_fraction < 1:
            problems.add(f"peak_fraction must be a number in (0, 1), got {self.peak_fraction!r}")
        if self.warmup_epochs != 0:
            problems.add("the cyclic schedule ramps up by itself; warmup_epochs must be 0 "
                         "(move the peak with peak_fraction instead)")

    def _after_warmup(self, epoch: float) -> float:
        progress = min(1.0, (epoch - 1) / self.epochs)
        if progress <= self.peak_fraction:
            return self.base_lr * progress / self.peak_fraction
        return self.base_lr * (1.0 - progress) / (1.0 - self.peak_fraction)


def _cosine_between(start: float, end: float, progress: float) -> float:
    """From `start` (progress 0) to `end` (progress 1) along half a cosine, as torch's `_annealing_cos`."""
    return end + (start - end) / 2.0 * (math.cos(math.pi * progress) + 1)


@_register
@dataclass(frozen=True, kw_only=True)
class OneCycleSchedule(Schedule):
    """torch's `OneCycleLR(max_lr=base_lr, total_steps=epochs, pct_start, anneal_strategy="cos")` stepped once per
    epoch, as DM-Improves-AT trains (400 epochs, peak 0.2 at epoch 10, 8e-7 at epoch 400), with its momentum cycle.

    Epoch e (1-based) is scheduler step s = e − 1; the peak is at step ⌊pct_start · epochs⌋ − 1 (torch's
    `pct_start * total_steps - 1`); the LR is constant within an epoch.

    Attributes:
        pct_start: the fraction of the epochs spent ramping up (0.025 in DM-Improves-AT: 10 of 400).
        div_factor: base_lr / the initial LR (torch's 25).
        final_div_factor: the initial LR / the final LR (torch's 1e4).
        base_momentum: the momentum at the peak LR (torch's 0.85).
        max_momentum: the momentum at the start and the end (torch's 0.95).
        cycle_momentum: whether the momentum cycles (torch's default True); false leaves optim.momentum.
    """

    name: ClassVar[str] = "onecycle"
    pct_start: float = 0.3
    div_factor: float = 25.0
    final_div_factor: float = 1e4
    base_momentum: float = 0.85
    max_momentum: float = 0.95
    cycle_momentum: bool = True

    def _validate(self, problems: Problems) -> None:
        super()._validate(problems)
        if not is_number(self.pct_start) or not 0 < self.pct_start < 1:
            problems.add(f"pct_start must be a number in (0, 1), got {self.pct_start!r}")
        problems.number("div_factor", self.div_factor, strict=True)
        problems.number("final_div_factor", self.final_div_factor, strict=True)
        if problems.number("base_momentum", self.base_momentum) and problems.number("max_momentum", self.max_momentum):
            problems.require(self.base_momentum <= self.max_momentum < 1,
                             f"base_momentum ({self.base_momentum}) <= max_momentum ({self.max_momentum}) < 1 needed")
        if self.warmup_epochs != 0:
            problems.add("the onecycle schedule ramps up by itself; warmup_epochs must be 0 (use pct_start)")
        if is_number(self.pct_start) and isinstance(self.epochs, int) and self.pct_start * self.epochs < 2:
            problems.add(f"pct_start · epochs must be >= 2 so that the ramp has a step, got "
                         f"{self.pct_start} · {self.epochs}")

    def _phase(self, epoch: float) -> tuple[float, bool]:
        """(progress within the phase, whether it is the ramp up) at the epoch's scheduler step."""
        step = min(math.floor(epoch), self.epochs) - 1
        peak = float(self.pct_start * self.epochs) - 1
        if step <= peak:
            return step / peak, True
        return (step - peak) / (self.epochs - 1 - peak), False

    def _after_warmup(self, epoch: float) -> float:
        initial = self.base_lr / self.div_factor
        progress, rising = self._phase(epoch)
        if rising:
            return _cosine_between(initial, self.base_lr, progress)
        return _cosine_between(self.base_lr, initial / self.final_div_factor, progress)

    def momentum_at(self, epoch: float) -> float | None:
        if not self.cycle_momentum:
            return None
        progress, rising = self._phase(max(epoch, 1.0))
        if rising:
            return _cosine_between(self.max_momentum, self.base_momentum, progress)
        return _cosine_between(self.base_momentum, self.max_momentum, progress)


def build_schedule(name: str, base_lr: float, epochs: int, **params: Any) -> Schedule:
    """Builds a registered LR schedule.

    Args:
        name: one of `SCHEDULES.names()`: "piecewise", "cosine", "cyclic", "onecycle".
        base_lr: the peak learning rate.
        epochs: number of training epochs.
        **params: `warmup_epochs` and the schedule's own parameters (see its class).

    Returns:
        A frozen schedule; call it (or `.lr_at`) with the 1-based fractional epoch.

    Raises:
        UnknownNameError: `name` is not registered.
        ConfigError: a parameter is unknown, missing or out of range (the message names each one).
    """
    return build_settings(SCHEDULES, name, fixed=("base_lr", "epochs"), base_lr=base_lr, epochs=epochs, **params)
