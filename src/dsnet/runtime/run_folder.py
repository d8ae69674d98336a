"""The folder a command writes, as one type: its file names and paths, its lock, its log file, whether it holds a run
to resume, and the rule that no command replaces a file it did not write.

A `RunFolder` is a path plus a `FolderKind`: the command that writes it (`dsnet train`, `dsnet eval`, ...), what
it holds (for messages), the names it writes (reserved in the folder's manifest, `dsnet.runtime.ownership`) and what
to do when the folder is busy or a name is taken. Taking the folder (`take`) checks that it can be written, takes
its lock (`dsnet.runtime.lock`), refuses names that belong to another command or a person, and removes the temporary
files of a write that a kill cut short; everything a command writes into it goes through its paths.

`TrainingRun` is the folder of `dsnet train`: `config.yaml`, `train.log`, `metrics.jsonl`, `tensorboard/`, `last.pt`,
`selected.pt` and `epoch-NNNN.pt`. Every other part of dsnet (the reproduce grids, the analyses) finds those files
through it, so their names are spelt here only.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from dsnet.runtime.files import ensure_writable_folder, remove_temp_files
from dsnet.runtime.lock import FolderLock
from dsnet.runtime.ownership import FolderFiles
from dsnet.runtime.records import read_jsonl

__all__ = ["FolderKind", "RunFolder", "TrainingRun", "TRAINING_RUN"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class FolderKind:
    """What a kind of folder is.

    Attributes:
        writer: the command that writes it ("dsnet train"), as the manifest records it.
        holds: what it holds, for messages ("training run").
        files: the names (and patterns) it writes, reserved for `writer`.
        busy_hint: what a second process can do while the folder is locked.
        taken_hint: what to do when one of `files` belongs to another command or a person.
    """

    writer: str
    holds: str
    files: tuple[str, ...]
    busy_hint: str = "wait for it to finish, or choose another --out-dir"
    taken_hint: str = "choose another --out-dir"


class RunFolder:
    """A folder written by one command at a time (see the module docstring).

        with RunFolder(out_dir, kind).take() as folder:
            ...  # write folder / "report.json"

    Args:
        path: the folder.
        kind: what it is.
        is_main: whether this process writes (under DDP only rank 0 takes the lock and writes).
    """

    def __init__(self, path: str | Path, kind: FolderKind, *, is_main: bool = True) -> None:
        self.path = Path(path)
        self.kind = kind
        self.is_main = is_main
        self._lock: FolderLock | None = None
        self._log: logging.Handler | None = None

    def __truediv__(self, name: str) -> Path:
        return self.path / name

    def __fspath__(self) -> str:
        return str(self.path)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.path)!r})"

    # -------------------------------------------------------------------------------------------- taking it
    def check_files(self, *, adopt: bool = False) -> None:
        """Refuses (`OverwriteError`, one line naming the file) names of this kind that another command or a person
        wrote here; `adopt` takes unrecorded files of this kind's names as this kind's own (a folder of an older
        dsnet, resumed)."""
        if self.is_main:
            FolderFiles(self.path).check(self.kind.files, self.kind.writer, hint=self.kind.taken_hint, adopt=adopt)

    def reserve_files(self, *, adopt: bool = False) -> None:
        """`check_files`, then records this kind's names as its own in the manifest (before anything is written)."""
        if self.is_main:
            FolderFiles(self.path).reserve(self.kind.files, self.kind.writer, hint=self.kind.taken_hint, adopt=adopt)

    def take(self, *, option: str = "--out-dir") -> RunFolder:
        """Checks that the folder can be written (creating it), then takes its lock; on rank 0 only.

        Raises:
            WriteError: the folder is a file or cannot be written (naming `option`).
            FolderInUseError: another process holds the lock.
        """
        if self.is_main and self._lock is None:
            ensure_writable_folder(self.path, option)
            self._lock = FolderLock(self.path, self.kind.holds, hint=self.kind.busy_hint).acquire()
        return self

    def remove_temp_files(self) -> list[Path]:
        """Deletes what killed writes left behind (only while the lock is held), and says so in the log."""
        if self._lock is None:
            return []
        removed = remove_temp_files(self.path)
        for tmp in removed:
            logger.info("removed %s, the unfinished write of a killed %s", tmp.name, self.kind.holds)
        return removed

    def attach_log(self, name: str, handler_type: type[logging.FileHandler] = logging.FileHandler) -> None:
        """Copies the `dsnet` logger's records into `<folder>/<name>` (once; rank 0), at INFO or more."""
        if not self.is_main:
            return
        root = logging.getLogger("dsnet")
        path = str((self.path / name).resolve())
        if not any(getattr(h, "baseFilename", None) == path for h in root.handlers):
            handler = handler_type(path)
            handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
            root.addHandler(handler)
            self._log = handler
        if root.level == logging.NOTSET or root.level > logging.INFO:
            root.setLevel(logging.INFO)

    def release(self) -> None:
        """Detaches the log file and gives the lock back."""
        if self._log is not None:
            logging.getLogger("dsnet").removeHandler(self._log)
            self._log.close()
            self._log = None
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def __enter__(self) -> RunFolder:
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.release()


