"""Where a run's numbers go: `metrics.jsonl` for machines, TensorBoard scalars, and one log line per epoch."""

from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path
from typing import Any

__all__ = ["MetricsWriter", "format_epoch_line"]

logger = logging.getLogger(__name__)


def format_epoch_line(row: dict[str, Any]) -> str:
    """`epoch 12 | lr 0.1000 | train loss 1.234 acc 45.6 | val clean 78.9 pgd10 44.1 | 93 s`."""
    parts = [f"epoch {row['epoch']}", f"lr {row['lr']:.4f}",
             f"train loss {row['train_loss']:.3f} acc {100 * row['train_acc']:.1f}"]
    if row.get("val_clean_acc") is not None:
        parts.append(f"val clean {100 * row['val_clean_acc']:.1f} pgd{row['val_pgd_steps']} "
                     f"{100 * row['val_pgd_acc']:.1f}")
    parts.append(f"{row['images_per_s']:.0f} img/s")
    parts.append(f"{row['epoch_time_s']:.0f} s")
    return " | ".join(parts)


class MetricsWriter:
    """Appends one JSON object per epoch to `metrics.jsonl` and mirrors the scalars to TensorBoard.

    Only the main process creates one. TensorBoard is optional: without the package the JSONL file is still
    written and a warning says so.
    """

    def __init__(self, out_dir: Path, tensorboard: bool = True) -> None:
        self.path = out_dir / "metrics.jsonl"
        self._tb = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._tb = SummaryWriter(log_dir=str(out_dir / "tensorboard"))
            except ImportError:  # pragma: no cover - tensorboard is a declared dependency
                logger.warning("tensorboard is not installed; writing metrics.jsonl only")

    def truncate_after(self, epoch: int) -> None:
        """Drops rows of epochs after `epoch` (a resumed run rewrites them) and a row cut short by a kill.

        The file is rewritten atomically (temporary file, rename), so a kill during the rewrite loses no row.
        """
        if not self.path.exists():
            return
        kept = []
        for line in self.path.read_text().splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue  # the torn last line of a killed run, or a blank line
            if isinstance(row, dict) and row.get("epoch", 0) <= epoch:
                kept.append(line)
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text("".join(line + "\n" for line in kept))
        os.replace(tmp, self.path)

    def write(self, row: dict[str, Any]) -> None:
        with self.path.open("a") as handle:
            handle.write(json.dumps(row) + "\n")
        if self._tb is not None:
            step = row["epoch"]
            for key, value in row.items():
                if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
                    self._tb.add_scalar(key, value, step)
            for i, weights in enumerate(row.get("attention_weights") or []):
                for j, w in enumerate(weights):
                    self._tb.add_scalar(f"attention/module{i:02d}/block{j}", w, step)
            self._tb.flush()

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
