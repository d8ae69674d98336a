"""What a person watching a training run sees between the epoch lines.

On a terminal: a bar per epoch, `epoch k/N`, with the loss, accuracy, images/s and the ETA of the whole run.
Elsewhere (a log file, a cluster job): a progress line at least every `PROGRESS_INTERVAL_S` seconds,
`epoch 3/8 step 120/390 | 245 img/s | loss 1.234 | ETA 12 min`, so a long epoch is never silent. Only rank 0
reports. The loss is read from the device only when something is shown (a host sync at log steps, never per step).
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable
from typing import Any

__all__ = ["TrainingProgress", "PROGRESS_INTERVAL_S", "format_duration"]

logger = logging.getLogger("dsnet.training.trainer")

PROGRESS_INTERVAL_S = 60.0
"""Longest silence between two progress lines when the output is not a terminal."""


def format_duration(seconds: float) -> str:
    """"45 s", "12 min", "3.2 h"."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


class TrainingProgress:
    """Progress of one run: a tqdm bar on a terminal, timed log lines elsewhere, nothing when disabled.

    Args:
        enabled: report at all (rank 0 with `train.progress` on).
        epochs: the run's last epoch.
        steps_per_epoch: optimisation steps per epoch.
        first_epoch: the epoch this process starts with (later than 1 after a resume).
        terminal: whether stderr is a terminal (default: ask it).
        clock: seconds, monotonic (tests pass their own).
    """

    def __init__(self, *, enabled: bool, epochs: int, steps_per_epoch: int, first_epoch: int,
                 terminal: bool | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self.enabled = enabled
        self.epochs = epochs
        self.steps_per_epoch = max(steps_per_epoch, 1)
        self.first_epoch = first_epoch
        self.terminal = sys.stderr.isatty() if terminal is None else terminal
        self.clock = clock
        self.started = clock()
        self.steps_done = 0  # by this process, over all its epochs
        self.epoch = first_epoch
        self._bar: Any = None
        self._last_line = self.started

    def eta_s(self, epoch: int, step: int) -> float | None:
        """Seconds left in the run, from this process's average time per step (validation included)."""
        if self.steps_done == 0:
            return None
        per_step = (self.clock() - self.started) / self.steps_done
        remaining = (self.steps_per_epoch - step) + self.steps_per_epoch * (self.epochs - epoch)
        return per_step * max(remaining, 0)

    def start_epoch(self, epoch: int, step: int) -> None:
        """A new epoch begins at `step` (0, or later after a resume)."""
        self.epoch = epoch
        if self.enabled and self.terminal:
            from tqdm import tqdm

            self._bar = tqdm(total=self.steps_per_epoch, initial=step, desc=f"epoch {epoch}/{self.epochs}",
                             file=sys.stderr, leave=False, mininterval=0.3, dynamic_ncols=True)

    def step(self, step: int, images_per_s: float, loss: Callable[[], float], accuracy: Callable[[], float],
             log_step: bool) -> None:
        """After optimisation step `step` (1-based within the epoch).

        Args:
            step: steps finished in this epoch.
            images_per_s: the epoch's throughput so far.
            loss: reads the current loss (a host sync: called only when something is shown).
            accuracy: reads the running train accuracy (same).
            log_step: whether this is a log step (the bar refreshes its numbers then).
        """
        self.steps_done += 1
        if not self.enabled:
            return
        eta = self.eta_s(self.epoch, step)
        if self._bar is not None:
            if log_step:
                self._bar.set_postfix(loss=f"{loss():.3f}", acc=f"{accuracy():.3f}", img_s=f"{images_per_s:.0f}",
                                      run_eta=format_duration(eta) if eta is not None else "?")
            self._bar.update(1)
            return
        now = self.clock()
        if now - self._last_line >= PROGRESS_INTERVAL_S:
            self._last_line = now
            logger.info("epoch %d/%d step %d/%d | %.0f img/s | loss %.3f | ETA %s", self.epoch, self.epochs, step,
                        self.steps_per_epoch, images_per_s, loss(), format_duration(eta) if eta is not None else "?")

    def end_epoch(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def close(self) -> None:
        self.end_epoch()
