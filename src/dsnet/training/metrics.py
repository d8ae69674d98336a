"""Where a run's numbers go: `metrics.jsonl` for machines, TensorBoard scalars, and one log line per epoch.

`metrics.jsonl` holds one JSON object per finished epoch (its "epoch" key), plus event rows (an "event" key, no
"epoch") such as a recipe change that `--allow-change` let into a resumed run. `read_metrics` is the one reader
of the file: every other module (reproduce, the analyses) goes through it, so a torn last line (a killed run)
and event rows are handled the same everywhere.
"""

from __future__ import annotations

import errno
import json
import logging
import math
from pathlib import Path
from typing import Any

from dsnet.runtime.files import disk_full_error, is_disk_full, write_text_atomic
from dsnet.runtime.records import read_jsonl
from dsnet.runtime.run_folder import TrainingRun

__all__ = ["MetricsWriter", "RunLogHandler", "format_epoch_line", "read_metrics", "METRICS_NAME"]

logger = logging.getLogger(__name__)

METRICS_NAME = TrainingRun.METRICS
_RESUME_HINT = "free disk space and resume with --resume (the finished epochs are kept)"


def format_epoch_line(row: dict[str, Any]) -> str:
    """`epoch 12 | lr 0.1000 | train loss 1.234 acc 45.6 | val clean 78.9 pgd10 44.1 | 93 s`."""
    parts = [f"epoch {row['epoch']}", f"lr {row['lr']:.4f}",
             f"train loss {row['train_loss']:.3f} acc {100 * row['train_acc']:.1f}"]
    if row.get("val_clean_acc") is not None:
        parts.append(f"val clean {100 * row['val_clean_acc']:.1f} pgd{row['val_pgd_steps']} "
                     f"{100 * row['val_pgd_acc']:.1f}")
    if row.get("val_clean_acc_ema") is not None:
        parts.append(f"average clean {100 * row['val_clean_acc_ema']:.1f} pgd{row['val_pgd_steps']} "
                     f"{100 * row['val_pgd_acc_ema']:.1f}")
    parts.append(f"{row['images_per_s']:.0f} img/s")
    parts.append(f"{row['epoch_time_s']:.0f} s")
    return " | ".join(parts)


def read_metrics(run: str | Path, *, events: bool = False) -> list[dict[str, Any]]:
    """The rows of a run's `metrics.jsonl`, in order; empty when there is none.

    Args:
        run: a `dsnet train` run folder, a file inside it (a checkpoint), the metrics file itself, or a reproduce
            cell folder (holding `train/`).
        events: include the event rows (recipe changes), not only the epoch rows.
    """
    path = Path(run)
    if path.is_file() and path.name != METRICS_NAME:
        path = path.parent
    if path.is_dir():
        nested = path / "train" / METRICS_NAME
        path = path / METRICS_NAME if (path / METRICS_NAME).is_file() or not nested.is_file() else nested
    return [row for row in read_jsonl(path) if events or "epoch" in row]


class RunLogHandler(logging.FileHandler):
    """The handler of `train.log`. A failed write (a full disk) is reported once on the console and the log file
    is given up, instead of a traceback per record: the checkpoints and `metrics.jsonl` are the run's record, and
    their writes say clearly when the disk is full."""

    def handleError(self, record: logging.LogRecord) -> None:  # noqa: N802 - logging's name
        if getattr(self, "_gave_up", False):
            return
        self._gave_up = True
        logging.getLogger("dsnet").removeHandler(self)
        logger.warning("cannot write %s any more (%s); the run goes on, logging to the console only",
                       self.baseFilename, "the disk is full" if self._disk_full() else "an I/O error")

    def _disk_full(self) -> bool:
        import sys

        error = sys.exc_info()[1]
        return error is not None and is_disk_full(error)

    def emit(self, record: logging.LogRecord) -> None:
        if not getattr(self, "_gave_up", False):
            super().emit(record)


class MetricsWriter:
    """Appends one JSON object per epoch to `metrics.jsonl` and mirrors the scalars to TensorBoard.

    Only the main process creates one. TensorBoard is optional: without the package the JSONL file is still
    written and a warning says so.
    """

    def __init__(self, out_dir: Path, tensorboard: bool = True) -> None:
        self.path = out_dir / METRICS_NAME
        self._tb = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._tb = SummaryWriter(log_dir=str(out_dir / TrainingRun.TENSORBOARD))
            except ImportError:  # pragma: no cover - tensorboard is a declared dependency
                logger.warning("tensorboard is not installed; writing metrics.jsonl only")

    def truncate_after(self, epoch: int) -> None:
        """Drops rows of epochs after `epoch` (a resumed run rewrites them) and a row cut short by a kill.

        The file is rewritten atomically, so a kill during the rewrite loses no row.
        """
        if not self.path.exists():
            return
        kept = [row for row in read_jsonl(self.path) if row.get("epoch", 0) <= epoch]
        write_text_atomic(self.path, "".join(json.dumps(row) + "\n" for row in kept), hint=_RESUME_HINT)

    def _append(self, row: dict[str, Any]) -> None:
        existed = self.path.exists()
        try:
            with self.path.open("a") as handle:
                handle.write(json.dumps(row) + "\n")
        except OSError as error:
            if error.errno in (errno.ENOSPC, errno.EDQUOT):
                raise disk_full_error(self.path, _RESUME_HINT, existed=existed) from None
            raise

    def write(self, row: dict[str, Any]) -> None:
        """Appends an epoch's row (and its scalars to TensorBoard)."""
        self._append(row)
        if self._tb is not None:
            step = row["epoch"]
            for key, value in row.items():
                if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
                    self._tb.add_scalar(key, value, step)
            for i, weights in enumerate(row.get("attention_weights") or []):
                for j, w in enumerate(weights):
                    self._tb.add_scalar(f"attention/module{i:02d}/block{j}", w, step)
            self._tb.flush()

    def write_event(self, row: dict[str, Any]) -> None:
        """Appends an event row (it carries "event" and no "epoch", so `read_metrics` keeps it apart)."""
        self._append(row)

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
