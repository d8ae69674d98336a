"""One writer per folder: an OS lock that a run or an evaluation holds on its output folder while it works.

Two `dsnet train` runs into one `--out-dir` would overwrite each other's checkpoints, interleave their rows in
`metrics.jsonl`, and one's start-up clean-up could delete the other's checkpoint while it is being written. So
the process that writes a folder first takes `fcntl.flock` on `<folder>/.lock` and keeps it until it exits. The
lock belongs to the open file, so the OS releases it when the process ends in any way, SIGKILL included: a killed
run leaves no stale lock, and `--resume` just takes it again. A second process gets one line naming the folder
and the holder's PID (written into the lock file), and changes nothing.

On systems without `fcntl` (Windows) the lock is skipped with a warning.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from types import TracebackType

from dsnet.errors import FolderInUseError

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX
    fcntl = None  # type: ignore[assignment]

__all__ = ["FolderLock", "LOCK_NAME"]

logger = logging.getLogger(__name__)

LOCK_NAME = ".lock"


class FolderLock:
    """An exclusive lock on a folder for as long as this object holds it.

        with FolderLock(out_dir, what="training run"):
            ...  # nobody else writes into out_dir

    Args:
        folder: the folder to lock; it must exist.
        what: what the folder holds, for the message ("training run", "evaluation").
        hint: what the second process can do instead.
    """

    def __init__(self, folder: str | Path, what: str = "run",
                 hint: str = "wait for it to finish or choose another --out-dir") -> None:
        self.folder = Path(folder)
        self.path = self.folder / LOCK_NAME
        self.what = what
        self.hint = hint
        self._handle: int | None = None

    @property
    def held(self) -> bool:
        return self._handle is not None

    def acquire(self) -> FolderLock:
        """Takes the lock, or raises at once if another process holds it.

        Raises:
            FolderInUseError: naming the folder and the holder's PID.
        """
        if self._handle is not None:
            return self
        if fcntl is None:  # pragma: no cover - not POSIX
            logger.warning("no file locking on this system: nothing stops a second process from writing %s",
                           self.folder)
            return self
        handle = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = self._holder(handle)
            os.close(handle)
            raise FolderInUseError(f"{self.folder} is in use by another dsnet process ({holder}), which holds its "
                                   f"{self.what}; {self.hint} (nothing was changed)") from None
        except OSError:
            os.close(handle)
            raise
        os.ftruncate(handle, 0)
        os.write(handle, f"{os.getpid()}\n".encode())
        self._handle = handle
        return self

    @staticmethod
    def _holder(handle: int) -> str:
        try:
            text = os.pread(handle, 64, 0).decode(errors="replace").strip()
        except OSError:
            text = ""
        return f"PID {text}" if text.isdigit() else "PID unknown"

    def release(self) -> None:
        """Gives the lock back (closing the file is what releases it)."""
        if self._handle is not None:
            os.close(self._handle)
            self._handle = None

    def __enter__(self) -> FolderLock:
        return self.acquire()

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.release()
