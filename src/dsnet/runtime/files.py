"""Atomic file writes, with one honest line when the disk is full.

Every file that a later reader relies on (checkpoints, `config.yaml`, `eval_state.json`, AutoAttack's resume
state, reports, a reproduce cell's `cell.json` and `recipe.yaml`) is written by `write_atomic`: into a temporary
file in the same folder, flushed and synced, then renamed over the old one. A reader therefore sees the old file
or the new one, never half of one, and a failure at any point (a kill, a full disk) leaves the old file as it
was and no temporary file behind (a kill leaves one, which `remove_temp_files` deletes when the folder's owner
starts again).

A full disk shows up in many shapes: `OSError(ENOSPC)` from `write`, `flush`, `fsync` or `close`, EDQUOT for a
quota, and from `torch.save` a `RuntimeError` ("unexpected pos ...") whose context is the `OSError`. All of them
become one `DiskFullError`: "no space left on <folder> while writing <file>; the previous <file> is intact".
Files get the permissions of the umask, like every other file a program creates (a plain `mkstemp` would leave
them 0600).
"""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from dsnet.errors import DiskFullError, WriteError

__all__ = ["write_atomic", "write_text_atomic", "save_torch_atomic", "remove_temp_files", "ensure_writable_folder",
           "is_disk_full", "disk_full_error", "TEMP_SUFFIX"]

TEMP_SUFFIX = ".tmp"
_FULL = (errno.ENOSPC, errno.EDQUOT)


def _file_mode() -> int:
    """0o666 minus the process's umask (read without changing it where /proc allows)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return 0o666 & ~int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return 0o666 & ~mask


def is_disk_full(error: BaseException, folder: Path | None = None) -> bool:
    """Whether `error` (or an exception it was raised from) is a full disk or an exhausted quota.

    `torch.save` reports a failed write as a `RuntimeError` whose `__context__` is the `OSError`; where no
    chain survives, a folder with no free space left decides.
    """
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno in _FULL:
            return True
        current = current.__cause__ or current.__context__
    if folder is not None and isinstance(error, RuntimeError):
        try:
            return shutil.disk_usage(folder).free == 0
        except OSError:
            return False
    return False


def disk_full_error(path: Path, hint: str = "free disk space and rerun", *, existed: bool = True) -> DiskFullError:
    """The one-line error for a write of `path` that ran out of space (`existed`: whether an earlier version of the
    file was there, which is then intact; otherwise no such file was written)."""
    kept = f"the previous {path.name} is intact" if existed else f"no {path.name} was written"
    return DiskFullError(f"no space left on {path.parent} while writing {path.name}; {kept}; {hint}")


def write_atomic(path: str | Path, write: Callable[[IO[bytes]], Any], *,
                 hint: str = "free disk space and rerun") -> Path:
    """Writes a file atomically: `write(handle)` fills a temporary file, which is synced and renamed to `path`.

    Args:
        path: the file to (re)place; its folder is created when missing.
        write: fills the open binary handle.
        hint: what the user should do after a failure (the end of the error message).

    Returns:
        `path`.

    Raises:
        DiskFullError: the disk or quota is full; the previous file is intact and the temporary file is gone.
        WriteError: any other failure to create or write the file (same guarantees).
    """
    path = Path(path)
    existed = path.exists()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TEMP_SUFFIX, dir=path.parent)
    except OSError as error:
        if is_disk_full(error):
            raise disk_full_error(path, hint, existed=existed) from None
        raise WriteError(f"cannot write {path.name} in {path.parent}: {error.strerror or error}; choose a writable "
                         "folder") from None
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
            os.fchmod(handle.fileno(), _file_mode())
        os.replace(tmp, path)
    except (OSError, RuntimeError) as error:
        tmp.unlink(missing_ok=True)
        if is_disk_full(error, path.parent):
            raise disk_full_error(path, hint, existed=existed) from None
        if isinstance(error, RuntimeError):
            raise
        kept = f"the previous {path.name} is intact" if existed else f"no {path.name} was written"
        raise WriteError(f"could not write {path}: {error.strerror or error}; {kept}; {hint}") from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def write_text_atomic(path: str | Path, text: str, *, hint: str = "free disk space and rerun") -> Path:
    """`write_atomic` for UTF-8 text."""
    data = text.encode("utf-8")
    return write_atomic(path, lambda handle: handle.write(data), hint=hint)


def save_torch_atomic(obj: Any, path: str | Path, *, hint: str = "free disk space and rerun") -> Path:
    """`torch.save(obj)` through `write_atomic`."""
    import torch

    return write_atomic(path, lambda handle: torch.save(obj, handle), hint=hint)


def remove_temp_files(folder: str | Path) -> list[Path]:
    """Deletes the temporary files that `write_atomic` leaves when its process is killed mid-write.

    Call it only while holding the folder's lock (`dsnet.runtime.FolderLock`), so that no other process is
    writing there; a file under its real name is never touched.

    Returns:
        The files removed.
    """
    removed = sorted(p for p in Path(folder).glob(f".*{TEMP_SUFFIX}") if p.is_file())
    for tmp in removed:
        tmp.unlink(missing_ok=True)
    return removed


def ensure_writable_folder(folder: str | Path, option: str = "--out-dir") -> Path:
    """Creates `folder` if needed and checks that a file can be written there, before any work starts.

    Raises:
        WriteError: naming `option`, when the folder is a file, cannot be created or is not writable.
    """
    folder = Path(folder)
    if "\0" in str(folder):  # the OS refuses such a name (Path would raise a bare ValueError)
        raise WriteError(f"{option} {str(folder)!r} holds a NUL character, which no file name can; choose a folder "
                         "name without it")
    try:
        if folder.exists() and not folder.is_dir():
            raise NotADirectoryError(errno.ENOTDIR, "it is a file, not a folder")
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-test.", suffix=TEMP_SUFFIX, dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as error:
        if is_disk_full(error):
            raise DiskFullError(f"no space left on {folder} ({option}); free disk space and rerun") from None
        raise WriteError(f"cannot write to {option} {folder}: {error.strerror or error}; choose a writable "
                         "folder") from None
    return folder