_EPOCH = re.compile(r"epoch-(\d+)\.pt")


class TrainingRun(RunFolder):
    """The run folder of `dsnet train` (see the module docstring)."""

    CONFIG = "config.yaml"
    LOG = "train.log"
    METRICS = "metrics.jsonl"
    TENSORBOARD = "tensorboard"
    LAST = "last.pt"
    SELECTED = "selected.pt"
    EPOCHS = "epoch-*.pt"

    def __init__(self, path: str | Path, *, is_main: bool = True) -> None:
        super().__init__(path, TRAINING_RUN, is_main=is_main)

    @property
    def config(self) -> Path:
        return self.path / self.CONFIG

    @property
    def metrics(self) -> Path:
        return self.path / self.METRICS

    @property
    def last(self) -> Path:
        return self.path / self.LAST

    @property
    def selected(self) -> Path:
        return self.path / self.SELECTED

    @property
    def tensorboard(self) -> Path:
        return self.path / self.TENSORBOARD

    def epoch_checkpoint(self, epoch: int) -> Path:
        """`epoch-NNNN.pt` of a finished epoch (with `train.keep_epoch_checkpoints`)."""
        return self.path / f"epoch-{epoch:04d}.pt"

    def epoch_checkpoints(self) -> list[tuple[int, Path]]:
        """Every `epoch-NNNN.pt` in the folder, as (epoch, path), in epoch order."""
        found = [(int(m.group(1)), p) for p in self.path.glob(self.EPOCHS) if (m := _EPOCH.fullmatch(p.name))]
        return sorted(found)

    @property
    def has_checkpoint(self) -> bool:
        """Whether a run can resume from here (`last.pt` exists)."""
        return self.last.exists()

    @property
    def was_started(self) -> bool:
        """Whether a run was started here (its `config.yaml` was written), checkpoint or not."""
        return self.config.is_file()

    def finished(self, epochs: int) -> bool:
        """Whether the run has selected a checkpoint and logged epoch `epochs` (its last)."""
        if not self.selected.is_file():
            return False
        rows = list(read_jsonl(self.metrics))
        return bool(rows) and int(rows[-1].get("epoch", 0)) >= epochs

    def best_checkpoint(self) -> Path | None:
        """The checkpoint that stands for the run: `selected.pt`, else `last.pt`; None when there is neither."""
        for path in (self.selected, self.last):
            if path.is_file():
                return path
        return None


TRAINING_RUN = FolderKind(
    "dsnet train", "training run",
    (TrainingRun.CONFIG, TrainingRun.LOG, TrainingRun.METRICS, TrainingRun.LAST, TrainingRun.SELECTED,
     TrainingRun.EPOCHS, TrainingRun.TENSORBOARD),
    busy_hint="wait for it to finish, or train into another --out-dir",
    taken_hint="train into another --out-dir, or continue a run with --resume")
"""The files a training run writes."""

